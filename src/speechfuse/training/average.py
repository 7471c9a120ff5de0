"""`train.average_best: N`: the model a run reports is the mean of its N best checkpoints by dev loss (ESPnet's
`valid.loss.ave`, which ML-SUPERB decodes with), not the single checkpoint with the best dev metric.

    average_checkpoints([p1, p2, p3], out)         # mean of every floating-point weight; the rest from p1
    averaged_best(trainer, run_dir) -> Path | None   # after fit: RUN_DIR/checkpoints/average.safetensors

During training, a third checkpoint callback keeps the N checkpoints with the lowest `dev/loss` (the task's
training loss on the dev set, logged only when average_best is set) in RUN_DIR/checkpoints/top/.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from speechfuse.training.checkpoint import CheckpointError, load_checkpoint_file, save_checkpoint_file
from speechfuse.training.runfolder import CKPT_DIR, EXT

DEV_LOSS = "dev/loss"
TOP_DIR = "top"
AVERAGE = "average"


def average_checkpoints(paths: list[Path], out: Path) -> Path:
    """Write to `out` the first checkpoint with each floating-point weight replaced by its mean over `paths`
    (integer buffers such as counters are the first's); optimizer states are left out."""
    if not paths:
        raise CheckpointError("average_checkpoints: no checkpoints to average")
    checkpoints = [load_checkpoint_file(p) for p in paths]
    first = checkpoints[0]
    for path, ckpt in zip(paths[1:], checkpoints[1:]):
        if ckpt["state_dict"].keys() != first["state_dict"].keys():
            raise CheckpointError(f"average_checkpoints: {path} holds other weights than {paths[0]}; checkpoints of "
                                  "one run are needed")
    state = {}
    for key, value in first["state_dict"].items():
        if torch.is_floating_point(value):
            mean = torch.stack([c["state_dict"][key].double() for c in checkpoints]).mean(0)
            state[key] = mean.to(value.dtype)
        else:
            state[key] = value
    kept = {k: v for k, v in first.items() if k not in ("optimizer_states", "lr_schedulers")}
    save_checkpoint_file({**kept, "state_dict": state, "averaged_from": [Path(p).name for p in paths]}, out)
    return out


def averaged_best(trainer: Any, run_dir: Path, write: bool = True) -> Optional[Path]:
    """After `fit` with average_best: average the kept top checkpoints (best first) into
    RUN_DIR/checkpoints/average.safetensors (written by rank zero; the others wait for it). None without them."""
    kept = [cb for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None) == DEV_LOSS]
    if not kept or not kept[0].best_k_models:
        return None
    paths = [Path(p) for p, _ in sorted(kept[0].best_k_models.items(), key=lambda item: float(item[1]))]
    out = run_dir / CKPT_DIR / f"{AVERAGE}{EXT}"
    if write:
        average_checkpoints(paths, out)
    trainer.strategy.barrier("average_best")
    return out


__all__ = ["average_checkpoints", "averaged_best", "DEV_LOSS", "TOP_DIR", "AVERAGE"]
