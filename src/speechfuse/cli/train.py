"""`speechfuse train CONFIG --out RUN`: train (or resume) one run; prints its dev/test metrics as JSON."""
from __future__ import annotations

import argparse
import json

from speechfuse.cli.common import add_config, add_device, add_out, default_out, load_command_config

HELP = "train (or resume) a run from a config"


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("train", help=HELP, parents=[common],
                       description="Train a run; a folder that already holds checkpoints/last.safetensors is "
                                   "resumed from it. Prints the dev/test metrics of the best checkpoint as JSON on "
                                   "stdout (logs and the progress bar go to stderr).")
    add_config(p)
    add_out(p, "folder", "the run (default: runs/<config name>)")
    add_device(p)
    p.add_argument("--allow-changed-data", action="store_true",
                   help="resume even though a manifest's contents changed since the run started "
                        "(same as --set train.allow_changed_data=true)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from speechfuse.training.runner import train

    cfg = load_command_config(args)
    if args.allow_changed_data:
        cfg.train.allow_changed_data = True
    metrics = train(cfg, args.out or default_out(args.config))
    print(json.dumps(metrics, indent=2))
    return 0
