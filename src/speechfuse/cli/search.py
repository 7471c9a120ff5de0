"""`speechfuse search CONFIG --space SPACE.yaml --out DIR`: the budgeted search (speechfuse.experiments.search)."""
from __future__ import annotations

import argparse
import json

from speechfuse.cli.common import add_config, add_device, add_out, load_command_config, whole_number

HELP = "budgeted search: Optuna trials, the poor ones stopped early on their dev metric"


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    from speechfuse.cli.launcher import add_launcher_arguments

    p = sub.add_parser("search", help=HELP, parents=[common],
                       description="Search upstream sets x interfaces x learning rates (any config key) with "
                                   "successive halving / Hyperband on the dev metric; the survivors retrain on "
                                   "every seed into a sweep folder (results.md, results.csv), plus OUT/trials.md "
                                   "and OUT/stopped.png. The space file is described in docs/cluster.md.")
    add_config(p)
    p.add_argument("--space", required=True, metavar="SPACE.yaml",
                   help="what to search and how (space, trials, pruner, seeds, survivors)")
    add_out(p, "folder", "the search (a sweep folder, plus the study and trials.md)", required=True)
    p.add_argument("--storage", default=None, metavar="URL",
                   help="the shared study store: sqlite:///PATH (default OUT/study.db), journal:PATH (a journal "
                        "file on a shared file system) or a database URL")
    p.add_argument("--study", default=None, metavar="NAME", help="study name in the store (default: OUT's name)")
    p.add_argument("--workers", type=whole_number, default=1, metavar="N",
                   help="workers sharing the study: processes here, or jobs with --launcher (default 1)")
    p.add_argument("--worker-only", action="store_true",
                   help="only run trials (one more worker of a study other jobs also work on), no retraining")
    add_device(p)
    add_launcher_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from speechfuse.cli.launcher import launcher_options_from_args
    from speechfuse.training.progress import quiet
    from speechfuse.experiments.search import load_space, search, search_worker

    space = load_space(args.space)
    cfg = load_command_config(args)
    if args.worker_only:
        ran = search_worker(cfg, space, args.out, args.storage, args.study, threads=args.threads)
        print(json.dumps({"trials_run": ran}, indent=2))
        return 0
    summary = search(cfg, space, args.out, storage=args.storage, study_name=args.study, workers=args.workers,
                     threads=args.threads, launcher=launcher_options_from_args(args), progress=not quiet())
    print(json.dumps(summary, indent=2, default=str))
    return 0
