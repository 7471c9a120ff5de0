"""Budgeted search: Optuna trials over fusion configurations, the poor ones stopped early on their dev metric.

    space = load_space("configs/search/fsdd_asr_space.yaml")
    search(cfg, space, "runs/search")          # trials, then the survivors on every seed, then the tables

A space file (YAML):

    space:                                   # dotted config keys (as `sweep --grid`) -> choices
      upstreams: {subsets_of: [whisper-tiny.en, resemblyzer, speech-embedding]}   # every non-empty subset
      interface.name: [weighted_sum, hconv, chconv]                               # a list: one of these
      train.interface_lr: {low: 1.0e-3, high: 1.0e-1, log: true}                  # a range (float or int)
    trials: 12                 # trials in the whole study, over all workers
    pruner: successive_halving # or hyperband, none
    reduction_factor: 3
    min_steps: 20              # the first rung (default: train.val_every_steps)
    prune_on: auto             # what the pruner compares: the task's own choice (Task.early_signal), or
                               # metric, metric_then_loss (the metric, ties broken by the dev loss: the CTC
                               # tasks' choice, as their dev WER is 1.0 for every trial on the blank plateau)
                               # or dev_loss; the winner is always chosen on the dev metric
    sampler: tpe               # or random, grid (lists only: every combination, in a random order)
    seeds: [0, 1, 2]           # trials train on the first; the survivors retrain on the others
    survivors: 3               # the best finished trials kept

- A trial is one run: `OUT/runs/<name>__seed=S`, named and configured exactly as `speechfuse sweep` names
  and configures it, so the survivors' first seed is reused when the sweep retrains them.
- The dev main metric, scored at every `train.val_every_steps`, is reported to the trial (ReportToTrial);
  when the pruner stops it, the run saves `last` as at any evaluation and ends with RunPruned: its folder is
  a run cut off mid-way (resumable, no metrics.json), never a finished one.
- The study lives in a real store that many workers share: `sqlite:///OUT/study.db` by default, any
  SQLAlchemy URL (a database server across nodes), or `journal:PATH` (Optuna's journal file, for a shared
  file system). `workers=N` starts N processes on this machine (with `launcher=`, N jobs); `search_worker` is
  what each runs, so workers started anywhere can join. The budget of trials is exact over all workers.
  Two trials that draw the same values train once: the later one waits for the earlier and takes its outcome
  (user attribute `duplicate_of`).
- The result is a sweep folder (speechfuse.experiments.sweep): results.csv / summary.csv / results.md of the survivors
  over the seeds with the paired bootstrap against the best; plus trials.csv / trials.md (every trial, its
  values, state and steps trained) and stopped.png (each trial's dev curve, a cross where it was stopped).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lightning.pytorch.callbacks import Callback

from speechfuse.errors import ConfigError, SpeechfuseError
from speechfuse.experiments.report import save_figure, write_table
from speechfuse.training.runfolder import LOCK, RunFolderError
from speechfuse.training.runfolder import RunFolder
from speechfuse.experiments.sweep import (SEED_KEY, _config_dict, _prefill_caches, _selection_metric, _short,
                                          _task_class, combo_config, run_name, run_sweep, shared_cache_dir)

PRUNERS = ("successive_halving", "hyperband", "none")
PRUNE_ON = ("auto", "metric", "metric_then_loss", "dev_loss")
# metric_then_loss: the dev loss, squeezed into [0, 1) and scaled by this, breaks ties of the metric and never
# reorders two metrics that differ (a metric over fewer than 1e9 words, characters or clips moves in larger steps)
TIE_BREAK = 1e-9
SAMPLERS = ("tpe", "random", "grid")
POLL_SECONDS = 2.0  # how often a trial that drew running values looks whether they finished
OVER_BUDGET = "over_budget"
TRIALS_MD, TRIALS_CSV, STOPPED_PNG = "trials.md", "trials.csv", "stopped.png"


class RunPruned(SpeechfuseError):
    """The search's pruner stopped this run after a dev evaluation; `last` holds that step."""


