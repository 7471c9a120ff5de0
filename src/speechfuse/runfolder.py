"""Where a run lives: the run folder's layout, its one atomic writer, its lock, its data fingerprints and the
checks that a resumed run is the same run.

A run folder holds:
    config.yaml       the resolved config            task.json       the fitted task (vocabulary / labels)
    fingerprint.json  sha256 of the config and of each manifest's contents (checked on resume)
    train.lock        while a `train` runs in the folder: its pid, host and start time
    checkpoints/      last.safetensors, best.safetensors (safetensors + JSON, see speechfuse.checkpoint)
    metrics.json      {"dev": {...}, "test": {...}} of the best checkpoint (chosen by the dev main metric)
    interface.json    {"interface", "num_parameters", "describe", "importance"}   layers.png  weights/importance
    logs/             CSV (logs/csv/metrics.csv) and TensorBoard (logs/tensorboard) logs
    model/            the best checkpoint as a model folder: sf.load_model(RUN_DIR) (see speechfuse.model)
    skipped_<split>.csv  the manifest rows dropped with train.skip_bad_rows

    write_atomic(run_dir / "metrics.json", text)        # temp file, fsync, rename: never a torn file
    with RunLock(run_dir):                              # one `train` per folder at a time
        check_writable(run_dir, run_dir / CKPT_DIR)     # before any work, not after the first steps
        check_data_unchanged(run_dir, manifests, allow_changed=False)   # on resume
        record_fingerprint(run_dir, config_text, manifests)
        check_same_config(cfg, run_dir); check_same_task(task, run_dir)   # on resume

The lock is an flock on RUN_DIR/train.lock, which also names its holder (pid, host, start time). The
kernel drops it when the holder dies, so a lock left by a killed run is taken over; where the file
system has no flock, a lock whose pid is dead on this host is taken over instead.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import yaml

from .config import Config, config_from_dict, config_to_dict
from .errors import ConfigError, SpeechfuseError

if TYPE_CHECKING:
    from .tasks import Task

CKPT_DIR = "checkpoints"
LAST = "last"  # checkpoints/last.safetensors, checkpoints/best.safetensors
BEST = "best"
EXT = ".safetensors"
LOGS_DIR = "logs"
LOCK = "train.lock"
FINGERPRINT = "fingerprint.json"


class RunFolderError(SpeechfuseError):
    """The run folder cannot be used: in use by another run, not writable, or its disk is full."""


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one, never a part:
    a temp file in the same folder, fsync, rename. A full disk is a RunFolderError naming the file,
    and the old file is kept. Every file speechfuse writes goes through here; its mode is what open()
    would give (0o666 less the umask), so a shared cache or run folder follows the user's umask."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RunFolderError(f"disk full while writing {path} ({err.strerror}); the previous version of the "
                                 "file is kept. Free some space and run the same command again.") from err
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise RunFolderError(f"cannot write {path} ({err.strerror}); make its folder writable or use "
                                 "another folder.") from err
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def check_writable(*folders: Path) -> None:
    """A RunFolderError, before any work, when a folder (or, if it does not exist yet, the folder it would be
    created in) cannot be written: a probe file is created and removed (permissions alone do not say it:
    root ignores them, a read-only mount does not)."""
    for folder in folders:
        target = folder
        while not target.exists() and target.parent != target:
            target = target.parent
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=target)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise RunFolderError(f"cannot write into {target} ({err.strerror or err}); nothing was trained. Make it "
                                 "writable, or train into another folder (--out).") from err


def check_free_space(folder: Path, need_bytes: int, what: str) -> None:
    """RunFolderError when the disk holding `folder` has less than `need_bytes` free."""
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise RunFolderError(f"only {free / 2**20:.1f} MiB free on the disk of {folder}, but {what} need about "
                             f"{need_bytes / 2**20:.1f} MiB; free some space or train into a folder on another "
                             "disk (--out). Nothing was trained.")


def disk_full(err: BaseException, where: Path) -> Optional[RunFolderError]:
    """The clear error for an OSError ENOSPC raised by some writer (a logger, say) inside `where`."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return RunFolderError(f"disk full while writing into {where} ({err}); the last checkpoint is kept. Free "
                              "some space and run the same command again to resume.")
    return None


