"""`speechfuse demo [--quick]`: the bundled FSDD comparison, offline."""
from __future__ import annotations

import argparse

from speechfuse.cli.common import add_device, add_out, check_device, whole_number

HELP = "the bundled FSDD demo (no downloads; --quick checks an installation in a minute)"


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", help=HELP, parents=[common],
                       description="Train the bundled upstreams on the bundled FSDD subset and write a report. The "
                                   "table goes to stdout; notes, where the files went and the progress bar to "
                                   "stderr.")
    add_out(p, "folder", "the demo (a sweep folder per task, demo_results.md; default runs/demo)")
    p.set_defaults(out="runs/demo")
    p.add_argument("--quick", action="store_true", help="a few steps only, to check the installation")
    p.add_argument("--jobs", type=whole_number, default=None, metavar="N",
                   help="runs trained at once (default: the number of CPU cores, at most 4)")
    add_device(p, default="cpu, where the README's table and timings come from")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from speechfuse.experiments import demo

    check_device(args.device)
    demo.run_demo(args.out, quick=args.quick, jobs=args.jobs, threads=args.threads, device=args.device or "cpu")
    return 0
