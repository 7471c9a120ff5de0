"""Where a run lives: the one place that knows a run folder's file names and how to read a finished run, its
lock, its data fingerprints and the checks that a resumed run is the same run.

A run folder holds:
    config.yaml       the resolved config            task.json       the fitted task (vocabulary / labels)
    fingerprint.json  sha256 of the config and of each manifest's contents (checked on resume and by evaluate)
    train.lock        while a `train` runs in the folder: its pid, host and start time
    checkpoints/      last.safetensors, best.safetensors (safetensors + JSON, see speechfuse.training.checkpoint)
    metrics.json      {"dev": {...}, "test": {...}} of the best checkpoint, written last: the run is finished
    interface.json    {"interface", "num_parameters", "describe", "importance"}   layers.png  weights/importance
    utterances_<split>.jsonl  per-utterance results (speechfuse.training.utterances)
    logs/             CSV (logs/csv/metrics.csv) and TensorBoard (logs/tensorboard) logs
    model/            the best checkpoint as a model folder: sf.load_model(RUN_DIR) (see speechfuse.fusion.model)
    eval/             what `evaluate` reads and writes besides the run's own files (evaluate --manifest)
    skipped_<split>.csv  the manifest rows dropped with train.skip_bad_rows
    error.txt         in a sweep: the traceback of the run's failed attempt (removed once it finishes)

    run = RunFolder(run_dir)
    run.metrics_path, run.checkpoint("best"), run.utterances("test"), run.model_dir      # the file names
    run.is_finished; run.require_finished("evaluate")    # ConfigError naming the missing file
    run.read_config(); run.read_task(); run.read_metrics(); run.read_interface()
    with RunLock(run_dir):                              # one `train` per folder at a time
        check_data_unchanged(run_dir, manifests, allow_changed=False)   # on resume
        record_fingerprint(run_dir, config_text, manifests)
        check_same_config(cfg, run_dir); check_same_task(task, run_dir)   # on resume

Files are written through speechfuse.io (write_atomic: temp file, fsync, rename). The lock is a filelock on
RUN_DIR/train.lock, which also names its holder (pid, host, start time); the kernel drops it when the holder
dies, so a lock left by a killed run is taken over.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Optional

import yaml

from speechfuse.config import Config, config_from_dict, config_to_dict
from speechfuse.errors import ConfigError, SpeechfuseError
from speechfuse.io import (HolderLock, RunFolderError, check_free_space, check_writable, describe_holder, disk_full,
                 write_atomic)
from speechfuse.tasks import Task

CONFIG = "config.yaml"
TASK = "task.json"
METRICS = "metrics.json"
FINGERPRINT = "fingerprint.json"
INTERFACE = "interface.json"
LAYERS_PNG = "layers.png"
MODEL_DIR = "model"
EVAL_DIR = "eval"
CKPT_DIR = "checkpoints"
LAST = "last"  # checkpoints/last.safetensors, checkpoints/best.safetensors
BEST = "best"
EXT = ".safetensors"
# train.report_test_chosen: metrics.json's best test value over the step checkpoints, which are
# checkpoints/steps/step=<N>.safetensors (the weights of every dev evaluation)
TEST_CHOSEN = "test_chosen_on_test"
STEPS_DIR = "steps"
LOGS_DIR = "logs"
LOCK = "train.lock"
ERROR = "error.txt"  # the traceback of a sweep's run that failed (removed once it finishes)


class RunFolder:
    """One run folder: its file names, and reading what a run wrote. Every reader raises a ConfigError naming
    the file and what to do; nothing here trains or writes but `write_metrics` / `write_config` / `write_task`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- file names ------------------------------------------------------------------------------
    config_path = property(lambda self: self.path / CONFIG)
    task_path = property(lambda self: self.path / TASK)
    metrics_path = property(lambda self: self.path / METRICS)
    fingerprint_path = property(lambda self: self.path / FINGERPRINT)
    interface_path = property(lambda self: self.path / INTERFACE)
    layers_png = property(lambda self: self.path / LAYERS_PNG)
    model_dir = property(lambda self: self.path / MODEL_DIR)
    eval_dir = property(lambda self: self.path / EVAL_DIR)
    error_path = property(lambda self: self.path / ERROR)
    checkpoints_dir = property(lambda self: self.path / CKPT_DIR)
    logs_dir = property(lambda self: self.path / LOGS_DIR)

    def checkpoint(self, name: str = BEST) -> Path:
        """checkpoints/<name>.safetensors (name: best or last)."""
        return self.path / CKPT_DIR / f"{name}{EXT}"

    def step_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, checkpoints/steps/step=<step>.safetensors) of every kept dev evaluation, earliest first."""
        found = []
        for path in (self.path / CKPT_DIR / STEPS_DIR).glob(f"step=*{EXT}"):
            step = path.name[len("step="):-len(EXT)]
            if step.isdigit():
                found.append((int(step), path))
        return sorted(found)

    def utterances(self, split: str) -> Path:
        """utterances_<split>.jsonl: the per-utterance results of a split (speechfuse.training.utterances)."""
        return self.path / f"utterances_{split}.jsonl"

    def skipped(self, split: str) -> Path:
        return self.path / f"skipped_{split}.csv"

    # -- state ----------------------------------------------------------------------------------
    @property
    def is_finished(self) -> bool:
        """metrics.json is written last, by a run that finished (train, or a sweep's runner)."""
        return self.metrics_path.is_file()

    def require_finished(self, command: str) -> "RunFolder":
        """A ConfigError naming what is missing unless this is a finished run folder; returns self."""
        if not self.path.is_dir():
            raise ConfigError(f"{command}: run folder not found: {self.path}; give a folder written by "
                              "`speechfuse train`")
        for path in (self.config_path, self.task_path, self.metrics_path):
            if not path.is_file():
                raise ConfigError(f"{command}: {self.path} is not a finished speechfuse run ({path.name} is missing); "
                                  "train it to the end first (run the same `speechfuse train` again to resume)")
        return self

    # -- reading ----------------------------------------------------------------------------------
    def _read_text(self, path: Path) -> str:
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path} is missing; {self.path} is not a finished speechfuse run folder") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read {path} ({err}); restore it or train the run again") from None

    def _read_json(self, path: Path) -> Any:
        try:
            return json.loads(self._read_text(path))
        except ValueError as err:
            raise ConfigError(f"{path} is not valid JSON ({err}); restore it or train the run again") from None

    def read_config_dict(self) -> dict:
        """config.yaml as written (a plain dict, not validated)."""
        try:
            data = yaml.safe_load(self._read_text(self.config_path))
        except yaml.YAMLError as err:
            raise ConfigError(f"{self.config_path} is not valid YAML ({err}); restore it or train the run "
                              "again") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{self.config_path} holds no config mapping; restore it or train the run again")
        return data

    def read_config(self) -> Config:
        """The run's resolved Config (relative paths resolve against the run folder)."""
        return config_from_dict(self.read_config_dict(), self.path, str(self.config_path))

    def task_name(self) -> str:
        state = self._read_json(self.task_path)
        if not isinstance(state, dict) or not isinstance(state.get("name"), str):
            raise ConfigError(f"{self.task_path} names no task; restore it or train the run again")
        return state["name"]

    def read_task(self) -> Task:
        """The fitted task (labels / vocabulary) the run's checkpoints were trained for."""
        self.task_name()
        return Task.from_state(self._read_json(self.task_path))

    def read_metrics(self) -> dict:
        """metrics.json: {"dev": {...}, "test": {...}}."""
        metrics = self._read_json(self.metrics_path)
        if not isinstance(metrics, dict):
            raise ConfigError(f"{self.metrics_path} holds no metrics; delete it and run `speechfuse evaluate` or "
                              "train again")
        return metrics

    def read_interface(self) -> dict:
        """interface.json, or {} when the run wrote none (or it is unreadable): it only adds columns."""
        try:
            info = json.loads(self.interface_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def read_fingerprint(self) -> Optional[dict]:
        """fingerprint.json's {split: {"path", "sha256"}} of the manifests, or None for a run from before
        fingerprints were recorded."""
        if not self.fingerprint_path.is_file():
            return None
        manifests = self._read_json(self.fingerprint_path)
        manifests = manifests.get("manifests") if isinstance(manifests, dict) else None
        if not isinstance(manifests, dict):
            raise ConfigError(f"{self.fingerprint_path} holds no manifest fingerprints; restore it, or train into a "
                              "new folder (--out)")
        return manifests

    def changed_manifests(self, manifests: dict[str, str]) -> list[str]:
        """`data.<split> (<path>)` for each manifest whose contents differ from the run's fingerprint (none when
        the run has no fingerprint.json)."""
        before = self.read_fingerprint()
        if before is None:
            return []
        return [f"data.{split} ({manifest})" for split, manifest in manifests.items()
                if not isinstance(before.get(split), dict) or before[split].get("sha256") != file_sha256(manifest)]

    # -- writing ----------------------------------------------------------------------------------
    def write_config(self, config_text: str) -> None:
        write_atomic(self.config_path, config_text)

    def write_task(self, task: Task) -> None:
        write_atomic(self.task_path, json.dumps(task.state(), indent=2))

    def write_metrics(self, metrics: dict) -> None:
        """Last: a run folder with metrics.json is finished."""
        write_atomic(self.metrics_path, json.dumps(metrics, indent=2))


class RunLock(HolderLock):
    """Holds RUN_DIR/train.lock while a run trains; a second holder gets a RunFolderError naming the first."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        path = Path(run_dir) / LOCK
        super().__init__(path, busy=lambda holder: (
            f"run folder {path.parent} is in use by another `speechfuse train` ({describe_holder(holder)}; lock "
            f"file {path}). Wait for it to finish or stop it, or train into another folder (--out)."))


# ---------------------------------------------------------------------------------------------
# fingerprints
# ---------------------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(config_text: str, manifests: dict[str, str]) -> dict:
    """{"config": sha256 of the resolved config, "manifests": {split: {"path", "sha256" of its contents}}}."""
    return {"config": hashlib.sha256(config_text.encode("utf-8")).hexdigest(),
            "manifests": {split: {"path": str(path), "sha256": file_sha256(path)}
                          for split, path in manifests.items()}}


def record_fingerprint(run_dir: Path, config_text: str, manifests: dict[str, str]) -> None:
    write_atomic(RunFolder(run_dir).fingerprint_path, json.dumps(fingerprint(config_text, manifests), indent=2))


def check_data_unchanged(run_dir: Path, manifests: dict[str, str], allow_changed: bool = False) -> None:
    """On resume: a manifest whose contents differ from when the run started is a ConfigError naming it
    (a warning with allow_changed). Run folders from before fingerprints were recorded are not checked."""
    run = RunFolder(run_dir)
    changed = run.changed_manifests(manifests)
    if not changed:
        return
    what = (f"the contents of {', '.join(changed)} changed since run folder {run_dir} started training "
            f"(fingerprints in {run.fingerprint_path})")
    if allow_changed:
        warnings.warn(f"{what}; resuming on the new data because train.allow_changed_data is set. The best "
                      "checkpoint so far was chosen on the old dev data.", stacklevel=2)
        return
    raise ConfigError(f"{what}; its checkpoints were trained on the old rows. Restore the old manifest, train into "
                      "a new folder (--out), or resume on the new data with --allow-changed-data "
                      "(train.allow_changed_data=true).")


# ---------------------------------------------------------------------------------------------
# resuming: the same run
# ---------------------------------------------------------------------------------------------
# train keys a resumed run may change: they do not change what is computed, only how long / where / how shown
# (or how a failure is handled)
RESUME_MAY_CHANGE = {"max_steps", "max_epochs", "val_every_steps", "progress_bar", "num_workers", "devices",
                     "accelerator", "importance", "skip_bad_rows", "on_nonfinite_loss", "allow_changed_data"}


def check_same_config(cfg: Config, run_dir: Path) -> None:
    """Resuming (a last checkpoint exists) with a config that computes something else is an error."""
    run = RunFolder(run_dir)
    path = run.config_path
    if not run.checkpoint(LAST).is_file() or not path.is_file():
        return

    def essential(c: Config) -> dict:
        d = config_to_dict(c)
        d.pop("cache")
        d["train"] = {k: v for k, v in d["train"].items() if k not in RESUME_MAY_CHANGE}
        return d

    try:
        old = run.read_config()
    except SpeechfuseError as err:
        raise ConfigError(f"cannot resume {run_dir}: its config.yaml is unreadable ({err}); train into a new "
                          "folder (--out)") from err
    new, before = essential(cfg), essential(old)
    diff = sorted(f"{section}.{k}" if isinstance(new[section], dict) and isinstance(before.get(section), dict)
                  else section
                  for section in new if new[section] != before.get(section)
                  for k in ((x for x in new[section] if new[section].get(x) != before[section].get(x))
                            if isinstance(new[section], dict) and isinstance(before.get(section), dict) else [None]))
    if diff:
        raise ConfigError(f"run folder {run_dir} holds a checkpoint of a run with a different config ({', '.join(diff)} "
                          f"differ); resume it with the same config (only train.{{{', '.join(sorted(RESUME_MAY_CHANGE))}}} "
                          "and cache may change), or train into a new folder (--out)")


def check_same_task(task: Task, run_dir: Path) -> None:
    """On resume, the task fitted now (labels / vocabulary) must be the one the checkpoints were trained for."""
    path = RunFolder(run_dir).task_path
    if path.is_file() and json.loads(path.read_text(encoding="utf-8")) != json.loads(json.dumps(task.state())):
        raise ConfigError(f"cannot resume {run_dir}: the training data now gives the task other labels / another "
                          f"vocabulary than {path}, which its checkpoints were trained for; train into a new folder "
                          "(--out)")


__all__ = ["RunFolder", "RunLock", "RunFolderError", "file_sha256", "fingerprint", "record_fingerprint",
           "check_data_unchanged", "check_same_config", "check_same_task", "RESUME_MAY_CHANGE", "CONFIG", "TASK",
           "METRICS", "FINGERPRINT", "INTERFACE", "LAYERS_PNG", "MODEL_DIR", "EVAL_DIR", "CKPT_DIR", "LOGS_DIR",
           "LOCK", "ERROR", "LAST", "BEST", "EXT",
           # speechfuse.io's, for existing callers
           "write_atomic", "check_writable", "check_free_space", "disk_full"]
