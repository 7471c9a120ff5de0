"""Score a trial list with a verification model, streaming one row per trial to a file (`speechfuse verify`).

    verify_to_file(model, "veri_test2.txt", "scores.jsonl", root="wav/")

The trial list is `LABEL ENROL TEST` lines (VoxCeleb1's veri_test2.txt) or `ENROL TEST` lines without labels
(data/trials.py); ENROL and TEST are audio paths, relative to `root` (default: the trial file's folder).
Trials go in file order, a chunk at a time: the files a chunk needs that are not embedded yet (about
`batch_seconds` of audio) are embedded, each file once per run, then the chunk's rows are appended, flushed
and fsynced. A rerun skips the (enrol, test) pairs already in the file. A pair on two lines is one trial:
written, scored and counted in the metrics once (listed with two different labels, the list is refused,
naming both lines). A trial with a missing or unreadable side is written with its `error` and the run goes on.
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from speechfuse.data.adapters import AUDIO_SUFFIXES
from speechfuse.data.trials import Trial, read_trials, unique_trials
from speechfuse.errors import AudioError, ConfigError
from speechfuse.serving.inference import Failure, Verification, _Item, _Output, collect_inputs, iter_predictions
from speechfuse.metrics.verification import verification_metrics

if TYPE_CHECKING:
    from speechfuse.fusion.model import FusedModel

ROOT_HINT = " (relative names resolve against --root, default the trial list's folder)"


@dataclass
class TrialScore:
    """One written row: the trial's names as in the list, its label (None: unlabelled), and either a score
    with its decision at the model's threshold, or the error that kept it from being scored."""
    enrol: str
    test: str
    label: Optional[int]
    score: Optional[float] = None
    threshold: Optional[float] = None
    decision: Optional[bool] = None
    error: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pair(enrol: str, test: str) -> str:
    return f"{enrol} {test}"  # unambiguous: names hold no whitespace, the list is split on it


class _TrialOutput(_Output):
    command = "verify"

    def _columns(self, model: "FusedModel") -> list[str]:
        return ["enrol", "test", "label", "score", "threshold", "decision", "error"]

    def key(self, row: dict[str, Any]) -> str:
        return _pair(row["enrol"], row["test"])

    def _row(self, result: TrialScore) -> dict[str, Any]:  # type: ignore[override]
        return result.to_dict()


def verify_pair(model: "FusedModel", enrol: str, test: str, batch_seconds: float = 60.0) -> Verification:
    """model.verify(enrol, test) for two files, with a one-line error naming the side that cannot be read."""
    require_verification_model(model, "the model")
    _, errors = _headers(model, [enrol, test], Path.cwd(), hint="")
    for side, name in (("A (enrol)", enrol), ("B (test)", test)):
        if name in errors:
            raise AudioError(f"{side}: {errors[name]}")
    return model.verify(enrol, test, batch_seconds=batch_seconds)


def require_verification_model(model: "FusedModel", source: str) -> None:
    if not model.task.scores_trials:
        raise ConfigError(f"{source} is a {model.task.name!r} model; verify needs a speaker verification model "
                          f"(trained with task: verify). Use `speechfuse predict` for this one")


def verify_to_file(model: "FusedModel", trials_path: str | os.PathLike, out: str | os.PathLike,
                   root: Optional[str | os.PathLike] = None, batch_seconds: float = 60.0,
                   progress: Optional[bool] = True) -> dict[str, Any]:
    """Stream one row per trial to `out` (.jsonl or .csv; see the module doc). Returns a summary with counts
    and, when the list has labels, EER and minDCF over every scored trial of the list in `out` (resumed ones
    included) and the accuracy of the decisions at the model's threshold."""
    require_verification_model(model, "the model")
    output = _TrialOutput(Path(out), model)  # first: a bad --out fails before the list is read
    try:
        trials = read_trials(trials_path, unlabelled=True)
        unique = unique_trials(trials, str(trials_path))  # a repeated line is one trial, in the metrics too
    except BaseException:
        output.close()
        raise
    base = Path(root) if root is not None else Path(trials_path).parent
    seen = set(output.done)
    todo: list[Trial] = []
    for trial in unique:
        if _pair(trial.enrol, trial.test) not in seen:  # not written by an earlier run
            todo.append(trial)
    counts = {"scored": 0, "failed": 0, "skipped": len(trials) - len(todo)}  # repeated lines, earlier runs
    try:
        for rows in _score_chunks(model, todo, base, batch_seconds, progress):
            output.write(rows)
            counts["failed"] += sum(r.error is not None for r in rows)
            counts["scored"] += sum(r.error is None for r in rows)
    finally:
        output.close()
    summary: dict[str, Any] = {"out": str(out), "trials": len(trials), **counts,
                               "threshold": model.task.threshold}
    if trials[0].label is not None:
        summary.update(_metrics(unique, output.done, model.task.threshold))
    return summary


