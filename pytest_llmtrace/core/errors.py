"""Exception types whose messages are read by users, not by developers.

Every error that can come from a user's input (a trace file, an option, a service that will not start) carries
enough context to fix the problem without reading a traceback: which file, where in it, what was expected.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Iterable
from pathlib import Path


class LLMTraceError(Exception):
    """Base class, so callers can catch everything this package raises on purpose."""


class TraceFormatError(LLMTraceError, ValueError):
    """A trace file or document that cannot be read as a trace.

    ``json_path`` uses the JSONPath-like notation users see in editors (``$.resourceSpans[0].scopeSpans[1]``) so the
    location can be found without counting by hand.
    """

    def __init__(self, source: str | Path | None, json_path: str, expected: str, got: str | None = None) -> None:
        self.source = str(source) if source is not None else "<memory>"
        self.json_path = json_path
        self.expected = expected
        self.got = got
        message = f"{self.source}: at {json_path}: expected {expected}"
        if got is not None:
            message += f", got {got}"
        super().__init__(message)


class TraceFormatWarning(UserWarning):
    """Something in a trace was odd but usable (for example, a span whose parent was not exported)."""


def warn_format(source: str | Path | None, json_path: str, message: str) -> None:
    """Emit a ``TraceFormatWarning`` in the same ``file: at path: ...`` shape as ``TraceFormatError``."""
    where = str(source) if source is not None else "<memory>"
    warnings.warn(f"{where}: at {json_path}: {message}", TraceFormatWarning, stacklevel=3)


class RecordingError(LLMTraceError):
    """Span recording cannot work in this process (for example, a non-SDK TracerProvider is installed)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty.

    Drivers put the reason on the first line and follow it with context (psycopg2's ``LINE 1: ...`` and caret,
    docker's HTTP details): one line is what a header or a failure summary has room for.
    """
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def near_misses(value: str, choices: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> list[str]:
    """The valid names closest to a misspelled one, best first (none when nothing is close)."""
    return difflib.get_close_matches(value, list(choices), n=n, cutoff=cutoff)


def number_text(value: float) -> str:
    """``5000`` rather than ``5000.0``, ``0.1`` rather than ``0.1000``: numbers as people write them."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def did_you_mean(value: str, choices: Iterable[str], *, cutoff: float = 0.6, ignore_case: bool = False) -> str:
    """``"did you mean 'x'?"`` for the closest valid name, or ``""``: the suffix every near-miss message shares.

    With ``ignore_case``, names are compared in lower case and the suggestion is spelled as in ``choices``
    (``'LLM'`` for ``lmm``).
    """
    if not ignore_case:
        near = near_misses(value, choices, cutoff=cutoff)
        return f"did you mean {near[0]!r}?" if near else ""
    spelled = {choice.lower(): choice for choice in choices}
    near = near_misses(value.lower(), spelled, cutoff=cutoff)
    return f"did you mean {spelled[near[0]]!r}?" if near else ""


# A whole number as people type it: an optional sign, ASCII digits, '_' between digits (50_000_000); ``int()`` alone
# would also take "٣" and other Unicode digits. At most 40 characters, so it can never hit Python's digit limit.
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9](?:_?[0-9])*")


def whole_number(value: object) -> int | None:
    """``value`` (an ini or env text, an option, a marker argument) as a whole number, or None when it is not one.

    The one parser of counts and limits: each caller compares with its own minimum and words its own message, but
    none of them disagrees on what a number is. ``True`` is an int to Python, never a number a user meant; ``2.0``
    is whole, ``2.5`` is not.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if len(text) > 40 or not _WHOLE_NUMBER.fullmatch(text):
        return None
    return int(text)
