"""Test helper, run as a script (also under torchrun): train a config into a folder and SIGKILL the process
when step K+1 is about to start, that is right after step K's checkpoints, to test exact resume.

    python tests/killed_run.py CONFIG.yaml RUN_DIR K
"""
from __future__ import annotations

import os
import signal
import sys

import lightning.pytorch as pl
import torch


class KillAtStep(pl.Callback):
    """SIGKILLs this process when the trainer is about to start step `step` + 1."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    from speechfuse.config import load_config
    from speechfuse.training.runner import train

    torch.set_num_threads(1)
    config, run_dir, step = sys.argv[1:4]
    train(load_config(config), run_dir, callbacks=[KillAtStep(int(step))])
