"""Whether progress bars and notes show on stderr (stdout carries results only).

`--quiet` on any command sets SPEECHFUSE_QUIET=1 (bars and notes off; worker processes inherit it), `--verbose`
SPEECHFUSE_VERBOSE=1 (Lightning's own logs, its model summary and its warnings back on).
"""
from __future__ import annotations

import os

QUIET, VERBOSE = "SPEECHFUSE_QUIET", "SPEECHFUSE_VERBOSE"


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def quiet() -> bool:
    return _flag(QUIET)


def verbose() -> bool:
    return _flag(VERBOSE)


__all__ = ["quiet", "verbose"]
