"""Run every combination of a config grid, sharing one feature cache, into one results table.

    rows = run_sweep(cfg, {"interface.name": ["weighted_sum", "hconv"],
                           "upstreams": [["whisper-tiny.en"], ["whisper-tiny.en", "resemblyzer"]]},
                     "runs/sweep1")

- Grid keys are dotted config keys (`interface.name`, `train.lr`, ...) or `upstreams`, whose values are
  lists of upstream specs (a spec string, or a `{"spec": ..., "options": {...}}` dict).
  A `data` value is a folder holding train.csv, dev.csv (and test.csv): one run per fold, e.g.
  `--grid data=er/fold1,er/fold2,er/fold3,er/fold4,er/fold5` over `speechfuse prepare iemocap` output.
- Each combination trains in `out_dir/runs/<readable name>` through `speechfuse.training.runner.train`.
- A run whose `metrics.json` exists is not trained again (resume); `train()` itself resumes a run that
  was cut off mid-way from its checkpoint.
- Every run uses the config's feature cache as `train` does (`cache: auto`: the user's cache,
  $SPEECHFUSE_HOME/cache, see speechfuse.data.loader.resolve_cache_dir), so a sweep and a `train` on the same
  config extract the features once.
- `jobs=N` (`--jobs N`) trains N runs at once, each in its own process with 1/N of this process's torch
  threads: every configuration's candidates (or runs) first, then the seeds at the chosen values. The
  caches are filled here first, with every thread. On a CPU, small heads use 2 threads poorly, so 2 jobs
  of 1 thread can train more runs per second than 1 job of 2 (benchmarks/sweep_jobs.py). A different
  thread count sums in a different order, and training amplifies that: `threads=` fixes the threads per run
  (the demo uses 1), so the numbers do not depend on the core count.
- `out_dir/results.md` and `out_dir/results.csv` are rewritten after every run, so a crash keeps the
  finished rows. Rows: run, upstreams, interface, interface_params, the grid values, dev_* and test_*.
- With `seeds=[0, 1, 2]` every combination trains once per seed (`train.seed`; run folders end in
  `__seed=S`). results.csv keeps one row per run (a `config` and a `seed` column); results.md and
  summary.csv give one row per configuration with the mean and sample std of every metric over its seeds.
- Runs with per-utterance results (utterances_test.jsonl: asr, multilingual_asr, classify) get a bootstrap 95 %
  interval of the test metric (`test_ci_low_<metric>` / `test_ci_high_<metric>`; over seeds, from the per-utterance errors summed
  over the seeds) and `vs_best_p` / `tied_with_best`: a paired bootstrap against the best row scored on the
  same test utterances; "yes" when p >= 0.05, i.e. not distinguishable from the best (speechfuse.experiments.compare).
  The best is the lowest error rate among the configurations with the most seeds; one with seeds missing
  (running or failed) lists them in `missing_seeds` and is compared on the seeds it shares (`vs_best_seeds`).
"""
from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import traceback
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from speechfuse.config import parse_value, set_dotted
from speechfuse.errors import ConfigError, SpeechfuseError
from speechfuse.experiments.report import plot_importance, write_table
from speechfuse.io import speechfuse_home, write_atomic
from speechfuse.training.runfolder import TEST_CHOSEN, RunFolder
from speechfuse.experiments.stats import mean_std

RESULTS_MD = "results.md"
RESULTS_CSV = "results.csv"
SUMMARY_CSV = "summary.csv"
SEED_KEY = "train.seed"
_MARKS = ("vs_best_p", "tied_with_best", "vs_best_seeds", "missing_seeds")  # recomputed with every table


class SweepFailed(SpeechfuseError):
    """Some runs of a sweep failed (the others ran and are in the tables): `rows` the finished rows, `failed` the
    failed run names."""

    def __init__(self, message: str, rows: list[dict], failed: list[str]) -> None:
        super().__init__(message)
        self.rows, self.failed = rows, failed


# ---------------------------------------------------------------------------------------------
# grid handling
# ---------------------------------------------------------------------------------------------
def parse_grid(items: Iterable[str]) -> dict[str, list]:
    """CLI `--grid` strings -> grid dict.

    `interface.name=weighted_sum,hconv` -> {"interface.name": ["weighted_sum", "hconv"]}
    `upstreams=whisper-tiny.en+resemblyzer,speech-embedding`
        -> {"upstreams": [["whisper-tiny.en", "resemblyzer"], ["speech-embedding"]]}
    Other values are parsed as YAML scalars (`train.lr=1e-3,3e-3` -> floats).
    """
    grid: dict[str, list] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,... (e.g. interface.name=weighted_sum,hconv)")
        key, _, raw = item.partition("=")
        key = key.strip()
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not key or not values:
            raise ConfigError(f"--grid {item!r}: needs a key and at least one value")
        if key in grid:
            raise ConfigError(f"--grid key {key!r} given twice; put all its values in one --grid")
        if key == "upstreams":
            grid[key] = [[s.strip() for s in v.split("+") if s.strip()] for v in values]
        else:
            grid[key] = [parse_value(v, f"--grid {item!r}") for v in values]
    return grid


