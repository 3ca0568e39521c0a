"""Views of frozen objects, computed once per object: a span's LLM call, a trace's streams and latencies.

The checks of one case ask for the same view of the same span or trace dozens of times; the objects never change
(a changed span is a new ``Span``), so the first answer is kept on the object itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
S = TypeVar("S")

_UNREAD: Any = object()


def memo(owner: S, name: str, read: Callable[[S], T]) -> T:
    """``read(owner)``, computed once and kept in ``owner``'s ``__dict__`` under ``name``: for views of frozen
    objects (a ``Span``, a ``Trace``) that are read many times. Not a dataclass field, so equality, ``repr`` and
    ``dataclasses.replace`` ignore it (a replaced span reads its own)."""
    found = owner.__dict__.get(name, _UNREAD)
    if found is _UNREAD:
        found = owner.__dict__[name] = read(owner)
    return found  # type: ignore[no-any-return]
