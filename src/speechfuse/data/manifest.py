"""Manifests: one row per utterance, as CSV or JSONL, validated before any training starts.

Columns: `id`, `path` (required), `duration` (seconds, optional: filled from the audio header),
`text` (ASR target), `label` (classification target), `speaker`, `language`, and `start` / `end`
(seconds, optional: the row is that span of a longer file; only the span is read, its duration is
end - start; start alone runs to the file's end, end alone from its beginning); any other column is kept
in `Utterance.extra` and written back. Empty CSV cells mean "absent"; an integer JSON label becomes a string.

Row numbers in every message are 1-based data rows: the first utterance is row 1. In a CSV the header is
row 0, so row N is file line N+1; in a JSONL file row N is the N-th non-blank line.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from speechfuse.errors import AudioError, ConfigError
from speechfuse.io import write_atomic
from speechfuse.data.audio import audio_info, probe_audio, span_frames
from speechfuse.data.textfile import open_text

KNOWN_FIELDS = ("id", "path", "duration", "text", "label", "speaker", "language", "start", "end")
TARGET_FIELDS = ("text", "label")


class ManifestError(ConfigError):
    """A manifest has bad rows; `bad_rows` holds every one of them."""

    def __init__(self, message: str, bad_rows: list["BadRow"] | None = None) -> None:
        super().__init__(message)
        self.bad_rows = bad_rows or []


@dataclass
class Utterance:
    id: str
    path: str
    duration: float | None = None
    text: str | None = None
    label: str | None = None
    speaker: str | None = None
    language: str | None = None
    start: float | None = None  # seconds into `path` where this row's span begins (None: the file's start)
    end: float | None = None    # seconds into `path` where it ends (None: the file's end)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_segment(self) -> bool:
        return self.start is not None or self.end is not None


@dataclass(frozen=True)
class BadRow:
    row: int  # 1-based data row (see module docstring)
    id: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row} (id {self.id!r}, path {self.path!r}): {self.reason}"


# -- reading -------------------------------------------------------------------------------------------

def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    raise ConfigError(f"manifest {path}: unknown format {suffix!r}; use a .csv or .jsonl file")


def _read_records(path: Path) -> list[dict[str, Any] | str]:
    """Raw records in file order; a str entry is a parse problem for that row."""
    if not path.is_file():
        raise ConfigError(f"manifest not found: {path}")
    records: list[dict[str, Any] | str] = []
    if _format_of(path) == "csv":
        with open_text(path, "manifest", "utf-8-sig", newline="") as f:  # -sig: spreadsheet exports start with a BOM
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in ("id", "path") if c not in header]
            if missing:
                raise ConfigError(f"manifest {path}: header {header} lacks required column(s) {missing}; "
                                  "the first line must name the columns, e.g. 'id,path,text'")
            for row in reader:
                if None in row:  # more cells than header columns
                    records.append(f"has {len(header) + len(row[None])} cells but the header has {len(header)}")
                    continue
                records.append({k: (v if v != "" else None) for k, v in row.items()})
        return records
    with open_text(path, "manifest") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                records.append(f"not valid JSON ({err.msg} at column {err.colno})")
                continue
            records.append(obj if isinstance(obj, dict) else f"is a JSON {type(obj).__name__}, not an object")
    return records


def _as_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _seconds(record: dict[str, Any], key: str, problems: list[str]) -> float | None:
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    problems.append(f"{key} {value!r} is not a number (seconds)")
    return None


def _to_utterance(record: dict[str, Any] | str, base: Path) -> tuple[Utterance, list[str]]:
    """Build an Utterance from one raw record; returns it with the problems found while parsing."""
    if isinstance(record, str):
        return Utterance(id="", path=""), [record]
    problems: list[str] = []
    raw_path = record.get("path")
    path = ""
    if isinstance(raw_path, str) and raw_path:
        p = Path(raw_path).expanduser()
        path = str(p if p.is_absolute() else (base / p))
    elif raw_path is not None:
        problems.append(f"path must be a string, got {type(raw_path).__name__}")
    duration, start, end = (_seconds(record, key, problems) for key in ("duration", "start", "end"))
    text = record.get("text")
    if text is not None and not isinstance(text, str):
        problems.append(f"text must be a string, got {type(text).__name__} {text!r}")
        text = None
    label = record.get("label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, (str, int))):
        problems.append(f"label must be a string or integer, got {type(label).__name__} {label!r}")
        label = None
    extra = {k: v for k, v in record.items() if k not in KNOWN_FIELDS}
    utt = Utterance(id=_as_text(record.get("id")) or "", path=path, duration=duration, text=text,
                    label=_as_text(label), speaker=_as_text(record.get("speaker")),
                    language=_as_text(record.get("language")), start=start, end=end, extra=extra)
    return utt, problems


def _parse(path: Path) -> tuple[list[Utterance], list[BadRow]]:
    base = path.resolve().parent
    utts: list[Utterance] = []
    bad: list[BadRow] = []
    for row, record in enumerate(_read_records(path), start=1):
        utt, problems = _to_utterance(record, base)
        utts.append(utt)
        bad.extend(BadRow(row, utt.id, utt.path, p) for p in problems)
    return utts, bad


def _error(source: str, bad: list[BadRow]) -> ManifestError:
    rows = "\n".join(f"  {b}" for b in bad)
    return ManifestError(
        f"manifest {source}: {len(bad)} problem(s) in {len({b.row for b in bad})} row(s) "
        f"(rows are 1-based data rows; a CSV header is row 0):\n{rows}\n"
        "Fix or remove these rows, or validate with skip_bad=True to drop them and list them in a file.",
        bad,
    )


def load_manifest(path: str | Path) -> list[Utterance]:
    """Read a CSV or JSONL manifest. Raises ManifestError listing every row that cannot be parsed.

    This checks structure only; use `check_manifest` / `validate_manifest` for files and targets.
    """
    path = Path(path)
    utts, bad = _parse(path)
    if bad:
        raise _error(str(path), bad)
    return utts


# -- checking ------------------------------------------------------------------------------------------

def _span_problem(utt: Utterance) -> str | None:
    """What is wrong with a row's start/end on their own (the file's length is checked with its audio)."""
    for key in ("start", "end"):
        value = getattr(utt, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):
            return f"{key} {value!r} must be a finite number of seconds >= 0"
    if utt.start is not None and utt.end is not None and utt.end <= utt.start:
        return f"end {utt.end:g} s must be after start {utt.start:g} s (the span is empty or reversed)"
    return None


def span_duration(utt: Utterance, file_duration: float) -> float:
    """Seconds of audio a row stands for: its span of the file, or the whole file."""
    start = utt.start or 0.0
    return (file_duration if utt.end is None else utt.end) - start


def _duration_problem(duration: Any) -> str | None:
    if duration is None:
        return None
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        return f"duration {duration!r} is not a number (seconds)"
    if not math.isfinite(duration) or duration < 0:
        return f"duration {duration!r} must be a finite number of seconds >= 0"
    return None


DURATION_TOLERANCE = 0.10  # a `duration` cell further than this fraction from the audio's own is warned about


@dataclass(frozen=True)
class ClipLimit:
    """The longest clip a run accepts, and the model that sets it (e.g. Whisper's 30 s window)."""

    seconds: float
    model: str


def clip_limit(upstreams: Iterable[Any]) -> ClipLimit | None:
    """The tightest `max_samples` of the upstreams that refuse longer clips (None: every one takes clips of
    any length, itself or in windows: Upstream.runs_long_clips)."""
    limits = [ClipLimit(up.max_samples / up.sample_rate, up.name) for up in upstreams
              if getattr(up, "max_samples", None) and not getattr(up, "runs_long_clips", False)]
    return min(limits, key=lambda limit: limit.seconds, default=None)


@dataclass
class ManifestCheck:
    """The result of checking a manifest's rows.

    bad: rows that cannot be used. notes: usable rows worth a warning (a truncated WAV, a `duration` cell
    more than 10 % off). durations: row -> the audio's real duration in seconds, for every row whose file
    was read."""

    bad: list[BadRow] = field(default_factory=list)
    notes: list[BadRow] = field(default_factory=list)
    durations: dict[int, float] = field(default_factory=dict)


def _check_audio(row: int, utt: Utterance, max_clip: ClipLimit | None, out: ManifestCheck) -> None:
    def flag(reason: str) -> None:
        out.bad.append(BadRow(row, utt.id, utt.path, reason))

    def note(reason: str) -> None:
        out.notes.append(BadRow(row, utt.id, utt.path, reason))

    if not Path(utt.path).is_file():
        flag("audio file not found")
        return
    try:
        probe = probe_audio(utt.path)
    except Exception as err:  # AudioError from an unreadable header or undecodable samples
        flag(f"audio unreadable or corrupt ({err})")
        return
    if probe.num_samples == 0:
        flag("audio file is empty (0 samples)")
        return
    if probe.non_finite:
        flag("audio contains NaN or infinite samples; re-export it or remove the row")
        return
    if utt.is_segment:
        try:
            span_frames(utt.path, utt.start, utt.end, probe.sample_rate, probe.num_samples)
        except AudioError:
            flag(f"span start={utt.start} s, end={utt.end} s is not inside the audio's {probe.duration:.3f} s; "
                 "fix the row's start/end")
            return
    duration = span_duration(utt, probe.duration)
    out.durations[row] = duration
    if max_clip is not None and duration > max_clip.seconds:
        flag(f"audio is {duration:.2f} s, longer than the {max_clip.seconds:g} s that {max_clip.model} "
             f"accepts; split it into segments of at most {max_clip.seconds:g} s")
    if probe.declared_samples is not None and probe.declared_samples > probe.num_samples:
        note(f"the WAV header declares {probe.declared_samples / probe.sample_rate:.2f} s but the file holds "
             f"only {probe.duration:.2f} s (truncated copy?); the {probe.duration:.2f} s present are used")
    if (isinstance(utt.duration, (int, float)) and math.isfinite(utt.duration)
            and abs(utt.duration - duration) > DURATION_TOLERANCE * duration):
        note(f"the duration column says {utt.duration:g} s but the audio lasts {duration:.2f} s; "
             "the audio's duration is used")


def inspect_manifest(utts: list[Utterance], target: str | None, check_audio: bool = True,
                     max_clip: ClipLimit | None = None) -> ManifestCheck:
    """Check every row (row = list position + 1): missing id/path/file, corrupt, empty or NaN/inf audio,
    a clip longer than `max_clip`, bad duration, a start/end span that is empty, negative or
    beyond its file, duplicate id, and a missing or wrong-typed `target`
    ("text", "label" or None); notes a truncated WAV and a `duration` cell more than 10 % off.

    Cost with check_audio: one header read per file, plus one decode of files with float samples (the only
    kind that can hold NaN/inf; integer PCM and FLAC are not decoded).
    """
    if target is not None and target not in TARGET_FIELDS:
        raise ConfigError(f"check_manifest: target must be one of {TARGET_FIELDS} or None, got {target!r}")
    out = ManifestCheck()
    first_row_of: dict[str, int] = {}
    for row, utt in enumerate(utts, start=1):
        def flag(reason: str) -> None:
            out.bad.append(BadRow(row, utt.id, utt.path, reason))

        if not utt.id:
            flag("missing id")
        elif utt.id in first_row_of:
            flag(f"duplicate id (first used in row {first_row_of[utt.id]})")
        else:
            first_row_of[utt.id] = row
        for problem in (_duration_problem(utt.duration), _span_problem(utt)):
            if problem:
                flag(problem)
        if target is not None:
            value = getattr(utt, target)
            if value is None or (isinstance(value, str) and not value.strip()):
                flag(f"missing {target}")
            elif not isinstance(value, str):
                flag(f"{target} must be a string, got {type(value).__name__}")
        if not utt.path:
            flag("missing path")
        elif check_audio and not _span_problem(utt):
            _check_audio(row, utt, max_clip, out)
    return out


def check_manifest(utts: list[Utterance], target: str | None, check_audio: bool = True,
                   max_clip: ClipLimit | None = None) -> list[BadRow]:
    """The bad rows `inspect_manifest` finds (see there)."""
    return inspect_manifest(utts, target, check_audio, max_clip).bad


def _warn_notes(source: Path, notes: list[BadRow], shown: int = 20) -> None:
    if not notes:
        return
    rows = "\n".join(f"  {n}" for n in notes[:shown])
    more = f"\n  ... and {len(notes) - shown} more" if len(notes) > shown else ""
    warnings.warn(f"manifest {source}: {len(notes)} row(s) to look at (they are used):\n{rows}{more}", stacklevel=3)


def validate_manifest(path: str | Path, target: str | None, skip_bad: bool = False,
                      skipped_out: str | Path | None = None, check_audio: bool = True,
                      max_clip: ClipLimit | None = None) -> list[Utterance]:
    """Load, check and complete a manifest: the one call a runner needs.

    skip_bad=False: any bad row raises ManifestError listing them all.
    skip_bad=True: returns the good rows; the bad ones are written to `skipped_out` (required) as CSV
    with columns row,id,path,reason. Good rows carry the audio's own duration: the `duration` column is
    only checked against it, and one more than 10 % off is warned about, naming the row (as is a truncated
    WAV). `max_clip` (see `clip_limit`) makes longer clips bad rows.
    """
    path = Path(path)
    utts, bad = _parse(path)
    if not utts:
        raise ManifestError(f"manifest {path} has no data rows (an empty file, or a header only); add one row "
                            "per utterance, e.g. 'u1,audio/u1.wav,hello'")
    parse_bad_rows = {b.row for b in bad}
    check = inspect_manifest(utts, target, check_audio, max_clip)
    bad += [b for b in check.bad if b.row not in parse_bad_rows]
    bad.sort(key=lambda b: b.row)
    if bad and not skip_bad:
        raise _error(str(path), bad)
    if bad:
        if skipped_out is None:
            raise ConfigError(f"validate_manifest({path}): skip_bad=True needs skipped_out, a file to list "
                              f"the {len({b.row for b in bad})} skipped rows in")
        write_bad_rows(bad, skipped_out)
    bad_rows = {b.row for b in bad}
    _warn_notes(path, [n for n in check.notes if n.row not in bad_rows])
    good = []
    for row, utt in enumerate(utts, start=1):
        if row not in bad_rows:
            utt.duration = check.durations.get(row, utt.duration)
            good.append(utt)
    fill_durations(good)  # rows whose audio was not read (check_audio=False)
    if not good:
        raise ManifestError(f"manifest {path}: no usable rows left after skipping all {len(bad_rows)} row(s); "
                            f"they are listed with the reasons in {skipped_out}", bad)
    return good


def fill_durations(utts: Iterable[Utterance]) -> None:
    """Set `duration` from the audio header (or the row's span) where it is missing (in place)."""
    for utt in utts:
        if utt.duration is None:
            utt.duration = span_duration(utt, audio_info(utt.path)[3] if utt.end is None else 0.0)


def write_bad_rows(bad: list[BadRow], out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["row", "id", "path", "reason"])
    for b in bad:
        writer.writerow([b.row, b.id, b.path, b.reason])
    write_atomic(out, text.getvalue())


# -- writing -------------------------------------------------------------------------------------------

def write_manifest(utts: list[Utterance], path: str | Path, relative_paths: bool = False) -> Path:
    """Write CSV or JSONL (by suffix). Columns id,path always; other fields only where some row has them.

    relative_paths=True stores audio paths relative to the manifest's folder (so the pair can move).
    """
    path = Path(path)
    fmt = _format_of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    optional = [f for f in KNOWN_FIELDS[2:] if any(getattr(u, f) is not None for u in utts)]
    extra_keys = sorted({k for u in utts for k in u.extra})
    columns = ["id", "path", *optional, *extra_keys]

    def record(u: Utterance) -> dict[str, Any]:
        audio = u.path
        if relative_paths and audio:
            audio = Path(os.path.relpath(Path(audio).resolve(), base)).as_posix()
        values = {"id": u.id, "path": audio, **{f: getattr(u, f) for f in optional}, **u.extra}
        return {c: values.get(c) for c in columns}

    text = io.StringIO(newline="")
    if fmt == "csv":
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        for u in utts:
            writer.writerow({k: ("" if v is None else v) for k, v in record(u).items()})
    else:
        for u in utts:
            text.write(json.dumps({k: v for k, v in record(u).items() if v is not None}) + "\n")
    write_atomic(path, text.getvalue())
    return path


CORPUS_COLUMN = "corpus"  # every row of a manifest written here names its corpus (what `table` reads)


def with_corpus(utts: list[Utterance], corpus: str) -> list[Utterance]:
    """`utts`, each recording `corpus` in its manifest column CORPUS_COLUMN."""
    for u in utts:
        u.extra[CORPUS_COLUMN] = corpus
    return utts


def recorded_corpus(manifest: str | Path | None) -> str | None:
    """The corpus a manifest's rows record (written by `speechfuse prepare`), when every row names the same
    one; None when the manifest is absent or unreadable, or its rows name none or several."""
    try:
        names = {u.extra.get(CORPUS_COLUMN) for u in load_manifest(manifest)} if manifest else set()
    except (ConfigError, OSError, UnicodeDecodeError):
        return None
    return names.pop() if len(names) == 1 and None not in names else None
