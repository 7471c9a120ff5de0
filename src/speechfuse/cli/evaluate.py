"""`speechfuse evaluate RUN --split test`: score a finished run's best checkpoint on a split."""
from __future__ import annotations

import argparse

from speechfuse.cli.common import add_device, add_out, add_run, check_device, write_result

HELP = "score a finished run on a split"


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("evaluate", help=HELP, parents=[common],
                       description="Rebuild a run's best checkpoint and print its metrics on a split as JSON.")
    add_run(p)
    p.add_argument("--split", default="test", choices=["train", "dev", "test"], help="which manifest (default test)")
    add_out(p, "file", "a copy of the JSON it prints")
    p.add_argument("--manifest", default=None,
                   help="score these rows instead of the run's data.<split> (refused when that manifest changed "
                        "since training); per-utterance results go to RUN/eval/<split>-<sha>/, not the run's files")
    add_device(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from speechfuse.training.runner import evaluate

    check_device(args.device)
    result = evaluate(args.run_dir, split=args.split, device=args.device, manifest=args.manifest)
    print(write_result(result, args.out))
    return 0
