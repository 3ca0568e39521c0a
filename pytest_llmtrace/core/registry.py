"""The one policy every registry follows (settings, service backends, replay matchers): a name is registered once.

Two plugins (or a plugin and a built-in) choosing one name would otherwise silently change each other's behaviour,
and the loser would have no clue where the winner came from; so a second registration is an error naming both places,
unless the caller asks to replace. The same place registering again is not a second registration: it is a module
imported again (a conftest in another in-process pytest session), and it replaces the entry.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from pytest_llmtrace.core.errors import LLMTraceError

T = TypeVar("T")


class DuplicateName(LLMTraceError, ValueError):
    """A name registered a second time, from another place, without ``replace=True``."""


def caller_place(depth: int = 1) -> str:
    """``file:line`` of the frame ``depth`` levels above the caller: where a registration was written."""
    frame = sys._getframe(depth + 1)
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


class Registry(Mapping[str, T], Generic[T]):
    """Names to entries, in registration order, each remembering where it was registered."""

    def __init__(self, what: str) -> None:
        self.what = what  # how messages name an entry: "setting", "postgres backend", "replay matcher"
        self._entries: dict[str, T] = {}
        self._places: dict[str, str] = {}

    def register(self, name: str, entry: T, *, place: str, replace: bool = False) -> None:
        """Add ``entry`` under ``name``; ``place`` is where the registration was written (see ``caller_place``)."""
        first = self._places.get(name)
        if first is not None and first != place and not replace:
            raise DuplicateName(
                f"{self.what} {name!r} is registered twice: first at {first}, again at {place}; "
                "choose another name or pass replace=True to replace it"
            )
        self._entries[name] = entry
        self._places[name] = place

    def place(self, name: str) -> str:
        """Where ``name`` was (last) registered."""
        return self._places[name]

    def copy(self) -> Registry[T]:
        """A snapshot to put back later (tests undo their registrations with it)."""
        other = Registry[T](self.what)
        other._entries, other._places = dict(self._entries), dict(self._places)
        return other

    def restore(self, snapshot: Registry[T]) -> None:
        """Put back what ``copy`` took, in place (modules that imported this registry keep seeing it)."""
        self._entries, self._places = dict(snapshot._entries), dict(snapshot._places)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {list(self._entries)!r})"
