"""Speaker verification trial lists: read the VoxCeleb1 format, or generate trials from a manifest.

A trial list is a text file, one trial per line, label first (the VoxCeleb1 `veri_test2.txt` format):

    1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav
    0 id10270/x6uYqmx31kE/00001.wav id10300/ize_eiCFEg0/00003.wav

1 = target (same speaker), 0 = non-target. The two names are utterance ids of the manifest being scored
(for `speechfuse verify`: audio paths). `read_trials(path, unlabelled=True)` also reads `ENROL TEST` lines
without a label (label None), for trials to score whose truth is unknown; one file is all one or the other.

`generate_trials(utts)` makes a list when a corpus has none, reproducibly for a given seed:
- target trials: every pair of two different utterances of one speaker, or, when `max_targets` is
  smaller than that number, a seeded sample of `max_targets` of them;
- non-target trials: a seeded sample, without repetition, of pairs of utterances of two different
  speakers, as many as there are target trials (all of them if fewer exist).
Each pair appears once, in the order of the utterances' ids; the list is sorted by (enrol, test).
"""
from __future__ import annotations

import bisect
import os
import random
from dataclasses import dataclass
from itertools import combinations
from math import comb
from pathlib import Path
from typing import Iterable, Optional, Sequence

from speechfuse.errors import ConfigError
from speechfuse.data.manifest import Utterance
from speechfuse.data.textfile import open_text


class TrialError(ConfigError):
    """A trial list is malformed or names utterances that are not in the manifest."""


@dataclass(frozen=True)
class Trial:
    label: Optional[int]  # 1 target, 0 non-target, None: unknown (an `ENROL TEST` line)
    enrol: str
    test: str
    line: int = 0  # 1-based line in the file it was read from (0: generated)


def read_trials(path: str | Path, unlabelled: bool = False) -> list[Trial]:
    """Trials of a `LABEL ENROL TEST` file (or, with unlabelled=True, of an `ENROL TEST` file: label None);
    blank lines are skipped. Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise TrialError(f"trial list not found: {path}")
    example = "'1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav'"
    trials = []
    with open_text(path, "trial list") as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if unlabelled and len(fields) == 2:
                fields = [None] + fields
            if len(fields) != 3:
                form = "3 fields 'LABEL ENROL TEST' or 2 fields 'ENROL TEST'" if unlabelled else \
                    "3 fields 'LABEL ENROL TEST'"
                raise TrialError(f"trial list {path} line {line_no}: expected {form} (e.g. {example}), "
                                 f"got {len(fields)}: {line.strip()[:120]!r}")
            if fields[0] not in ("0", "1", None):
                raise TrialError(f"trial list {path} line {line_no}: the label must be 1 (target) or 0 "
                                 f"(non-target), got {fields[0]!r}")
            trial = Trial(None if fields[0] is None else int(fields[0]), fields[1], fields[2], line_no)
            if trials and (trials[0].label is None) != (trial.label is None):
                raise TrialError(f"trial list {path} line {line_no}: mixes lines with a label and lines without "
                                 f"(line {trials[0].line} {'has none' if trials[0].label is None else 'has one'}); "
                                 "give every line a label, or none")
            trials.append(trial)
    if not trials:
        raise TrialError(f"trial list {path} has no trials")
    return trials


def unique_trials(trials: Sequence[Trial], source: str) -> list[Trial]:
    """`trials` with each (enrol, test) pair once, at its first line: a repeated line scores and counts as one
    trial. A pair listed again with the other label is a TrialError naming both lines."""
    first: dict[tuple[str, str], Trial] = {}
    for t in trials:
        seen = first.setdefault((t.enrol, t.test), t)
        if seen.label != t.label:
            raise TrialError(f"trial list {source} line {t.line}: the pair {t.enrol} {t.test} is already on line "
                             f"{seen.line} with label {seen.label}, here with {t.label}; keep one of the two lines")
    return list(first.values())


def write_trials(trials: Iterable[Trial], path: str | Path) -> Path:
    """Write `LABEL ENROL TEST` lines (atomically: a reader never sees half a list)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(f"{t.label} {t.enrol} {t.test}\n" for t in trials), encoding="utf-8")
    os.replace(tmp, path)
    return path