def expand_grid(grid: dict[str, list] | list[dict[str, list]]) -> list[dict[str, Any]]:
    """Every combination, in the grid's key order (the last key varies fastest). A list of grids gives the
    union of their combinations, in order (e.g. single models x two interfaces, then pairs x three)."""
    if isinstance(grid, (list, tuple)):
        if not grid:
            raise ConfigError("sweep grid: an empty list of grids; give at least one grid dict")
        return [combo for one in grid for combo in expand_grid(one)]
    if not isinstance(grid, dict):
        raise ConfigError(f"sweep grid must be a dict of key -> list of values, got {type(grid).__name__}")
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"sweep grid key {key!r}: needs a non-empty list of values, got {values!r}")
        if key == "upstreams":
            for v in values:
                if not isinstance(v, (list, tuple)) or not v:
                    raise ConfigError(f"sweep grid 'upstreams': each value is a non-empty list of specs, got {v!r}")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _spec_name(u: Any) -> str:
    return u if isinstance(u, str) else str(u.get("spec"))


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(_short(v) for v in value)
    if isinstance(value, dict) and "spec" in value:
        return _spec_name(value)
    return str(value)


def _safe(text: str) -> str:
    text = text.replace("hf:", "").replace("/", "-")
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "-", text).strip("-") or "run"


def run_name(combo: dict[str, Any]) -> str:
    """A readable, filesystem-safe folder name, e.g. `whisper-tiny.en+resemblyzer__hconv__lr=0.001`."""
    parts = []
    for key, value in combo.items():
        if key in ("upstreams", "interface.name"):
            parts.append(_short(value))
        else:
            parts.append(f"{key.rsplit('.', 1)[-1]}={_short(value)}")
    return _safe("__".join(parts)) or "config"  # a sweep over seeds only: the config as given


# ---------------------------------------------------------------------------------------------
# config manipulation
# ---------------------------------------------------------------------------------------------
def _config_dict(cfg: Any) -> dict:
    if hasattr(cfg, "model_dump"):
        return cfg.model_dump()
    if isinstance(cfg, dict):
        return copy.deepcopy(cfg)
    raise ConfigError(f"run_sweep: cfg must be a speechfuse Config (or a dict), got {type(cfg).__name__}")


def _rebuild(like: Any, data: dict, source: str) -> Any:
    if hasattr(like, "model_dump"):
        from speechfuse.config import config_from_dict  # ConfigError naming the bad key

        return config_from_dict(data, ".", source)
    return data


def _upstream_entries(specs: list, base: list) -> list[dict]:
    """Spec strings -> config entries; a spec also in the base config keeps the base config's options."""
    base_by_spec = {}
    for entry in base or []:
        if isinstance(entry, dict) and "spec" in entry:
            base_by_spec.setdefault(entry["spec"], entry)
    out = []
    for s in specs:
        if isinstance(s, dict):
            out.append(copy.deepcopy(s))
        elif s in base_by_spec:
            out.append(copy.deepcopy(base_by_spec[s]))
        else:
            out.append({"spec": s})
    return out


def fold_manifests(folder: str) -> dict[str, str | None]:
    """{train, dev, test}.csv of one fold folder (`speechfuse prepare iemocap` writes fold1 ... fold5)."""
    paths = {split: Path(folder) / f"{split}.csv" for split in ("train", "dev", "test")}
    missing = [str(p) for split, p in paths.items() if split != "test" and not p.is_file()]
    if missing:
        raise ConfigError(f"sweep grid data={folder!r}: {', '.join(missing)} not found; a `data` grid value is a "
                          "folder holding train.csv, dev.csv and optionally test.csv (one fold)")
    return {split: str(p.resolve()) if p.is_file() else None for split, p in paths.items()}


