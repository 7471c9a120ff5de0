"""Inference with a FusedModel: typed predictions for files, folders, manifests or waveforms, and a streaming
writer that survives a kill.

    model = sf.load_model("runs/speaker")
    model.predict("clip.wav")                      # [Classification(id, path, duration, label, probabilities)]
    model.predict(["a.wav", "recordings/", "test.csv", torch.randn(16000)])
    predict_to_file(model, ["recordings/"], "predictions.jsonl")   # what `speechfuse predict` runs
    model.verify("a.wav", "b.wav")                 # a verification model: Verification(score, decision)

Inputs are batched by duration with the training sampler (data/batching.py). A bad input (missing,
unreadable, empty, NaN, too long for an upstream) becomes a `Failure` with the reason; `predict` raises
on them unless skip_bad=True, `predict_to_file` always lists them in the output and goes on.
Waveforms (tensors, arrays) need `sample_rate=`: a number alone does not say its rate. One id for two
different files (or spans) is refused, naming both rows; the same input given twice is predicted once by
`predict_to_file`, which names the rows. `predict_to_file` locks its output (OUT.lock), so a second
writer is refused instead of interleaving rows.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

import numpy as np
import torch

from speechfuse.data.adapters import AUDIO_SUFFIXES
from speechfuse.data.audio import audio_info, read_audio, span_frames
from speechfuse.data.batching import DurationBatchSampler
from speechfuse.data.manifest import ClipLimit, Utterance, clip_limit, load_manifest, span_duration
from speechfuse.errors import AudioError, ConfigError, SpeechfuseError
from speechfuse.tasks.predictions import Classification, LanguageTranscription, Prediction, SpeakerEmbedding, Transcription
from speechfuse.tasks.multilingual import Reference

if TYPE_CHECKING:
    from speechfuse.fusion.model import FusedModel

MANIFEST_SUFFIXES = (".csv", ".jsonl")
OUTPUT_FORMATS = (".jsonl", ".csv")


@dataclass
class Verification:
    """One trial: the score of `test` against `enrol` (ids: the path, or waveform-N for a tensor) and the
    decision `score >= threshold` at the model's dev EER threshold (None when the model has none)."""
    enrol: str
    test: str
    score: float
    threshold: Optional[float]
    decision: Optional[bool]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Failure:
    """An input that could not be predicted, and why."""
    id: str
    path: Optional[str]
    error: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Result = Union[Prediction, Failure]


@dataclass
class _Item:
    id: str
    path: Optional[str] = None
    wav: Optional[torch.Tensor] = None  # waveform inputs: already at the model's rate
    duration: float = 0.0
    reference: Optional[str] = None
    start: Optional[float] = None  # a manifest segment row: its span of the file, in seconds
    end: Optional[float] = None


