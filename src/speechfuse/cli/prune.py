"""`speechfuse prune RUN --budgets 0.25,0.5`: keep the layers worth their upstream cost, retrain, report."""
from __future__ import annotations

import argparse
import json

from speechfuse.cli.common import add_device, add_run, check_device, floats, whole_number

HELP = "keep the layers worth their upstream cost, retrain, report metric vs cost"


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("prune", help=HELP, parents=[common],
                       description="Prune a finished run to budgets of upstream inference cost: per-(model, layer) "
                                   "importance (drop-one-layer task-loss increase on dev), the cost of running each "
                                   "upstream to each depth (FLOPs counted, seconds measured on the first --clips dev "
                                   "clips), the depths with the most importance within budget x the full cost (a "
                                   "model with no kept layer is not run), each retrained from the feature cache into "
                                   "RUN/prune/budget=B/. Writes RUN/prune/results.md, results.csv and pareto.png; "
                                   "prints the rows as JSON.")
    add_run(p)
    budgets = p.add_mutually_exclusive_group(required=True)
    budgets.add_argument("--budget", type=float, help="one budget, a fraction of the full upstream cost in (0, 1]")
    budgets.add_argument("--budgets", metavar="B1,B2", help="several budgets, e.g. 0.25,0.5,0.75")
    p.add_argument("--cost", default="flops", choices=["flops", "seconds"],
                   help="the cost the budget limits: counted FLOPs (default; reproducible) or measured seconds "
                        "(needed for models that run outside torch, such as speech-embedding)")
    p.add_argument("--importance", default="loss", choices=["loss", "feature"],
                   help="drop-one-layer importance as the increase of the task loss (default) or as the relative "
                        "change of the fused features")
    p.add_argument("--clips", type=whole_number, default=8,
                   help="dev clips in the reference batch the costs are measured on")
    p.add_argument("--repeat", type=whole_number, default=5,
                   help="timed forward passes per (model, depth); the median counts")
    add_device(p, default="the device RUN/prune/measurements.json was measured on, else cuda when available, "
                          "else cpu")
    from speechfuse.cli.launcher import add_launcher_arguments

    add_launcher_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from speechfuse.cli.launcher import launcher_options_from_args
    from speechfuse.experiments.prune import prune_run

    check_device(args.device)
    budgets = [args.budget] if args.budget is not None else floats(args.budgets, "--budgets")
    print(json.dumps(prune_run(args.run_dir, budgets, cost=args.cost, importance=args.importance,
                               clips=args.clips, repeat=args.repeat, device=args.device,
                               launcher=launcher_options_from_args(args)), indent=2))
    return 0