def combo_config(cfg: Any, combo: dict[str, Any], cache_dir: str | None) -> Any:
    """The base config with one combination (and the shared cache folder) applied."""
    data = _config_dict(cfg)
    for key, value in combo.items():
        if key == "upstreams":
            data["upstreams"] = _upstream_entries(list(value), data.get("upstreams"))
        elif key == "data" and isinstance(value, str):
            data["data"] = {**data["data"], **fold_manifests(value)}
        else:
            set_dotted(data, key.split("."), copy.deepcopy(value), f"sweep grid key {key!r}")
    if cache_dir is not None:
        if isinstance(data.get("cache"), dict):  # the section form: keep its other options
            data["cache"]["dir"] = cache_dir
        else:
            data["cache"] = cache_dir
    return _rebuild(cfg, data, f"(sweep combination {combo})")


def shared_cache_dir(cfg: Any, out_dir: Path | None = None) -> str | None:
    """The feature cache folder the runs use, as resolve_cache_dir decides it (`auto`: the user's cache), None
    for `off`. `out_dir` is ignored: the cache is the user's, not the sweep folder's (kept for callers)."""
    if hasattr(cfg, "cache"):
        from speechfuse.data.loader import resolve_cache_dir

        folder = resolve_cache_dir(cfg)
        return str(folder) if folder is not None else None
    value = _config_dict(cfg).get("cache", "auto")
    value = value.get("dir", "auto") if isinstance(value, dict) else value
    if value == "off":
        return None
    return str(speechfuse_home() / "cache") if value in (None, "auto") else str(value)


# ---------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------
def _describe_combo(combo: dict) -> str:
    """`upstreams=a+b, interface.name=hconv, train.seed=0`: a combination as the grid gives it."""
    return ", ".join(f"{key}={_short(value)}" for key, value in combo.items()) or "the base config"


def _cell(text: str) -> Any:
    """A results.csv cell back as the number it was written from (write_table keeps floats as repr)."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _earlier_rows(out_dir: Path, planned: set[str], seeded: bool) -> list[dict]:
    """The rows of out_dir/results.csv whose runs this grid does not plan and that are finished: a rerun with
    another grid keeps them in the tables (a run whose folder was deleted drops out)."""
    from speechfuse.experiments.report import read_csv_table

    path = out_dir / RESULTS_CSV
    if not path.is_file():
        return []
    kept = []
    for row in read_csv_table(path):
        name = row.get("run")
        if not name or name in planned or not RunFolder(out_dir / "runs" / name).is_finished:
            continue
        row = {k: (v if k in ("run", "config") else _cell(v)) for k, v in row.items() if k not in _MARKS}
        if seeded and not row.get("config"):  # from a sweep without seeds: a configuration of its own
            row = {"config": name, "seed": None, **row}
        kept.append(row)
    if kept:
        print(f"speechfuse sweep: {len(kept)} finished run(s) of an earlier grid keep their rows in {path}: "
              + ", ".join(r["run"] for r in kept), file=sys.stderr, flush=True)
    return kept


def interface_params(run_dir: Path) -> int | None:
    """Trainable interface parameters as recorded by the runner in `interface.json`."""
    value = RunFolder(run_dir).read_interface().get("num_parameters")
    return value if isinstance(value, int) else None


def _flat_metrics(metrics: dict) -> dict:
    """dev_<metric>, test_<metric> and, from train.report_test_chosen, test_chosen_on_test_<metric> (and _step)."""
    out = {}
    for split in ("dev", "test", TEST_CHOSEN):
        for name, value in (metrics.get(split) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{split}_{name}"] = value
    return out


def result_row(name: str, combo: dict, run_cfg: Any, run_dir: Path, metrics: dict) -> dict:
    data = _config_dict(run_cfg)
    row: dict[str, Any] = {
        "run": name,
        "upstreams": "+".join(_spec_name(u) for u in data.get("upstreams") or []),
        "interface": (data.get("interface") or {}).get("name"),
        "interface_params": interface_params(run_dir),
    }
    for key, value in combo.items():
        if key not in ("upstreams", "interface.name"):
            row[key] = _short(value)
    row.update(_flat_metrics(metrics))
    return row


def _is_metric(key: str, value: Any) -> bool:
    return key.startswith(("dev_", "test_")) and isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_interval(key: str) -> bool:
    return key.split("_", 1)[-1].startswith(("ci_low_", "ci_high_"))


def summarise_seeds(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Per-seed rows -> (numbers, display): one row per `config` with `seeds` (how many) and, for every
    metric, `<metric>_mean` / `<metric>_std` (numbers) or `<metric>` as "mean ± std" (display)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["config"], []).append(row)
    numbers, display = [], []
    for config, members in groups.items():
        first = members[0]
        keep = {k: v for k, v in first.items() if k not in ("run", "config", "seed") and not _is_metric(k, v)}
        number_row = {"config": config, **keep, "seeds": len(members)}
        display_row = dict(number_row)
        # a per-seed interval is not averaged: the sweep gives each configuration a pooled one (_write_results)
        metrics = [k for k, v in first.items() if _is_metric(k, v) and not _is_interval(k)]
        for key in metrics:
            mean, std = mean_std([m[key] for m in members if _is_metric(key, m.get(key))])
            number_row[f"{key}_mean"], number_row[f"{key}_std"] = mean, std
            display_row[key] = f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"
        numbers.append(number_row)
        display.append(display_row)
    return numbers, display


def _marks(mark: dict | None, pooled_ci: bool, display: bool, seeds: Sequence | None = None) -> dict:
    """The columns rank_against_best adds to one table row (none when the runs have no per-utterance results);
    `vs_best_seeds` only where the comparison with the best used fewer than the sweep's `seeds`."""
    if not mark:
        return {}
    out: dict[str, Any] = {}
    metric = mark["metric"]
    if pooled_ci and display:
        out[f"test_ci_{metric}"] = f"[{mark['ci_low']:.4f}, {mark['ci_high']:.4f}]"
    elif pooled_ci:
        out[f"test_ci_low_{metric}"], out[f"test_ci_high_{metric}"] = mark["ci_low"], mark["ci_high"]
    out["vs_best_p"] = mark["vs_best_p"]
    out["tied_with_best"] = mark["tied_with_best"]
    if seeds and mark["tied_with_best"] != "best" and len(mark["vs_best_seeds"]) < len(seeds):
        out["vs_best_seeds"] = " ".join(str(s) for s in mark["vs_best_seeds"]) or "none"
    return out