# ---------------------------------------------------------------------------------------------
# the space file
# ---------------------------------------------------------------------------------------------
@dataclass
class SearchSpace:
    """What to search over and how (see the module doc for the YAML form)."""

    choices: dict[str, list] = field(default_factory=dict)  # key -> list of values
    ranges: dict[str, dict] = field(default_factory=dict)  # key -> {low, high, log}
    trials: int = 20
    pruner: str = "successive_halving"
    reduction_factor: int = 3
    min_steps: int | None = None
    prune_on: str = "auto"
    sampler: str = "tpe"
    seeds: list[int] = field(default_factory=lambda: [0])
    survivors: int = 3
    sampler_seed: int = 0

    @property
    def keys(self) -> list[str]:
        return list(self.choices) + list(self.ranges)


def _subsets(specs: list, where: str) -> list[list]:
    if not isinstance(specs, list) or not specs:
        raise ConfigError(f"{where}: subsets_of needs a non-empty list of upstream specs, got {specs!r}")
    return [list(c) for n in range(1, len(specs) + 1) for c in itertools.combinations(specs, n)]


def _positive_int(data: dict, key: str, default: Any, source: str) -> Any:
    value = data.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{source}: {key} must be a whole number >= 1, got {value!r}")
    return value


def space_from_dict(data: Any, source: str = "(space)") -> SearchSpace:
    """Validate a parsed space file; every error names the file and the field."""
    if not isinstance(data, dict) or not isinstance(data.get("space"), dict) or not data["space"]:
        raise ConfigError(f"{source}: needs a `space:` section mapping config keys to choices, e.g. "
                          "space: {interface.name: [weighted_sum, hconv]}")
    unknown = sorted(set(data) - {"space", "trials", "pruner", "reduction_factor", "min_steps", "prune_on", "sampler",
                                  "seeds", "survivors", "sampler_seed"})
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {unknown}; see `speechfuse search --help`")
    space = SearchSpace()
    for key, value in data["space"].items():
        where = f"{source}: space.{key}"
        if key == SEED_KEY:
            raise ConfigError(f"{where}: seeds are not searched; list them under `seeds:`")
        if isinstance(value, dict) and "subsets_of" in value:
            if key != "upstreams":
                raise ConfigError(f"{where}: subsets_of only goes with the `upstreams` key")
            value = _subsets(value["subsets_of"], where)
        if isinstance(value, list):
            if not value:
                raise ConfigError(f"{where}: an empty list of choices")
            if key == "upstreams" and not all(isinstance(v, list) and v for v in value):
                raise ConfigError(f"{where}: each choice is a non-empty list of specs, e.g. [[a], [a, b]]")
            labels = [_short(v) for v in value]
            if len(set(labels)) != len(labels):
                raise ConfigError(f"{where}: choices {labels} repeat a value; list each once")
            space.choices[key] = value
        elif isinstance(value, dict) and {"low", "high"} <= set(value) <= {"low", "high", "log"}:
            low, high = value["low"], value["high"]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
                raise ConfigError(f"{where}: a range needs numbers low < high, got {value!r}")
            if value.get("log") and low <= 0:
                raise ConfigError(f"{where}: a log range needs low > 0, got {low!r}")
            space.ranges[key] = {"low": low, "high": high, "log": bool(value.get("log", False))}
        else:
            raise ConfigError(f"{where}: give a list of choices, {{subsets_of: [...]}} or {{low, high, log}}; "
                              f"got {value!r}")
    space.trials = _positive_int(data, "trials", 20, source)
    space.reduction_factor = _positive_int(data, "reduction_factor", 3, source)
    if space.reduction_factor < 2:
        raise ConfigError(f"{source}: reduction_factor must be >= 2, got {space.reduction_factor}")
    space.min_steps = _positive_int(data, "min_steps", None, source)
    space.survivors = _positive_int(data, "survivors", 3, source)
    space.sampler_seed = int(data.get("sampler_seed", 0))
    for key, allowed in (("pruner", PRUNERS), ("sampler", SAMPLERS), ("prune_on", PRUNE_ON)):
        value = data.get(key, getattr(space, key))
        if value not in allowed:
            raise ConfigError(f"{source}: {key} must be one of {list(allowed)}, got {value!r}")
        setattr(space, key, value)
    if space.sampler == "grid" and space.ranges:
        raise ConfigError(f"{source}: sampler grid needs lists of choices; {sorted(space.ranges)} are ranges")
    seeds = data.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ConfigError(f"{source}: seeds must be a list of distinct integers, e.g. [0, 1, 2]; got {seeds!r}")
    space.seeds = seeds
    return space


