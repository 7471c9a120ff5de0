"""Predict throughput (seconds of audio per second) of a FusedModel over each bundled upstream.

For each of whisper-tiny.en, resemblyzer and speech-embedding: a digit classifier (weighted_sum + a linear
head; untrained, throughput does not depend on the weights) predicts the same bundled FSDD FLAC clips three
ways, interleaved in one process:
  - upstream only:    the bare upstream forward over the same clips, already decoded and batched (the floor);
  - model.predict:    files in, typed results out (decode + resample + batching + upstream + fusion + head);
  - predict_to_file:  the CLI path, streaming JSONL with a flush + fsync per batch.

    python benchmarks/predict_throughput.py [--clips 120] [--batch-seconds 20] [--repeat 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (add_device_arg, fsdd_clips, get_device, print_machine_info, print_table,  # noqa: E402
                     timeit_interleaved)


def main() -> None:
    parser = add_device_arg(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--clips", type=int, default=120)
    parser.add_argument("--batch-seconds", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    device = get_device(args)

    from speechfuse.config import config_from_dict
    from speechfuse.data import Utterance, audio_info
    from speechfuse.cache.extract import load_audio_batch
    from speechfuse.serving.inference import predict_to_file
    from speechfuse.data.batching import make_batches
    from speechfuse.fusion.model import FusedModel, build_task

    paths = [str(p) for p in fsdd_clips(args.clips)]
    durations = [audio_info(p)[3] for p in paths]
    audio_seconds = sum(durations)
    utts = [Utterance(id=str(i), path=p, duration=d, label=Path(p).name[0])
            for i, (p, d) in enumerate(zip(paths, durations))]
    print_machine_info(device)
    print(f"{args.clips} bundled FSDD clips (8 kHz FLAC, resampled to 16 kHz), {audio_seconds:.1f} s of audio, "
          f"batches of <= {args.batch_seconds:g} s padded; medians of {args.repeat} interleaved runs after 1 warm-up")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in ("whisper-tiny.en", "resemblyzer", "speech-embedding"):
            cfg = config_from_dict({"task": "classify", "data": {"train": "x.csv", "dev": "x.csv"},
                                    "upstreams": [spec], "interface": {"name": "weighted_sum"}})
            model = FusedModel.from_config(cfg, build_task(cfg).fit(utts)).to(device).eval()
            upstream = model.frontend.upstreams[0]
            batches = [load_audio_batch([utts[i] for i in b], model.sample_rate)
                       for b in make_batches(durations, args.batch_seconds)]
            out = Path(tmp) / "predictions.jsonl"

            def bare() -> None:
                with torch.inference_mode():
                    for wavs, lengths in batches:
                        upstream(wavs.to(device), lengths)

            def predict() -> None:
                model.predict(paths, batch_seconds=args.batch_seconds, progress=False)

            def to_file() -> None:
                out.unlink(missing_ok=True)
                predict_to_file(model, paths, out, batch_seconds=args.batch_seconds, progress=False)

            t = timeit_interleaved({"bare": bare, "predict": predict, "file": to_file}, repeat=args.repeat)
            rows.append([spec, f"{audio_seconds / t['bare'].median:.1f}", f"{audio_seconds / t['predict'].median:.1f}",
                         f"{audio_seconds / t['file'].median:.1f}", f"{t['predict'].median / t['bare'].median:.2f}",
                         f"{t['file'].median / t['predict'].median:.2f}"])
    print_table(rows, ["upstream", "upstream only (audio s/s)", "model.predict (audio s/s)",
                       "predict_to_file (audio s/s)", "predict / upstream time", "to_file / predict time"])


if __name__ == "__main__":
    main()
