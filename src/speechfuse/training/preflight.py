"""Checks a loaded config cannot make itself, run before a command creates a folder or loads a model. Component
names and options are checked when the config loads (each component's `Options`); what is left depends on this
machine: an optional logger package named by `train.logger`."""
from __future__ import annotations

import importlib.util

from speechfuse.errors import ConfigError


def check_components(cfg) -> None:
    """ConfigError when `train.logger` names a logger whose package is not installed here."""
    loggers = cfg.train.logger if isinstance(cfg.train.logger, list) else [cfg.train.logger]
    for name in loggers:
        if name in ("wandb", "mlflow") and importlib.util.find_spec(name) is None:
            raise ConfigError(f"train.logger {name!r} needs the {name} package: pip install {name} (or "
                              "train.logger: tensorboard)")


__all__ = ["check_components"]