def for_task(space: SearchSpace, cfg: Any) -> SearchSpace:
    """The space with `prune_on: auto` made the config task's early signal (Task.early_signal)."""
    if space.prune_on != "auto":
        return space
    return dataclasses.replace(space, prune_on=_task_class(cfg).early_signal)


def load_space(path: str | Path) -> SearchSpace:
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the space file ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    return space_from_dict(data, str(path))


# ---------------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------------
def default_storage(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'study.db'}"


def open_storage(url: str):
    """An Optuna storage from a URL: `journal:PATH` (a journal file on a shared file system) or SQLAlchemy."""
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:  # many writers on one SQLite file: wait for the lock rather than fail at once
        # a worker that dies mid-trial stops beating: its trial turns FAIL and its values can be drawn again
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat
            return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120,
                                              engine_kwargs={"connect_args": {"timeout": 120}}
                                              if url.startswith("sqlite") else {})
    except Exception as err:  # SQLAlchemy's errors for a bad URL or an unreachable server
        raise ConfigError(f"--storage {url!r}: {err}; give sqlite:///PATH, journal:PATH or a database URL") from None


def _pruner(space: SearchSpace, cfg: Any):
    import optuna

    train = _config_dict(cfg).get("train") or {}
    min_steps = space.min_steps or int(train.get("val_every_steps") or 1)
    if space.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_steps, reduction_factor=space.reduction_factor)
    if space.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_steps, max_resource=int(train.get("max_steps") or 1),
                                              reduction_factor=space.reduction_factor)
    return optuna.pruners.NopPruner()


def _sampler(space: SearchSpace):
    import optuna

    if space.sampler == "grid":
        return optuna.samplers.GridSampler({k: list(range(len(v))) for k, v in space.choices.items()},
                                           seed=space.sampler_seed)
    if space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=space.sampler_seed)
    return optuna.samplers.TPESampler(seed=space.sampler_seed)


def open_study(cfg: Any, space: SearchSpace, storage: str, name: str):
    import optuna

    _, higher_is_better = _selection_metric(cfg)
    direction = "maximize" if higher_is_better else "minimize"
    try:
        study = optuna.create_study(storage=open_storage(storage), study_name=name, load_if_exists=True,
                                    direction=direction, sampler=_sampler(space), pruner=_pruner(space, cfg))
    except ValueError as err:  # e.g. an existing study with the other direction
        raise ConfigError(f"study {name!r} in {storage}: {err}") from None
    if study.direction.name.lower() != direction:
        raise ConfigError(f"study {name!r} in {storage} was made to {study.direction.name.lower()}, this task's "
                          f"metric needs {direction}; use another --study name or --out")
    return study


def suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """One combination, in the space's key order. Choices are drawn by index (Optuna's categorical values
    must be plain scalars; an upstream subset is a list)."""
    combo: dict[str, Any] = {}
    for key, values in space.choices.items():
        combo[key] = values[trial.suggest_categorical(key, list(range(len(values))))]
    for key, r in space.ranges.items():
        if isinstance(r["low"], int) and isinstance(r["high"], int):
            combo[key] = trial.suggest_int(key, r["low"], r["high"], log=r["log"])
        else:
            combo[key] = trial.suggest_float(key, float(r["low"]), float(r["high"]), log=r["log"])
    return combo


