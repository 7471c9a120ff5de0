"""Is run A better than run B? A paired bootstrap over the utterances both were evaluated on.

    result = compare_runs("runs/ws", "runs/hconv", split="test")
    result["difference"], result["low"], result["high"], result["p_value"]   # A minus B, in the task's metric

Reads each run's utterances_<split>.jsonl (speechfuse.utterances) and task.json. The utterances are matched
by id; runs scored on different utterance sets (or different references) are refused, naming what differs.
The difference is in the task's `utterance_metric` (WER, pooled CER, accuracy), A minus B, with a seeded
percentile interval and a two-sided p-value (speechfuse.stats.paired_bootstrap).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import ConfigError
from .stats import format_p, paired_bootstrap
from .utterances import N_RESAMPLES, SEED, metric_ci, read_utterances, utterances_path


def run_metric(run_dir: str | os.PathLike) -> tuple[str, bool]:
    """(utterance_metric, higher_is_better) of the task a run folder was trained for."""
    from .tasks import TASKS

    path = Path(run_dir) / "task.json"
    try:
        name = json.loads(path.read_text(encoding="utf-8"))["name"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{path}: missing or unreadable; {run_dir} is not a finished speechfuse run folder") from None
    cls = TASKS.get(name)
    if cls.utterance_metric is None:
        raise ConfigError(f"{run_dir}: task {name!r} has no per-utterance metric ({cls.main_metric} is not a sum over "
                          "utterances), so its runs cannot be compared utterance by utterance")
    return cls.utterance_metric, cls.higher_is_better


def _by_id(rows: list[dict], path: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for row in rows:
        if row["id"] in out:
            raise ConfigError(f"{path}: utterance id {row['id']!r} appears twice; ids must be unique to pair runs")
        out[row["id"]] = row
    return out


def _examples(ids: set[str]) -> str:
    listed = sorted(ids)
    return ", ".join(repr(i) for i in listed[:5]) + (f" and {len(listed) - 5} more" if len(listed) > 5 else "")


def paired_utterances(run_a: str | os.PathLike, run_b: str | os.PathLike, split: str = "test"
                      ) -> tuple[list[float], list[float], list[float]]:
    """(errors_a, errors_b, totals) over the same utterances, in run A's order."""
    path_a, path_b = utterances_path(run_a, split), utterances_path(run_b, split)
    a, b = _by_id(read_utterances(path_a), path_a), _by_id(read_utterances(path_b), path_b)
    if a.keys() != b.keys():
        only_a, only_b = set(a) - set(b), set(b) - set(a)
        parts = [f"{len(only_a)} only in {path_a} ({_examples(only_a)})" if only_a else "",
                 f"{len(only_b)} only in {path_b} ({_examples(only_b)})" if only_b else ""]
        raise ConfigError(f"compare: the runs were scored on different {split} utterances: "
                          + "; ".join(p for p in parts if p) + ". Evaluate both runs on the same manifest")
    differ = {i for i in a if a[i]["reference"] != b[i]["reference"] or a[i]["totals"] != b[i]["totals"]}
    if differ:
        raise ConfigError(f"compare: {len(differ)} {split} utterance(s) have different references in {path_a} and "
                          f"{path_b} ({_examples(differ)}); evaluate both runs on the same manifest")
    return ([a[i]["errors"] for i in a], [b[i]["errors"] for i in a], [a[i]["totals"] for i in a])


def compare_runs(run_a: str | os.PathLike, run_b: str | os.PathLike, split: str = "test",
                 n_resamples: int = N_RESAMPLES, seed: int = SEED) -> dict:
    """A minus B in the task's utterance metric over the same utterances: value of each, the difference, its
    95 % bootstrap interval (low, high) and two-sided p-value."""
    metric, higher = run_metric(run_a)
    if run_metric(run_b) != (metric, higher):
        raise ConfigError(f"compare: {run_a} is scored by {metric} but {run_b} by {run_metric(run_b)[0]}; compare "
                          "runs of the same task")
    errors_a, errors_b, totals = paired_utterances(run_a, run_b, split)
    result = paired_bootstrap(errors_a, errors_b, totals, n_resamples=n_resamples, seed=seed)
    total = sum(totals)
    value_a, value_b = sum(errors_a) / total, sum(errors_b) / total
    difference, low, high = result["difference"], result["low"], result["high"]
    if higher:  # accuracy = 1 - error rate: the difference and its interval change sign
        value_a, value_b, difference, low, high = 1 - value_a, 1 - value_b, -difference, -high, -low
    return {"metric": metric, "split": split, "utterances": len(totals), "a": value_a, "b": value_b,
            "difference": difference, "low": low, "high": high, "p_value": result["p_value"],
            "resamples": n_resamples, "higher_is_better": higher}


