"""Build the FSDD subset shipped in src/speechfuse/assets/fsdd/ from a full FSDD copy.

Usage: python scripts/make_fsdd_subset.py --source FSDD_CHECKOUT [--out src/speechfuse/assets/fsdd]
(FSDD_CHECKOUT: a copy of the free-spoken-digit-dataset repository, holding recordings/*.wav)

Keeps takes 0-24 of every speaker and digit (takes 0-4 = official test, 5-9 = dev, 10-24 = train),
re-encoded losslessly as 16-bit FLAC at the original 8 kHz.
"""
from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import soundfile as sf

TAKES = range(0, 25)
NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
REPO = Path(__file__).resolve().parents[1]

README = """# Free Spoken Digit Dataset: the subset bundled with speechfuse

Real human speech used by speechfuse's embedded demo and tests.

- Source: the Free Spoken Digit Dataset (FSDD), https://github.com/Jakobovski/free-spoken-digit-dataset,
  by Zohar Jackson and the free-spoken-digit-dataset contributors (recordings/ at commit 26eb9aa).
- License: Creative Commons Attribution-ShareAlike 4.0 International (CC BY-SA 4.0),
  https://creativecommons.org/licenses/by-sa/4.0/. This subset is distributed under the same license.
- Changes: a subset of {count} of the 3,000 recordings (all 6 speakers x 10 digits, takes 0-24 of 50),
  converted losslessly from 16-bit WAV to 16-bit FLAC at the original 8 kHz sample rate. No other change.
- File names: `{{digit}}_{{speaker}}_{{take}}.flac`. Split used by speechfuse: takes 0-4 test (FSDD's
  official test set), takes 5-9 dev, takes 10-24 train.
- speakers.csv: speaker metadata (gender, accent, language), copied from the source.

Built by scripts/make_fsdd_subset.py.
"""

LICENSE = """The audio in recordings/ is a subset of the Free Spoken Digit Dataset
(https://github.com/Jakobovski/free-spoken-digit-dataset), by Zohar Jackson and the
free-spoken-digit-dataset contributors, converted from WAV to FLAC.

It is licensed under the Creative Commons Attribution-ShareAlike 4.0 International License
(CC BY-SA 4.0). Full text: https://creativecommons.org/licenses/by-sa/4.0/legalcode
This license covers the files in this folder only; the rest of speechfuse is Apache-2.0.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="a free-spoken-digit-dataset copy (with recordings/)")
    parser.add_argument("--out", type=Path, default=REPO / "src" / "speechfuse" / "assets" / "fsdd")
    args = parser.parse_args()
    recordings = args.out / "recordings"
    if recordings.exists():
        shutil.rmtree(recordings)
    recordings.mkdir(parents=True)
    count = 0
    for wav in sorted((args.source / "recordings").glob("*.wav")):
        match = NAME.match(wav.name)
        if not match:
            raise SystemExit(f"unexpected file name in the FSDD source: {wav}")
        if int(match.group(3)) not in TAKES:
            continue
        samples, rate = sf.read(str(wav), dtype="int16")
        sf.write(str(recordings / f"{wav.stem}.flac"), samples, rate, format="FLAC", subtype="PCM_16")
        count += 1
    shutil.copyfile(args.source / "speakers.csv", args.out / "speakers.csv")
    (args.out / "LICENSE").write_text(LICENSE, encoding="utf-8")
    (args.out / "README.md").write_text(README.format(count=f"{count:,}"), encoding="utf-8")
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {count} FLAC files to {args.out} ({size / 1e6:.2f} MB in all)")


if __name__ == "__main__":
    main()