def combo_of(params: dict, space: SearchSpace) -> dict[str, Any]:
    """A finished trial's params -> its combination."""
    return {**{k: space.choices[k][params[k]] for k in space.choices},
            **{k: params[k] for k in space.ranges}}


class ReportToTrial(Callback):
    """Reports the dev main metric at every dev evaluation to the trial; with prune_on="metric_then_loss", the
    metric with ties broken by the dev loss (CTC's WER is 1.0 for every trial on the blank plateau: the loss
    ranks them there, the metric, which the pick is made on, once they leave it); with "dev_loss", the dev loss
    alone (negated when the metric is maximised, so that the study's direction fits both). When the pruner says
    stop, the run stops there (Lightning saves `last` / `best` for this evaluation as usual) and ends with
    RunPruned."""

    def __init__(self, trial: Any, metric: str, prune_on: str = "metric", higher_is_better: bool = False) -> None:
        self.trial, self.metric, self.prune_on, self.higher = trial, metric, prune_on, higher_is_better
        self.pruned_at: int | None = None
        self.last_step = 0

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.prune_on != "metric" and not pl_module.dev_loss_for:
            pl_module.dev_loss_for = f"the search's prune_on: {self.prune_on}"

    def _value(self, trainer: Any, pl_module: Any) -> float | None:
        metric = getattr(pl_module, "dev_metrics", {}).get(self.metric)
        if self.prune_on == "metric":
            return metric
        from speechfuse.training.average import DEV_LOSS

        loss = trainer.callback_metrics.get(DEV_LOSS)
        if loss is None:
            return None
        loss = -float(loss) if self.higher else float(loss)
        if self.prune_on == "dev_loss":
            return loss
        return None if metric is None else float(metric) + TIE_BREAK * loss / (1.0 + abs(loss))

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        value = self._value(trainer, pl_module)
        if value is None or trainer.sanity_checking:
            return
        step = int(trainer.global_step)
        self.last_step = step
        self.trial.report(float(value), step)
        if step < (trainer.max_steps or 0) and self.trial.should_prune():
            self.pruned_at = step
            trainer.should_stop = True  # the checkpoint callbacks (run after this one) still save this step

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.pruned_at is not None:
            raise RunPruned(f"stopped by the search's pruner after step {self.pruned_at}")


def _same_values_first(trial: Any, running_only: bool = False) -> Any:
    """The lowest-numbered other trial that drew the same values: earlier ones (not failed), or with
    running_only any running one."""
    import optuna

    state = optuna.trial.TrialState
    states = (state.RUNNING,) if running_only else (state.COMPLETE, state.PRUNED, state.RUNNING)
    same = [t for t in trial.study.get_trials(deepcopy=False, states=states)
            if t.params == trial.params and t.number != trial.number and (running_only or t.number < trial.number)]
    return min(same, key=lambda t: t.number) if same else None


def _outcome_of(trial: Any, first: Any) -> float:
    """Train once: wait while the trial with the same values runs, then take its outcome."""
    import optuna

    while first.state == optuna.trial.TrialState.RUNNING:
        time.sleep(POLL_SECONDS)
        first = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == first.number)
    trial.set_user_attr("duplicate_of", first.number)
    if first.state == optuna.trial.TrialState.COMPLETE:
        return first.value
    raise optuna.TrialPruned(f"same values as trial {first.number}, which was {first.state.name.lower()}")


def _dev_value(metrics: dict, metric: str, name: str) -> float:
    value = (metrics.get("dev") or {}).get(metric)
    if not isinstance(value, (int, float)) or math.isnan(value):
        raise SpeechfuseError(f"search: run {name} has no dev {metric!r}; its metrics.json holds "
                              f"{sorted(metrics.get('dev') or {})}")
    return float(value)


