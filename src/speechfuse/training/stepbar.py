"""What a training run shows on stderr: one progress bar counting optimizer steps out of `train.max_steps`, with
its ETA, the last training loss and the last dev metric (Lightning's own bar counts batches per epoch, on stdout),
and none of Lightning's product tips."""
from __future__ import annotations

import logging
import sys
from typing import Any

from lightning.pytorch.callbacks import ProgressBar


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


__all__ = ["drop_adverts", "StepProgressBar"]
