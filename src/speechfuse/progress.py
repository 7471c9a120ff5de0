"""Whether progress bars and notes go to stderr: `--quiet` on any command turns them off (SPEECHFUSE_QUIET=1,
which worker processes inherit)."""
from __future__ import annotations

import os


def quiet() -> bool:
    return os.environ.get("SPEECHFUSE_QUIET", "") not in ("", "0")


__all__ = ["quiet"]