def make_objective(cfg: Any, space: SearchSpace, out_dir: Path, train_fn: Callable | None = None) -> Callable:
    """The function each worker optimises: train one run on the first seed, return its dev main metric."""
    import optuna

    if train_fn is None:
        from speechfuse.training.runner import train as train_fn
    metric, higher_is_better = _selection_metric(cfg)
    cache_dir = shared_cache_dir(cfg, out_dir)

    def objective(trial: Any) -> float:
        if trial.number >= space.trials:  # the other workers took the rest of the budget meanwhile
            trial.set_user_attr(OVER_BUDGET, True)
            trial.study.stop()
            raise optuna.TrialPruned(f"over the study's budget of {space.trials} trials; not trained")
        combo = {**suggest(trial, space), SEED_KEY: space.seeds[0]}
        name = run_name(combo)
        trial.set_user_attr("run", name)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        first = _same_values_first(trial)
        if first is not None:
            return _outcome_of(trial, first)
        run_dir = out_dir / "runs" / name
        if RunFolder(run_dir).is_finished:  # finished before (an earlier attempt at this study)
            return _dev_value(RunFolder(run_dir).read_metrics(), metric, name)
        run_dir.mkdir(parents=True, exist_ok=True)
        reporter = ReportToTrial(trial, metric, space.prune_on, higher_is_better)
        try:
            metrics = train_fn(combo_config(cfg, combo, cache_dir), run_dir, callbacks=[reporter])
        except RunPruned:
            trial.set_user_attr("steps", reporter.pruned_at)
            raise optuna.TrialPruned(f"{name}: stopped after step {reporter.pruned_at}") from None
        except RunFolderError:
            # two workers drew these values at the same moment and both checked before the other had stored
            # them: the run folder's lock let the other one in; wait for it
            other = _same_values_first(trial, running_only=True)
            if other is None or not (run_dir / LOCK).exists():
                raise
            return _outcome_of(trial, other)
        trial.set_user_attr("steps", reporter.last_step)
        return _dev_value(metrics, metric, name)

    return objective


def search_worker(cfg: Any, space: SearchSpace, out_dir: str | Path, storage: str | None = None,
                  study_name: str | None = None, train_fn: Callable | None = None, threads: int | None = None) -> int:
    """Run trials of one shared study until it holds `space.trials` trials; returns how many this one ran.
    Start as many as you like, on this machine or others (the same storage URL and study name)."""
    import optuna

    out_dir = Path(out_dir).resolve()
    space = for_task(space, cfg)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    study = open_study(cfg, space, storage or default_storage(out_dir), study_name or out_dir.name)
    before = {t.number for t in study.get_trials(deepcopy=False)}
    study.optimize(make_objective(cfg, space, out_dir, train_fn), n_trials=space.trials,
                   callbacks=[optuna.study.MaxTrialsCallback(space.trials, states=None)],
                   catch=())
    return len({t.number for t in study.get_trials(deepcopy=False)} - before)


def _worker_main(cfg: Any, space: SearchSpace, out_dir: str, storage: str, study_name: str,
                 train_fn: Callable | None, threads: int | None) -> int:
    import warnings

    warnings.filterwarnings("ignore", module="optuna")
    return search_worker(cfg, space, out_dir, storage, study_name, train_fn, threads)


