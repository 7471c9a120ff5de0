"""One registry mechanism for upstreams, interfaces and tasks: a name -> component map, filled by a
decorator that reads the component's own `name` (and checks it has an `Options` model). The built-in
entries' modules, then the installed plug-ins (speechfuse.plugins), are imported on first lookup, so
importing the package stays cheap and modules that subclass a base defined beside the registry cause
no import cycle."""
from __future__ import annotations

import importlib
from typing import Generic, Sequence, TypeVar

from pydantic import BaseModel

from speechfuse.errors import SpeechfuseError
from speechfuse.plugins import PLUGIN_HINT, load_entry_point_plugins

T = TypeVar("T")


def _qualified(entry: object) -> str:
    return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', repr(entry))}"


class Registry(Generic[T]):
    def __init__(self, kind: str, error: type[SpeechfuseError], builtin_modules: Sequence[str] = (),
                 hint: str = "") -> None:
        self.kind = kind
        self.error = error
        self.hint = hint
        self._builtin_modules = list(builtin_modules)
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        """Decorator over a component class (or a loader function given `name` and `Options` attributes)."""
        name = getattr(entry, "name", None)
        if isinstance(entry, str) or not isinstance(name, str) or not name:
            raise self.error(f"register a {self.kind} by decorating its class, whose `name` attribute is the name "
                             f"configs use (`@register_{self.kind}` over `class Mine: name = \"mine\"`); got {entry!r}")
        options = getattr(entry, "Options", None)
        if not (isinstance(options, type) and issubclass(options, BaseModel)):
            raise self.error(f"{self.kind} {name!r} ({_qualified(entry)}): `Options` must be a pydantic model of "
                             f"its options, got {options!r}")
        known = self._entries.get(name)
        if known is not None and _qualified(known) != _qualified(entry):  # re-importing a module is fine
            raise self.error(f"{self.kind} {name!r} is already registered by {_qualified(known)}; give "
                             f"{_qualified(entry)} another name")
        self._entries[name] = entry
        return entry

    def _load_builtin(self) -> None:
        while self._builtin_modules:
            importlib.import_module(self._builtin_modules.pop(0))
        load_entry_point_plugins()

    def get(self, name: str) -> T:
        self._load_builtin()
        if name not in self._entries:
            raise self.error(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self.names()))}{self.hint}"
                             f"{PLUGIN_HINT}")
        return self._entries[name]

    def names(self) -> list[str]:
        self._load_builtin()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_builtin()
        return name in self._entries
