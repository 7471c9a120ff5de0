"""`speechfuse compare RUN_A RUN_B`: paired bootstrap of A minus B on the same utterances."""
from __future__ import annotations

import argparse

from speechfuse.cli.common import add_out, no_device, write_result

HELP = "paired bootstrap: is run A better than run B on the same utterances?"


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("compare", help=HELP, parents=[common],
                       description="Compare two finished runs on the same utterances (matched by id, from each "
                                   "run's utterances_<split>.jsonl): prints A minus B in the task's per-utterance "
                                   "metric (WER, pooled CER or accuracy) with its 95 % bootstrap interval and a "
                                   "two-sided p-value, as JSON with a one-line summary.")
    p.add_argument("run_a", metavar="RUN_A", help="a run folder (its utterances_<split>.jsonl and task.json)")
    p.add_argument("run_b", metavar="RUN_B", help="the run folder to compare it with")
    p.add_argument("--split", default="test", choices=["dev", "test"], help="which split (default test)")
    add_out(p, "file", "a copy of the JSON it prints")
    no_device(p, "it reads the per-utterance results the runs saved; no model runs")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from speechfuse.experiments.compare import compare_runs, describe

    result = compare_runs(args.run_a, args.run_b, split=args.split)
    print(write_result({"summary": describe(result, args.run_a, args.run_b), **result}, args.out))
    return 0
