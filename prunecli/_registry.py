"""One small registry shape shared by models, datasets and pruning methods.

Each plug-in kind wraps a `Registry` in three functions (`register_x`, `list_x`,
`get_x`); duplicates raise at import time and an unknown name raises a
`PruneCliError` that lists the valid names. An entry may have aliases (other names users
type for it, e.g. fpgm for geomedian): `get` accepts them, `canonical` maps them to the
registered name, and `names` lists registered names only.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from prunecli.errors import PruneCliError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}  # alias -> registered name

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def alias(self, alias: str, name: str) -> None:
        """Let ``alias`` stand for the registered ``name``; an alias that is taken raises."""
        if name not in self._entries:
            raise ValueError(f"{self.kind} alias {alias!r}: {name!r} is not registered")
        if alias in self._entries or self._aliases.get(alias, name) != name:
            raise ValueError(f"{self.kind} alias {alias!r} is taken")
        self._aliases[alias] = name

    def aliases(self, name: str) -> list[str]:
        """The aliases of the registered ``name``, in registration order."""
        return [a for a, n in self._aliases.items() if n == name]

    def canonical(self, name: str) -> str:
        """The registered name ``name`` stands for (itself, or the entry it is an alias of)."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise PruneCliError(self.unknown_message(name))

    def decorator(self, name: str | None = None) -> Callable[[T], T]:
        def wrap(entry: T) -> T:
            return self.register(name or entry.__name__, entry)  # type: ignore[attr-defined]

        return wrap

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._aliases

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, [*self.names(), *self._aliases], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(self.names())}"
