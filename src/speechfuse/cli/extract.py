"""`speechfuse extract CONFIG --out RUN`: fill the feature cache ahead of training."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from speechfuse.errors import SpeechfuseError
from speechfuse.cli.common import (add_config, add_device, add_out, default_out, positive_number,
                                    torch_device)

HELP = "fill the feature cache ahead of training"


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("extract", help=HELP, parents=[common],
                       description="Run every upstream of the config over the train/dev/test manifests and store "
                                   "their hidden states in the feature cache that `speechfuse train` reads "
                                   "(config key `cache`). Under torchrun each rank extracts its own share.")
    add_config(p)
    add_out(p, "folder", "the run, as for train (default: runs/<config name>): its manifest checks "
                         "(skipped_<split>.csv); the features go to the config's cache (`cache: auto`: "
                         "$SPEECHFUSE_HOME/cache)")
    add_device(p)
    p.add_argument("--batch-seconds", type=positive_number, default=None,
                   help="seconds of audio per extraction batch (default: the config's train.batch_seconds)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from speechfuse.config import load_config
    from speechfuse.data.loader import resolve_cache_dir
    from speechfuse.cache.fill import fill_config_caches
    from speechfuse.training.progress import quiet

    device = torch_device(args)  # extract runs the upstreams itself: --device is a torch device here
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else default_out(args.config)
    if resolve_cache_dir(cfg) is None:
        raise SpeechfuseError(f"{args.config}: cache is 'off'; set cache to auto or a folder to extract features")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if device == "cuda" and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    cache_dir, entries, count = fill_config_caches(cfg, out, device=device, batch_seconds=args.batch_seconds,
                                                   progress=not quiet(), rank=rank, world_size=world)
    print(json.dumps({"cache": str(cache_dir), "entries": [str(e.folder) for e in entries],
                      "utterances": count, "rank": rank, "world_size": world}, indent=2))
    return 0
