"""Peak memory of one long clip through resemblyzer and speech-embedding, windows off vs on.

For each model and clip length (default 1, 5 and 10 minutes of real FSDD speech, the bundled FLAC
subset concatenated and resampled to 16 kHz), a fresh subprocess loads the model and the clip, resets
the kernel's peak-RSS mark (/proc/self/clear_refs), runs one forward under inference_mode and reads
the peak back (VmHWM). "growth" is peak minus the RSS just before the forward: the forward's own
working set plus its output (hidden states [L,1,T,D] float32, shown separately: the output grows
with the clip whatever is done; the working set beside it should not). Windows off is
window_seconds=None (the whole clip at once, the old behaviour); on is the default (or --window).
The two outputs are compared too (max abs difference; windows stitch exactly, so expect 0).
On --device cuda resemblyzer runs on the GPU and its peak CUDA allocation is shown as well
(speech-embedding always runs on onnxruntime's CPU).

    python benchmarks/long_clip_memory.py [--minutes 1 5 10] [--window 30] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (add_device_arg, child_json, forward_peak_memory, get_device, long_speech,  # noqa: E402
                     print_machine_info, print_table, scratch_dir)

MODELS = ("speech-embedding", "resemblyzer")


def child(args) -> None:
    import torch
    from speechfuse.fusion.upstream import load_upstream

    device = get_device(args)
    if args.model == "speech-embedding":
        device = torch.device("cpu")
    wav = torch.from_numpy(np.load(args.clip)).to(device)
    options = {"window_seconds": args.window if args.window > 0 else None}
    if args.model == "speech-embedding":
        options["num_threads"] = torch.get_num_threads()
    upstream = load_upstream(args.model, **options).to(device)
    out, memory = forward_peak_memory(upstream, wav, device)
    np.save(args.out, out.hidden.cpu().numpy())
    print(json.dumps(memory))


def main() -> None:
    parser = add_device_arg(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 10])
    parser.add_argument("--window", type=float, default=None,
                        help="window_seconds for the 'on' runs (default: the models' default)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--clip", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    device = get_device(args)
    from speechfuse.fusion.upstream.bundled import WINDOW_SECONDS

    window_on = args.window or WINDOW_SECONDS
    print_machine_info(device)
    tmp = scratch_dir("sf-longclip-")
    speech = long_speech(max(args.minutes) * 60)
    rows = []
    for minutes in args.minutes:
        clip = tmp / f"clip{minutes:g}.npy"
        np.save(clip, speech[: int(minutes * 60 * 16000)])
        for model in MODELS:
            result = {}
            for mode, window in (("off", 0.0), ("on", window_on)):
                out = tmp / f"{model}-{mode}.npy"
                cmd = [sys.executable, __file__, "--child", "--model", model, "--clip", str(clip), "--out", str(out),
                       "--window", str(window), "--threads", str(args.threads), "--device", str(device)]
                result[mode] = child_json(cmd, f"{model} {minutes:g} min, windows {mode}")
            diff = float(np.abs(np.load(tmp / f"{model}-off.npy") - np.load(tmp / f"{model}-on.npy")).max())
            off, on = result["off"], result["on"]
            growth_off = (off["peak_kb"] - off["before_kb"]) / 1e3
            growth_on = (on["peak_kb"] - on["before_kb"]) / 1e3
            output = on["output_bytes"] / 1e6
            row = [model, f"{minutes:g}", off["peak_kb"] / 1e3, on["peak_kb"] / 1e3, growth_off, growth_on,
                   growth_on / growth_off, output, growth_on - output, off["seconds"], on["seconds"], diff]
            if device.type == "cuda":
                cuda = [r["cuda_peak_bytes"] for r in (off, on)]
                row += [f"{c / 1e6:.0f}" if c is not None else "(cpu)" for c in cuda]
            rows.append(row)
            print(f"  done: {model}, {minutes:g} min", file=sys.stderr)
    headers = ["model", "minutes", "peak RSS off MB", "peak RSS on MB", "growth off MB", "growth on MB",
               "growth on / off", "output MB", "growth on - output MB", "forward off s", "forward on s",
               "max abs diff on vs off"]
    if device.type == "cuda":
        headers += ["CUDA peak off MB", "CUDA peak on MB"]
    print()
    print_table(rows, headers)
    print(f"\nwindows on: window_seconds={window_on:g}; growth = peak RSS during the forward - RSS before it "
          "(includes the output tensor)")


if __name__ == "__main__":
    main()
