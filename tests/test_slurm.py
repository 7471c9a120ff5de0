"""A real single-node SLURM (started by scripts/start_local_slurm.sh; these tests run only where slurmctld and
munged are installed, as `.ci/run` does): a sweep through it gives the same results.csv as the same sweep run here,
with one run requeued by the scheduler's own `scontrol requeue`; a run warned before its time limit is requeued
by submitit and resumes exactly; a job removed with `scancel` fails its run and the sweep goes on."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

from speechfuse.experiments.launcher import cluster_pool_factory, launcher_options
from speechfuse.experiments.sweep import run_sweep
from helpers import csv_rows, free_port, fsdd_takes

pytestmark = pytest.mark.slow  # every test here starts a scheduler and trains

REPO = Path(__file__).resolve().parents[1]


PAUSED_RUN = "hconv__lr=0.01"


class PauseFirstAttempt(Callback):
    """In a SLURM job's first attempt, the run holds after step 2 (its `last` saved) until the job is requeued."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 2 and "SLURM_JOB_ID" in os.environ and \
                int(os.environ.get("SLURM_RESTART_COUNT", "0")) == 0:
            time.sleep(600)  # scontrol requeue kills this attempt long before


class LoggedTrain:
    """The real runner; logs each attempt (run, SLURM job, restart count, the step it starts at)."""

    def __init__(self, log_path: str):
        self.log_path = log_path

    def __call__(self, cfg, run_dir):
        from speechfuse.training.runner import train

        class Start(Callback):
            def on_train_start(inner, trainer, pl_module):
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"run": run_dir.name, "job": os.environ.get("SLURM_JOB_ID"),
                                        "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
                                        "step": trainer.global_step}) + "\n")

        callbacks = [Start()] + ([PauseFirstAttempt()] if run_dir.name == PAUSED_RUN else [])
        return train(cfg, run_dir, callbacks=callbacks)


@pytest.fixture
def local_slurm(tmp_path):
    if shutil.which("slurmctld") is None or shutil.which("munged") is None:
        pytest.skip("needs SLURM (apt-get install slurm-wlm munge); see scripts/start_local_slurm.sh")
    folder = tmp_path / "slurm"
    env = {**os.environ, "SLURMCTLD_PORT": str(free_port()), "SLURMD_PORT": str(free_port())}
    script = REPO / "scripts" / "start_local_slurm.sh"
    subprocess.run([str(script), str(folder)], check=True, env=env, timeout=120)
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
    try:
        yield folder
    finally:
        subprocess.run([str(script), str(folder), "stop"], env=env, timeout=60)
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before



def _fsdd_config(tmp_path: Path):
    from speechfuse.config import config_from_dict

    # speaker ID on 12 clips a split: digits 0 and 1 of the 6 speakers, one take each
    manifests = fsdd_takes(tmp_path / "data", {"train": [10], "dev": [5], "test": [0]}, digits="01")
    return config_from_dict({
        "task": "classify", "data": {k: str(v) for k, v in manifests.items()} | {"target": "speaker"},
        "upstreams": ["speech-embedding"],
        "train": {"max_steps": 6, "batch_seconds": 4, "val_every_steps": 2, "progress_bar": False,
                  "importance": False, "accelerator": "cpu"},
    })


def _sweep_in_background(cfg, grid, out: Path, train_fn, options) -> tuple[threading.Thread, dict]:
    """run_sweep through the launcher in a thread; its rows or its error land in the returned dict."""
    result: dict = {}

    def sweep():
        try:
            result["rows"] = run_sweep(cfg, grid, out, train_fn=train_fn, progress=False, plots=False,
                                       launcher=cluster_pool_factory(options, cfg, out))
        except BaseException as err:  # checked by the test
            result["error"] = err

    thread = threading.Thread(target=sweep)
    thread.start()
    return thread, result


def _job_once_saved(out: Path, run: str, thread: threading.Thread, result: dict, seconds: float) -> str:
    """The SLURM job of `run`, once the run has saved `last`."""
    last = out / "runs" / run / "checkpoints" / "last.safetensors"
    deadline = time.monotonic() + seconds
    while not last.exists() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(1)
    assert last.exists(), result.get("error")
    return json.loads((out / "launcher" / "jobs.json").read_text())[run]["job_id"]


