"""Long clips through a windowed upstream (default: the bundled whisper-tiny.en): how far the stitched
hidden states are from one pass, and the peak memory of a 3-minute clip.

1. Stitching error, on clips inside the limit: each clip (real FSDD speech, 16 kHz) runs once in a single
   pass (the default limit, 30 s for Whisper) and once with a lower max_seconds, which makes it run in
   overlapping windows (Upstream.long_clip_windows). Per layer: relative difference ||a - b|| / ||b|| over
   the valid frames; for the last layer also the mean frame cosine. The first windows of Whisper restart
   its positional embeddings at 0, as Whisper's own long-form transcription does per 30 s segment.
2. Peak memory of one forward over a 3-minute clip with the default limit (windows of 30 s), in a fresh
   subprocess: peak RSS minus the RSS before the forward (resets the peak through /proc/self/clear_refs, as
   long_clip_memory.py does), beside the output tensor's size; on --device cuda also the CUDA peak.

    python benchmarks/long_clip_stitching.py [--model whisper-tiny.en] [--clip-seconds 20 30] \
        [--window-seconds 10 15] [--minutes 3]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (add_device_arg, child_json, forward_peak_memory, get_device, long_speech,  # noqa: E402
                     print_machine_info, print_table)


def stitching_rows(model: str, clip_seconds: list[float], window_seconds: list[float], device) -> list[list]:
    import torch
    from speechfuse.fusion.upstream import load_upstream

    whole = load_upstream(model).to(device)
    speech = torch.from_numpy(long_speech(max(clip_seconds) + 7.0))
    rows = []
    for seconds in clip_seconds:
        n = int(seconds * whole.sample_rate)
        if whole.max_samples is not None and n > whole.max_samples:
            raise SystemExit(f"--clip-seconds {seconds:g} is over {model}'s single-pass limit "
                             f"({whole.max_samples / whole.sample_rate:g} s): nothing to compare with")
        clip = speech[7 * whole.sample_rate:7 * whole.sample_rate + n][None].to(device)
        lengths = torch.tensor([n])
        with torch.inference_mode():
            reference = whole(clip, lengths).hidden[:, 0]
            for window in window_seconds:
                windowed = load_upstream(model, max_seconds=window).to(device)
                count = len(windowed.long_clip_windows(n))
                stitched = windowed(clip, lengths).hidden[:, 0]
                relative = [float((stitched[k] - reference[k]).norm() / reference[k].norm())
                            for k in range(reference.shape[0])]
                cosine = float(torch.nn.functional.cosine_similarity(stitched[-1], reference[-1], dim=-1).mean())
                rows.append([model, f"{seconds:g}", f"{window:g}", count, " ".join(f"{r:.3f}" for r in relative),
                             f"{max(relative):.3f}", f"{cosine:.4f}"])
    return rows


def child(args) -> None:
    """One forward over --minutes of speech with the default limit; prints the memory as JSON."""
    import torch
    from speechfuse.fusion.upstream import load_upstream

    device = get_device(args)
    upstream = load_upstream(args.model).to(device)
    wav = torch.from_numpy(long_speech(args.minutes[0] * 60)).to(device)
    out, memory = forward_peak_memory(upstream, wav, device)
    print(json.dumps({**memory, "frames": out.hidden.shape[2], "expected_frames": upstream.num_frames(len(wav)),
                      "windows": len(upstream.long_clip_windows(len(wav)))}))


def main() -> None:
    parser = add_device_arg(argparse.ArgumentParser(description=__doc__,
                                                    formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--clip-seconds", type=float, nargs="+", default=[20.0, 30.0])
    parser.add_argument("--window-seconds", type=float, nargs="+", default=[10.0, 15.0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[3.0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    device = get_device(args)
    print_machine_info(device)
    rows = stitching_rows(args.model, args.clip_seconds, args.window_seconds, device)
    print()
    print_table(rows, ["model", "clip s", "window s", "windows", "relative diff per layer", "max", "last-layer cosine"])
    memory = []
    for minutes in args.minutes:
        cmd = [sys.executable, __file__, "--child", "--model", args.model, "--minutes", str(minutes),
               "--threads", str(args.threads), "--device", str(device)]
        r = child_json(cmd, f"{args.model} {minutes:g} min")
        row = [args.model, f"{minutes:g}", r["windows"], f"{r['frames']} / {r['expected_frames']}",
               f"{r['peak_kb'] / 1e3:.0f}", f"{(r['peak_kb'] - r['before_kb']) / 1e3:.0f}",
               f"{r['output_bytes'] / 1e6:.0f}", f"{r['seconds']:.1f}"]
        if device.type == "cuda":
            row.append(f"{r['cuda_peak_bytes'] / 1e6:.0f}")
        memory.append(row)
    print()
    headers = ["model", "minutes", "windows", "frames / whole clip's", "peak RSS MB", "growth MB", "output MB",
               "forward s"]
    print_table(memory, headers + (["CUDA peak MB"] if device.type == "cuda" else []))
    print("\ngrowth = peak RSS during the forward - RSS before it (includes the output tensor)")


if __name__ == "__main__":
    main()
