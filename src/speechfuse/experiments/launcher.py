"""Sweeps on a cluster: every run one SLURM job (array task), through submitit.

    speechfuse sweep CONFIG --grid ... --out OUT --launcher slurm --partition gpu --gpus 1 --time 120

or a `launcher:` section in the config (options on the command line win):

    launcher: {name: slurm, partition: gpu, gpus: 1, time: 120, account: myproj, cpus: 8, mem_gb: 32}

- The sweep folder stays the one source of truth (speechfuse.experiments.sweep does the planning, the selection, the tables
  and the figures, exactly as for a local sweep): a run with metrics.json is finished. Rerunning the command
  collects the finished runs, re-attaches to the jobs of this sweep still queued or running (OUT/launcher/jobs.json)
  and submits the failed and missing ones.
- Feature extraction is submitted first, one job per upstream (it fills the shared cache for every data
  section of the sweep); the training jobs depend on those jobs (`afterok`) and go in as one job array.
- Preemption: submitit asks SLURM for a warning signal (USR2, `signal_delay_s` before the end) and, when it
  comes or the job is preempted, requeues the job through `TrainJob.checkpoint`, which re-invokes the same
  call: `train()` then resumes from the run's `last` checkpoint (speechfuse.training.runner), so the weights equal an
  uninterrupted run's and a lost node loses only the steps since the last dev evaluation.
- `name: local` runs the same jobs as local processes through submitit's LocalExecutor (no scheduler).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from speechfuse.errors import ConfigError, SpeechfuseError
from speechfuse.io import write_atomic
from speechfuse.training.runfolder import RunFolder


LAUNCHERS = ("slurm", "local")
JOBS_FILE = "jobs.json"
POLL_SECONDS = 5.0


@dataclass
class LauncherOptions:
    """Where and how the jobs run; every field may come from the config's `launcher:` section or an option."""

    name: str = "slurm"
    partition: str | None = None
    account: str | None = None
    gpus: int | None = None  # per job
    cpus: int | None = None  # per job; also its torch threads
    mem_gb: float | None = None
    time: int = 60  # minutes per job (a requeued job gets a fresh allowance)
    array_parallelism: int = 256
    signal_delay_s: int = 120  # the warning signal comes this long before the time limit
    max_requeues: int = 3  # how often submitit requeues a job that was preempted or ran out of time
    extra: dict[str, Any] = field(default_factory=dict)  # any other sbatch option, e.g. {qos: high}


def launcher_options(section: Any, cli: dict[str, Any] | None = None, source: str = "launcher") -> LauncherOptions:
    """The config's `launcher:` section with the command line's options (those not None) on top."""
    data = dict(section or {})
    if not isinstance(section or {}, dict):
        raise ConfigError(f"{source}: the launcher section must be a mapping, e.g. {{name: slurm, partition: gpu}}")
    data.update({k: v for k, v in (cli or {}).items() if v is not None})
    known = {f.name for f in fields(LauncherOptions)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown launcher option(s) {unknown}; known: {sorted(known)} "
                          "(put other sbatch options under `extra`)")
    options = LauncherOptions(**data)
    if options.name not in LAUNCHERS:
        raise ConfigError(f"{source}: launcher name must be one of {list(LAUNCHERS)}, got {options.name!r}")
    for key in ("gpus", "cpus", "time", "array_parallelism", "signal_delay_s"):
        value = getattr(options, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(f"{source}: launcher {key} must be a whole number >= 0, got {value!r}")
    if not isinstance(options.extra, dict):
        raise ConfigError(f"{source}: launcher extra must be a mapping of sbatch options, got {options.extra!r}")
    return options


# ---------------------------------------------------------------------------------------------
# the jobs
# ---------------------------------------------------------------------------------------------
def _checkpointable():
    import submitit

    return submitit.helpers.Checkpointable


class TrainJob(_checkpointable()):  # type: ignore[misc]
    """One run as a job. On the scheduler's warning signal or a preemption, submitit calls `checkpoint`, which
    (Checkpointable's default) resubmits this same call: `train` then resumes from the run's `last`."""

    def __init__(self, train_fn: Callable, threads: int | None = None) -> None:
        self.train_fn, self.threads = train_fn, threads

    def __call__(self, run_cfg: Any, run_dir: str) -> dict:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        return self.train_fn(run_cfg, Path(run_dir))


def extract_job(configs: list[Any], out_dir: str, threads: int | None = None) -> int:
    """Fill the shared cache of one upstream for every data section that uses it."""
    from speechfuse.cache.fill import fill_config_caches

    if threads:
        import torch

        torch.set_num_threads(threads)

    total = 0
    for cfg in configs:
        total += fill_config_caches(cfg, Path(out_dir) / "cache_fill", progress=False)[2]
    return total


def _executor(options: LauncherOptions, folder: Path, job_name: str):
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster=options.name, slurm_max_num_timeout=options.max_requeues) \
        if options.name == "slurm" else submitit.AutoExecutor(folder=folder, cluster="local")
    params: dict[str, Any] = {"timeout_min": options.time, "name": job_name}
    if options.gpus is not None:
        params["gpus_per_node"] = options.gpus
    if options.cpus is not None:
        params["cpus_per_task"] = options.cpus
    if options.mem_gb is not None:
        params["mem_gb"] = options.mem_gb
    if options.name == "slurm":
        params.update(slurm_partition=options.partition, slurm_account=options.account,
                      slurm_array_parallelism=options.array_parallelism, slurm_signal_delay_s=options.signal_delay_s,
                      slurm_additional_parameters=dict(options.extra))
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


