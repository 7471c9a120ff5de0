"""`speechfuse sweep CONFIG --grid KEY=V1,V2 --out DIR`: one run per combination, one results table."""
from __future__ import annotations

import argparse
import json

from speechfuse.errors import SpeechfuseError
from speechfuse.cli.common import add_config, add_device, add_out, load_command_config, seeds, whole_number

HELP = "train every combination of a grid (or candidates / seeds), one results table"


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("sweep", help=HELP, parents=[common],
                       description="Train one run per grid combination (and per seed) into OUT/runs/<name>, sharing "
                                   "one feature cache, and write OUT/results.md, OUT/results.csv and the figures "
                                   "OUT/plots/comparison.png and OUT/plots/layers.png. Any of --grid, --select and "
                                   "--seeds is enough. Finished runs of an earlier grid in OUT keep their rows; a "
                                   "failed run does not stop the others.")
    add_config(p)
    add_out(p, "folder", "the sweep (a run folder per combination in OUT/runs/, the results tables and plots)",
            required=True)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a config key and its values, e.g. interface.name=weighted_sum,hconv; for upstreams "
                        "join the specs of one combination with '+': upstreams=whisper-tiny.en+resemblyzer,"
                        "resemblyzer (repeatable)")
    p.add_argument("--select", action="append", default=[], metavar="KEY=V1,V2",
                   help="candidate values chosen on dev for every configuration, e.g. train.interface_lr=1e-4,3e-4,1e-3: "
                        "each candidate trains on the first seed, the best dev main metric wins, then the seeds run "
                        "at that choice; OUT/selection.md lists every candidate (repeatable)")
    p.add_argument("--seeds", default=None, metavar="S1,S2",
                   help="train every combination once per seed (e.g. 0,1,2); results.md then shows mean ± std "
                        "over the seeds, results.csv one row per run")
    p.add_argument("--fail-fast", action="store_true",
                   help="stop at the first run that fails (default: the other runs go on, each failure is named "
                        "with its combination and RUN/error.txt, and the command exits 2 at the end)")
    p.add_argument("--jobs", type=whole_number, default=1, metavar="N",
                   help="train N runs at once, each in its own process with 1/N of the threads (default 1); on a "
                        "CPU, 2 jobs of 1 thread can train small heads faster than 1 job of 2")
    add_device(p)
    from speechfuse.cli.launcher import add_launcher_arguments

    add_launcher_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from speechfuse.experiments import sweep
    from speechfuse.training.progress import quiet

    if not (args.grid or args.select or args.seeds):
        raise SpeechfuseError("sweep: give at least one of --grid KEY=V1,V2, --select KEY=V1,V2 or --seeds S1,S2")
    seed_list = seeds(args.seeds)
    grid = sweep.parse_grid(args.grid) if args.grid else {}
    select = sweep.parse_grid(args.select) if args.select else None
    cfg = load_command_config(args)
    from speechfuse.cli.launcher import launcher_from_args

    launcher = {"launcher": pool} if (pool := launcher_from_args(args, cfg)) is not None else {}
    try:
        rows = sweep.run_sweep(cfg, grid, args.out, seeds=seed_list, select=select, jobs=args.jobs,
                               threads=args.threads, progress=not quiet(), keep_going=not args.fail_fast, **launcher)
    except sweep.SweepFailed as err:  # the finished rows are still results: stdout, then the error
        print(json.dumps(err.rows, indent=2, default=str))
        raise
    print(json.dumps(rows, indent=2, default=str))
    return 0