def _write_results(rows: list[dict], out_dir: Path, seeds: Sequence[int] | None, figures: bool = True) -> None:
    from speechfuse.experiments.compare import rank_against_best

    if not seeds:
        groups = {r["run"]: [out_dir / "runs" / r["run"]] for r in rows}
        marks = rank_against_best(groups)
        write_table([{**r, **_marks(marks.get(r["run"]), False, False)} for r in rows], out_dir / RESULTS_MD,
                    out_dir / RESULTS_CSV)
        if figures:
            _write_figures(out_dir, groups, marks, {r["run"]: r for r in rows}, "")
        return
    numbers, display = summarise_seeds(rows)
    groups: dict[str, dict[Any, Path]] = {}
    for r in rows:
        groups.setdefault(r["config"], {})[r["seed"]] = out_dir / "runs" / r["run"]
    # a configuration whose other seeds are running (or failed) says which are missing
    missing = {config: " ".join(str(s) for s in seeds if s not in runs) for config, runs in groups.items()}
    for row in (*numbers, *display):
        if missing[row["config"]]:
            row["missing_seeds"] = missing[row["config"]]
    marks = rank_against_best(groups)  # per configuration: its seeds' per-utterance errors pooled
    write_table(rows, None, out_dir / RESULTS_CSV)
    write_table([{**n, **_marks(marks.get(n["config"]), True, False, seeds)} for n in numbers], None,
                out_dir / SUMMARY_CSV)
    write_table([{**d, **_marks(marks.get(d["config"]), True, True, seeds)} for d in display], out_dir / RESULTS_MD,
                None)
    if figures:
        _write_figures(out_dir, groups, marks, {n["config"]: n for n in numbers}, "_mean")


def _write_figures(out_dir: Path, groups: dict[str, list[Path] | dict[int, Path]], marks: dict[str, dict], rows: dict[str, dict],
                   suffix: str) -> None:
    """plots/comparison.png (main test metric per configuration, interval, tied-with-best marks) and
    plots/layers.png (each configuration's first run's (lowest seed's) layer weights), side by side."""
    from speechfuse.experiments.sweep_figures import COMPARISON_PNG, LAYERS_PNG, plot_comparison, plot_layer_weights

    metric = next((m["metric"] for m in marks.values()), None)
    if metric is not None:
        points = [{"label": key, "value": rows[key].get(f"test_{metric}{suffix}"), "low": marks[key]["ci_low"],
                   "high": marks[key]["ci_high"], "tied": marks[key]["tied_with_best"]}
                  for key in groups if key in marks and key in rows]
        plot_comparison(points, metric, out_dir / "plots" / COMPARISON_PNG)
    firsts = {key: dirs[min(dirs)] if isinstance(dirs, dict) else dirs[0] for key, dirs in groups.items()}
    plot_layer_weights([(key, _describe(first)) for key, first in firsts.items()], out_dir / "plots" / LAYERS_PNG)


def _describe(run_dir: Path) -> dict | None:
    info = RunFolder(run_dir).read_interface()
    desc = info.get("describe", info if info else None)
    return desc if isinstance(desc, dict) else None