def check_trials(trials: Sequence[Trial], utt_ids: Iterable[str], source: str) -> None:
    """Every name in `trials` must be an utterance id of the manifest; both labels must occur."""
    known = set(utt_ids)
    for t in trials:
        for name in (t.enrol, t.test):
            if name not in known:
                where = f"line {t.line}" if t.line else f"trial {t.enrol} {t.test}"
                raise TrialError(f"trial list {source} {where}: {name!r} is not an utterance id of the manifest "
                                 f"being scored; trial names must equal the manifest's `id` column")
    labels = {t.label for t in trials}
    if labels != {0, 1}:
        raise TrialError(f"trial list {source}: needs both target (1) and non-target (0) trials, has only "
                         f"{sorted(labels)}")


def _unrank_pair(rank: int, n: int) -> tuple[int, int]:
    """The rank-th pair (a, b), a < b, of range(n) in lexicographic order."""
    for a in range(n - 1):
        row = n - 1 - a
        if rank < row:
            return a, a + 1 + rank
        rank -= row
    raise IndexError(rank)


def generate_trials(utts: Sequence[Utterance], field: str = "speaker", max_targets: int | None = None,
                    seed: int = 0) -> list[Trial]:
    """Target and non-target trials over `utts`, grouped by the `field` attribute (see the module doc)."""
    if max_targets is not None and max_targets < 1:
        raise ConfigError(f"generate_trials: max_targets must be >= 1 or None, got {max_targets}")
    missing = [u.id for u in utts if not (getattr(u, field) or "").strip()]
    if missing:
        raise ConfigError(f"generate_trials: {len(missing)} utterance(s) have no {field!r} (e.g. {missing[0]!r}); "
                          f"every utterance needs one to make trials")
    ids = sorted(u.id for u in utts)
    if len(set(ids)) != len(ids):
        twin = next(a for a, b in zip(ids, ids[1:]) if a == b)
        raise ConfigError(f"generate_trials: utterance id {twin!r} occurs twice; ids must be unique")
    by_id = {u.id: str(getattr(u, field)) for u in utts}
    groups: dict[str, list[str]] = {}
    for uid in ids:
        groups.setdefault(by_id[uid], []).append(uid)
    speakers = sorted(groups)
    pairs_per_speaker = [comb(len(groups[s]), 2) for s in speakers]
    total_targets = sum(pairs_per_speaker)
    if total_targets == 0 or len(speakers) < 2:
        raise ConfigError(f"generate_trials: need at least 2 {field}s and one {field} with 2 utterances; got "
                          f"{len(speakers)} {field}(s) and {total_targets} same-{field} pairs")
    rng = random.Random(seed)
    n_targets = total_targets if max_targets is None else min(max_targets, total_targets)
    starts = [0]
    for count in pairs_per_speaker:
        starts.append(starts[-1] + count)
    targets = []
    for rank in sorted(rng.sample(range(total_targets), n_targets)):
        k = bisect.bisect_right(starts, rank) - 1
        a, b = _unrank_pair(rank - starts[k], len(groups[speakers[k]]))
        targets.append(Trial(1, groups[speakers[k]][a], groups[speakers[k]][b]))

    total_nontargets = comb(len(ids), 2) - total_targets
    n_nontargets = min(n_targets, total_nontargets)
    if 2 * n_nontargets >= total_nontargets:  # dense: list them all, then sample
        every = [(a, b) for a, b in combinations(ids, 2) if by_id[a] != by_id[b]]
        chosen = set(rng.sample(every, n_nontargets))
    else:  # sparse: draw random pairs until enough distinct ones (expected < 2 draws per pair)
        chosen = set()
        while len(chosen) < n_nontargets:
            a, b = sorted(rng.sample(ids, 2))
            if by_id[a] != by_id[b]:
                chosen.add((a, b))
    nontargets = [Trial(0, a, b) for a, b in chosen]
    return sorted(targets + nontargets, key=lambda t: (t.enrol, t.test))