# ---------------------------------------------------------------------------------------------
# the result: trials table, the figure, the survivors over the seeds
# ---------------------------------------------------------------------------------------------
def _budgeted(study: Any) -> list:
    """The study's trials but those that started past the budget (and trained nothing)."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(OVER_BUDGET)]


def trial_rows(study: Any, space: SearchSpace, metric: str) -> list[dict]:
    rows = []
    for t in _budgeted(study):
        row = {"trial": t.number, "state": t.state.name.lower(), "run": t.user_attrs.get("run")}
        if t.params and all(k in t.params for k in space.keys):
            row.update({k: _short(v) for k, v in combo_of(t.params, space).items()})
        row["steps"] = t.user_attrs.get("steps", 0 if t.user_attrs.get("duplicate_of") is not None else None)
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        if space.prune_on in ("metric", "metric_then_loss"):
            row[f"dev_{metric}"] = t.value if t.value is not None else last
        else:  # a stopped trial reported only losses (Optuna keeps the last as its value); negated when maximised
            row[f"dev_{metric}"] = t.value if t.state.name == "COMPLETE" else None
            row["last_dev_loss"] = None if last is None else abs(last)
        row["duplicate_of"] = t.user_attrs.get("duplicate_of")
        rows.append(row)
    return rows


def plot_stopped(study: Any, metric: str, path: Path, prune_on: str = "metric") -> None:
    """Every trial's dev metric (or dev loss) against the step; a cross where the pruner stopped it, a dot where
    it finished."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t in _budgeted(study):
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        values = [t.intermediate_values[s] for s in steps]
        pruned = t.state.name == "PRUNED"
        line, = ax.plot(steps, values, lw=1, alpha=0.5 if pruned else 0.9)
        ax.plot(steps[-1], values[-1], "x" if pruned else "o", color=line.get_color(), ms=7)
        if not pruned:
            ax.annotate(str(t.number), (steps[-1], values[-1]), fontsize=7, xytext=(3, 0), textcoords="offset points")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"dev {metric}" if prune_on != "dev_loss" else "dev loss (negated if the metric is maximised)")
    ax.set_title("search: x = stopped by the pruner, o = trained to the end (trial number)")
    save_figure(fig, path, bbox_inches="tight")


