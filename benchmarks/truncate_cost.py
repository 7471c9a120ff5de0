"""Depth-truncated upstreams (max_layers=k): forward time of the first k layers vs the full model,
measured side by side (interleaved) in one run on a batch of FSDD digits, for the bundled models.

Prints, per model and k: the median forward time, its ratio to the full model, and whether the
truncated output equals the full model's first k hidden states bit for bit.

    python benchmarks/truncate_cost.py --threads 1
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import soundfile as sf_audio
import soxr
import torch

import speechfuse as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FSDD_DIR, add_device_arg, get_device, print_machine_info, print_table, timeit_interleaved  # noqa: E402

MODELS = {"whisper-tiny.en": (1, 2, 3, 4, 5), "resemblyzer": (1, 2, 3), "speech-embedding": (1, 2, 6, 10)}


def fsdd_batch(count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    paths = sorted(FSDD_DIR.glob("*.flac"))[:count]
    clips = []
    for path in paths:
        wav, rate = sf_audio.read(path, dtype="float32")
        clips.append(torch.from_numpy(soxr.resample(wav, rate, 16000)))
    lengths = torch.tensor([len(c) for c in clips])
    wavs = torch.zeros(len(clips), int(lengths.max()))
    for i, clip in enumerate(clips):
        wavs[i, :len(clip)] = clip
    return wavs.to(device), lengths


def main() -> None:
    parser = add_device_arg(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    device = get_device(args)
    print_machine_info(device)
    wavs, lengths = fsdd_batch(args.clips, device)
    print(f"batch: {len(lengths)} FSDD clips, {lengths.sum().item() / 16000:.1f} s of audio\n")
    rows = []
    for spec, ks in MODELS.items():
        upstreams = {k: sf.load_upstream(spec, max_layers=k).to(device) for k in ks}
        full = upstreams[ks[-1]](wavs, lengths).hidden
        with torch.inference_mode():
            times = timeit_interleaved({k: (lambda u=u: u(wavs, lengths)) for k, u in upstreams.items()},
                                       repeat=args.repeat, sync_cuda=device.type == "cuda")
        for k, up in upstreams.items():
            exact = torch.equal(up(wavs, lengths).hidden, full[:k])
            rows.append([spec, f"{k} / {ks[-1]}", f"{times[k].median * 1e3:.1f}",
                         f"{times[k].median / times[ks[-1]].median:.2f}", "yes" if exact else "NO"])
    print_table(rows, ["model", "max_layers", "median forward (ms)", "time / full", "== full[:k]"])


if __name__ == "__main__":
    main()
