"""Writing files safely: the one atomic writer, the folder checks and the lock that names its holder.

A bottom-level module: it imports nothing of speechfuse but its errors, so every module may write through it.

    write_atomic(path, text)                       # temp file, fsync, rename: never a torn file
    check_writable(folder); check_free_space(folder, need_bytes, "three checkpoints")
    with HolderLock(lock_path, busy=lambda holder: f"... {describe_holder(holder)} ..."):
        ...                                        # one holder at a time; a second one gets RunFolderError(busy)
    try_lock_open_file(handle)                     # flock on a data file itself (the cache's unfinished shard)

The lock is a `filelock` lock (flock on POSIX, LockFileEx on Windows): the kernel drops it when its holder dies,
so a lock left by a killed process is taken over. While held, the lock file names its holder (pid, host, start
time) for the message a second process gets.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import filelock

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None

from speechfuse.errors import SpeechfuseError


def speechfuse_home() -> Path:
    """Where speechfuse keeps user-level files (the feature cache, converted models): $SPEECHFUSE_HOME, else
    ~/.cache/speechfuse."""
    return Path(os.environ.get("SPEECHFUSE_HOME") or Path.home() / ".cache" / "speechfuse")


class RunFolderError(SpeechfuseError):
    """A folder speechfuse writes into cannot be used: in use by another process, not writable, or its disk is full."""


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
        target = Path(folder)
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


class HolderLock:
    """An exclusive lock on `path` whose file names its holder while held. `busy(holder)` is the message a
    second process gets (holder: the first one's {"pid", "host", "started"}, or None while it is starting);
    with `wait`, the second process waits instead (after calling `on_wait(holder)`). The file is removed on
    release; keep a reference while holding it (a lock that is garbage-collected is released)."""

    def __init__(self, path: str | os.PathLike, busy: Callable[[Optional[dict]], str], wait: bool = False,
                 on_wait: Callable[[Optional[dict]], None] | None = None) -> None:
        self.path = Path(path)
        self.busy, self.wait, self.on_wait = busy, wait, on_wait
        self._lock: Optional[filelock.BaseFileLock] = None

    def __enter__(self) -> "HolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(self.path, timeout=0, thread_local=False, on_acquired=_name_holder)
        try:
            lock.acquire()
        except filelock.Timeout:
            if not self.wait:
                raise RunFolderError(self.busy(self.holder())) from None
            if self.on_wait is not None:
                self.on_wait(self.holder())
            lock.acquire(timeout=-1)
        except OSError as err:
            raise RunFolderError(f"cannot create the lock file {self.path} ({err.strerror or err}); make its folder "
                                 "writable, or use another folder") from err
        self._lock = lock

    def release(self) -> None:
        if self._lock is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # still holding the lock: nobody reads a half-released lock
        finally:
            self._lock.release()
            self._lock = None

    def holder(self) -> Optional[dict]:
        """The holder the lock file names, or None (no holder, or one that has not written its name yet)."""
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None


def try_lock_open_file(handle) -> bool:
    """An exclusive non-blocking flock on an open data file (the cache's unfinished shard: the lock follows the file
    through its rename); False when another open file holds it, True where there is no flock."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _name_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(info).encode("utf-8"))


def describe_holder(holder: Optional[dict]) -> str:
    """`pid 12 on host h, started 2026-01-01 10:00:00 UTC` (or a process that is still starting)."""
    if not holder:
        return "a process that is still starting"
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"


__all__ = ["speechfuse_home", "RunFolderError", "write_atomic", "check_writable", "check_free_space", "disk_full",
           "HolderLock", "describe_holder", "try_lock_open_file"]
