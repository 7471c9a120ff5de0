"""Is run A better than run B? A paired bootstrap over the utterances both were evaluated on.

    result = compare_runs("runs/ws", "runs/hconv", split="test")
    result["difference"], result["low"], result["high"], result["p_value"]   # A minus B, in the task's metric

Reads each run's utterances_<split>.jsonl (speechfuse.training.utterances) and task.json. The utterances are matched
by id; runs scored on different utterance sets (or different references) are refused, naming what differs.
The difference is in the task's `utterance_metric` (WER, pooled CER, accuracy), A minus B, with a seeded
percentile interval and a two-sided p-value (speechfuse.experiments.stats.paired_bootstrap).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from speechfuse.errors import ConfigError
from speechfuse.training.runfolder import RunFolder
from speechfuse.experiments.stats import format_p, paired_bootstrap
from speechfuse.training.utterances import N_RESAMPLES, SEED, metric_ci, read_utterances, utterances_path


def run_metric(run_dir: str | os.PathLike) -> tuple[str, bool]:
    """(utterance_metric, higher_is_better) of the task a run folder was trained for."""
    from speechfuse.tasks import TASKS

    name = RunFolder(run_dir).task_name()
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
    per_run = _per_seed(dict(enumerate(run_dirs)), split)
    order = _order(per_run)
    errors, totals = _pool(per_run, list(per_run), order)
    return {i: (e, t) for i, e, t in zip(order, errors, totals)}


def _per_seed(runs: Mapping[Any, Path], split: str) -> dict[Any, dict[str, tuple[float, float]]]:
    """seed -> {id: (errors, totals)} of one configuration's runs, which must share their test utterances."""
    out: dict[Any, dict[str, tuple[float, float]]] = {}
    for seed, run_dir in runs.items():
        path = utterances_path(run_dir, split)
        rows = {i: (row["errors"], row["totals"]) for i, row in _by_id(read_utterances(path), path).items()}
        if out and rows.keys() != next(iter(out.values())).keys():
            raise ConfigError(f"{path}: scored on other utterances than {next(iter(runs.values()))}; the seeds of "
                              "one configuration must share their test set")
        out[seed] = rows
    return out


def _order(per_seed: dict[Any, dict[str, tuple[float, float]]]) -> list[str]:
    return list(next(iter(per_seed.values())))  # the first run's file order: a run's interval is the one it reported


def _pool(per_seed: dict[Any, dict[str, tuple[float, float]]], seeds: list, order: list[str]
          ) -> tuple[list[float], list[float]]:
    """(errors, totals) per utterance in `order`, summed over `seeds`."""
    return ([sum(per_seed[s][i][0] for s in seeds) for i in order], [sum(per_seed[s][i][1] for s in seeds) for i in order])


def _by_seed(runs: Mapping[Any, Path] | Sequence[Path]) -> dict[Any, Path]:
    return dict(runs) if isinstance(runs, Mapping) else dict(enumerate(runs))


def rank_against_best(groups: Mapping[str, Mapping[Any, Path] | Sequence[Path]], split: str = "test",
                      alpha: float = 0.05) -> dict[str, dict]:
    """Mark each group (a sweep row: its runs by seed, {seed: run_dir}; a list gives them by position) against the
    best group scored on the same test utterances (a `data` grid gives each fold its own test set and best).

    The best is the lowest error rate (pooled over the group's own seeds: sum of errors / sum of totals) among
    the groups with the most seeds, so a configuration whose other seeds are still running (or failed) is never
    picked over one measured on every seed. Every other group is compared with the best on the seeds both have:
    a paired bootstrap over the utterances of those seeds' summed errors. Per group: its pooled bootstrap
    interval (`ci_low`, `ci_high`), `vs_best_p` (None for the best, or when no seed is shared),
    `vs_best_seeds` (the seeds compared) and `tied_with_best`: "best"; "yes" (p >= alpha: not
    distinguishable); "no" (worse); "better" (better than the best on the shared seeds: a group with missing
    seeds); "not comparable" (no seed in common with the best).
    {} when a run lacks per-utterance results (or its task has none)."""
    try:
        runs = {key: _by_seed(dirs) for key, dirs in groups.items()}
        metric, higher = run_metric(next(iter(next(iter(runs.values())).values())))
        scores = {key: _per_seed(seed_dirs, split) for key, seed_dirs in runs.items()}
    except (ConfigError, StopIteration):
        return {}
    by_set: dict[frozenset, list[str]] = {}
    for key, per_seed in scores.items():
        by_set.setdefault(frozenset(_order(per_seed)), []).append(key)
    out: dict[str, dict] = {}
    for keys in by_set.values():
        order = _order(scores[keys[0]])
        pooled = {k: _pool(scores[k], list(scores[k]), order) for k in keys}
        rate = {k: sum(errors) / sum(totals) for k, (errors, totals) in pooled.items()}
        most = max(len(scores[k]) for k in keys)
        best = min((k for k in keys if len(scores[k]) == most), key=lambda k: rate[k])  # first of equal rates
        for key in keys:
            low, high = metric_ci(*pooled[key], higher)
            shared = [s for s in scores[key] if s in scores[best]]
            p, tied = None, "best"
            if key != best and not shared:
                tied = "not comparable"
            elif key != best:
                mine, totals = _pool(scores[key], shared, order)
                theirs, _ = _pool(scores[best], shared, order)
                p = paired_bootstrap(mine, theirs, totals, n_resamples=N_RESAMPLES, seed=SEED)["p_value"]
                tied = "yes" if p >= alpha else ("better" if sum(mine) < sum(theirs) else "no")
            out[key] = {"metric": metric, "ci_low": low, "ci_high": high, "vs_best_p": p, "vs_best_seeds": shared,
                        "tied_with_best": tied}
    return out


def describe(result: dict, run_a: str, run_b: str) -> str:
    """One line: `wer: A 0.1200 - B 0.1500 = -0.0300 (95 % CI [-0.0500, -0.0100], p = 0.002, 300 test utterances)`."""
    return (f"{result['metric']}: {run_a} {result['a']:.4f} - {run_b} {result['b']:.4f} = {result['difference']:+.4f} "
            f"(95 % CI [{result['low']:+.4f}, {result['high']:+.4f}], "
            f"{format_p(result['p_value'], result.get('resamples', N_RESAMPLES))}, "
            f"{result['utterances']} {result['split']} utterances)")


__all__ = ["compare_runs", "paired_utterances", "run_metric", "pooled_errors", "rank_against_best", "describe"]
