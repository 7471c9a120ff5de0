"""Achieved FLOP/s of upstream extraction as a fraction of this machine's own measured matmul FLOP/s.

For each model: FLOPs of one `extract_batch` call are counted with torch.utils.flop_counter.FlopCounterMode
(matmul / linear: 2*M*N*K; conv: 2 * output elements * (C_in / groups) * kernel; scaled-dot-product
attention: its two batched matmuls, 4*B*H*T^2*d_head). Elementwise work (layer norm, GELU, softmax,
normalisation, log-mel) is not counted, so the ratio is a lower bound on how busy the machine is.
For orientation, one transformer layer of width d, FFN width f over T frames costs
2*T*(4*d^2 + 2*d*f) + 4*T^2*d FLOPs.
The ceiling is a large square matmul (fp32 on CPU; bf16 on CUDA, matching the bf16 autocast used
there), timed in the same process, interleaved with the extraction runs so both see the same load.
Goal: ratio >= 0.5 on CPU.

Models: HuBERT Base with random weights (transformers' HubertConfig defaults: d=768, 12 layers, 12 heads,
FFN 3072, 7-conv 512-channel front end with group norm; --layers changes the depth) and the
bundled Whisper tiny.en encoder in trim mode (random weights of the same shape when the package is
absent). Input: seeded noise (FLOPs and speed do not depend on the content).

    python benchmarks/flops_utilisation.py [--device cuda] [--seconds 4] [--batch 4]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (add_device_arg, get_device, print_machine_info, print_table, random_hubert,  # noqa: E402
                     scratch_dir, timeit_interleaved)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = add_device_arg(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each clip")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--layers", type=int, default=12, help="transformer layers of the HuBERT Base model")
    parser.add_argument("--matmul", type=int, default=0, help="matmul size n (default 2048 CPU, 8192 CUDA)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    device = get_device(args)
    cuda = device.type == "cuda"

    import speechfuse as sf
    from speechfuse.cache.extract import extract_batch

    print_machine_info(device)
    tmp = scratch_dir("sf-flops-")
    models = {f"HuBERT Base, {args.layers} layers (random)": sf.load_upstream("hf:" + random_hubert(tmp / "h", num_hidden_layers=args.layers))}
    try:
        models["whisper-tiny.en trim (bundled)"] = sf.load_upstream("whisper-tiny.en", whisper_mode="trim")
    except Exception as err:
        print(f"(bundled whisper-tiny.en unavailable: {err}; skipped)")

    g = torch.Generator().manual_seed(0)
    samples = int(args.seconds * 16000)
    wavs = (torch.randn(args.batch, samples, generator=g) * 0.1).to(device)
    lengths = torch.full((args.batch,), samples, dtype=torch.long)
    amp = "bf16" if cuda else None

    n = args.matmul or (8192 if cuda else 2048)
    mm_dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(n, n, device=device, dtype=mm_dtype)
    b = torch.randn(n, n, device=device, dtype=mm_dtype)

    fns = {"matmul": lambda: torch.mm(a, b)}
    flops = {"matmul": 2 * n**3}
    for name, up in models.items():
        up.to(device)
        with FlopCounterMode(display=False) as counter:
            extract_batch([up], wavs, lengths, amp=amp)
        flops[name] = counter.get_total_flops()
        fns[name] = (lambda u=up: extract_batch([u], wavs, lengths, amp=amp))
    times = timeit_interleaved(fns, repeat=args.repeat, warmup=1, sync_cuda=cuda)

    ceiling = flops["matmul"] / times["matmul"].median
    rows = [[f"matmul {n}x{n} {str(mm_dtype).replace('torch.', '')} (ceiling)", flops["matmul"] / 1e9,
             times["matmul"].median * 1e3, ceiling / 1e9, 1.0]]
    for name in models:
        achieved = flops[name] / times[name].median
        rows.append([f"{name}: {args.batch} x {args.seconds:g} s", flops[name] / 1e9, times[name].median * 1e3,
                     achieved / 1e9, achieved / ceiling])
    print()
    print_table(rows, ["workload", "GFLOP per call", "median ms", "GFLOP/s", "fraction of matmul FLOP/s"])
    print(f"\n{'bf16 autocast' if cuda else 'fp32'}; median of {args.repeat} interleaved repeats; goal >= 0.5 on CPU.")


if __name__ == "__main__":
    main()
