"""Exception types whose messages are read by users, not by developers.

Every error that can come from a user's input (a trace file, an option, a service that will not start) carries
enough context to fix the problem without reading a traceback: which file, where in it, what was expected.
"""

from __future__ import annotations

import warnings
from pathlib import Path

__all__ = ["LLMTraceError", "RecordingError", "TraceFormatError", "TraceFormatWarning"]


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
