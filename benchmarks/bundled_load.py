"""Load time and extraction speed of the three bundled upstreams (CPU).

For each model: layers x hidden size, frame rate, load time the first time (for whisper-tiny.en this
includes converting the CTranslate2 file into a fresh, temporary $SPEECHFUSE_HOME) and once cached,
and extraction speed as x real time (audio seconds / wall seconds) on real FSDD clips, in batches.

    python benchmarks/bundled_load.py [--clips 24] [--batch 8] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import soxr
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fsdd_clips, print_machine_info, print_table, timeit  # noqa: E402


def fsdd_batches(num_clips: int, batch_size: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], float]:
    clips = []
    for path in fsdd_clips(num_clips):
        wav, rate = sf.read(path, dtype="float32")
        clips.append(torch.from_numpy(soxr.resample(wav, rate, 16000)))
    batches = []
    for start in range(0, num_clips, batch_size):
        group = clips[start:start + batch_size]
        lengths = torch.tensor([len(c) for c in group])
        wavs = torch.zeros(len(group), int(lengths.max()))
        for j, clip in enumerate(group):
            wavs[j, : len(clip)] = clip
        batches.append((wavs, lengths))
    return batches, sum(len(c) for c in clips) / 16000


def timed_load(spec: str, **options) -> tuple[float, torch.nn.Module]:
    from speechfuse.fusion.upstream import load_upstream

    start = time.perf_counter()
    upstream = load_upstream(spec, **options)
    return time.perf_counter() - start, upstream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch (and onnxruntime) threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    # import the shared heavy libraries first, so load times measure the models, not Python imports
    import onnxruntime  # noqa: F401
    import transformers.models.whisper.modeling_whisper  # noqa: F401
    import speechfuse.fusion.upstream.bundled  # noqa: F401
    import speechfuse.fusion.upstream.hf  # noqa: F401

    print_machine_info()
    batches, audio_seconds = fsdd_batches(args.clips, args.batch)
    print(f"{args.clips} FSDD clips (8 kHz resampled to 16 kHz), {audio_seconds:.2f} s of audio, "
          f"batches of {args.batch}; timings: median of {args.repeat} after 1 warm-up")

    rows = []
    with tempfile.TemporaryDirectory() as home:
        os.environ["SPEECHFUSE_HOME"] = home  # empty: the first whisper load converts
        cases = [("whisper-tiny.en", {"whisper_mode": "trim"}), ("whisper-tiny.en", {"whisper_mode": "pad30"}),
                 ("resemblyzer", {}), ("speech-embedding", {})]
        for spec, options in cases:
            first, upstream = timed_load(spec, **options)
            cached, upstream = timed_load(spec, **options)

            def extract() -> None:
                with torch.no_grad():
                    for wavs, lengths in batches:
                        upstream(wavs, lengths)

            timing = timeit(extract, repeat=args.repeat, warmup=1)
            label = spec + (f" ({options['whisper_mode']})" if options else "")
            rows.append([label, f"{upstream.num_layers} x {upstream.hidden_size}", f"{upstream.frame_rate:g} Hz",
                         f"{first:.2f}", f"{cached:.2f}", f"{audio_seconds / timing.median:.1f}x"])
    print_table(rows, ["model", "layers x hidden", "frame rate", "first load (s)", "cached load (s)",
                       "extraction (x real time)"])
    print("first load of whisper-tiny.en (trim) includes the CTranslate2 -> transformers conversion; "
          "the pad30 row's first load reuses that conversion.")


if __name__ == "__main__":
    main()
