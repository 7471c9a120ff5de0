"""What a run shows on stderr: one progress bar per run, counting optimizer steps out of `train.max_steps`, with
its ETA, the last training loss and the last dev metric; nothing on stdout, which carries results only.

`--quiet` on any command sets SPEECHFUSE_QUIET=1 (bars and notes off; worker processes inherit it), `--verbose`
SPEECHFUSE_VERBOSE=1 (Lightning's own logs, its model summary and its warnings back on).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

from lightning.pytorch.callbacks import ProgressBar

QUIET, VERBOSE = "SPEECHFUSE_QUIET", "SPEECHFUSE_VERBOSE"


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def quiet() -> bool:
    return _flag(QUIET)


def verbose() -> bool:
    return _flag(VERBOSE)


class _DropAdverts(logging.Filter):
    """Lightning's "Tip: try installing litlogger / litmodels" lines, which name products, not problems."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


_ADVERT_FILTER = _DropAdverts()


def drop_adverts() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _ADVERT_FILTER not in logger.filters:
            logger.addFilter(_ADVERT_FILTER)


class StepProgressBar(ProgressBar):
    """`train 120/300 [00:40<01:00, loss=0.41, dev/wer=0.23]` on stderr, on global rank 0; no bar for dev passes."""

    def __init__(self, main_metric: str, enabled: bool = True) -> None:
        super().__init__()
        self.main_metric = f"dev/{main_metric}"
        self._enabled = enabled
        self._bar: Any = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        from tqdm import tqdm

        self._bar = tqdm(total=trainer.max_steps, initial=trainer.global_step, desc="train", unit="step",
                         file=sys.stderr, dynamic_ncols=True, leave=True)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._bar is None:
            return
        metrics = trainer.callback_metrics
        shown = {}
        if "train/loss" in metrics:
            shown["loss"] = f"{float(metrics['train/loss']):.3g}"
        if self.main_metric in metrics:
            shown[self.main_metric] = f"{float(metrics[self.main_metric]):.4g}"
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(max(0, trainer.global_step - self._bar.n))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)


__all__ = ["quiet", "verbose", "drop_adverts", "StepProgressBar"]
