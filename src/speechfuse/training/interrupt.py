"""Stop signals: Ctrl-C (SIGINT), SIGTERM (what a cluster scheduler or `kill` sends) and SIGUSR1 (SLURM's
warning before preemption, `#SBATCH --signal=USR1@90`) all mean "stop cleanly, so that the same command can
resume". Outside training they raise `Interrupted` at once, as Ctrl-C does; during training StopOnInterrupt
(speechfuse.training.learner) takes them over and saves a checkpoint first. The CLI exits with 128 + the signal number
(130 for Ctrl-C, 143 for SIGTERM, 138 for SIGUSR1).
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

STOP_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGUSR1")) if s is not None)


class Interrupted(KeyboardInterrupt):
    """A stop signal ended the command; `signum` says which, the message what was kept and how to resume."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(f"{signal_name(signum)} received", signum)


@contextmanager
def stop_signals(handler: Callable[[int, Any], Any] = raise_interrupted) -> Iterator[None]:
    """Route every stop signal to `handler` inside the block (only the main thread can set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)


__all__ = ["STOP_SIGNALS", "Interrupted", "signal_name", "raise_interrupted", "stop_signals"]