# ---------------------------------------------------------------------------------------------
# parallel runs
# ---------------------------------------------------------------------------------------------
_QUIET_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


def _output_settings() -> dict:
    """This process's logging levels, warning filters and transformers' progress-bar switch, for the workers to
    copy (the demo silences all three)."""
    from transformers.utils import logging as tf_logging

    return {"levels": {name: logging.getLogger(name).level for name in _QUIET_LOGGERS},
            "filters": list(warnings.filters), "bars": tf_logging.is_progress_bar_enabled()}


def _worker_setup(threads: int, settings: dict) -> None:
    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels on import: set ours after)
    import torch

    torch.set_num_threads(threads)
    for name, level in settings["levels"].items():
        logging.getLogger(name).setLevel(level)
    warnings.filters[:] = settings["filters"]
    if not settings["bars"]:
        from transformers.utils import logging as tf_logging

        tf_logging.disable_progress_bar()


def _train_in_worker(train_fn: Callable, run_cfg: Any, run_dir: Path) -> dict:
    from speechfuse.plugins import load_plugins

    # a spawned worker starts bare: import the plug-ins whose components the config names (it lists them)
    plugins = run_cfg.get("plugins") if isinstance(run_cfg, dict) else getattr(run_cfg, "plugins", None)
    load_plugins(plugins or [], "plugins")
    return train_fn(run_cfg, run_dir)