def _score_chunks(model: "FusedModel", trials: list[Trial], base: Path, batch_seconds: float,
                  progress: Optional[bool]):
    """Rows of `trials`, in order, one list per chunk of trials whose new files total about batch_seconds."""
    names = list(dict.fromkeys(name for t in trials for name in (t.enrol, t.test)))
    items, errors = _headers(model, names, base)
    embedded: dict[str, torch.Tensor] = {}  # name -> L2-normalised embedding
    # name -> its highest cosines with the AS-norm cohort: all that as_norm reads of it (none without AS-norm)
    cohort: dict[str, torch.Tensor] = {}
    speakers = model.head.speakers.cpu()
    normalise = model.task.options["score_norm"] == "asnorm"
    bar = None
    from speechfuse.training.progress import quiet

    if (progress if progress is not None else len(trials) > 50) and not quiet():
        from tqdm import tqdm

        bar = tqdm(total=len(trials), unit="trial", desc="verify", file=sys.stderr)
    chunk: list[Trial] = []
    fresh: list[_Item] = []
    planned: set[str] = set()

    def flush() -> list[TrialScore]:
        for batch in iter_predictions(model, fresh, batch_seconds, progress=False):
            for result in batch:  # ids are the trial list's names (see _headers)
                if isinstance(result, Failure):
                    errors[result.id] = result.error
                else:
                    embedded[result.id] = result.embedding
                    if normalise:
                        scores = model.task.cohort_scores(result.embedding[None], speakers)[0]
                        cohort[result.id] = scores.topk(min(model.task.options["cohort_top"], len(scores))).values
        rows = [TrialScore(t.enrol, t.test, t.label, error=_trial_error(t, errors)) for t in chunk]
        good = [row for row in rows if row.error is None]
        if good:
            order = list(dict.fromkeys(name for row in good for name in (row.enrol, row.test)))
            index = {name: i for i, name in enumerate(order)}
            scores = model.task.trial_scores(torch.stack([embedded[n] for n in order]),
                                             torch.stack([cohort[n] for n in order]) if normalise else None,
                                             [index[r.enrol] for r in good], [index[r.test] for r in good])
            threshold = model.task.threshold
            for row, score in zip(good, scores.tolist()):
                row.score, row.threshold = score, threshold
                row.decision = None if threshold is None else score >= threshold
        if bar is not None:
            bar.update(len(chunk))
        chunk.clear()
        fresh.clear()
        return rows

    try:
        seconds = 0.0
        for trial in trials:
            chunk.append(trial)
            for name in (trial.enrol, trial.test):
                if name in items and name not in planned:
                    planned.add(name)
                    fresh.append(items[name])
                    seconds += items[name].duration
            if seconds >= batch_seconds:
                yield flush()
                seconds = 0.0
        if chunk:
            yield flush()
    finally:
        if bar is not None:
            bar.close()


def _headers(model: "FusedModel", names: list[str], base: Path, hint: str = ROOT_HINT
              ) -> tuple[dict[str, _Item], dict[str, str]]:
    """Each name's item (its header read), or the error that makes it unusable."""
    items: dict[str, _Item] = {}
    errors: dict[str, str] = {}
    for name in names:
        path = base / name
        if not path.exists():
            errors[name] = f"audio file not found: {path}{hint}"
            continue
        if path.is_dir() or path.suffix.lower() not in AUDIO_SUFFIXES:
            errors[name] = f"{path} is not an audio file ({', '.join(AUDIO_SUFFIXES)})"
            continue
        (entry,) = collect_inputs(path, model.sample_rate)
        if isinstance(entry, Failure):
            errors[name] = entry.error
        else:
            entry.id = name  # not the path: two names may be one file ('a.wav', './a.wav')
            items[name] = entry
    return items, errors


def _trial_error(trial: Trial, errors: dict[str, str]) -> Optional[str]:
    bad = [f"{side}: {errors[name]}" for side, name in (("enrol", trial.enrol), ("test", trial.test)) if name in errors]
    return "; ".join(bad) or None


def _metrics(trials: list[Trial], done: dict[str, dict[str, Any]], threshold: Optional[float]) -> dict[str, Any]:
    """EER, minDCF and decision accuracy over the list's trials that have a score in the output."""
    scored = []
    for t in trials:
        row = done.get(_pair(t.enrol, t.test))
        if row is not None and row.get("score") not in (None, ""):  # csv rows hold strings, "" for None
            scored.append((float(row["score"]), t.label))
    if len({label for _, label in scored}) < 2:
        return {"metrics": None, "metrics_note": "EER needs scored target and non-target trials; "
                                                 f"{len(scored)} scored trial(s) have one label only"}
    scores, labels = [s for s, _ in scored], [y for _, y in scored]
    metrics: dict[str, Any] = verification_metrics(scores, labels)
    if threshold is not None:
        metrics["accuracy"] = sum((s >= threshold) == bool(y) for s, y in scored) / len(scored)
    return {"metrics": metrics, "metrics_trials": len(scored)}
