"""Checks of a config's component names and options that load no weights, run before a command creates a folder
or loads a model: an unknown interface, interface option or upstream name is reported in a second, not after
the upstreams have loaded."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import ConfigError


def check_components(cfg) -> None:
    """ConfigError naming the key when `cfg` names an unknown upstream, interface or interface option."""
    from .interfaces import interface_options, list_interfaces
    from .upstream import UPSTREAMS

    name = cfg.interface.name
    known = list_interfaces()
    if name not in known:
        raise ConfigError(f"interface.name {name!r} is not an interface; known: {', '.join(known)}")
    accepted = interface_options(name)
    unknown = sorted(set(cfg.interface.options()) - set(accepted) - {"output_dim"})
    if unknown:
        raise ConfigError(f"interface.{unknown[0]}: interface {name!r} takes no option {unknown[0]!r}; its options: "
                          f"{', '.join(sorted(accepted)) or '(none)'}")
    registered = set(UPSTREAMS.names())
    for i, up in enumerate(cfg.upstreams):
        spec = up.spec
        if spec in registered or spec.startswith("hf:"):
            continue
        raise ConfigError(f"upstreams[{i}].spec {spec!r} is not a bundled model ({', '.join(sorted(registered))}) "
                          "or 'hf:<hub id or local folder>'" + (" (a local folder needs the hf: prefix)"
                                                                 if Path(spec).exists() else ""))
    loggers = cfg.train.logger if isinstance(cfg.train.logger, list) else [cfg.train.logger]
    for name in loggers:
        if name in ("wandb", "mlflow") and importlib.util.find_spec(name) is None:
            raise ConfigError(f"train.logger {name!r} needs the {name} package: pip install {name} (or "
                              "train.logger: tensorboard)")


__all__ = ["check_components"]
