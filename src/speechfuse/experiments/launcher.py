"""Runs on a cluster: every run of a sweep, study or prune one SLURM job (array task), through submitit.

    speechfuse sweep CONFIG --grid ... --out OUT --launcher slurm --partition gpu --gpus 1 --time 120

or a `launcher:` section in the config (options on the command line win):

    launcher: {name: slurm, partition: gpu, gpus: 1, time: 120, account: myproj, cpus: 8, mem_gb: 32}

- The sweep folder stays the one source of truth (speechfuse.experiments.sweep does the planning, the selection, the tables
  and the figures, exactly as for a local sweep): a run with metrics.json is finished. Rerunning the command
  collects the finished runs, re-attaches to the jobs of this sweep still queued or running (OUT/launcher/jobs.json)
  and submits the failed and missing ones. `study` runs each series' sweep this way, all series at once (one
  thread waits on each); `prune` uses ClusterPool directly for its retrainings.
- Feature extraction is submitted first, one job per upstream (it fills the shared cache for every data
  section of the sweep); the training jobs depend on those jobs (`afterany`, so that a failed or cancelled
  extraction never leaves them pending) and go in as one job array.
- A failed job goes to the sweep's `failed` callback like a failed local run (keep-going); a job that SLURM
  ended without a result (scancel, a lost node) is found with squeue (JobWatch) and fails the same way.
- The time limit: submitit asks SLURM for a warning signal (USR2, `signal_delay_s` before the end); TrainJob
  turns it into the training loop's stop request (finish the step, save `last`), then lets submitit requeue the
  job through `TrainJob.checkpoint`, which re-invokes the same call: `train()` resumes from the run's `last`
  (speechfuse.training.runner), so the weights equal an uninterrupted run's. A preemption or `scontrol requeue`
  restarts the same call from the last scheduled checkpoint.
- `name: local` runs the same jobs as local processes through submitit's LocalExecutor (no scheduler).
"""
from __future__ import annotations

import getpass
import json
import signal
import subprocess
import sys
import threading
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
WARNING_SIGNAL = signal.SIGUSR2  # what submitit asks SLURM to send before the time limit (--signal=USR2@N)
# a job in one of these states, or gone from the queue, will write no result any more
FINAL_STATES = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                "TIMEOUT"}


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
    """One run as a job. SLURM's warning signal before the time limit (USR2, `signal_delay_s` ahead) goes to the
    training loop as a stop request: the step finishes and `last` is saved (as for SIGUSR1, speechfuse.training.
    learner.StopOnInterrupt); then submitit's own handler runs `checkpoint` (Checkpointable's default: resubmit
    this same call) and requeues the job, whose next attempt resumes `train` from that `last`. A preemption without
    a warning resumes from the last scheduled checkpoint."""

    def __init__(self, train_fn: Callable, threads: int | None = None) -> None:
        self.train_fn, self.threads = train_fn, threads

    def __call__(self, run_cfg: Any, run_dir: str) -> dict:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        if threading.current_thread() is not threading.main_thread():
            return self.train_fn(run_cfg, Path(run_dir))
        from speechfuse.training.interrupt import Interrupted

        warned: list[int] = []

        def on_warning(signum: int, frame: Any) -> None:
            warned.append(signum)
            stop = signal.getsignal(signal.SIGUSR1)  # the training loop's stop request, when it is running
            if callable(stop):
                stop(signal.SIGUSR1, frame)
            else:
                raise Interrupted(f"{signal.Signals(signum).name} received", signum)

        requeue = signal.signal(WARNING_SIGNAL, on_warning)  # submitit's checkpoint-and-requeue handler
        try:
            return self.train_fn(run_cfg, Path(run_dir))
        except Interrupted:
            if warned and callable(requeue):
                signal.signal(WARNING_SIGNAL, requeue)
                requeue(WARNING_SIGNAL, None)  # checkpoint, `scontrol requeue`, exit
            raise
        finally:
            if signal.getsignal(WARNING_SIGNAL) is on_warning:
                signal.signal(WARNING_SIGNAL, requeue)


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


