"""Where a run lives: the run folder's layout, its one atomic writer, its lock and its data fingerprints.

    write_atomic(run_dir / "metrics.json", text)        # temp file, fsync, rename: never a torn file
    with RunLock(run_dir):                              # one `train` per folder at a time
        check_writable(run_dir, run_dir / CKPT_DIR)     # before any work, not after the first steps
        check_data_unchanged(run_dir, manifests, allow_changed=False)   # on resume
        record_fingerprint(run_dir, config_text, manifests)

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
from typing import Optional

from .errors import ConfigError, SpeechfuseError

CKPT_DIR = "checkpoints"
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
    and the old file is kept."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
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


__all__ = ["write_atomic", "check_writable", "check_free_space", "disk_full", "RunLock", "RunFolderError",
           "file_sha256", "fingerprint", "record_fingerprint", "check_data_unchanged", "CKPT_DIR", "LOGS_DIR",
           "LOCK", "FINGERPRINT"]
