"""`speechfuse study scaling CONFIG --out DIR`: paper-style studies made of several sweeps."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from speechfuse.errors import SpeechfuseError
from speechfuse.cli.common import add_config, add_device, add_out, load_command_config, seeds

HELP = "paper-style studies over many sweeps (scaling)"


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("study", help=HELP, parents=[common],
                       description="Studies made of several sweeps; `speechfuse study scaling CONFIG --out DIR`.")
    studies = p.add_subparsers(dest="study", metavar="STUDY")
    p = studies.add_parser("scaling", help="metric vs number and size of the fused models", parents=[common],
                           description="Train every non-empty subset of the config's upstreams under each interface "
                                       "(and, with --sizes / --depths, one model at several sizes), each over the "
                                       "seeds, through `speechfuse sweep`; write OUT/scaling.md, OUT/scaling.csv and "
                                       "OUT/scaling.png (metric vs number of models and vs upstream parameters, one "
                                       "line per interface, error bars = std over seeds).")
    add_config(p)
    add_out(p, "folder", "the study (a sweep folder per series, scaling.md, scaling.csv, scaling.png)", required=True)
    p.add_argument("--interfaces", default="weighted_sum,hconv", metavar="I1,I2",
                   help="interfaces to compare (default weighted_sum,hconv)")
    p.add_argument("--seeds", default="0,1", metavar="S1,S2", help="seeds per configuration (default 0,1)")
    p.add_argument("--sizes", action="append", default=[], metavar="FAMILY=SPEC1,SPEC2",
                   help="real models of one family at several sizes, each trained alone, e.g. "
                        "whisper=hf:openai/whisper-tiny,hf:openai/whisper-base (repeatable)")
    p.add_argument("--depths", action="append", default=[], metavar="UPSTREAM=K1,K2",
                   help="the offline stand-in for size: UPSTREAM cut to its first K hidden states (max_layers=K), "
                        "e.g. whisper-tiny.en=3,4,5; labelled 'depth-truncated stand-in, not a real smaller model' "
                        "(repeatable)")
    p.add_argument("--select", action="append", default=[], metavar="KEY=V1,V2",
                   help="candidates chosen on dev for every configuration, as for `speechfuse sweep` (repeatable)")
    add_device(p)
    from speechfuse.cli.launcher import add_launcher_arguments

    add_launcher_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "study", None) != "scaling":
        raise SpeechfuseError("name the study to run: speechfuse study scaling CONFIG --out DIR")
    from speechfuse.experiments.study import parse_depths, parse_sizes, scaling_study
    from speechfuse.experiments.sweep import parse_grid

    interfaces = [i.strip() for i in args.interfaces.split(",") if i.strip()]
    depths, sizes = parse_depths(args.depths), parse_sizes(args.sizes)  # before the config: cheap checks first
    seed_list = seeds(args.seeds)
    cfg = load_command_config(args)
    from speechfuse.cli.launcher import launcher_options_from_args
    from speechfuse.experiments.sweep import SweepFailed

    out = Path(args.out)
    try:
        rows = scaling_study(cfg, args.out, interfaces=interfaces, seeds=seed_list, sizes=sizes, depths=depths,
                             select=parse_grid(args.select) if args.select else None,
                             launcher=launcher_options_from_args(args))
    except SweepFailed:  # the finished rows are still results: the table, then the error
        if (out / "scaling.md").is_file():
            print((out / "scaling.md").read_text(encoding="utf-8"))
        raise
    print((out / "scaling.md").read_text(encoding="utf-8"))
    print(f"{len(rows)} rows; table {out / 'scaling.md'} and {out / 'scaling.csv'}, figure {out / 'scaling.png'}",
          file=sys.stderr)
    return 0