# ---------------------------------------------------------------------------------------------
# the lock
# ---------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """Holds RUN_DIR/train.lock while a run trains; a second holder gets a RunFolderError naming the first."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK
        self._fd: Optional[int] = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise RunFolderError(f"cannot create the lock file {self.path} ({err.strerror}); make the run "
                                     "folder writable, or train into another folder (--out)") from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunFolderError(self._busy_message(self._holder())) from None
            except OSError:  # no flock on this file system: judge the holder by its pid
                holder = self._holder()
                if holder and holder.get("host") == socket.gethostname() and _pid_alive(int(holder.get("pid", 0))) \
                        and int(holder.get("pid", 0)) != os.getpid():
                    os.close(fd)
                    raise RunFolderError(self._busy_message(holder)) from None
            # the file may have been unlinked by its previous holder between our open and flock
            if os.path.exists(self.path) and os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode("utf-8"))
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # still holding the flock: nobody reads a half-released lock
        finally:
            os.close(self._fd)
            self._fd = None

    def _holder(self) -> Optional[dict]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _busy_message(self, holder: Optional[dict]) -> str:
        who = (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
               if holder else "a process that is still starting")
        return (f"run folder {self.path.parent} is in use by another `speechfuse train` ({who}; lock file "
                f"{self.path}). Wait for it to finish or stop it, or train into another folder (--out).")


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
    write_atomic(run_dir / FINGERPRINT, json.dumps(fingerprint(config_text, manifests), indent=2))


def check_data_unchanged(run_dir: Path, manifests: dict[str, str], allow_changed: bool = False) -> None:
    """On resume: a manifest whose contents differ from when the run started is a ConfigError naming it
    (a warning with allow_changed). Run folders from before fingerprints were recorded are not checked."""
    path = run_dir / FINGERPRINT
    if not path.is_file():
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))["manifests"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"cannot resume {run_dir}: {path} is unreadable ({err}); restore it, or train into a "
                          "new folder (--out)") from err
    changed = []
    for split, manifest in manifests.items():
        old = before.get(split)
        if old is None or old.get("sha256") != file_sha256(manifest):
            changed.append(f"data.{split} ({manifest})")
    if not changed:
        return
    what = (f"the contents of {', '.join(changed)} changed since run folder {run_dir} started training "
            f"(fingerprints in {path})")
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
    path = run_dir / "config.yaml"
    if not (run_dir / CKPT_DIR / f"{LAST}{EXT}").is_file() or not path.is_file():
        return

    def essential(c: Config) -> dict:
        d = config_to_dict(c)
        d.pop("cache")
        d["train"] = {k: v for k, v in d["train"].items() if k not in RESUME_MAY_CHANGE}
        return d

    try:
        old = config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")), run_dir, str(path))
    except (SpeechfuseError, yaml.YAMLError) as err:
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
    path = run_dir / "task.json"
    if path.is_file() and json.loads(path.read_text(encoding="utf-8")) != json.loads(json.dumps(task.state())):
        raise ConfigError(f"cannot resume {run_dir}: the training data now gives the task other labels / another "
                          f"vocabulary than {path}, which its checkpoints were trained for; train into a new folder "
                          "(--out)")


__all__ = ["write_atomic", "check_writable", "check_free_space", "disk_full", "RunLock", "RunFolderError",
           "file_sha256", "fingerprint", "record_fingerprint", "check_data_unchanged", "CKPT_DIR", "LOGS_DIR",
           "LOCK", "FINGERPRINT", "LAST", "BEST", "EXT", "RESUME_MAY_CHANGE", "check_same_config",
           "check_same_task"]
