"""One small registry shape shared by models, datasets and pruning methods.

Each plug-in kind wraps a `Registry` in three functions (`register_x`, `list_x`,
`get_x`); duplicates raise at import time and an unknown name raises a
`PruneCliError` that lists the valid names.
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

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str | None = None) -> Callable[[T], T]:
        def wrap(entry: T) -> T:
            return self.register(name or entry.__name__, entry)  # type: ignore[attr-defined]

        return wrap

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise PruneCliError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(self.names())}"
