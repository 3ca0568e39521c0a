"""The golden files' JSON text, three times faster than ``json.dumps(..., indent=2)`` and identical to it.

The standard library serializes with its C encoder only without ``indent``; with it, every value goes through a
chain of Python generators. ``llmtrace capture`` writes thousands of files, and a profile of it spent a quarter of its
time there. This writer appends to one list from one recursive function, with the C string encoder for every string.
Anything outside plain JSON data (tuples, subclasses, non-string keys, very deep nesting, cycles) falls back to the
standard library for the whole document, so the text is always exactly what ``json.dumps`` would write.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring  # the C version when the accelerator is built, as json.dumps uses
from typing import Any

__all__ = ["dumps_indented"]

_MAX_DEPTH = 64
_INFINITY = float("inf")
_NEWLINES = ["\n" + "  " * level for level in range(_MAX_DEPTH + 1)]


class _Unusual(Exception):
    """A value this writer leaves to the standard library."""


def dumps_indented(value: Any) -> str:
    """``json.dumps(value, indent=2, ensure_ascii=False)``, exactly."""
    try:
        parts: list[str] = []
        _write(value, 0, parts.append)
        return "".join(parts)
    except (_Unusual, RecursionError):
        return json.dumps(value, indent=2, ensure_ascii=False)


def _write(value: Any, level: int, append: Any) -> None:
    kind = type(value)
    if kind is str:
        append(encode_basestring(value))
    elif kind is dict:
        if not value:
            append("{}")
            return
        if level >= _MAX_DEPTH:
            raise _Unusual
        separator = "{" + _NEWLINES[level + 1]
        for key, item in value.items():
            if type(key) is not str:
                raise _Unusual  # json.dumps turns numbers and None into keys by its own rules
            if type(item) is str:
                append(separator + encode_basestring(key) + ": " + encode_basestring(item))
            else:
                append(separator + encode_basestring(key) + ": ")
                _write(item, level + 1, append)
            separator = "," + _NEWLINES[level + 1]
        append(_NEWLINES[level] + "}")
    elif kind is list:
        if not value:
            append("[]")
            return
        if level >= _MAX_DEPTH:
            raise _Unusual
        separator = "[" + _NEWLINES[level + 1]
        for item in value:
            append(separator)
            _write(item, level + 1, append)
            separator = "," + _NEWLINES[level + 1]
        append(_NEWLINES[level] + "]")
    elif value is None:
        append("null")
    elif value is True:
        append("true")
    elif value is False:
        append("false")
    elif kind is int:
        append(int.__repr__(value))
    elif kind is float:
        append(_float(value))
    else:
        raise _Unusual  # tuples, subclasses, objects json.dumps rejects


def _float(value: float) -> str:
    """The standard library's rule (``json.encoder``'s ``floatstr`` with ``allow_nan``)."""
    if value != value:
        return "NaN"
    if value == _INFINITY:
        return "Infinity"
    if value == -_INFINITY:
        return "-Infinity"
    return float.__repr__(value)
