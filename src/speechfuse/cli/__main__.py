import sys

from speechfuse.cli import main

sys.exit(main())