class ClusterPool:
    """What `run_sweep` uses instead of its local worker processes when a launcher is given: `train(combos)`
    submits the runs not finished yet (after their upstreams' extraction jobs) and waits for them."""

    def __init__(self, options: LauncherOptions, cfg: Any, out_dir: Path, cache_dir: str | None,
                 run_of: Callable, train_fn: Callable, finished: Callable) -> None:
        self.options, self.cfg, self.out_dir, self.cache_dir = options, cfg, Path(out_dir), cache_dir
        self.run_of, self.train_fn, self.finished = run_of, train_fn, finished
        self.folder = self.out_dir / "launcher"
        self.extraction: list[Any] = []  # this invocation's extraction jobs
        self.extracted = False

    # -- bookkeeping: which job trains which run, kept across invocations --------------------
    def _jobs(self) -> dict:
        try:
            return json.loads((self.folder / JOBS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _record(self, jobs: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.folder / JOBS_FILE, json.dumps(jobs, indent=2))

    def _live_job(self, entry: dict | None) -> Any:
        """The job of an earlier invocation if the scheduler still has it queued or running (asked with squeue,
        which needs no accounting database)."""
        if not entry or self.options.name != "slurm" or entry.get("launcher") != "slurm":
            return None
        import subprocess

        import submitit

        job_id = str(entry["job_id"])
        try:
            state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                                   timeout=60).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
        return submitit.SlurmJob(folder=self.folder, job_id=job_id) if state else None

    # -- extraction ------------------------------------------------------------------------
    def _submit_extraction(self, combos: list[dict]) -> list[Any]:
        """One job per upstream, over every data section of the combinations that use it."""
        if self.cache_dir is None or self.extracted:
            return self.extraction
        from speechfuse.experiments.sweep import _config_dict, _rebuild, combo_config

        by_upstream: dict[str, dict[str, dict]] = {}
        for combo in combos:
            data = _config_dict(combo_config(self.cfg, combo, self.cache_dir))
            for up in data.get("upstreams") or []:
                if (up.get("options") or {}).get("trainable"):
                    continue  # trainable upstreams are not cached
                key = json.dumps(up, sort_keys=True, default=str)
                section = json.dumps(data.get("data"), sort_keys=True, default=str)
                by_upstream.setdefault(key, {}).setdefault(section, {**data, "upstreams": [up]})
        self.extracted = True
        if not by_upstream:
            return self.extraction
        executor = _executor(self.options, self.folder, "speechfuse-extract")
        configs = [[_rebuild(self.cfg, d, "(launcher extraction)") for d in sections.values()]
                   for sections in by_upstream.values()]
        with executor.batch():
            self.extraction = [executor.submit(extract_job, c, str(self.out_dir), self.options.cpus) for c in configs]
        print(f"speechfuse sweep: {len(self.extraction)} extraction job(s) submitted "
              f"({', '.join(str(j.job_id) for j in self.extraction)})", file=sys.stderr)
        return self.extraction

    # -- training --------------------------------------------------------------------------
    def train(self, combos: list[dict]) -> None:
        pending: dict[str, tuple[Any, Path]] = {}
        for combo in combos:
            name, run_cfg, run_dir = self.run_of(combo)
            if RunFolder(run_dir).is_finished:
                self.finished(name, run_dir, None)
            else:
                pending.setdefault(name, (run_cfg, run_dir))
        if not pending:
            return
        jobs = self._jobs()
        waiting: dict[str, Any] = {}
        for name in list(pending):
            job = self._live_job(jobs.get(name))
            if job is not None:  # submitted by an earlier invocation and still there: wait for it
                waiting[name] = job
                del pending[name]
        if waiting:
            print(f"speechfuse sweep: {len(waiting)} run(s) still queued or running from before", file=sys.stderr)
        extraction = self._submit_extraction([c for c in combos if self.run_of(c)[0] in pending])
        if pending:
            submitted = self._submit_training(pending, extraction)
            waiting.update(submitted)
            jobs.update({n: {"job_id": str(j.job_id), "launcher": self.options.name} for n, j in submitted.items()})
            self._record(jobs)
        self._wait(waiting, extraction)

    def _submit_training(self, pending: dict[str, tuple[Any, Path]], extraction: list[Any]) -> dict[str, Any]:
        executor = _executor(self.options, self.folder, "speechfuse-train")
        if extraction and self.options.name == "slurm":
            executor.update_parameters(slurm_additional_parameters={
                **self.options.extra, "dependency": "afterok:" + ":".join(str(j.job_id) for j in extraction)})
        elif extraction:  # the local executor knows no dependencies: extraction finishes first
            self._wait({}, extraction)
        job_fn = TrainJob(self.train_fn, self.options.cpus)
        names = list(pending)
        for name in names:
            pending[name][1].mkdir(parents=True, exist_ok=True)
        with executor.batch():
            jobs = [executor.submit(job_fn, pending[n][0], str(pending[n][1])) for n in names]
        print(f"speechfuse sweep: {len(jobs)} training job(s) submitted"
              + (f" (array {str(jobs[0].job_id).split('_')[0]})" if jobs and self.options.name == "slurm" else ""),
              file=sys.stderr)
        return dict(zip(names, jobs))

    def _wait(self, waiting: dict[str, Any], extraction: list[Any]) -> None:
        """Until every job is done: a finished run goes to the sweep, a failed job stops the sweep naming its log
        (the other jobs go on; rerun the command to collect them and resubmit the failed one)."""
        extraction = [j for j in extraction if not getattr(j, "_speechfuse_checked", False)]
        while waiting or extraction:
            for job in list(extraction):
                if job.done():
                    extraction.remove(job)
                    job._speechfuse_checked = True
                    self._result(job, "extraction")
            for name, job in list(waiting.items()):
                if job.done():
                    del waiting[name]
                    _, _, run_dir = self.run_of_name(name)
                    metrics = self._result(job, f"run {name!r} in {run_dir}")
                    self.finished(name, run_dir, metrics if isinstance(metrics, dict) else None)
            if waiting or extraction:
                time.sleep(POLL_SECONDS)

    def run_of_name(self, name: str) -> tuple[str, Any, Path]:
        return name, None, self.out_dir / "runs" / name

    def _result(self, job: Any, what: str) -> Any:
        try:
            return job.result()
        except Exception as err:  # submitit's FailedJobError / UncompletedJobError carry the job's stderr
            paths = getattr(job, "paths", None)
            log = f"; its log: {paths.stderr}" if paths is not None else ""
            raise SpeechfuseError(f"speechfuse sweep: {what} failed in job {job.job_id}{log}. Finished runs are kept: "
                                  f"run the same command again to resubmit the failed ones. "
                                  f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''}") from err

    def close(self) -> None:
        pass


def run_jobs(options: LauncherOptions, out_dir: str | Path, job_name: str, calls: list[tuple[Callable, tuple]]) -> list:
    """Submit `calls` ((function, args) each) as one job array and wait for all; a failed job raises naming
    its log."""
    folder = Path(out_dir) / "launcher"
    executor = _executor(options, folder, job_name)
    with executor.batch():
        jobs = [executor.submit(fn, *args) for fn, args in calls]
    print(f"speechfuse: {len(jobs)} {job_name} job(s) submitted", file=sys.stderr)
    results = []
    for job in jobs:
        while not job.done():
            time.sleep(POLL_SECONDS)
        try:
            results.append(job.result())
        except Exception as err:
            raise SpeechfuseError(f"{job_name} job {job.job_id} failed; its log: {job.paths.stderr}. "
                                  "Rerun the same command to go on.") from err
    return results


def cluster_pool_factory(options: LauncherOptions, cfg: Any, out_dir: str | Path) -> Callable:
    """The `launcher=` argument of run_sweep: (run_of, train_fn, finished) -> ClusterPool."""
    from speechfuse.data.loader import resolve_cache_dir

    out = Path(out_dir).resolve()
    # the jobs must see this folder: on a cluster set `cache:` or SPEECHFUSE_HOME to shared storage
    cache = resolve_cache_dir(cfg)
    cache_dir = str(cache) if cache is not None else None

    def factory(run_of: Callable, train_fn: Callable, finished: Callable) -> ClusterPool:
        return ClusterPool(options, cfg, out, cache_dir, run_of, train_fn, finished)

    return factory


__all__ = ["LauncherOptions", "launcher_options", "TrainJob", "ClusterPool", "run_jobs",
           "cluster_pool_factory"]