class _Pool:
    """Trains combinations `jobs` at a time in worker processes (spawned on first use, kept for the sweep)."""

    def __init__(self, jobs: int, threads: int, run_of: Callable[[dict], tuple[str, Any, Path]], train_fn: Callable,
                 finished: Callable[[str, Path, dict | None], None],
                 failed: Callable[[dict, str, Path, Exception], None] | None) -> None:
        self.jobs, self.threads, self.run_of, self.train_fn, self.finished = jobs, threads, run_of, train_fn, finished
        self.failed = failed  # None: the first failure stops the sweep
        self.pool: ProcessPoolExecutor | None = None

    def train(self, combos: list[dict]) -> None:
        pending: dict[str, tuple[Any, Path, dict]] = {}
        for combo in combos:
            name, run_cfg, run_dir = self.run_of(combo)
            if RunFolder(run_dir).is_finished:
                self.finished(name, run_dir, None)
            else:
                pending.setdefault(name, (run_cfg, run_dir, combo))
        if not pending:
            return
        if self.pool is None:
            import multiprocessing

            self.pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_worker_setup, initargs=(self.threads, _output_settings()))
        futures: dict[Future, tuple[str, Path, dict]] = {}
        for name, (run_cfg, run_dir, combo) in pending.items():
            run_dir.mkdir(parents=True, exist_ok=True)
            futures[self.pool.submit(_train_in_worker, self.train_fn, run_cfg, run_dir)] = (name, run_dir, combo)
        waiting = set(futures)
        while waiting:
            try:
                done, waiting = wait(waiting, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt as stop:  # close() then waits for the runs to save their checkpoints
                self.forward_signal(getattr(stop, "signum", signal.SIGINT))
                raise
            for future in done:
                name, run_dir, combo = futures[future]
                try:
                    metrics = future.result()
                except Exception as exc:
                    if self.failed is None:
                        self._stop(waiting, exc, name, run_dir)
                        raise
                    self.failed(combo, name, run_dir, exc)
                    continue
                except BaseException as exc:
                    self._stop(waiting, exc, name, run_dir)
                    raise
                self.finished(name, run_dir, metrics)

    @staticmethod
    def _stop(waiting: set, exc: BaseException, name: str, run_dir: Path) -> None:
        for other in waiting:  # runs not started yet are dropped; running ones finish and are kept
            other.cancel()
        if hasattr(exc, "add_note"):
            exc.add_note(f"speechfuse sweep: run {name!r} in {run_dir} failed")

    def forward_signal(self, signum: int) -> None:
        """A SIGTERM / SIGUSR1 sent to this process only (Ctrl-C reaches the whole process group): pass it on,
        so each running run saves its checkpoint and stops."""
        if self.pool is None or signum == signal.SIGINT:
            return
        for pid in list(getattr(self.pool, "_processes", None) or {}):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def _prefill_caches(cfg: Any, combos: list[dict], out_dir: Path, keep_going: bool) -> None:
    """Fill the caches of every frozen upstream the combinations use, here, before the workers start (one
    `fill_config_caches` per distinct data section, over the union of its upstreams). With keep_going, a data
    section that cannot be read is left to its runs, which then fail one by one and are named."""
    from speechfuse.data.loader import resolve_cache_dir
    from speechfuse.cache.fill import fill_config_caches

    if resolve_cache_dir(cfg) is None:
        return
    groups: dict[str, dict] = {}
    for combo in combos:
        data = _config_dict(combo_config(cfg, combo, None))
        ups = data.get("upstreams") or []
        if any((u.get("options") or {}).get("trainable") for u in ups if isinstance(u, dict)):
            continue  # trainable upstreams are not cached
        group = groups.setdefault(json.dumps(data.get("data"), sort_keys=True, default=str), {**data, "upstreams": []})
        for up in ups:
            if up not in group["upstreams"]:
                group["upstreams"].append(up)
    for data in groups.values():
        group_cfg = _rebuild(cfg, data, "(sweep cache fill)")
        progress = (data.get("train") or {}).get("progress_bar", True)
        try:
            fill_config_caches(group_cfg, out_dir / "cache_fill", progress=progress)
        except Exception as exc:
            if not keep_going:
                raise
            train_manifest = (data.get("data") or {}).get("train")
            print(f"speechfuse sweep: the feature cache for data.train {train_manifest} was not filled "
                  f"({type(exc).__name__}); its runs will say why", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------------------------
def _task_class(cfg: Any) -> Any:
    from speechfuse.tasks import TASKS

    task = _config_dict(cfg).get("task")
    return TASKS.get(str(task.get("name") if isinstance(task, dict) else task))


def _selection_metric(cfg: Any) -> tuple[str, bool]:
    """The task's main metric and whether higher is better: what `select` compares on dev."""
    cls = _task_class(cfg)
    return cls.main_metric, cls.higher_is_better


def _plan(grid: dict[str, list] | list[dict[str, list]], select: dict[str, list] | None,
          seeds: Sequence[int] | None) -> list[dict]:
    """Per configuration: its candidates (combos to compare on dev, first seed) and its final combos."""
    combos = expand_grid(grid)
    keys = {k for combo in combos for k in combo}
    if seeds and SEED_KEY in keys:
        raise ConfigError(f"sweep: give the seeds either as --seeds or as a {SEED_KEY} grid key, not both")
    overlap = sorted(set(select or {}) & keys)
    if overlap:
        raise ConfigError(f"sweep: {overlap} are both grid and select keys; a key is either compared or chosen")
    seeded = [{SEED_KEY: int(s)} for s in seeds] if seeds else [{}]
    plan = []
    for combo in combos:
        candidates = [{**combo, **c, **seeded[0]} for c in expand_grid(select)] if select else []
        plan.append({"combo": combo, "candidates": candidates, "seeded": seeded})
    return plan


def run_sweep(cfg: Any, grid: dict[str, list] | list[dict[str, list]], out_dir, *, seeds: Sequence[int] | None = None,
              select: dict[str, list] | None = None, train_fn: Callable | None = None, progress: bool = True,
              plots: bool = True, on_run: Callable[[str], None] | None = None, jobs: int = 1,
              threads: int | None = None, launcher: Callable | None = None, keep_going: bool = True
              ) -> list[dict]:
    """Train every combination of `grid` (a dict, or a list of dicts: their union) over `cfg`; return one
    result row per run (see module doc).

    seeds: train each combination once per seed and summarise mean ± std (None: the config's own seed).
    select: keys -> candidate values chosen on dev, the same rule for every configuration: each candidate
        trains on the first seed, the best dev main metric wins (lowest for WER), then the seeds run at that
        choice (the first seed's run is the candidate's, reused). Every candidate is listed in selection.md/csv.
    train_fn: defaults to `speechfuse.training.runner.train` (cfg, run_dir) -> {"dev": {...}, "test": {...}}; with jobs > 1
        it must be picklable (a module-level function or an instance of a module-level class).
    jobs: runs trained at once in worker processes (see module doc); 1 trains them here, one after another.
    threads: torch threads per run (default: this process's threads / jobs). Fix it (the demo uses 1) for
        numbers that do not depend on the machine's core count: training amplifies the different summation
        order of another thread count well beyond the last digit.
    plots: gather `out_dir/plots/<run>.png` (the run's layers.png, else drawn from its interface.json).
    on_run: called with the name of every run as it finishes or is found finished, candidates included (the
        demo's progress line).
    launcher: (run_of, train_fn, finished, failed) -> a pool that trains runs elsewhere, used instead of the local
        worker processes (speechfuse.experiments.launcher.cluster_pool_factory: one SLURM job per run); `failed` is
        None under keep_going=False.
    keep_going: a run that fails is named on stderr (its traceback in RUN/error.txt) and the other runs go on;
        at the end a SweepFailed lists every failed run with its combination, after the tables were written.
        False (CLI: --fail-fast): the first failure stops the sweep.
    Finished runs of an earlier grid in the same folder keep their rows in results.md/csv (see module doc).
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"sweep: jobs must be a whole number >= 1, got {jobs!r}")
    own_trainer = train_fn is None
    if train_fn is None:
        from speechfuse.training.runner import train as train_fn
    out_dir = Path(out_dir)
    plan = _plan(grid, select, seeds)
    metric, higher_is_better = _selection_metric(cfg) if select else (None, True)
    # validate every run the sweep may need up front, and refuse grids whose run names collide
    every = [c for p in plan for c in p["candidates"]]
    every += [{**p["combo"], **cand, **s} for p in plan for cand in ([{}] if not select else expand_grid(select))
              for s in p["seeded"]]
    for c in every:
        run_cfg = combo_config(cfg, c, None)
        if own_trainer:  # names and options of every run, before any folder or model (preflight)
            from speechfuse.training.preflight import check_components

            check_components(run_cfg)
    finals = [{**p["combo"], **s} for p in plan for s in p["seeded"]]
    final_names = [run_name(c) for c in finals]
    if len(set(final_names)) != len(final_names):
        dupes = sorted({n for n in final_names if final_names.count(n) > 1})
        raise ConfigError(f"sweep grid gives duplicate run names {dupes}; make the grid values distinct")
    out_dir.mkdir(parents=True, exist_ok=True)  # only once every run's config is valid

    # every run this grid may train (with --select: each candidate value's runs) is planned, not an earlier grid's
    kept = _earlier_rows(out_dir, set(final_names) | {run_name(c) for c in every}, bool(seeds))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = sum(len(p["candidates"]) + len(p["seeded"]) - (1 if p["candidates"] else 0) for p in plan)
        bar = tqdm(total=total, desc="sweep", unit="run", dynamic_ncols=True)

    counted: set[str] = set()  # runs already on the bar (the chosen candidate's run is reused for its seed)

    def _advance(name: str) -> None:
        counted.add(name)
        if bar is not None:
            bar.update(1)
        if on_run is not None:
            on_run(name)

    def run_of(combo: dict) -> tuple[str, Any, Path]:
        name = run_name(combo)
        return name, combo_config(cfg, combo, None), out_dir / "runs" / name

    failures: dict[str, str] = {}  # run name -> what failed, in the order they failed

    def failed(combo: dict, name: str, run_dir: Path, exc: Exception) -> None:
        log = RunFolder(run_dir).error_path
        try:
            write_atomic(log, "".join(traceback.format_exception(exc)))
        except (OSError, SpeechfuseError):  # the run folder itself may be what failed
            log = None
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())  # one line
        what = (f"run {name!r} ({_describe_combo(combo)}) in {run_dir} failed: {type(exc).__name__}: {message}"
                + (f" (traceback in {log})" if log else ""))
        failures[name] = what
        print(f"speechfuse sweep: {what}; the other runs go on", file=sys.stderr, flush=True)

    def run(combo: dict) -> tuple[str, Any, Path, dict | None]:
        """Train (or find finished) one run; metrics None when it failed and the sweep keeps going."""
        name, run_cfg, run_dir = run_of(combo)
        run_folder = RunFolder(run_dir)
        if bar is not None:
            bar.set_postfix_str(name)
        if run_folder.is_finished:
            metrics = run_folder.read_metrics()
            if name not in counted:
                _advance(name)
            return name, run_cfg, run_dir, metrics
        if name in failures:  # failed in a worker: not trained again here
            return name, run_cfg, run_dir, None
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            metrics = train_fn(run_cfg, run_dir)
        except Exception as exc:
            if not keep_going:
                if hasattr(exc, "add_note"):
                    exc.add_note(f"speechfuse sweep: run {name!r} in {run_dir} failed; "
                                 f"finished rows are in {out_dir / RESULTS_CSV}")
                raise
            failed(combo, name, run_dir, exc)
            return name, run_cfg, run_dir, None
        if not run_folder.is_finished:  # the runner normally writes it; make resume work regardless
            run_folder.write_metrics(metrics)
        run_folder.error_path.unlink(missing_ok=True)  # from an earlier try
        _advance(name)
        return name, run_cfg, run_dir, metrics

    def choose(p: dict, metrics_of: Callable[[dict], tuple[str, dict | None]]) -> tuple[dict, dict, list] | None:
        """The candidate with the best dev metric (the first of equals): (best, chosen values, scored); None when
        every candidate failed."""
        scored = []
        for cand in p["candidates"]:
            name, metrics = metrics_of(cand)
            if metrics is None:
                continue
            value = (metrics.get("dev") or {}).get(metric)
            if not isinstance(value, (int, float)) or math.isnan(value):
                raise ConfigError(f"sweep: run {name!r} has no dev {metric!r} to select on; "
                                  f"its metrics.json holds {sorted(metrics.get('dev') or {})}")
            scored.append((cand, float(value)))
        if not scored:
            return None
        best = (max if higher_is_better else min)(scored, key=lambda cv: cv[1])[0]
        return best, {k: best[k] for k in select}, scored

    def run_and_read(combo: dict) -> tuple[str, dict | None]:
        name, _, _, metrics = run(combo)
        return name, metrics

    def finished_elsewhere(name: str, run_dir: Path, metrics: dict | None) -> None:
        run_folder = RunFolder(run_dir)
        if metrics is not None and not run_folder.is_finished:
            run_folder.write_metrics(metrics)
        run_folder.error_path.unlink(missing_ok=True)
        if name not in counted:
            _advance(name)

    rows: list[dict] = []
    choices: list[dict] = []
    import torch

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"sweep: threads must be a whole number >= 1, got {threads!r}")
    per_run = threads or max(1, torch.get_num_threads() // jobs)
    pool = _Pool(jobs, per_run, run_of, train_fn, finished_elsewhere, failed if keep_going else None) \
        if jobs > 1 else None
    if launcher is not None:  # a failed job goes to `failed` as a failed local run does
        pool = launcher(run_of, train_fn, finished_elsewhere, failed if keep_going else None)
    own_threads = torch.get_num_threads()
    if pool is None and threads is not None:
        torch.set_num_threads(threads)
    try:
        if pool is not None:  # train every run in the workers first; the loop below then finds them finished
            if own_trainer and launcher is None:  # a launcher submits the extraction as jobs itself
                _prefill_caches(cfg, every, out_dir, keep_going)
            pool.train([c for p in plan for c in (p["candidates"] or [{**p["combo"], **s} for s in p["seeded"]])])
            if select:
                def read(cand: dict) -> tuple[str, dict | None]:
                    name, _, run_dir = run_of(cand)
                    run_folder = RunFolder(run_dir)
                    return name, run_folder.read_metrics() if run_folder.is_finished else None

                chosen_of = [(p, choose(p, read)) for p in plan]
                pool.train([{**p["combo"], **c[1], **s} for p, c in chosen_of if c is not None for s in p["seeded"]])
        for p in plan:
            chosen: dict = {}
            if p["candidates"]:
                choice = choose(p, run_and_read)
                if choice is None:
                    continue  # every candidate failed: named in `failures`
                best, chosen, scored = choice
                config = run_name(p["combo"])
                for cand, value in scored:
                    choices.append({"config": config, **{k: _short(cand[k]) for k in select},
                                    f"dev_{metric}": value, "chosen": cand is best})
                write_table(choices, out_dir / "selection.md", out_dir / "selection.csv")
            for seed in p["seeded"]:
                combo = {**p["combo"], **chosen, **seed}
                name, run_cfg, run_dir, metrics = run(combo)
                if metrics is None:
                    continue
                row = result_row(name, combo, run_cfg, run_dir, metrics)
                if seeds:
                    row = {"config": run_name({k: v for k, v in combo.items() if k != SEED_KEY}),
                           "seed": combo[SEED_KEY], **{k: v for k, v in row.items() if k != SEED_KEY}}
                rows.append(row)
                if plots:  # the runner draws layers.png; draw it here only for runs that lack one
                    png = out_dir / "plots" / f"{name}.png"
                    desc = _describe(run_dir)
                    if RunFolder(run_dir).layers_png.is_file():
                        png.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(RunFolder(run_dir).layers_png, png)
                    elif desc is not None:
                        plot_importance(desc, png, title=name)
                _write_results(rows + kept, out_dir, seeds, figures=plots)
    finally:
        torch.set_num_threads(own_threads)
        if pool is not None:
            pool.close()
        if bar is not None:
            bar.close()
    if failures:
        raise SweepFailed(f"sweep: {len(failures)} run(s) failed"
                          + (f" (the finished rows are in {out_dir / RESULTS_MD})" if rows else "") + ": "
                          + "; ".join(failures.values()), rows, list(failures))
    return rows


__all__ = ["run_sweep", "parse_grid", "expand_grid", "run_name", "combo_config", "summarise_seeds", "SweepFailed",
           "RESULTS_MD", "RESULTS_CSV", "SUMMARY_CSV"]
