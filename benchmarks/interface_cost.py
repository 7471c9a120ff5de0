"""Training-step time of each interface + task head on cached features, relative to weighted_sum.

Features come from the shared FeatureCache (the upstreams run once, before any timing), so a step is
exactly what a frozen-upstream training step costs: cache read excluded, aligner + interface + head
forward, loss, backward, AdamW step. Real bundled upstreams on real FSDD speech (the bundled subset).

    python benchmarks/interface_cost.py [--device cpu|cuda] [--steps 20] [--clips 16]
        [--upstreams whisper-tiny.en --upstreams whisper-tiny.en+resemblyzer] [--task asr|classify]

Prints one table per upstream set: interface, trainable params (interface / interface + head), median
step time and the ratio to weighted_sum measured in the same run.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from speechfuse.cache import FeatureCache
from speechfuse.data.adapters import bundled_fsdd_dir, fsdd_manifests
from speechfuse.data.manifest import load_manifest
from speechfuse.frontend import FusionFrontend
from speechfuse.interfaces import list_interfaces
from speechfuse.tasks import get_task
from speechfuse.upstream import load_upstream

# the demo's head sizes (see speechfuse.demo)
HEADS = {"asr": dict(proj_dim=128, hidden_size=128, num_layers=1, dropout=0.1), "classify": dict(hidden_dim=128)}
EXTRA_OPTIONS = {"layer": {"index": -1}}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(frontend, head, task, states, targets, device: str, steps: int, warmup: int = 3) -> list[float]:
    params = [p for p in list(frontend.parameters()) + list(head.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    frontend.train()
    head.train()
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        feats, lengths = frontend.fuse(states)
        out, out_lengths = head(feats, lengths)
        loss = task.loss(out, out_lengths, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--clips", type=int, default=16, help="batch size (FSDD clips, ~0.5 s each)")
    ap.add_argument("--task", default="asr", choices=["asr", "classify"])
    ap.add_argument("--upstreams", action="append",
                    help="'+'-joined spec list; repeat for several sets (default: whisper-tiny.en and "
                         "whisper-tiny.en+resemblyzer)")
    ap.add_argument("--interfaces", default=",".join(list_interfaces()))
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible")
    sets = [s.split("+") for s in (args.upstreams or ["whisper-tiny.en", "whisper-tiny.en+resemblyzer"])]
    names = [n for n in args.interfaces.split(",") if n]
    if "weighted_sum" not in names:
        names.insert(0, "weighted_sum")

    print(f"# interface_cost: {args.task} head {HEADS[args.task]}, batch {args.clips} real FSDD clips, "
          f"{args.steps} timed steps (median), device {args.device}")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        manifests = fsdd_manifests(bundled_fsdd_dir() / "recordings", Path(tmp) / "fsdd")
        utts = load_manifest(manifests["train"])[: args.clips]
        task = get_task(args.task, **HEADS[args.task]).fit(utts)
        targets = task.encode(utts)
        if isinstance(targets, torch.Tensor):
            targets = targets.to(args.device)
        elif isinstance(targets, tuple):
            targets = tuple(t.to(args.device) for t in targets)
        cache = FeatureCache(Path(tmp) / "cache")
        loaded = {}
        for specs in sets:
            for s in specs:
                if s not in loaded:
                    loaded[s] = load_upstream(s)
        for specs in sets:
            t0 = time.perf_counter()
            states = [cache.ensure(loaded[s], utts, progress=False).read(utts).to(args.device) for s in specs]
            print(f"  cache fill+read {'+'.join(specs)}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
            rows = []
            for name in names:
                opts = dict(EXTRA_OPTIONS.get(name, {}))
                if name == "group_ws":  # default 4 groups needs >= 4 aligned layers
                    opts["groups"] = min(4, max(loaded[s].num_layers for s in specs))
                torch.manual_seed(0)
                fe = FusionFrontend([loaded[s] for s in specs], interface=name, interface_options=opts).to(args.device)
                head = task.build_head(fe.output_dim).to(args.device)
                n_iface = sum(p.numel() for p in fe.aligner.parameters() if p.requires_grad) + \
                    fe.interface.num_parameters()
                n_head = sum(p.numel() for p in head.parameters() if p.requires_grad)
                t = time_steps(fe, head, task, states, targets, args.device, args.steps)
                rows.append((name, n_iface, n_iface + n_head, statistics.median(t)))
                print(f"  {'+'.join(specs)} {name}: {rows[-1][3] * 1000:.1f} ms", file=sys.stderr, flush=True)
            base = next(r[3] for r in rows if r[0] == "weighted_sum")
            print(f"\n## upstreams: {'+'.join(specs)}  (aligned to {fe.aligner.num_layers} layers x "
                  f"{fe.aligner.hidden_size} at {fe.aligner.frame_rate:g} Hz)\n")
            print("| interface | aligner+interface params | + head params | step ms (median) | x weighted_sum |")
            print("|---|---|---|---|---|")
            for name, n_iface, n_all, t in rows:
                print(f"| {name} | {n_iface:,} | {n_all:,} | {t * 1000:.1f} | {t / base:.2f} |")


if __name__ == "__main__":
    main()
