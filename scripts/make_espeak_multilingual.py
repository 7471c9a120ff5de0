"""Synthesise the small multilingual speech set that ships in src/speechfuse/assets/espeak_multilingual/.

SYNTHETIC speech: every clip is espeak-ng (formant synthesis) reading two number words (0-9) of one
language, e.g. "drei sieben". Seven languages in three scripts: en, de, es, fr, it (Latin, with ü and é),
ru (Cyrillic) and el (Greek, with tonos accents). Each clip gets its own espeak voice variant, pitch and
speed, drawn with a fixed seed; dev and test clips use variants that no training clip uses, so they
measure transfer to unseen voices.

Needs espeak-ng on PATH (`apt-get install espeak-ng`); the tests do not: they read the shipped FLACs.

    python scripts/make_espeak_multilingual.py --out src/speechfuse/assets/espeak_multilingual

Writes `audio/<lang>/<id>.flac` (16 kHz mono, 16-bit FLAC, leading/trailing silence trimmed) and
`train.csv`, `dev.csv`, `test.csv` (columns id, path, text, language, speaker = the espeak voice variant;
paths relative to the manifest). The same espeak-ng version and seed give the same texts and voices.
"""
from __future__ import annotations

import argparse
import csv
import io
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

RATE = 16000
NUMBERS = {  # 0..9, written the way a transcript of each language would write them
    "en": "zero one two three four five six seven eight nine",
    "de": "null eins zwei drei vier fünf sechs sieben acht neun",
    "es": "cero uno dos tres cuatro cinco seis siete ocho nueve",
    "fr": "zéro un deux trois quatre cinq six sept huit neuf",
    "it": "zero uno due tre quattro cinque sei sette otto nove",
    "ru": "ноль один два три четыре пять шесть семь восемь девять",
    "el": "μηδέν ένα δύο τρία τέσσερα πέντε έξι επτά οκτώ εννέα",
}
TRAIN_VARIANTS = ["m1", "m2", "m3", "m5", "f1", "f2", "f3", "croak"]
DEV_VARIANTS = ["m4", "f4"]
TEST_VARIANTS = ["m6", "m7", "f5"]
SPLITS = {"train": (16, TRAIN_VARIANTS), "dev": (3, DEV_VARIANTS), "test": (5, TEST_VARIANTS)}  # clips/language


def synthesise(text: str, voice: str, pitch: int, speed: int) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout", text],
                         check=True, capture_output=True).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    samples = soxr.resample(samples, rate, RATE).astype(np.float32)
    loud = np.flatnonzero(np.abs(samples) > 0.01)
    pad = int(0.05 * RATE)  # keep 50 ms around the speech
    return samples[max(0, loud[0] - pad): loud[-1] + pad]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: apt-get install espeak-ng")
    rng = random.Random(args.seed)
    out: Path = args.out
    rows: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for lang, words in NUMBERS.items():
        words = words.split()
        (out / "audio" / lang).mkdir(parents=True, exist_ok=True)
        for split, (count, variants) in SPLITS.items():
            for i in range(count):
                text = " ".join(rng.sample(words, 2))
                variant = rng.choice(variants)
                pitch, speed = rng.randrange(30, 71, 5), rng.randrange(130, 181, 10)
                audio = synthesise(text, f"{lang}+{variant}", pitch, speed)
                utt_id = f"{lang}_{split}_{i:02d}"
                path = out / "audio" / lang / f"{utt_id}.flac"
                sf.write(path, audio, RATE, format="FLAC", subtype="PCM_16")
                rows[split].append({"id": utt_id, "path": path.relative_to(out).as_posix(), "text": text,
                                    "language": lang, "speaker": f"{variant}/p{pitch}/s{speed}"})
    for split, split_rows in rows.items():
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["id", "path", "text", "language", "speaker"])
            writer.writeheader()
            writer.writerows(split_rows)
    total = sum(p.stat().st_size for p in (out / "audio").rglob("*.flac"))
    seconds = sum(sf.info(p).duration for p in (out / "audio").rglob("*.flac"))
    print(f"{sum(map(len, rows.values()))} clips, {seconds:.0f} s, {total / 1e6:.2f} MB in {out}")


if __name__ == "__main__":
    main()