def test_a_sweep_on_slurm_equals_the_local_sweep_after_a_requeue(tmp_path, local_slurm):
    cfg = _fsdd_config(tmp_path)
    grid = {"interface.name": ["weighted_sum", "hconv"], "train.lr": [1e-3, 1e-2]}
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the jobs cannot import this test module
    log = tmp_path / "attempts.jsonl"
    run_sweep(cfg, grid, tmp_path / "local", train_fn=LoggedTrain(str(log)), progress=False, plots=False,
              threads=1)

    out = tmp_path / "slurm_sweep"
    options = launcher_options({"name": "slurm", "cpus": 1, "time": 30, "signal_delay_s": 30})
    thread, result = _sweep_in_background(cfg, grid, out, LoggedTrain(str(log)), options)
    # once the paused run has saved `last` at step 2 in its first attempt, requeue its job through the scheduler
    job = _job_once_saved(out, PAUSED_RUN, thread, result, 900)
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)
    thread.join(timeout=900)
    assert not thread.is_alive() and "error" not in result, result.get("error")

    attempts = [json.loads(line) for line in log.read_text().splitlines()]
    on_jobs = [a for a in attempts if a["job"] is not None]
    assert sorted({a["run"] for a in on_jobs}) == sorted(r["run"] for r in result["rows"])  # every run a job
    paused = [a for a in on_jobs if a["run"] == PAUSED_RUN]
    assert [(a["restart"], a["step"]) for a in paused] == [(0, 0), (1, 2)]  # requeued, resumed from step 2
    local, on_slurm = csv_rows(tmp_path / "local" / "results.csv"), csv_rows(out / "results.csv")
    assert len(local) == 4 and on_slurm == local  # every metric to the last digit


WARNED_RUN, CANCELLED_RUN = "weighted_sum", "hconv"


class HeldTrain:
    """The real runner; logs each attempt (run, restart count, the step it starts at). In a SLURM job's first
    attempt, WARNED_RUN holds after step 2 until SLURM's warning signal before the time limit has reached the
    training loop (at most 200 s), CANCELLED_RUN until it is cancelled."""

    def __init__(self, log_path: str):
        self.log_path = log_path

    def __call__(self, cfg, run_dir):
        from speechfuse.training.learner import StopOnInterrupt
        from speechfuse.training.runner import train

        log_path = self.log_path

        class Hold(Callback):
            def on_train_start(self, trainer, pl_module):
                with open(log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"run": run_dir.name, "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
                                        "step": trainer.global_step}) + "\n")

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if trainer.global_step != 2 or "SLURM_JOB_ID" not in os.environ or \
                        int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0:
                    return
                stopper = next(c for c in trainer.callbacks if isinstance(c, StopOnInterrupt))
                deadline = time.monotonic() + (200 if run_dir.name == WARNED_RUN else 600)
                while not stopper.requested and time.monotonic() < deadline:
                    time.sleep(0.2)

        return train(cfg, run_dir, callbacks=[Hold()])


def test_on_slurm_the_time_limit_warning_requeues_and_resumes_and_a_cancelled_job_fails(tmp_path, local_slurm):
    """SLURM's own warning before a 3-minute time limit (--signal=USR2@90, from submitit) reaches the training loop:
    the run finishes its step, saves `last`, requeues, and its next attempt resumes there, ending with the same
    results.csv row as an uninterrupted local run. A job removed with `scancel` is named as failed with one line,
    and the waiting sweep ends (SweepFailed) instead of polling for ever."""
    import cloudpickle

    from speechfuse.experiments.sweep import SweepFailed

    cfg = _fsdd_config(tmp_path)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the jobs cannot import this test module
    log = tmp_path / "attempts.jsonl"
    run_sweep(cfg, {"interface.name": [WARNED_RUN]}, tmp_path / "local", train_fn=HeldTrain(str(log)),
              progress=False, plots=False, threads=1)

    out = tmp_path / "slurm_sweep"
    options = launcher_options({"name": "slurm", "cpus": 1, "time": 3, "signal_delay_s": 90})
    thread, result = _sweep_in_background(cfg, {"interface.name": [WARNED_RUN, CANCELLED_RUN]}, out,
                                          HeldTrain(str(log)), options)
    job = _job_once_saved(out, CANCELLED_RUN, thread, result, 600)
    subprocess.run(["scancel", job], check=True, timeout=60)
    thread.join(timeout=900)
    assert not thread.is_alive()

    error = result.get("error")
    assert isinstance(error, SweepFailed) and error.failed == [CANCELLED_RUN], error
    assert f"run '{CANCELLED_RUN}' (interface.name={CANCELLED_RUN}) in {out / 'runs' / CANCELLED_RUN} failed: " \
           f"JobFailed: run '{CANCELLED_RUN}': job {job} was cancelled (scancel); its log: " in str(error)
    assert "\n" not in str(error)
    attempts = [json.loads(line) for line in log.read_text().splitlines()]
    warned = [(a["restart"], a["step"]) for a in attempts if a["run"] == WARNED_RUN][1:]  # [0]: the local run
    assert warned[:2] == [(0, 0), (1, 3)]  # stopped after the step it held before, resumed from its `last` there
    assert csv_rows(out / "results.csv") == csv_rows(tmp_path / "local" / "results.csv")  # every metric to the last digit
