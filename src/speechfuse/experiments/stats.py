"""Spread and significance for comparing runs: mean ± std over seeds, bootstrap intervals over utterances.

Per-utterance scores are given as `errors` with optional `totals`, so one function covers both kinds of
metric: accuracy-like metrics are the mean of per-utterance values (totals=None), and WER/CER are corpus
ratios sum(errors) / sum(totals) (edit errors and reference words per utterance), resampled as pairs.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from speechfuse.errors import ConfigError


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n-1); the std of a single value is NaN (no spread measured)."""
    data = np.asarray(list(values), dtype=float)
    if data.size == 0:
        raise ConfigError("mean_std: no values")
    return float(data.mean()), float(data.std(ddof=1)) if data.size > 1 else math.nan


def _as_arrays(errors: Sequence[float], totals: Sequence[float] | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    e = np.asarray(list(errors), dtype=float)
    t = np.ones_like(e) if totals is None else np.asarray(list(totals), dtype=float)
    if e.size == 0 or e.shape != t.shape:
        raise ConfigError(f"{what}: need one error and one total per utterance, got {e.size} and {t.size}")
    if t.sum() <= 0:
        raise ConfigError(f"{what}: the totals sum to {t.sum()}; nothing to score")
    return e, t


def _resamples(count: int, n_resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, count, size=(n_resamples, count))


def bootstrap_ci(errors: Sequence[float], totals: Sequence[float] | None = None, n_resamples: int = 1000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(point, low, high): the metric sum(errors)/sum(totals) and its percentile bootstrap interval,
    resampling utterances with replacement (seeded, so the interval is reproducible)."""
    e, t = _as_arrays(errors, totals, "bootstrap_ci")
    idx = _resamples(e.size, n_resamples, seed)
    stats = e[idx].sum(axis=1) / np.maximum(t[idx].sum(axis=1), 1e-12)
    tail = (1 - level) / 2 * 100
    return float(e.sum() / t.sum()), float(np.percentile(stats, tail)), float(np.percentile(stats, 100 - tail))


def paired_bootstrap(errors_a: Sequence[float], errors_b: Sequence[float], totals: Sequence[float] | None = None,
                     n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """A minus B on the same utterances: the difference, its bootstrap interval and a two-sided p-value
    (twice the smaller share of resampled differences on either side of zero, at most 1)."""
    a, t = _as_arrays(errors_a, totals, "paired_bootstrap")
    b, _ = _as_arrays(errors_b, totals, "paired_bootstrap")
    if a.shape != b.shape:
        raise ConfigError(f"paired_bootstrap: the runs scored {a.size} and {b.size} utterances; compare runs "
                          "evaluated on the same test set")
    idx = _resamples(a.size, n_resamples, seed)
    denominators = np.maximum(t[idx].sum(axis=1), 1e-12)
    diffs = (a[idx].sum(axis=1) - b[idx].sum(axis=1)) / denominators
    tail = (1 - level) / 2 * 100
    p = min(1.0, 2 * min(float((diffs <= 0).mean()), float((diffs >= 0).mean())))
    return {"difference": float((a.sum() - b.sum()) / t.sum()), "low": float(np.percentile(diffs, tail)),
            "high": float(np.percentile(diffs, 100 - tail)), "p_value": p}


def format_p(p: float, n_resamples: int) -> str:
    """`p = 0.012`, or `p < 0.001` when no resample fell on the other side (the resolution of n resamples)."""
    resolution = 1 / n_resamples
    return f"p < {resolution:.3g}" if p < resolution else f"p = {p:.3g}"


__all__ = ["mean_std", "bootstrap_ci", "paired_bootstrap", "format_p"]
