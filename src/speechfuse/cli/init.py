"""`speechfuse init --task classify --data data/ --out my.yaml`: a commented config that runs here."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from speechfuse.errors import SpeechfuseError
from speechfuse.cli.common import add_out, no_device, whole_number

HELP = "write a commented config for your manifests (the bundled models unless you name others)"


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    from speechfuse.init_config import BUNDLED_UPSTREAMS

    p = sub.add_parser("init", help=HELP, parents=[common],
                       description="Write a commented YAML config for the manifests in --data (train.csv, dev.csv, "
                                   "test.csv, as `speechfuse prepare folder` writes them), with the training "
                                   "protocol that works for every interface. It uses the models bundled with "
                                   "speechfuse (no download) unless --upstreams names others.")
    p.add_argument("--task", required=True, help="asr | classify | verify | multilingual_asr")
    p.add_argument("--data", required=True, metavar="DIR", help="folder holding train.csv, dev.csv (and test.csv)")
    add_out(p, "file", "the config, e.g. my.yaml", required=True)
    no_device(p, "it writes a config and runs no model; `speechfuse train CONFIG --device` picks the device")
    p.add_argument("--upstreams", metavar="SPEC1,SPEC2",
                   help=f"models to fuse (default {','.join(BUNDLED_UPSTREAMS)}), e.g. hf:microsoft/wavlm-base-plus")
    p.add_argument("--interface", default="hconv", help="interface (default hconv)")
    p.add_argument("--target", help="manifest column to learn (default: text for asr, label for classify, speaker "
                                    "for verify)")
    p.add_argument("--steps", type=whole_number, default=300, help="train.max_steps (default 300)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from speechfuse.init_config import init_config
    from speechfuse.training.runfolder import write_atomic

    out = Path(args.out)
    if out.exists() and not args.force:
        raise SpeechfuseError(f"init: {out} exists; pass --force to overwrite it or choose another --out")
    upstreams = [s.strip() for s in args.upstreams.split(",") if s.strip()] if args.upstreams else None
    text = init_config(args.task, args.data, out, upstreams=upstreams, interface=args.interface,
                       target=args.target, steps=args.steps)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, text)
    print(json.dumps({"config": str(out)}, ensure_ascii=False))
    return 0
