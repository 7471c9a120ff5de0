"""Cost of the up-front manifest check, per file format, against a header-only check and a full decode.

The check (speechfuse.data.validate_manifest) reads each file's header, parses a WAV's RIFF header for
truncation, and decodes only files with float samples (the only ones that can hold NaN/inf). Side by
side, on the same clips (the bundled FSDD subset, 8 kHz, ~0.4 s each) as FLAC, 16-bit WAV and float WAV:

- header only: `audio_info` per file (what the check did before it looked for NaN/inf and truncation);
- check: `validate_manifest` (parse, check every row, fill durations);
- full decode: `read_audio` of every file at its own rate (checking NaN/inf by decoding everything).

    python benchmarks/manifest_check.py [--clips 300] [--long-clips 60] [--repeat 5]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_machine_info, print_table, timeit_interleaved  # noqa: E402

from speechfuse.data import Utterance, audio_info, bundled_fsdd_dir, read_audio, validate_manifest, write_manifest


FORMATS = {"FLAC": ("flac", "PCM_16"), "WAV 16-bit": ("wav", "PCM_16"), "WAV float": ("wav", "FLOAT")}


def make_clips(clips: int, join: int) -> list[np.ndarray]:
    """`clips` clips, each `join` consecutive bundled FSDD recordings end to end (8 kHz)."""
    sources = sorted((bundled_fsdd_dir() / "recordings").glob("*.flac"))
    return [np.concatenate([sf.read(sources[(i * join + j) % len(sources)], dtype="float32")[0]
                            for j in range(join)]) for i in range(clips)]


def write_clips(folder: Path, clips: list[np.ndarray], suffix: str, subtype: str) -> list[Utterance]:
    folder.mkdir()
    utts = []
    for i, samples in enumerate(clips):
        path = folder / f"clip{i}.{suffix}"
        sf.write(path, samples, 8000, subtype=subtype)
        utts.append(Utterance(f"clip{i}", str(path), text="x"))
    return utts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=300, help="short clips (one recording each)")
    parser.add_argument("--long-clips", type=int, default=60, help="~12 s clips (30 recordings each)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print_machine_info()
    rows = []
    sets = {"short": make_clips(args.clips, 1), "12 s": make_clips(args.long_clips, 30)}
    with tempfile.TemporaryDirectory() as tmp:
        for (length, clips), (name, (suffix, subtype)) in ((c, f) for c in sets.items() for f in FORMATS.items()):
            folder = Path(tmp) / f"{length}-{suffix}-{subtype}".replace(" ", "")
            utts = write_clips(folder, clips, suffix, subtype)
            manifest = write_manifest(utts, folder.with_suffix(".csv"))
            timings = timeit_interleaved({
                "header": lambda: [audio_info(u.path) for u in utts],
                "check": lambda: validate_manifest(manifest, "text"),
                "decode": lambda: [read_audio(u.path, audio_info(u.path)[1]) for u in utts],
            }, repeat=args.repeat)
            per_file = {k: t.median / len(utts) * 1e6 for k, t in timings.items()}
            seconds = sum(len(c) for c in clips) / 8000 / len(clips)
            rows.append([name, f"{seconds:.1f}", len(utts), per_file["header"], per_file["check"], per_file["decode"],
                         per_file["check"] / per_file["header"], per_file["decode"] / per_file["header"]])
    print_table(rows, ["format", "clip (s)", "files", "header only (us/file)", "check (us/file)",
                       "full decode (us/file)", "check / header", "decode / header"])


if __name__ == "__main__":
    main()
