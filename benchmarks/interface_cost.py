"""Training-step time of each interface + task head on cached features, relative to weighted_sum.

Features come from a FeatureCache filled before any timing (the upstreams never run inside a timed
step), so a step is what a frozen-upstream training step costs: aligner + interface + head forward,
loss, backward, AdamW step. Real bundled upstreams on real FSDD speech (the bundled subset).
The interfaces are timed in alternation (A B C A B C ...) so a noisy neighbour hits them alike.

    python benchmarks/interface_cost.py [--device cpu|cuda] [--threads N] [--repeat 10] [--clips 16]
        [--task asr|classify] [--upstreams whisper-tiny.en --upstreams whisper-tiny.en+resemblyzer]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DEMO_HEADS, add_device_arg, get_device, print_machine_info, print_table,  # noqa: E402
                     timeit_interleaved, to_device, training_step)

from speechfuse.cache.store import FeatureCache  # noqa: E402
from speechfuse.data.adapters import bundled_fsdd_dir, fsdd_manifests  # noqa: E402
from speechfuse.data.manifest import load_manifest  # noqa: E402
from speechfuse.cache.extract import fill_cache  # noqa: E402
from speechfuse.fusion.frontend import FusionFrontend  # noqa: E402
from speechfuse.fusion.interfaces import list_interfaces  # noqa: E402
from speechfuse.tasks import get_task  # noqa: E402
from speechfuse.fusion.upstream import load_upstream  # noqa: E402


def interface_options(name: str, num_layers: int) -> dict:
    if name == "layer":
        return {"index": num_layers - 1}
    if name == "group_ws":  # the default of 4 groups needs >= 4 aligned layers
        return {"groups": min(4, num_layers)}
    return {}


def main(argv=None) -> None:
    ap = add_device_arg(argparse.ArgumentParser(description=__doc__,
                                                formatter_class=argparse.RawDescriptionHelpFormatter))
    ap.add_argument("--repeat", type=int, default=10, help="timed steps per interface (median reported)")
    ap.add_argument("--clips", type=int, default=16, help="batch size in FSDD clips (~0.5 s each)")
    ap.add_argument("--task", default="asr", choices=["asr", "classify"])
    ap.add_argument("--upstreams", action="append",
                    help="'+'-joined specs; repeat for several sets (default: whisper-tiny.en and "
                         "whisper-tiny.en+resemblyzer)")
    ap.add_argument("--interfaces", default=",".join(list_interfaces()))
    args = ap.parse_args(argv)
    device = get_device(args)
    sets = [s.split("+") for s in (args.upstreams or ["whisper-tiny.en", "whisper-tiny.en+resemblyzer"])]
    names = [n for n in args.interfaces.split(",") if n]
    if "weighted_sum" not in names:
        names.insert(0, "weighted_sum")

    print(f"# interface_cost: {args.task} head {DEMO_HEADS[args.task]}, batch of {args.clips} real FSDD clips, "
          f"median of {args.repeat} interleaved training steps from the feature cache")
    print_machine_info(device)
    with tempfile.TemporaryDirectory() as tmp:
        manifests = fsdd_manifests(bundled_fsdd_dir() / "recordings", Path(tmp) / "fsdd")
        utts = load_manifest(manifests["train"])[: args.clips]
        task = get_task(args.task, **DEMO_HEADS[args.task]).fit(utts)
        targets = to_device(task.encode(utts), device)
        cache = FeatureCache(Path(tmp) / "cache")
        loaded = {s: load_upstream(s) for specs in sets for s in specs}
        for specs in sets:
            states = [fill_cache(loaded[s], utts, cache, progress=False).read(utts).to(device) for s in specs]
            steps, info = {}, {}
            for name in names:
                torch.manual_seed(0)
                num_layers = max(loaded[s].num_layers for s in specs)
                fe = FusionFrontend([loaded[s] for s in specs], interface=name,
                                    interface_options=interface_options(name, num_layers)).to(device)
                head = task.build_head(fe.output_dim).to(device)
                n_fuse = sum(p.numel() for p in fe.aligner.parameters() if p.requires_grad) + \
                    fe.interface.num_parameters()
                n_head = sum(p.numel() for p in head.parameters() if p.requires_grad)
                steps[name] = training_step(fe, head, task, targets, lambda states=states: states)
                info[name] = (n_fuse, n_fuse + n_head)
                aligned = f"{fe.aligner.num_layers} layers x {fe.aligner.hidden_size} at {fe.aligner.frame_rate:g} Hz"
            timings = timeit_interleaved(steps, repeat=args.repeat, warmup=2, sync_cuda=device.type == "cuda")
            base = timings["weighted_sum"].median
            print(f"\n## upstreams: {'+'.join(specs)} (aligned: {aligned})\n")
            print_table([(n, f"{info[n][0]:,}", f"{info[n][1]:,}", timings[n].median * 1e3, timings[n].median / base)
                         for n in names],
                        ["interface", "aligner+interface params", "+ head params", "step ms (median)",
                         "x weighted_sum"])


if __name__ == "__main__":
    main()
