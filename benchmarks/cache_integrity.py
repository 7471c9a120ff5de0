"""Cost of the feature cache's integrity check (CRC32 of every utterance read) on a cached training step.

A cached training step is what `speechfuse train` does per batch when every upstream is frozen: read the
batch's hidden states from the FeatureCache, then aligner + interface + head forward, loss, backward,
AdamW step. It is timed with `read(verify=True)` (the default) and `read(verify=False)`, in alternation
(on off on off ...), so a noisy neighbour hits both alike. The cheapest interface (weighted_sum) with the
smallest head (classify) is the worst case for the ratio; `--interfaces weighted_sum,hconv` adds the
paper's interface (slow on a CPU). Also printed: the read alone with and without the check (its difference
over the step is the check's cost measured with less noise than the step ratio), and the speed of the
whole-cache check that `extract` / `train` run before deciding what is missing (verify_shards).

Upstream: a HuBERT Base-shaped model with random weights (13 hidden states x 768), on real FSDD speech
(the bundled subset). Nothing is downloaded.

    python benchmarks/cache_integrity.py [--device cpu|cuda] [--threads N] [--repeat 21] [--clips 64]
        [--interfaces weighted_sum] [--tasks classify,asr]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DEMO_HEADS, add_device_arg, get_device, print_machine_info, print_table,  # noqa: E402
                     random_hubert, timeit_interleaved, to_device, training_step)

from speechfuse.cache.store import FeatureCache  # noqa: E402
from speechfuse.data.adapters import bundled_fsdd_dir, fsdd_manifests  # noqa: E402
from speechfuse.data.manifest import load_manifest  # noqa: E402
from speechfuse.cache.extract import fill_cache  # noqa: E402
from speechfuse.fusion.frontend import FusionFrontend  # noqa: E402
from speechfuse.tasks import get_task  # noqa: E402
from speechfuse.fusion.upstream import load_upstream  # noqa: E402


def main(argv=None) -> None:
    ap = add_device_arg(argparse.ArgumentParser(description=__doc__,
                                                formatter_class=argparse.RawDescriptionHelpFormatter))
    ap.add_argument("--repeat", type=int, default=21, help="timed steps per side (median reported)")
    ap.add_argument("--clips", type=int, default=64, help="batch size in FSDD clips (~0.45 s each)")
    ap.add_argument("--interfaces", default="weighted_sum")
    ap.add_argument("--tasks", default="classify,asr")
    args = ap.parse_args(argv)
    device = get_device(args)
    names = [n for n in args.interfaces.split(",") if n]
    tasks = [t for t in args.tasks.split(",") if t]

    print(f"# cache_integrity: {'/'.join(tasks)} heads {[DEMO_HEADS[t] for t in tasks]}, batch of {args.clips} real FSDD clips, HuBERT Base-shaped "
          f"random upstream (13 x 768, fp16 cache), median of {args.repeat} interleaved steps per side")
    print_machine_info(device)
    with tempfile.TemporaryDirectory() as tmp:
        manifests = fsdd_manifests(bundled_fsdd_dir() / "recordings", Path(tmp) / "fsdd")
        train = load_manifest(manifests["train"])
        utts = train[:: max(1, len(train) // args.clips)][: args.clips]  # spread over digits and speakers
        up = load_upstream("hf:" + random_hubert(Path(tmp) / "hubert"))
        cache = FeatureCache(Path(tmp) / "cache")
        entry = fill_cache(up, utts, cache, batch_seconds=16, progress=False)
        cached_bytes = sum(p.stat().st_size for p in entry.folder.glob("shard-*.bin"))
        audio_seconds = sum(u.duration for u in utts)
        rows = []
        reads = timeit_interleaved({"on": lambda: entry.read(utts, verify=True),
                                    "off": lambda: entry.read(utts, verify=False)}, repeat=args.repeat, warmup=2)
        check_ms = (reads["on"].median - reads["off"].median) * 1e3
        rows.append(("read only (mmap, fp16 -> fp32, pad)", reads["off"].median * 1e3, reads["on"].median * 1e3,
                     reads["on"].median / reads["off"].median, ""))
        for task_name in tasks:
            task = get_task(task_name, **DEMO_HEADS[task_name]).fit(utts)
            targets = to_device(task.encode(utts), device)
            for name in names:
                steps = {}
                for verify in (True, False):
                    torch.manual_seed(0)
                    fe = FusionFrontend([up], interface=name).to(device)
                    head = task.build_head(fe.output_dim).to(device)
                    steps["on" if verify else "off"] = training_step(
                        fe, head, task, targets, lambda verify=verify: [entry.read(utts, verify=verify).to(device)])
                t = timeit_interleaved(steps, repeat=args.repeat, warmup=2, sync_cuda=device.type == "cuda")
                rows.append((f"training step, {name} + {task_name} head", t["off"].median * 1e3,
                             t["on"].median * 1e3, t["on"].median / t["off"].median,
                             f"{check_ms / (t['off'].median * 1e3):.3f}"))

        start = time.perf_counter()
        damaged = entry.verify_shards()
        took = time.perf_counter() - start
        assert not damaged

    print(f"\n{len(utts)} utterances, {audio_seconds:.1f} s of audio, {cached_bytes / 1e6:.1f} MB of cached features "
          f"per batch\n")
    print_table(rows, ["what", "verify off ms (median)", "verify on ms (median)", "on / off",
                       "(read on - read off) / step off"])
    print(f"\nwhole-cache check before extraction (verify_shards): {cached_bytes / 1e6:.1f} MB in {took * 1e3:.1f} ms "
          f"= {cached_bytes / took / 1e9:.2f} GB/s (page-cached files)")


if __name__ == "__main__":
    main()