def queue_states(job_ids: list[str]) -> dict[str, str] | None:
    """{job id: state} of this user's jobs that SLURM still knows (`squeue`, which needs no accounting database;
    array tasks one by one); None when squeue cannot be asked (nothing is concluded then)."""
    try:
        listed = subprocess.run(["squeue", "-h", "-r", "--states=all", "-u", getpass.getuser(), "-o", "%i|%T"],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if listed.returncode != 0:
        return None
    states = dict(line.split("|", 1) for line in listed.stdout.split() if "|" in line)
    return {job_id: states[job_id] for job_id in job_ids if job_id in states}


class JobWatch:
    """Which SLURM jobs ended without a result: gone from the queue or in a final state (scancel, a lost node, the
    time limit without requeue) on two polls in a row while their result file is still missing. submitit itself asks
    `sacct`, which says UNKNOWN forever on a cluster without an accounting database."""

    def __init__(self, launcher: str) -> None:
        self.launcher = launcher
        self.suspects: dict[str, str] = {}

    def ended(self, jobs: list[Any]) -> dict[str, str]:
        """{job id: how it ended} for the jobs of `jobs` that will never write a result."""
        if self.launcher != "slurm" or not jobs:
            return {}
        states = queue_states([str(j.job_id) for j in jobs])
        if states is None:
            return {}
        ended, suspects = {}, {}
        for job in jobs:
            job_id = str(job.job_id)
            state = states.get(job_id, "gone from the queue")
            if state not in FINAL_STATES and job_id in states:
                continue
            if job.done():  # the result arrived meanwhile
                continue
            if job_id in self.suspects:
                ended[job_id] = state
            else:
                suspects[job_id] = state
        self.suspects = suspects
        return ended


def _one_line(err: Exception) -> str:
    """What went wrong, on one line: the exception that ended the job's traceback (submitit puts the traceback
    between two rules of dashes; the exception's message may span several lines), else the error's message."""
    text = str(err).strip()
    parts = text.split("-" * 22)
    lines = (parts[1] if len(parts) >= 3 else text).splitlines()
    if len(parts) >= 3:
        frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
        start = frames[-1] + 1 if frames else 0
        while start < len(lines) and lines[start].startswith(" "):  # the frame's source line and its ^^^ marks
            start += 1
        lines = lines[start:]
    return " ".join(line.strip() for line in lines if line.strip()) or type(err).__name__


def _job_log(job: Any) -> str:
    paths = getattr(job, "paths", None)
    return f"; its log: {paths.stderr}" if paths is not None else ""


class JobFailed(SpeechfuseError):
    """A job ended without a result: it raised (its traceback in the message), or SLURM ended it (scancel, a
    lost node, the time limit)."""


def job_result(job: Any, what: str) -> Any:
    try:
        return job.result()
    except Exception as err:  # submitit's FailedJobError / UncompletedJobError carry the job's traceback
        # one line here; the job's traceback stays in the chained error (the sweep writes it to RUN/error.txt)
        raise JobFailed(f"{what} failed in job {job.job_id}{_job_log(job)}: {_one_line(err)}") from err


def ended_without_result(job: Any, state: str, what: str) -> JobFailed:
    how = "was cancelled (scancel)" if state == "CANCELLED" else f"ended ({state}) without a result"
    return JobFailed(f"{what}: job {job.job_id} {how}{_job_log(job)}")


class ClusterPool:
    """What `run_sweep` uses instead of its local worker processes when a launcher is given: `train(combos)`
    submits the runs not finished yet (after their upstreams' extraction jobs) and waits for them. `run_of(combo)`
    gives (name, run config, run folder); `finished(name, run_dir, metrics)` takes each finished run;
    `failed(combo, name, run_dir, error)` each failed one (None: the first failure stops the waiting)."""

    def __init__(self, options: LauncherOptions, out_dir: Path, cache_dir: str | None,
                 run_of: Callable, train_fn: Callable, finished: Callable, failed: Callable | None = None,
                 command: str = "sweep") -> None:
        self.options, self.out_dir, self.cache_dir = options, Path(out_dir), cache_dir
        self.run_of, self.train_fn, self.finished, self.failed = run_of, train_fn, finished, failed
        self.command = command
        self.folder = self.out_dir / "launcher"
        self.extraction: list[Any] = []  # this invocation's extraction jobs
        self.extracted = False
        self.runs: dict[str, tuple[Path, dict]] = {}  # run name -> (run folder, combination)
        self.watch = JobWatch(options.name)

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
        """The job of an earlier invocation if the scheduler still has it queued or running."""
        if not entry or self.options.name != "slurm" or entry.get("launcher") != "slurm":
            return None
        import submitit

        job_id = str(entry["job_id"])
        state = (queue_states([job_id]) or {}).get(job_id)
        if state is None or state in FINAL_STATES:
            return None
        return submitit.SlurmJob(folder=self.folder, job_id=job_id)

    # -- extraction ------------------------------------------------------------------------
    def _submit_extraction(self, combos: list[dict]) -> list[Any]:
        """One job per upstream, over every data section of the combinations that use it."""
        if self.cache_dir is None or self.extracted:
            return self.extraction
        from speechfuse.experiments.sweep import _config_dict, _rebuild

        by_upstream: dict[str, dict[str, dict]] = {}
        like = None
        for combo in combos:
            like = self.run_of(combo)[1]
            data = _config_dict(like)
            cache = data.get("cache")
            data["cache"] = {**cache, "dir": self.cache_dir} if isinstance(cache, dict) else self.cache_dir
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
        configs = [[_rebuild(like, d, "(launcher extraction)") for d in sections.values()]
                   for sections in by_upstream.values()]
        with executor.batch():
            self.extraction = [executor.submit(extract_job, c, str(self.out_dir), self.options.cpus) for c in configs]
        print(f"speechfuse {self.command}: {len(self.extraction)} extraction job(s) submitted "
              f"({', '.join(str(j.job_id) for j in self.extraction)})", file=sys.stderr)
        return self.extraction

    # -- training --------------------------------------------------------------------------
    def train(self, combos: list[dict]) -> None:
        pending: dict[str, tuple[Any, Path]] = {}
        for combo in combos:
            name, run_cfg, run_dir = self.run_of(combo)
            self.runs.setdefault(name, (run_dir, combo))
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
            print(f"speechfuse {self.command}: {len(waiting)} run(s) still queued or running from before",
                  file=sys.stderr)
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
            # afterany, not afterok: a failed or cancelled extraction must not leave the runs pending for ever;
            # each run then extracts what it lacks itself, or fails naming why
            executor.update_parameters(slurm_additional_parameters={
                **self.options.extra, "dependency": "afterany:" + ":".join(str(j.job_id) for j in extraction)})
        elif extraction:  # the local executor knows no dependencies: extraction finishes first
            self._wait({}, extraction)
        job_fn = TrainJob(self.train_fn, self.options.cpus)
        names = list(pending)
        for name in names:
            pending[name][1].mkdir(parents=True, exist_ok=True)
        with executor.batch():
            jobs = [executor.submit(job_fn, pending[n][0], str(pending[n][1])) for n in names]
        print(f"speechfuse {self.command}: {len(jobs)} training job(s) submitted"
              + (f" (array {str(jobs[0].job_id).split('_')[0]})" if jobs and self.options.name == "slurm" else ""),
              file=sys.stderr)
        return dict(zip(names, jobs))

    def _wait(self, waiting: dict[str, Any], extraction: list[Any]) -> None:
        """Until every job is done or ended without a result: a finished run goes to `finished`, a failed one to
        `failed` (without it, the first failure raises; the other jobs go on, and rerunning the command collects
        them and resubmits the failed one)."""
        extraction = [j for j in extraction if not getattr(j, "_speechfuse_checked", False)]
        while waiting or extraction:
            ended = self.watch.ended([*extraction, *waiting.values()])
            for job in list(extraction):
                state = ended.get(str(job.job_id))
                if job.done() or state:
                    extraction.remove(job)
                    job._speechfuse_checked = True
                    try:
                        if state:
                            raise ended_without_result(job, state, f"speechfuse {self.command}: extraction")
                        job_result(job, f"speechfuse {self.command}: extraction")
                    except JobFailed as err:
                        if self.failed is None:
                            raise
                        print(f"{err}; the runs extract what they need "
                              "themselves", file=sys.stderr, flush=True)
            for name, job in list(waiting.items()):
                state = ended.get(str(job.job_id))
                if job.done() or state:
                    del waiting[name]
                    run_dir, combo = self.runs[name]
                    try:
                        if state:
                            raise ended_without_result(job, state, f"run {name!r}")
                        metrics = job_result(job, f"run {name!r}")
                    except JobFailed as err:
                        if self.failed is None:
                            raise JobFailed(f"speechfuse {self.command}: {err}. Finished runs "
                                            "are kept: run the same command again to resubmit the failed ones.") \
                                from err
                        self.failed(combo, name, run_dir, err)
                        continue
                    self.finished(name, run_dir, metrics if isinstance(metrics, dict) else None)
            if waiting or extraction:
                time.sleep(POLL_SECONDS)

    def close(self) -> None:
        pass


def run_jobs(options: LauncherOptions, out_dir: str | Path, job_name: str, calls: list[tuple[Callable, tuple]]) -> list:
    """Submit `calls` ((function, args) each) as one job array and wait for all; a failed job (or one SLURM ended
    without a result) raises naming its log."""
    folder = Path(out_dir) / "launcher"
    executor = _executor(options, folder, job_name)
    with executor.batch():
        jobs = [executor.submit(fn, *args) for fn, args in calls]
    print(f"speechfuse: {len(jobs)} {job_name} job(s) submitted", file=sys.stderr)
    watch = JobWatch(options.name)
    waiting = list(jobs)
    while waiting:
        ended = watch.ended(waiting)
        for job in list(waiting):
            if job.done():
                waiting.remove(job)
            elif str(job.job_id) in ended:
                raise ended_without_result(job, ended[str(job.job_id)], f"{job_name}; rerun the same command to go on")
        if waiting:
            time.sleep(POLL_SECONDS)
    return [job_result(job, f"{job_name} (rerun the same command to go on)") for job in jobs]


def concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    """Each call in its own thread (sweeps that mostly wait on the scheduler), their results in order. An error is
    raised once every call has ended, so the others' runs are all collected; Ctrl-C returns at once (the jobs go
    on, and rerunning the command collects them)."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException | None] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as err:  # raised below, in the caller's thread
            errors[i] = err

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():  # a bare join() would hold Ctrl-C until the thread ends
            thread.join(0.5)
    for err in errors:
        if err is not None:
            raise err
    return results


def cluster_pool_factory(options: LauncherOptions, cfg: Any, out_dir: str | Path, command: str = "sweep") -> Callable:
    """The `launcher=` argument of run_sweep: (run_of, train_fn, finished, failed) -> ClusterPool."""
    from speechfuse.experiments.sweep import shared_cache_dir

    out = Path(out_dir).resolve()
    # the jobs must see this folder: on a cluster set `cache:` or SPEECHFUSE_HOME to shared storage
    cache_dir = shared_cache_dir(cfg)

    def factory(run_of: Callable, train_fn: Callable, finished: Callable, failed: Callable | None = None) -> ClusterPool:
        return ClusterPool(options, out, cache_dir, run_of, train_fn, finished, failed, command)

    return factory


__all__ = ["LauncherOptions", "launcher_options", "TrainJob", "ClusterPool", "JobFailed", "JobWatch", "run_jobs",
           "cluster_pool_factory", "queue_states", "concurrently"]