class OutputFileError(SpeechfuseError):
    """The predictions / scores file cannot be written: locked by another run, read-only, disk full."""


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def collect_inputs(inputs: Any, sample_rate: int, target: str = "text", input_rate: Optional[int] = None,
                   repeats: Optional[dict[str, list[str]]] = None) -> list[Union[_Item, Failure]]:
    """Expand files, folders (audio files under it, sorted), manifests (.csv / .jsonl) and waveforms
    ([S] or [B,S] tensors or arrays at `input_rate`, which they need) into items; files whose header
    cannot be read become Failures, in input order. `target`: the manifest field holding references.
    An id given for two different files or spans raises ConfigError naming both; `repeats`, when given, is
    filled with id -> where each copy came from ("input 2", "test.csv row 7") for ids given more than once."""
    entries: list[Union[_Item, Failure]] = []
    first: dict[str, tuple[tuple, str]] = {}  # id -> (the audio it names, where it was given first)

    def note(utt_id: str, audio: tuple, origin: str) -> None:
        if utt_id not in first:
            first[utt_id] = (audio, origin)
            return
        seen, where = first[utt_id]
        if seen != audio:
            raise ConfigError(f"predict: id {utt_id!r} names two different inputs: {where} ({_audio_text(seen)}) and "
                              f"{origin} ({_audio_text(audio)}); give every input its own id")
        if repeats is not None:
            repeats.setdefault(utt_id, [where]).append(origin)

    def add_file(path: Path, utt_id: str, origin: str, reference: Optional[str] = None,
                 span: Optional[Utterance] = None) -> None:
        note(utt_id, (os.path.abspath(path), span.start if span else None, span.end if span else None), origin)
        try:
            frames, rate, _, duration = audio_info(path)
            if span is not None and span.is_segment:
                span_frames(path, span.start, span.end, rate, frames)
                duration = span_duration(span, duration)
        except AudioError as err:
            entries.append(Failure(utt_id, str(path), str(err)))
            return
        if frames == 0:
            entries.append(Failure(utt_id, str(path), f"audio file {path} is empty (0 samples)"))
            return
        entries.append(_Item(utt_id, str(path), duration=duration, reference=reference,
                             start=span.start if span else None, end=span.end if span else None))

    def add_wave(wav: torch.Tensor) -> None:
        utt_id = f"waveform-{len(entries)}"
        if not input_rate:
            raise ConfigError(f"predict: a waveform input needs its sample rate: pass sample_rate= (e.g. "
                              f"predict(wav, sample_rate=16000)); it is resampled to the model's {sample_rate} Hz")
        if input_rate != sample_rate:
            import soxr

            wav = torch.from_numpy(soxr.resample(wav.numpy(), input_rate, sample_rate).astype(np.float32))
        if wav.numel() == 0:
            entries.append(Failure(utt_id, None, "empty waveform (0 samples)"))
            return
        entries.append(_Item(utt_id, None, wav=wav, duration=wav.numel() / sample_rate))

    def visit(x: Any, origin: str) -> None:
        if isinstance(x, (torch.Tensor, np.ndarray)):
            wav = torch.as_tensor(x, dtype=torch.float32).detach().cpu()
            if wav.dim() == 1:
                add_wave(wav)
            elif wav.dim() == 2:
                for row in wav:
                    add_wave(row)
            else:
                raise AudioError(f"predict: a waveform must be [S] or [B,S] mono audio, got shape {tuple(wav.shape)}")
            return
        if isinstance(x, (list, tuple)):
            for i, y in enumerate(x, start=1):
                visit(y, f"{origin}.{i}")
            return
        if not isinstance(x, (str, os.PathLike)):
            raise ConfigError(f"predict: cannot read input {x!r:.80}; give file or folder paths, a manifest "
                              "(.csv / .jsonl), or waveform tensors")
        path = Path(x)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not files:
                raise ConfigError(f"predict: no audio files ({', '.join(AUDIO_SUFFIXES)}) under {path}")
            for p in files:
                add_file(p, str(p), f"{origin} (folder {path})")
        elif path.suffix.lower() in MANIFEST_SUFFIXES:
            for row, utt in enumerate(load_manifest(path), start=1):
                ref = getattr(utt, target, None) if target in ("text", "label", "speaker", "language") else None
                if ref and utt.language:  # per-language metrics (multilingual_asr) need each row's language
                    ref = Reference(ref, utt.language)
                add_file(Path(utt.path), utt.id, f"{path} row {row}", ref if ref not in (None, "") else None,
                         span=utt)
        else:
            add_file(path, str(x), origin)

    if isinstance(inputs, (list, tuple)):
        for i, x in enumerate(inputs, start=1):
            visit(x, f"input {i}")
    else:
        visit(inputs, "input 1")
    return entries


def _audio_text(audio: tuple) -> str:
    path, start, end = audio
    return path if start is None and end is None else f"{path} from {start or 0:g} s to {end if end is not None else 'end'}"


