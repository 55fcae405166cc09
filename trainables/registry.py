"""A tiny name -> factory registry, in the manner of timm's model registry."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to registered objects; ``get`` fails with a did-you-mean message."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name`` (names are unique)."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """The object registered as ``name``; KeyError naming the known names otherwise."""
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(unknown_name_message(self.kind, name, self.names())) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def remove(self, name: str) -> T:
        """Unregister ``name`` (a test's or a plugin's temporary entry); KeyError when unknown."""
        self.get(name)
        return self._items.pop(name)

    def items(self) -> list[tuple[str, T]]:
        """(name, object) pairs in registration order."""
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    """'unknown method 'lx'; did you mean 'la'? known: ...'."""
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (known: {', '.join(known)})"
