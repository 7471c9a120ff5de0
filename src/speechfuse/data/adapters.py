"""Write manifests for common corpus layouts (FSDD, a label-per-folder tree, LibriSpeech)."""
from __future__ import annotations

import re
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Iterable

from speechfuse.errors import ConfigError
from speechfuse.data.audio import audio_info
from speechfuse.data.manifest import Utterance, with_corpus, write_manifest
from speechfuse.data.textfile import read_text

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)$")

# FSDD's official split: takes 0-4 are test, 5-49 train. speechfuse holds takes 5-9 out of train as dev.
FSDD_TEST_TAKES = tuple(range(0, 5))
FSDD_DEV_TAKES = tuple(range(5, 10))


def bundled_espeak_multilingual_dir() -> Path:
    """Folder of the SYNTHETIC espeak-ng multilingual set shipped with speechfuse (train/dev/test.csv,
    audio/<lang>/*.flac, README.md: 7 languages x two number words; see the README)."""
    folder = Path(str(resources.files("speechfuse") / "assets" / "espeak_multilingual"))
    if not (folder / "train.csv").is_file():
        raise ConfigError(f"the bundled espeak-ng multilingual set is missing at {folder}; reinstall speechfuse "
                          "with its package data, or rebuild it with scripts/make_espeak_multilingual.py")
    return folder


def bundled_fsdd_dir() -> Path:
    """Folder of the FSDD subset shipped with speechfuse (recordings/*.flac, README.md, speakers.csv)."""
    folder = Path(str(resources.files("speechfuse") / "assets" / "fsdd"))
    if not (folder / "recordings").is_dir():
        raise ConfigError(f"the bundled FSDD subset is missing at {folder}; reinstall speechfuse with its package "
                          "data, or pass the folder of a full FSDD copy instead")
    return folder


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def fsdd_manifests(recordings_dir: str | Path, out_dir: str | Path,
                   dev_takes: Iterable[int] = FSDD_DEV_TAKES,
                   test_takes: Iterable[int] = FSDD_TEST_TAKES) -> dict[str, Path]:
    """train/dev/test CSVs from `{digit}_{speaker}_{take}.wav|.flac` files; returns {split: csv path}.

    Columns: id, path (absolute), duration, text (the digit word, e.g. "seven"), label ("7"), speaker, corpus
    ("fsdd").
    Takes in `test_takes` -> test, in `dev_takes` -> dev, every other take -> train.
    """
    recordings_dir = Path(recordings_dir)
    if not recordings_dir.is_dir():
        raise ConfigError(f"fsdd_manifests: recordings folder not found: {recordings_dir}")
    dev, test = set(dev_takes), set(test_takes)
    if dev & test:
        raise ConfigError(f"fsdd_manifests: takes {sorted(dev & test)} are in both dev_takes and test_takes")
    splits: dict[str, list[Utterance]] = {"train": [], "dev": [], "test": []}
    files = _audio_files(recordings_dir)
    twins = sorted(stem for stem, n in Counter(p.stem for p in files).items() if n > 1)
    if twins:
        raise ConfigError(f"fsdd_manifests: {recordings_dir} holds the same recording in two formats "
                          f"({twins[:3]}...); keep one of the .wav / .flac copies")
    for path in files:
        match = FSDD_NAME.match(path.stem)
        if not match:
            raise ConfigError(f"fsdd_manifests: {path.name} does not follow the FSDD name pattern "
                              "'{digit}_{speaker}_{take}.wav'; move it out of the recordings folder")
        digit, speaker, take = match.group(1), match.group(2), int(match.group(3))
        split = "test" if take in test else "dev" if take in dev else "train"
        splits[split].append(Utterance(id=path.stem, path=str(path.resolve()), duration=audio_info(path)[3],
                                       text=DIGIT_WORDS[int(digit)], label=digit, speaker=speaker))
    if not any(splits.values()):
        raise ConfigError(f"fsdd_manifests: no audio files ({', '.join(AUDIO_SUFFIXES)}) in {recordings_dir}")
    out_dir = Path(out_dir)
    return {name: write_manifest(with_corpus(utts, "fsdd"), out_dir / f"{name}.csv") for name, utts in splits.items()}


def folder_manifest(root: str | Path, out: str | Path) -> Path:
    """CSV (id, path, duration, label) from a `root/<label>/*.wav|.flac` tree; id = '<label>/<file stem>'."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"folder_manifest: folder not found: {root}")
    loose = _audio_files(root)
    if loose:
        raise ConfigError(f"folder_manifest: {len(loose)} audio file(s) directly in {root} (e.g. {loose[0].name}) "
                          "have no label; put every file in a sub-folder named after its label")
    utts = [Utterance(id=f"{label_dir.name}/{path.stem}", path=str(path.resolve()), duration=audio_info(path)[3],
                      label=label_dir.name)
            for label_dir in sorted(p for p in root.iterdir() if p.is_dir())
            for path in _audio_files(label_dir)]
    if not utts:
        raise ConfigError(f"folder_manifest: no audio files in any sub-folder of {root}")
    return write_manifest(utts, out)


def librispeech_manifest(split_dir: str | Path, out: str | Path) -> Path:
    """CSV (id, path, duration, text, speaker, corpus "librispeech") from a LibriSpeech split folder:
    `<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac` plus `<speaker>-<chapter>.trans.txt`."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise ConfigError(f"librispeech_manifest: folder not found: {split_dir}")
    transcripts = sorted(split_dir.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise ConfigError(f"librispeech_manifest: no <speaker>/<chapter>/*.trans.txt files under {split_dir}; "
                          "pass a split folder such as LibriSpeech/dev-clean")
    utts: list[Utterance] = []
    missing: list[str] = []
    for trans in transcripts:
        speaker = trans.parent.parent.name
        for line_no, line in enumerate(read_text(trans, "LibriSpeech transcript").splitlines(), start=1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            if not text.strip():
                raise ConfigError(f"librispeech_manifest: {trans} line {line_no}: no transcript after id {utt_id!r}")
            audio = trans.parent / f"{utt_id}.flac"
            if not audio.is_file():
                missing.append(str(audio))
                continue
            utts.append(Utterance(id=utt_id, path=str(audio.resolve()), duration=audio_info(audio)[3],
                                  text=text.strip(), speaker=speaker))
    if missing:
        raise ConfigError(f"librispeech_manifest: {len(missing)} transcript line(s) have no audio file, e.g. "
                          f"{missing[:3]}; the split folder is incomplete")
    return write_manifest(with_corpus(utts, "librispeech"), out)