def pooled_errors(run_dirs: list[Path], split: str = "test") -> dict[str, tuple[float, float]]:
    """id -> (errors, totals) summed over the runs (the seeds of one configuration, scored on the same
    utterances): their ratio is the mean of the runs' error rates, and resampling stays over utterances."""
    pooled: dict[str, tuple[float, float]] = {}
    for run_dir in run_dirs:
        path = utterances_path(run_dir, split)
        rows = _by_id(read_utterances(path), path)
        if pooled and rows.keys() != pooled.keys():
            raise ConfigError(f"{path}: scored on other utterances than {run_dirs[0]}; the seeds of one "
                              "configuration must share their test set")
        for i, row in rows.items():
            errors, totals = pooled.get(i, (0, 0))
            pooled[i] = (errors + row["errors"], totals + row["totals"])
    return pooled


def rank_against_best(groups: dict[str, list[Path]], split: str = "test", alpha: float = 0.05) -> dict[str, dict]:
    """Per group (a sweep row: one run, or one configuration's seeds, pooled by `pooled_errors`): its pooled
    bootstrap interval (`ci_low`, `ci_high`), and `vs_best_p`, the paired bootstrap p-value against the best
    group scored on the same utterances (None for the best itself); `tied_with_best` is "best", "yes"
    (p >= alpha: not distinguishable) or "no". {} when a run lacks per-utterance results (or its task has none)."""
    try:
        metric, higher = run_metric(next(iter(groups.values()))[0])
        pooled = {key: pooled_errors(dirs, split) for key, dirs in groups.items()}
    except (ConfigError, StopIteration):
        return {}
    by_set: dict[frozenset, list[str]] = {}
    for key, rows in pooled.items():  # a `data` grid gives each fold its own test set and its own best
        by_set.setdefault(frozenset(rows), []).append(key)
    out: dict[str, dict] = {}
    for ids, keys in by_set.items():
        order = list(pooled[keys[0]])  # the first run's file order, so a run's interval is the one it reported
        totals = [pooled[keys[0]][i][1] for i in order]
        errors = {k: [pooled[k][i][0] for i in order] for k in keys}
        best = min(keys, key=lambda k: sum(errors[k]))  # the lowest error rate: also the highest accuracy
        for key in keys:
            low, high = metric_ci(errors[key], totals, higher)
            p = None if key == best else paired_bootstrap(errors[key], errors[best], totals, n_resamples=N_RESAMPLES,
                                                          seed=SEED)["p_value"]
            tied = "best" if p is None else ("yes" if p >= alpha else "no")
            out[key] = {"metric": metric, "ci_low": low, "ci_high": high, "vs_best_p": p, "tied_with_best": tied}
    return out


def describe(result: dict, run_a: str, run_b: str) -> str:
    """One line: `wer: A 0.1200 - B 0.1500 = -0.0300 (95 % CI [-0.0500, -0.0100], p = 0.002, 300 test utterances)`."""
    return (f"{result['metric']}: {run_a} {result['a']:.4f} - {run_b} {result['b']:.4f} = {result['difference']:+.4f} "
            f"(95 % CI [{result['low']:+.4f}, {result['high']:+.4f}], "
            f"{format_p(result['p_value'], result.get('resamples', N_RESAMPLES))}, "
            f"{result['utterances']} {result['split']} utterances)")


__all__ = ["compare_runs", "paired_utterances", "run_metric", "pooled_errors", "rank_against_best", "describe"]
