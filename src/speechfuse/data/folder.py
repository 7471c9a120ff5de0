"""Train/dev/test manifests from a user's own folder of recordings (`speechfuse prepare folder DIR --out data/`).

Two layouts:
- labels from sub-folder names: `DIR/<label>/<file>.wav` (any depth below the label folder);
- a CSV (`--labels FILE`) with a `path` column (relative to DIR, or absolute) and a `label` or `text`
  column (`transcript` is read as text), optionally `speaker`.

Speakers come from the CSV's `speaker` column or from `--speaker-pattern`, a regular expression whose first
group, searched in each file's name without its suffix, is the speaker (FSDD's `7_george_3.wav`:
`^\\d+_([a-z]+)_`). With speakers, the splits are speaker-disjoint: whole speakers go to test, then dev, until
each holds its share of the utterances. Without them, every label is split on its own (each label in every
split where it has enough files). The shuffle is seeded, so the same folder and seed give the same manifests.
"""
from __future__ import annotations

import csv
import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Optional

from speechfuse.errors import ConfigError
from speechfuse.data.adapters import AUDIO_SUFFIXES
from speechfuse.data.audio import audio_info
from speechfuse.data.manifest import Utterance, write_manifest

SPLITS = ("train", "dev", "test")
TEXT_COLUMNS = ("text", "transcript")


def _audio_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def _from_subfolders(root: Path) -> list[Utterance]:
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES]
    if loose:
        raise ConfigError(f"prepare folder: {len(loose)} audio file(s) directly in {root} (e.g. {loose[0].name}) "
                          "have no label; put each file in a sub-folder named after its label, or give "
                          "--labels labels.csv (columns path and label or text)")
    utts = [Utterance(id=path.relative_to(root).with_suffix("").as_posix(), path=str(path.resolve()),
                      label=label_dir.name)
            for label_dir in sorted(p for p in root.iterdir() if p.is_dir())
            for path in _audio_under(label_dir)]
    if not utts:
        raise ConfigError(f"prepare folder: no audio files ({', '.join(AUDIO_SUFFIXES)}) in any sub-folder of {root}")
    return utts


def _from_csv(root: Path, labels: Path) -> list[Utterance]:
    if not labels.is_file():
        raise ConfigError(f"prepare folder: --labels {labels}: file not found")
    with open(labels, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0]) if rows else set()
    text_column = next((c for c in TEXT_COLUMNS if c in columns), None)
    if "path" not in columns or not ({"label"} & columns or text_column):
        raise ConfigError(f"prepare folder: {labels} needs a header with a `path` column and a `label` or `text` "
                          f"column (optionally `speaker`); it has {sorted(columns) or 'no rows'}")
    utts, problems = [], []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        path = Path(row["path"].strip())
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            problems.append(f"line {number}: audio file not found: {path}")
            continue
        label = (row.get("label") or "").strip() or None
        text = (row.get(text_column) or "").strip() or None if text_column else None
        if label is None and text is None:
            problems.append(f"line {number}: empty label/text for {row['path']!r}")
            continue
        utts.append(Utterance(id=path.resolve().relative_to(root.resolve()).with_suffix("").as_posix()
                              if path.resolve().is_relative_to(root.resolve()) else path.stem,
                              path=str(path.resolve()), label=label, text=text,
                              speaker=(row.get("speaker") or "").strip() or None))
    if problems:
        raise ConfigError(f"prepare folder: {labels}: {len(problems)} bad row(s): " + "; ".join(problems[:5])
                          + ("; ..." if len(problems) > 5 else "") + ". Fix or remove them and run again")
    if not utts:
        raise ConfigError(f"prepare folder: {labels} lists no recordings")
    return utts


def _speakers_by_pattern(utts: list[Utterance], pattern: str) -> None:
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"prepare folder: --speaker-pattern {pattern!r} is not a regular expression: {err}") from None
    if regex.groups < 1:
        raise ConfigError(f"prepare folder: --speaker-pattern {pattern!r} needs one group (...) around the speaker")
    for u in utts:
        match = regex.search(Path(u.path).stem)
        if match is None:
            raise ConfigError(f"prepare folder: --speaker-pattern {pattern!r} does not match {Path(u.path).name}; "
                              "give a pattern every file name matches")
        u.speaker = match.group(1)