def _split(entries: list[Union[_Item, Failure]]) -> tuple[list[_Item], list[Failure]]:
    return [e for e in entries if isinstance(e, _Item)], [e for e in entries if isinstance(e, Failure)]


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------
def iter_predictions(model: "FusedModel", items: list[_Item], batch_seconds: float = 60.0,
                     progress: Optional[bool] = None) -> Iterator[list[Result]]:
    """One list of results per duration batch (shortest clips first). A clip that fails to read or run
    becomes a Failure; the rest of its batch is still predicted."""
    if not items:
        return
    limit = clip_limit(model.frontend.upstreams)
    ready: list[_Item] = []
    early: list[Result] = []
    for item in items:
        if limit is not None and item.duration > limit.seconds:
            early.append(Failure(item.id, item.path, _too_long(item.duration, limit)))
        else:
            ready.append(item)
    if early:
        yield early
    if not ready:
        return
    batches = list(DurationBatchSampler([it.duration for it in ready], batch_seconds, shuffle=False))
    seconds = [sum(ready[i].duration for i in batch) for batch in batches]
    from speechfuse.training.progress import quiet

    show = (progress if progress is not None else len(ready) > 50) and not quiet()
    bar = None
    if show:
        from tqdm import tqdm

        # the same float additions as the updates below, so the bar ends exactly at its total
        bar = tqdm(total=sum(seconds), unit="s audio", desc="predict", file=sys.stderr,
                   bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s audio [{elapsed}<{remaining}]")
    was_training = model.training
    model.eval()
    try:
        for batch, amount in zip(batches, seconds):
            yield _predict_batch(model, [ready[i] for i in batch], limit)
            if bar is not None:
                bar.update(amount)
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()


def _too_long(seconds: float, limit: ClipLimit) -> str:
    return (f"too long for upstream {limit.model}: {seconds:.2f} s > {limit.seconds:g} s; split the recording "
            "into shorter segments")


def _predict_batch(model: "FusedModel", items: list[_Item], limit: Optional[ClipLimit]) -> list[Result]:
    results: list[Result] = []
    clips: list[tuple[_Item, torch.Tensor]] = []
    for item in items:
        try:
            wav = item.wav if item.wav is not None else read_audio(item.path, model.sample_rate, item.start, item.end)
            if limit is not None and wav.numel() > limit.seconds * model.sample_rate:
                raise AudioError(_too_long(wav.numel() / model.sample_rate, limit))
            if not torch.isfinite(wav).all():
                raise AudioError("NaN or infinite samples")
            clips.append((item, wav))
        except AudioError as err:
            results.append(Failure(item.id, item.path, str(err)))
    if not clips:
        return results
    try:
        results += _run(model, clips)
    except SpeechfuseError as err:
        if len(clips) == 1:
            return results + [Failure(clips[0][0].id, clips[0][0].path, str(err))]
        for clip in clips:  # find which clip broke the batch; predict the others
            try:
                results += _run(model, [clip])
            except SpeechfuseError as err:
                results.append(Failure(clip[0].id, clip[0].path, str(err)))
    return results


@torch.inference_mode()
def _run(model: "FusedModel", clips: list[tuple[_Item, torch.Tensor]]) -> list[Prediction]:
    lengths = torch.tensor([w.numel() for _, w in clips], dtype=torch.long)
    wavs = torch.zeros(len(clips), int(lengths.max()))
    for row, (_, w) in enumerate(clips):
        wavs[row, : w.numel()] = w
    out, out_lengths = model(wavs.to(model.device), lengths)
    clips_info = [dict(id=it.id, path=it.path, duration=round(it.duration, 4)) for it, _ in clips]
    return model.task.predictions(out, out_lengths, clips_info)


def predict(model: "FusedModel", inputs: Any, batch_seconds: float = 60.0, progress: Optional[bool] = None,
            skip_bad: bool = False, sample_rate: Optional[int] = None) -> list[Result]:
    """Predictions in input order. inputs: a file, folder, manifest, waveform, or a list of them;
    waveforms need `sample_rate`, their rate. Bad inputs raise AudioError listing them all
    (checked from the headers before anything runs) unless skip_bad=True, which returns them as Failures."""
    model.task.require_predictions("predict")
    entries = collect_inputs(inputs, model.sample_rate, model.target, sample_rate)
    items, failures = _split(entries)
    if failures and not skip_bad:
        raise AudioError(_listing(failures))
    results: list[Result] = list(failures)
    for batch in iter_predictions(model, items, batch_seconds, progress):
        bad = [r for r in batch if isinstance(r, Failure)]
        if bad and not skip_bad:
            raise AudioError(_listing(bad))
        results += batch
    position: dict[str, int] = {}
    for i, entry in enumerate(entries):
        position.setdefault(entry.id, i)
    return sorted(results, key=lambda r: position[r.id])  # stable: a repeated input keeps its copies


def _listing(failures: list[Failure]) -> str:
    lines = "\n".join(f"  {f.id}: {f.error}" for f in failures[:20])
    more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
    return (f"{len(failures)} input(s) cannot be predicted:\n{lines}{more}\n"
            "Fix or remove them, or pass skip_bad=True to predict the rest.")


# ---------------------------------------------------------------------------------------------
# verification trials
# ---------------------------------------------------------------------------------------------
def verify(model: "FusedModel", a: Any, b: Any = None, batch_seconds: float = 60.0,
           sample_rate: Optional[int] = None) -> Union[Verification, list[Verification]]:
    """Score trials with a verification model. verify(a, b) with one clip each (a file path or an [S]
    waveform, which needs `sample_rate`) returns one Verification; verify([a1, a2], [b1, b2]) or verify([(a1, b1), (a2, b2)]) returns
    one per pair, in order. Each distinct file is embedded once. Bad inputs raise AudioError listing them."""
    if not model.task.scores_trials:
        raise ConfigError(f"verify: this model's task is {model.task.name!r}, which predicts but does not "
                          "score trials; verify() needs a speaker verification model (task: verify), use "
                          "predict() for this one")
    single = b is not None and _is_clip(a) and _is_clip(b)
    if single:
        pairs = [(a, b)]
    elif b is None:
        pairs = list(a) if isinstance(a, (list, tuple)) else []
        if not pairs or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
            raise ConfigError("verify: give two clips, two lists of clips of the same length, or one list of "
                              "(enrol, test) pairs")
    else:
        if not isinstance(a, (list, tuple)) or not isinstance(b, (list, tuple)) or len(a) != len(b):
            raise ConfigError(f"verify: the enrol and test lists must be lists of the same length, got "
                              f"{len(a) if isinstance(a, (list, tuple)) else type(a).__name__} and "
                              f"{len(b) if isinstance(b, (list, tuple)) else type(b).__name__}")
        pairs = list(zip(a, b))
    clips: list[Any] = []
    slot: dict[str, int] = {}  # a file path -> its row in `clips` (waveforms always get their own)

    def row_of(clip: Any) -> int:
        if not _is_clip(clip):
            raise ConfigError(f"verify: each side of a trial is one clip (an audio file path or an [S] waveform), "
                              f"got {clip!r:.80}")
        if isinstance(clip, (str, os.PathLike)):
            key = str(clip)
            if key not in slot:
                slot[key] = len(clips)
                clips.append(clip)
            return slot[key]
        clips.append(clip)
        return len(clips) - 1

    rows = [(row_of(x), row_of(y)) for x, y in pairs]
    embedded = predict(model, clips, batch_seconds, progress=None, sample_rate=sample_rate)
    embeddings = torch.stack([r.embedding for r in embedded])
    cohort = model.task.cohort_scores(embeddings, model.head.speakers.cpu())  # None without AS-norm
    scores = model.task.trial_scores(embeddings, cohort, [e for e, _ in rows], [t for _, t in rows]).tolist()
    threshold = model.task.threshold
    results = [Verification(embedded[e].id, embedded[t].id, score, threshold,
                            None if threshold is None else score >= threshold)
               for (e, t), score in zip(rows, scores)]
    return results[0] if single else results


def _is_clip(x: Any) -> bool:
    """One clip: an audio file path (not a folder or manifest) or a 1-D waveform."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return x.ndim == 1
    return isinstance(x, (str, os.PathLike)) and not Path(x).is_dir() and \
        Path(x).suffix.lower() not in MANIFEST_SUFFIXES


# ---------------------------------------------------------------------------------------------
# streaming to a file (the CLI)
# ---------------------------------------------------------------------------------------------
def check_output_path(path: str | os.PathLike, command: str = "predict") -> None:
    if Path(path).suffix.lower() not in OUTPUT_FORMATS:
        raise ConfigError(f"{command} --out {path}: the file must end in .jsonl or .csv")


class _Output:
    """predictions.jsonl or .csv, appended one flushed, fsynced batch at a time, under OUT.lock (a second writer
    is refused). Reopening after a kill drops a torn last line and reports which ids are already there (`key`: a
    row's id; a subclass may write other rows). OS errors (read-only folder, full disk) are one-line
    OutputFileErrors; the rows written before stay."""
    command = "predict"

    def __init__(self, path: Path, model: "FusedModel") -> None:
        from filelock import FileLock, Timeout

        check_output_path(path, self.command)
        self.path, self.csv = path, path.suffix.lower() == ".csv"
        self.columns = self._columns(model)
        self.file: Optional[io.TextIOBase] = None
        self.lock = FileLock(f"{path}.lock", timeout=0)
        self.written, self.broken = 0, False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.lock.acquire()
            except Timeout:
                raise OutputFileError(f"{self.command} --out {path}: another `speechfuse {self.command}` is writing to "
                                      f"it (lock {path}.lock is held); wait for it to finish, or write to another "
                                      "file") from None
            self.done = self._recover()
            self.file = open(path, "a", encoding="utf-8", newline="")
            if self.csv and self.file.tell() == 0:
                self.file.write(self._csv_line(dict(zip(self.columns, self.columns))))
        except OSError as err:
            self.broken = True
            self.close()
            raise OutputFileError(self._os_error(err)) from err
        except BaseException:
            self.close()
            raise

    def _os_error(self, err: OSError) -> str:
        what = f"{self.command} --out {self.path}: cannot write ({err.strerror or err})"
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            return (f"{what}: the disk is full after {self.written} new row(s); the rows written are kept: free some "
                    "space and run the same command again to continue")
        return f"{what}; make the folder writable or choose another --out"

    def _columns(self, model: "FusedModel") -> list[str]:
        return ["id", "path", "duration", "prediction", "error"] + model.task.prediction_columns()

    def key(self, row: dict[str, Any]) -> str:
        return row["id"]

    def _recover(self) -> dict[str, dict[str, Any]]:
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):  # a kill mid-write left a partial line
            with open(self.path, "r+b") as f:
                f.truncate(cut)
            data = data[:cut]
        text = data.decode("utf-8")
        if self.csv:
            rows = list(csv.DictReader(io.StringIO(text)))
            if rows and list(rows[0].keys()) != self.columns:
                raise ConfigError(f"{self.command} --out {self.path}: it holds columns {list(rows[0].keys())} of "
                                  "another model; write to a new file")
        else:
            rows = []
            for n, line in enumerate(text.splitlines(), start=1):
                try:
                    rows.append(json.loads(line))
                except ValueError as err:
                    raise ConfigError(f"{self.command} --out {self.path}: line {n} is not JSON ({err}); it is not a "
                                      "predictions file, write to a new one") from err
        try:
            return {self.key(row): row for row in rows}
        except (KeyError, TypeError) as err:  # e.g. a `verify` scores file given to `predict`, or the reverse
            raise ConfigError(f"{self.command} --out {self.path}: its rows are not `speechfuse {self.command}` rows "
                              f"({err!r}); write to a new file") from err

    def _csv_line(self, row: dict[str, Any]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer).writerow([row.get(c, "") for c in self.columns])
        return buffer.getvalue()

    def _row(self, result: Result) -> dict[str, Any]:
        if not self.csv:
            return result.to_dict()
        row: dict[str, Any] = {"id": result.id, "path": result.path or ""}
        if isinstance(result, Failure):
            return {**row, "error": result.error}
        return {**row, "duration": result.duration, **result.csv_cells()}

    def write(self, results: list[Result]) -> None:
        try:
            for result in results:
                row = self._row(result)
                self.file.write(self._csv_line(row) if self.csv else json.dumps(row) + "\n")
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as err:
            self.broken = True  # close() must not raise the same error again
            raise OutputFileError(self._os_error(err)) from err
        self.written += len(results)
        for result in results:
            as_dict = result.to_dict()
            self.done[self.key(as_dict)] = as_dict

    def close(self) -> None:
        try:
            if self.file is not None:
                self.file.close()
        except OSError as err:  # the buffer's last rows could not be flushed (a rerun drops a torn line)
            if not self.broken:
                raise OutputFileError(self._os_error(err)) from err
        finally:
            self.file = None
            self.lock.release()


def predict_to_file(model: "FusedModel", inputs: Any, out: str | os.PathLike, batch_seconds: float = 60.0,
                    progress: Optional[bool] = True) -> dict[str, Any]:
    """Stream predictions to `out` (.jsonl or .csv) batch by batch; inputs already in `out` are skipped, so a
    killed run continues where it stopped. Failures are written with their reason. Returns a summary: counts of
    this call (`predicted`, `failed`, `skipped`: already in `out`), `inputs` and `failed_inputs` (inputs whose
    row in `out` is a failure, this call's or an earlier one's), `repeated` (id -> the rows that gave it, for
    inputs given more than once: predicted once), and the task's metrics when the inputs carry references (a
    manifest with the model's target column)."""
    model.task.require_predictions("predict")
    output = _Output(Path(out), model)  # first: a bad --out fails before the inputs are scanned
    repeats: dict[str, list[str]] = {}
    try:
        entries = collect_inputs(inputs, model.sample_rate, model.target, repeats=repeats)
        _check_resumed_paths(output, entries)
    except BaseException:
        output.close()
        raise
    items, _ = _split(entries)
    if repeats:
        listed = "; ".join(f"{key!r} ({', '.join(where)})" for key, where in list(repeats.items())[:5])
        more = f"; and {len(repeats) - 5} more" if len(repeats) > 5 else ""
        warnings.warn(f"predict: {len(repeats)} input(s) given more than once, predicted once: {listed}{more}",
                      stacklevel=2)
    seen = set(output.done)
    todo: list[_Item] = []
    fresh_failures: list[Failure] = []
    for entry in entries:
        if entry.id not in seen:
            seen.add(entry.id)
            (todo if isinstance(entry, _Item) else fresh_failures).append(entry)
    ids = list(dict.fromkeys(e.id for e in entries))
    counts = {"predicted": 0, "failed": 0, "skipped": sum(i in output.done for i in ids)}
    try:
        if fresh_failures:
            output.write(fresh_failures)
            counts["failed"] += len(fresh_failures)
        for batch in iter_predictions(model, todo, batch_seconds, progress):
            output.write(batch)
            counts["failed"] += sum(isinstance(r, Failure) for r in batch)
            counts["predicted"] += sum(isinstance(r, Prediction) for r in batch)
    finally:
        output.close()
    failed_inputs = sum(bool(output.done.get(i, {}).get("error")) for i in ids)
    summary: dict[str, Any] = {"out": str(out), **counts, "inputs": len(ids), "failed_inputs": failed_inputs}
    if repeats:
        summary["repeated"] = repeats
    pairs = [(model.task.scored_prediction(output.done[it.id]), it.reference) for it in items
             if it.reference is not None and it.id in output.done]
    pairs = [(p, r) for p, r in pairs if p is not None]
    if pairs:
        summary["metrics"] = model.task.metrics([p for p, _ in pairs], [r for _, r in pairs])
        summary["scored"] = len(pairs)
    return summary


def _check_resumed_paths(output: _Output, entries: list[Union[_Item, Failure]]) -> None:
    """An id already in the output must be the same file: else a rerun would score one file's row for another."""
    for entry in entries:
        row = output.done.get(entry.id)
        if row and row.get("path") and entry.path and os.path.abspath(row["path"]) != os.path.abspath(entry.path):
            raise ConfigError(f"predict --out {output.path}: it already holds id {entry.id!r} for {row['path']}, but "
                              f"this input {entry.id!r} is {entry.path}; write to a new file")


__all__ = ["predict", "predict_to_file", "OutputFileError", "verify", "iter_predictions", "collect_inputs",
           "Prediction", "Transcription", "LanguageTranscription", "Classification", "SpeakerEmbedding", "Verification",
           "Failure"]