def survivors(study: Any, space: SearchSpace, higher_is_better: bool) -> list[dict]:
    """The best `space.survivors` finished trials (one per combination), best first."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("duplicate_of") is None]
    done.sort(key=lambda t: (-t.value if higher_is_better else t.value, t.number))
    return [combo_of(t.params, space) for t in done[:space.survivors]]


def finish_search(cfg: Any, space: SearchSpace, out_dir: str | Path, storage: str | None = None,
                  study_name: str | None = None, train_fn: Callable | None = None, progress: bool = True,
                  jobs: int = 1, threads: int | None = None, launcher: Callable | None = None) -> dict:
    """Write trials.md/csv and stopped.png, retrain the survivors on every seed through `run_sweep` (their
    first seed's runs are the trials' own) and return a summary (the sweep's rows under `results`)."""
    out_dir = Path(out_dir).resolve()
    space = for_task(space, cfg)
    study = open_study(cfg, space, storage or default_storage(out_dir), study_name or out_dir.name)
    metric, higher_is_better = _selection_metric(cfg)
    rows = trial_rows(study, space, metric)
    write_table(rows, out_dir / TRIALS_MD, out_dir / TRIALS_CSV)
    plot_stopped(study, metric, out_dir / STOPPED_PNG, space.prune_on)
    best = survivors(study, space, higher_is_better)
    if not best:
        raise SpeechfuseError(f"search: no trial of study {study.study_name!r} finished; see {out_dir / TRIALS_MD} "
                              "(raise `trials`, or lower `reduction_factor` / raise `min_steps`)")
    grid = [{k: [v] for k, v in combo.items()} for combo in best]
    results = run_sweep(cfg, grid, out_dir, seeds=space.seeds, train_fn=train_fn, progress=progress, jobs=jobs,
                        threads=threads, launcher=launcher)
    steps = [r["steps"] for r in rows if isinstance(r.get("steps"), int)]
    return {"study": study.study_name, "trials": len(rows),
            "states": {s: sum(r["state"] == s for r in rows) for s in sorted({r["state"] for r in rows})},
            "trial_steps": sum(steps), "survivors": [run_name(c) for c in best], "results": results}


def search(cfg: Any, space: SearchSpace, out_dir: str | Path, *, storage: str | None = None,
           study_name: str | None = None, workers: int = 1, threads: int | None = None,
           train_fn: Callable | None = None, progress: bool = True, launcher: Any = None) -> dict:
    """The whole search: fill the caches, run `workers` processes on one shared study, then finish_search.
    launcher (speechfuse.experiments.launcher.LauncherOptions): the extraction and the `workers` workers run as jobs (the
    store must then be one every node reaches: a journal file on a shared file system or a database server),
    and the survivors' seeds as the sweep's jobs."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"search: workers must be a whole number >= 1, got {workers!r}")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or default_storage(out_dir)
    study_name = study_name or out_dir.name
    for combo in _every_choice(space):  # validate every combination the study may draw, up front
        combo_config(cfg, {**combo, SEED_KEY: space.seeds[0]}, None)
    open_study(cfg, space, storage, study_name)  # create it once, before the workers race to
    cache_dir = shared_cache_dir(cfg, out_dir)
    if launcher is not None:
        from speechfuse.experiments.launcher import cluster_pool_factory, run_jobs

        if cache_dir is not None:
            configs = [combo_config(cfg, c, cache_dir) for c in _cache_combos(space)]
            run_jobs(launcher, out_dir, "speechfuse-extract", [(extract_caches, (configs, str(out_dir)))])
        run_jobs(launcher, out_dir, "speechfuse-search",
                 [(_worker_main, (cfg, space, str(out_dir), storage, study_name, train_fn, launcher.cpus))] * workers)
        return finish_search(cfg, space, out_dir, storage, study_name, train_fn, progress,
                             launcher=cluster_pool_factory(launcher, cfg, out_dir))
    if train_fn is None:
        _prefill_caches(cfg, _cache_combos(space), out_dir, keep_going=False)
    if workers == 1:
        search_worker(cfg, space, out_dir, storage, study_name, train_fn, threads)
    else:
        _run_workers(cfg, space, out_dir, storage, study_name, train_fn, workers, threads)
    return finish_search(cfg, space, out_dir, storage, study_name, train_fn, progress, jobs=workers, threads=threads)


def extract_caches(configs: list[Any], out_dir: str) -> None:
    from speechfuse.cache.fill import fill_config_caches

    for cfg in configs:
        fill_config_caches(cfg, Path(out_dir) / "cache_fill", progress=False)


def _run_workers(cfg, space, out_dir, storage, study_name, train_fn, workers, threads) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from speechfuse.experiments.sweep import _output_settings, _worker_setup

    if threads is None:
        import torch

        threads = max(1, torch.get_num_threads() // workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_setup,
                             initargs=(threads, _output_settings())) as pool:
        futures = [pool.submit(_worker_main, cfg, space, str(out_dir), storage, study_name, train_fn, threads)
                   for _ in range(workers)]
        for future in futures:
            future.result()


def _every_choice(space: SearchSpace) -> list[dict]:
    """Every combination of the lists (ranges at their low end): what the study may draw, for validation."""
    keys = list(space.choices)
    lows = {k: r["low"] for k, r in space.ranges.items()}
    return [{**dict(zip(keys, values)), **lows} for values in itertools.product(*(space.choices[k] for k in keys))]


def _cache_combos(space: SearchSpace) -> list[dict]:
    """The combinations that decide which features are cached: every upstream set x every data folder."""
    keys = [k for k in ("upstreams", "data") if k in space.choices]
    return [dict(zip(keys, values)) for values in itertools.product(*(space.choices[k] for k in keys))] or [{}]


def space_summary(space: SearchSpace) -> dict:
    return {"keys": space.keys, "combinations": math.prod(len(v) for v in space.choices.values())
            if not space.ranges else None, "trials": space.trials, "pruner": space.pruner, "seeds": space.seeds}


__all__ = ["SearchSpace", "load_space", "space_from_dict", "search", "search_worker", "finish_search",
           "ReportToTrial", "RunPruned", "for_task", "open_storage", "default_storage", "trial_rows", "survivors"]