def _counts(total: int, dev: float, test: float) -> tuple[int, int]:
    """Dev and test sizes for `total` items: their share, at least one each while train keeps one."""
    n_test = max(1, round(total * test)) if test > 0 and total >= 3 else 0
    n_dev = max(1, round(total * dev)) if dev > 0 and total - n_test >= 2 else 0
    return n_dev, n_test


def split_by_speaker(utts: list[Utterance], dev: float, test: float, rng: random.Random) -> dict[str, list[Utterance]]:
    by_speaker: dict[str, list[Utterance]] = defaultdict(list)
    for u in utts:
        by_speaker[u.speaker].append(u)
    speakers = sorted(by_speaker)
    if len(speakers) < 3:
        raise ConfigError(f"prepare folder: speaker-disjoint splits need at least 3 speakers, found {len(speakers)} "
                          f"({', '.join(speakers)}); leave the speakers out to split the recordings instead")
    rng.shuffle(speakers)
    out: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    targets = {"test": test * len(utts), "dev": dev * len(utts)}
    queue = list(speakers)
    for split in ("test", "dev"):  # whole speakers until the split holds its share (at least one speaker)
        while queue and len(queue) > 1 and (not out[split] or len(out[split]) < targets[split]):
            if targets[split] <= 0:
                break
            out[split] += by_speaker[queue.pop(0)]
    out["train"] = [u for s in queue for u in by_speaker[s]]
    return out


def split_by_label(utts: list[Utterance], dev: float, test: float, rng: random.Random) -> dict[str, list[Utterance]]:
    groups: dict[Optional[str], list[Utterance]] = defaultdict(list)
    for u in utts:
        groups[u.label].append(u)  # ASR rows have no label: one group
    out: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    for key in sorted(groups, key=str):
        items = list(groups[key])
        rng.shuffle(items)
        n_dev, n_test = _counts(len(items), dev, test)
        out["test"] += items[:n_test]
        out["dev"] += items[n_test:n_test + n_dev]
        out["train"] += items[n_test + n_dev:]
    return out


def prepare_folder(root: str | Path, out_dir: str | Path, labels: str | Path | None = None,
                   speaker_pattern: str | None = None, dev: float = 0.1, test: float = 0.1, seed: int = 0) -> dict:
    """Write OUT/{train,dev,test}.csv from a folder of recordings (module doc); returns what was written."""
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise ConfigError(f"prepare folder: folder not found: {root}")
    for name, share in (("--dev", dev), ("--test", test)):
        if not 0 <= share < 1:
            raise ConfigError(f"prepare folder: {name} {share}: give a fraction in [0, 1)")
    if dev + test >= 1:
        raise ConfigError(f"prepare folder: --dev {dev} + --test {test} leave nothing to train on; keep the sum below 1")
    utts = _from_csv(root, Path(labels)) if labels else _from_subfolders(root)
    if speaker_pattern:
        _speakers_by_pattern(utts, speaker_pattern)
    with_speaker = [u for u in utts if u.speaker]
    if with_speaker and len(with_speaker) != len(utts):
        missing = next(u for u in utts if not u.speaker)
        raise ConfigError(f"prepare folder: {len(utts) - len(with_speaker)} recording(s) have no speaker (e.g. "
                          f"{missing.path}); give every row a speaker or none")
    for u in utts:
        u.duration = audio_info(u.path)[3]
    rng = random.Random(seed)
    splits = (split_by_speaker if with_speaker else split_by_label)(utts, dev, test, rng)
    for name in ("train", "dev"):
        if not splits[name]:
            raise ConfigError(f"prepare folder: {len(utts)} recording(s) leave the {name} split empty; add "
                              "recordings (or speakers)")
    files = {name: str(write_manifest(sorted(items, key=lambda u: u.id), out_dir / f"{name}.csv"))
             for name, items in splits.items() if items}
    summary = {"files": files, "utterances": {k: len(v) for k, v in splits.items()}, "seed": seed,
               "speaker_disjoint": bool(with_speaker)}
    if any(u.label for u in utts):
        summary["labels"] = sorted({u.label for u in utts if u.label})
    return summary


__all__ = ["prepare_folder", "split_by_speaker", "split_by_label"]
