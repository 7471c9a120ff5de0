"""One registry mechanism for upstreams, interfaces and tasks: a name -> factory map, filled by a
decorator, with the built-in entries' modules imported on first use (so importing the package stays
cheap and modules that subclass a base defined beside the registry cause no import cycle)."""
from __future__ import annotations

import importlib
from typing import Callable, Generic, Sequence, TypeVar

from .errors import SpeechfuseError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, error: type[SpeechfuseError], builtin_modules: Sequence[str] = (),
                 hint: str = "") -> None:
        self.kind = kind
        self.error = error
        self.hint = hint
        self._builtin_modules = list(builtin_modules)
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@REGISTRY.register("name")` over a class or factory function."""
        def deco(entry: T) -> T:
            self._entries[name] = entry
            return entry

        return deco

    def _load_builtin(self) -> None:
        while self._builtin_modules:
            importlib.import_module(self._builtin_modules.pop(0))

    def get(self, name: str) -> T:
        self._load_builtin()
        if name not in self._entries:
            raise self.error(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self.names()))}{self.hint}")
        return self._entries[name]

    def names(self) -> list[str]:
        self._load_builtin()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_builtin()
        return name in self._entries
