"""Peak RSS of a cache fill against dataset size: 1x and 4x the data, each in a fresh subprocess.

Extraction streams each batch to disk (fp16 shards), so the peak resident memory should not grow with
the dataset; this prints it next to the size the features would take if they were held in RAM.
Model: a random HuBERT (d=768, 8 layers, small FFN and conv front end: cheap to run, big outputs;
nothing downloaded). Data: distinct real FSDD recordings in one seeded random order (1x = the first --utts
files, 4x = the first 4 * --utts: the same mix of clip lengths, so the same batch shapes).
glibc keeps freed heap memory for reuse, so batches of changing shapes raise the peak a little over
time; --mmap-threshold 65536 (GLIBC_TUNABLES=glibc.malloc.mmap_threshold) returns large blocks to the OS
and shows the extraction's own working set.
Each child reports ru_maxrss (peak) and VmRSS just before extraction (after imports and model load).

    python benchmarks/extract_memory.py [--device cuda] [--utts 120] [--batch-seconds 16]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (FSDD_DIR, add_device_arg, get_device, print_machine_info, print_table,  # noqa: E402
                     random_hubert, scratch_dir)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
FSDD = FSDD_DIR


def vm_rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child(args) -> None:
    import speechfuse as sf
    from speechfuse.cache.store import FeatureCache
    from speechfuse.data.audio import audio_info
    from speechfuse.data.manifest import Utterance
    from speechfuse.cache.extract import fill_caches

    # one seeded shuffle: the 1x set is the start of the 4x set and both have the same mix of lengths
    names = sorted(os.listdir(FSDD))
    random.Random(0).shuffle(names)
    names = names[: args.utts]
    utts = [Utterance(id=n, path=str(FSDD / n), duration=audio_info(FSDD / n)[3]) for n in names]
    up = sf.load_upstream("hf:" + args.model)
    before = vm_rss_kb()
    start = time.perf_counter()
    entry = fill_caches([up], utts, FeatureCache(args.cache), batch_seconds=args.batch_seconds,
                        device=args.device, progress=False)[0]
    elapsed = time.perf_counter() - start
    disk = sum(p.stat().st_size for p in entry.folder.glob("shard-*.bin"))
    print(json.dumps({"utts": len(utts), "audio_s": sum(u.duration for u in utts), "before_kb": before,
                      "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "disk_bytes": disk,
                      "seconds": elapsed}))


def main() -> None:
    parser = add_device_arg(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--utts", type=int, default=120, help="files in the 1x dataset")
    parser.add_argument("--batch-seconds", type=float, default=16.0)
    parser.add_argument("--mmap-threshold", type=int, default=0,
                        help="set glibc.malloc.mmap_threshold (bytes) in the children, e.g. 65536")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        get_device(args)
        return child(args)
    device = get_device(args)
    import torch

    print_machine_info(device)
    tmp = scratch_dir("sf-mem-")
    random_hubert(tmp / "model", hidden_size=768, num_hidden_layers=8, num_attention_heads=12, intermediate_size=768,
                  conv_dim=(128,) * 7, feat_extract_norm="layer", do_stable_layer_norm=True)
    rows = []
    for scale in (1, 4):
        cmd = [sys.executable, __file__, "--child", "--model", str(tmp / "model"), "--cache", str(tmp / f"cache{scale}"),
               "--utts", str(scale * args.utts), "--threads", str(args.threads), "--batch-seconds", str(args.batch_seconds), "--device", str(device)]
        env = dict(os.environ)
        if args.mmap_threshold:
            env["GLIBC_TUNABLES"] = f"glibc.malloc.mmap_threshold={args.mmap_threshold}"
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise SystemExit(f"child failed:\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        in_ram_mb = r["disk_bytes"] * 2 / 1e6  # the same features as float32 tensors
        rows.append([f"{scale}x", r["utts"], r["audio_s"], r["disk_bytes"] / 1e6, in_ram_mb, r["before_kb"] / 1e3,
                     r["peak_kb"] / 1e3, (r["peak_kb"] - r["before_kb"]) / 1e3, r["seconds"]])
    print()
    print_table(rows, ["data", "utterances", "audio s", "cache on disk MB", "same in RAM as fp32 MB",
                       "RSS before extraction MB", "peak RSS MB", "peak - before MB", "extract s"])
    print(f"\npeak RSS 4x / 1x = {rows[1][6] / rows[0][6]:.3f}; growth during extraction 4x / 1x = "
          f"{rows[1][7] / max(rows[0][7], 1e-9):.3f} (batch_seconds={args.batch_seconds:g}"
          f"{f', glibc mmap_threshold={args.mmap_threshold}' if args.mmap_threshold else ''})")


if __name__ == "__main__":
    main()
