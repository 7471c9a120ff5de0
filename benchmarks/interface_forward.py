"""Every interface at N=2 models, L=13 layers, D=768 (B=8, T=250 by default): trainable parameters and
forward / forward+backward time relative to weighted_sum, measured side by side in one run.

    python benchmarks/interface_forward.py --device cpu
    python benchmarks/interface_forward.py --device cuda --repeats 20

Timings are interleaved round-robin over the interfaces (one repeat of each per round) and the
median is reported, so a busy machine slows every interface alike.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import speechfuse as sf
from speechfuse import HiddenStates

OPTIONS = {"layer": {"index": 6}}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(interface, states, backward: bool, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    if backward:
        feats, _ = interface(states)
        feats.float().pow(2).mean().backward()
    else:
        with torch.no_grad():
            interface(states)
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--layers", type=int, default=13)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    lengths = torch.full((args.batch,), args.frames, dtype=torch.long)
    lengths[1::2] = args.frames * 3 // 4  # some padding, as in a real batch
    states = [HiddenStates(torch.randn(args.layers, args.batch, args.frames, args.hidden, device=device),
                           lengths.to(device), 50.0, f"model{m}") for m in range(args.models)]
    names = sf.list_interfaces()
    interfaces = {n: sf.build_interface(n, num_layers=args.layers, hidden_size=args.hidden, num_models=args.models,
                                        **OPTIONS.get(n, {})).to(device).train() for n in names}
    forward = {n: [] for n in names}
    both = {n: [] for n in names}
    for n in names:  # warm-up
        time_once(interfaces[n], states, True, device)
    for _ in range(args.repeats):
        for n in names:
            forward[n].append(time_once(interfaces[n], states, False, device))
            interfaces[n].zero_grad(set_to_none=True)
            both[n].append(time_once(interfaces[n], states, True, device))
    fwd = {n: statistics.median(v) for n, v in forward.items()}
    fb = {n: statistics.median(v) for n, v in both.items()}
    print(f"N={args.models} L={args.layers} D={args.hidden} B={args.batch} T={args.frames} device={args.device} "
          f"threads={torch.get_num_threads()} repeats={args.repeats} (median)")
    print(f"| interface | parameters | forward ms | fwd vs weighted_sum | fwd+bwd ms | fwd+bwd vs weighted_sum |")
    print("|---|---:|---:|---:|---:|---:|")
    for n in names:
        print(f"| {n} | {interfaces[n].num_parameters():,} | {fwd[n] * 1e3:.1f} | {fwd[n] / fwd['weighted_sum']:.2f}x | "
              f"{fb[n] * 1e3:.1f} | {fb[n] / fb['weighted_sum']:.2f}x |")


if __name__ == "__main__":
    main()
