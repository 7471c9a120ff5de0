"""Plug-ins: a user's own upstreams, interfaces and tasks, named in YAML like the built-in ones.

A plug-in is an importable module whose registration decorators (`@register_upstream`,
`@register_interface`, `@register_task`) run when it is imported. Three ways to import it:

    speechfuse train cfg.yaml --plugin my_package.components    # repeatable
    plugins: [my_package.components]                            # in the config: the YAML alone suffices
    [project.entry-points."speechfuse.plugins"]                 # in the plug-in's pyproject.toml:
    mine = "my_package.components"                              #   imported on the first registry lookup

docs/extending.md walks through writing one; examples/speechfuse_example is a runnable plug-in package.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from typing import Iterable

from speechfuse.errors import ConfigError

ENTRY_POINT_GROUP = "speechfuse.plugins"
PLUGIN_HINT = ("; a plug-in's component is known once its module is imported: --plugin MODULE, `plugins: [MODULE]` "
               f"in the config, or an installed package's '{ENTRY_POINT_GROUP}' entry point")

_entry_points_loaded = False


def load_plugins(modules: Iterable[str], where: str = "--plugin") -> list[str]:
    """Import each module (its decorators register its components); returns the names imported.
    `where` names the source (`--plugin`, `plugins[0]`) in errors."""
    names = list(modules)
    for i, name in enumerate(names):
        label = where if where == "--plugin" else f"{where}[{i}]"
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{label}: expected a module name such as my_package.components, got {name!r}")
        try:
            importlib.import_module(name.strip())
        except ImportError as err:
            raise ConfigError(f"{label} {name!r}: cannot import it ({err}); install the plug-in's package "
                              "(pip install -e PATH) or put its folder on PYTHONPATH") from err
    return [n.strip() for n in names]


def load_entry_point_plugins() -> None:
    """Import every installed `speechfuse.plugins` entry point, once per process. One that fails to import
    is reported as a warning: the other components stay usable, and naming one of its components then
    fails as an unknown name."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as err:  # a broken third-party package must not take the built-ins down with it
            warnings.warn(f"speechfuse plug-in entry point {entry.name} = {entry.value!r} failed to import "
                          f"({type(err).__name__}: {err}); its components are not available", stacklevel=2)


__all__ = ["load_plugins", "load_entry_point_plugins", "ENTRY_POINT_GROUP", "PLUGIN_HINT"]
