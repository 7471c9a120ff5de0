"""Per-utterance results of an evaluation, and the bootstrap interval of a metric computed from them.

    write_utterances(run_dir, "test", ids, predictions, references, errors, totals)  # utterances_test.jsonl
    rows = read_utterances(utterances_path(run_dir, "test"))
    low, high = metric_ci(errors, totals, higher_is_better=False)

Each line of RUN_DIR/utterances_<split>.jsonl is one utterance: {"id", "reference", "prediction", "errors",
"totals"}, where errors/totals are the counts of the task's `utterance_metric` (Task.utterance_errors):
word edit errors and reference words for WER, character counts for CER, 0/1 and 1 for accuracy. The metric
is sum(errors) / sum(totals), or 1 minus it for a metric where higher is better (accuracy).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from speechfuse.errors import ConfigError
from speechfuse.io import write_atomic
from speechfuse.training.runfolder import RunFolder
from speechfuse.experiments.stats import bootstrap_ci

N_RESAMPLES = 1000  # bootstrap resamples of every reported interval
SEED = 0            # ... and their seed, so an interval is reproducible from the file
FIELDS = ("id", "reference", "prediction", "errors", "totals")


def utterances_path(run_dir: str | os.PathLike, split: str) -> Path:
    return RunFolder(run_dir).utterances(split)


def write_utterances(run_dir: str | os.PathLike, split: str, ids: Sequence[str], predictions: Sequence[str],
                     references: Sequence[str], errors: Sequence[int], totals: Sequence[int]) -> Path:
    lengths = {len(ids), len(predictions), len(references), len(errors), len(totals)}
    if len(lengths) != 1:
        raise ConfigError(f"write_utterances: {len(ids)} ids, {len(predictions)} predictions, {len(references)} "
                          f"references, {len(errors)} errors and {len(totals)} totals; need one of each per utterance")
    lines = [json.dumps(dict(zip(FIELDS, (str(i), str(r), str(p), int(e), int(t))))) + "\n"
             for i, p, r, e, t in zip(ids, predictions, references, errors, totals)]
    path = utterances_path(run_dir, split)
    write_atomic(path, "".join(lines))
    return path


def read_utterances(path: str | os.PathLike) -> list[dict]:
    """The rows of a per-utterance file; a missing file or a bad line is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: per-utterance results are written when a run finishes training "
                          f"(or by `speechfuse evaluate RUN --split {path.stem.partition('_')[2]}`)")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            if not all(k in row for k in FIELDS) or not all(isinstance(row[k], (int, float)) for k in FIELDS[3:]):
                raise ValueError
        except ValueError:
            raise ConfigError(f"{path} line {number}: expected a JSON object with {', '.join(FIELDS)} (numbers for "
                              "errors and totals); evaluate the run again to rewrite the file") from None
        rows.append(row)
    if not rows:
        raise ConfigError(f"{path} holds no utterances; evaluate the run again to rewrite it")
    return rows


def metric_ci(errors: Sequence[float], totals: Sequence[float], higher_is_better: bool) -> tuple[float, float]:
    """The 95 % bootstrap interval (seeded) of sum(errors)/sum(totals), or of 1 minus it when higher is better."""
    _, low, high = bootstrap_ci(errors, totals, n_resamples=N_RESAMPLES, seed=SEED)
    return (1 - high, 1 - low) if higher_is_better else (low, high)


__all__ = ["utterances_path", "write_utterances", "read_utterances", "metric_ci", "N_RESAMPLES", "SEED"]
