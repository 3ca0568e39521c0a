"""Untrusted bytes to JSON values within documented limits, so a hostile file is an error message, not a crash.

Golden files and exports come from production and from other people's tools. Python's own JSON reader ends the
process's current task on some inputs instead of raising ``JSONDecodeError``: nesting deeper than the interpreter's
recursion limit raises ``RecursionError``, an integer of more than 4,300 digits raises a bare ``ValueError``. During
pytest collection either one ends the whole run. Every trace reader parses through ``parse`` below, which turns each
of these into a ``TraceFormatError`` naming the file, the JSON path and the limit.

The limits (each one far above anything a real export holds):

- a file is at most ``DEFAULT_MAX_TRACE_BYTES`` bytes unless the caller passes another ``max_bytes`` (pytest: the ini
  key ``llmtrace_max_trace_bytes``; ``llmtrace import``: ``--max-trace-bytes``; both: ``LLMTRACE_MAX_TRACE_BYTES``);
- arrays and objects nest at most ``MAX_DEPTH`` levels (real exports: 5 to 12), which also keeps every recursive
  reader further down far from the recursion limit;
- a number literal is at most ``MAX_NUMBER_CHARS`` characters, and a float must be finite;
- ``NaN`` / ``Infinity`` literals are refused (they are not JSON; OTLP writes them as strings);
- an object holds each key once: tools disagree about which duplicate wins, so a golden file with two ``spanId``
  keys would mean different spans to different readers;
- strings are valid Unicode: a lone ``\\ud800`` escape cannot be written back as UTF-8.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_llmtrace.core.errors import TraceFormatError

__all__ = [
    "DEFAULT_MAX_TRACE_BYTES",
    "MAX_DEPTH",
    "MAX_NUMBER_CHARS",
    "MAX_TRACE_BYTES_ENV",
    "check_tree",
    "decode",
    "is_syntax_error",
    "parse",
    "read_bytes",
    "segment",
    "twice",
]

DEFAULT_MAX_TRACE_BYTES = 50_000_000
MAX_TRACE_BYTES_ENV = "LLMTRACE_MAX_TRACE_BYTES"
MAX_DEPTH = 100
MAX_NUMBER_CHARS = 100
SIZE_HINT = (
    f"raise the limit with the ini key llmtrace_max_trace_bytes or the environment variable {MAX_TRACE_BYTES_ENV} "
    "(llmtrace import: --max-trace-bytes)"
)
_SYNTAX = "valid JSON"  # the `expected` of a syntax error, which JSONL detection tells apart from a limit
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\],:]|[^\s{}\[\],:"]+', re.DOTALL)
_PLAIN_KEY = re.compile(r"[^\s\[\]\"'\\]{1,80}")


# -- reading ----------------------------------------------------------------------------------------------------------


def read_bytes(path: Path, max_bytes: int = DEFAULT_MAX_TRACE_BYTES) -> bytes:
    """The file's bytes, reading at most ``max_bytes + 1`` of them (a device or a growing file cannot fill memory)."""
    try:
        with path.open("rb") as stream:
            info = os.fstat(stream.fileno())
            if stat.S_ISREG(info.st_mode) and info.st_size > max_bytes:
                raise _too_big(path, f"{info.st_size:,} bytes", max_bytes)
            data = stream.read(max_bytes + 1)
    except OSError as exc:
        raise TraceFormatError(path, "$", "a readable file", exc.strerror or str(exc)) from None
    if len(data) > max_bytes:
        raise _too_big(path, f"more than {max_bytes:,} bytes", max_bytes)
    return data


def _too_big(path: Path, got: str, max_bytes: int) -> TraceFormatError:
    return TraceFormatError(path, "$", f"a file of at most {max_bytes:,} bytes ({SIZE_HINT})", got)


def decode(data: bytes, source: str | Path | None) -> str:
    """UTF-8 (with or without BOM) to text; JSONL readers decode once, then parse line by line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TraceFormatError(
            source, "$", "UTF-8 encoded JSON", f"byte 0x{data[exc.start]:02x} at offset {exc.start}"
        ) from None


# -- parsing ----------------------------------------------------------------------------------------------------------


class _Refused(Exception):
    """Raised by the decoder hooks below; ``parse`` turns it into a ``TraceFormatError`` with the token's path."""

    def __init__(self, expected: str, got: str, where: Callable[[str], bool] | None, duplicate: bool = False) -> None:
        super().__init__(expected)
        self.expected = expected
        self.got = got
        self.where = where  # finds the offending token again in the text, to name its path
        self.duplicate = duplicate


def _number_too_long(token: str) -> _Refused:
    return _Refused(
        f"a number of at most {MAX_NUMBER_CHARS} characters",
        f"a number of {len(token):,} characters ({token[:20]}...)",
        lambda t: len(t) > MAX_NUMBER_CHARS and t[:1] in "-0123456789",
    )


def _parse_int(token: str) -> int:
    if len(token) > MAX_NUMBER_CHARS:
        raise _number_too_long(token)
    return int(token)


def _parse_float(token: str) -> float:
    if len(token) > MAX_NUMBER_CHARS:
        raise _number_too_long(token)
    value = float(token)
    if not math.isfinite(value):
        raise _Refused("a finite number", f"{token} (beyond the range of a 64-bit float)", lambda t: t == token)
    return value


def _parse_constant(token: str) -> Any:
    raise _Refused(
        'a JSON number (NaN and Infinity are not JSON; OTLP writes them as the strings "NaN" and "Infinity")',
        f"the literal {token}",
        lambda t: t in ("NaN", "Infinity", "-Infinity"),
    )


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        # The message names the first repeated key in the text, found by _locate (inner objects finish first here).
        raise _Refused("each key once in an object (readers disagree about which duplicate wins)", "", None, True)
    return result


_DECODER = json.JSONDecoder(
    parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant, object_pairs_hook=_object
)


def parse(text: str, source: str | Path | None, base: str = "$", *, line: bool = False) -> Any:
    """One JSON document, checked against the limits above.

    ``base`` prefixes every path (``line 3: $`` for JSONL); ``line`` says the text is one line of a JSONL file, so a
    syntax error is described by column and "truncated" means the line, not the file.
    """
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise _syntax_error(text, exc, source, base, line) from None
    except _Refused as refused:
        where, token = _locate(text, value=refused.where, duplicate=refused.duplicate)
        got = twice(token) if refused.duplicate else refused.got
        raise TraceFormatError(source, base + where, refused.expected, got) from None
    except RecursionError:
        # The C scanner recurses once per level; a depth it cannot take is past MAX_DEPTH, found without recursion.
        raise _depth_error(source, base + _locate(text, depth=True)[0]) from None
    strings = _SURROGATE_ESCAPE.search(text) is not None
    if strings or text.count("[") + text.count("{") > MAX_DEPTH:
        check_tree(value, source, base, strings=strings)
    return value


def is_syntax_error(error: TraceFormatError) -> bool:
    """True for "not JSON at all" errors, as opposed to JSON that breaks a limit."""
    return error.expected == _SYNTAX


def _syntax_error(
    text: str, exc: json.JSONDecodeError, source: str | Path | None, base: str, line: bool
) -> TraceFormatError:
    end = len(text.rstrip())
    if line:  # a string cannot hold a raw newline, so on one line "unterminated string" means the line was cut short
        if exc.pos >= end or exc.msg.startswith("Unterminated string"):
            got = f"end of line (the line is truncated) at column {end + 1}"
        else:
            got = f"{exc.msg.lower()} at column {exc.colno}"
    else:
        what = "end of file (the file is truncated)" if exc.pos >= end else exc.msg.lower()
        got = f"{what} at line {exc.lineno} column {exc.colno}"
    return TraceFormatError(source, base, _SYNTAX, got)


def _depth_error(source: str | Path | None, path: str) -> TraceFormatError:
    return TraceFormatError(
        source, path, f"at most {MAX_DEPTH} levels of nested arrays and objects", f"level {MAX_DEPTH + 1} here"
    )


def check_tree(value: Any, source: str | Path | None, base: str = "$", *, strings: bool = True) -> None:
    """Depth and (when ``strings``) valid Unicode of a parsed value, without recursion; parquet rows come here too.

    The depth check goes level by level over containers only, which is cheap enough to run on every document; the
    path of a problem is worked out afterwards, on the slow path.
    """
    level = [value] if isinstance(value, (dict, list)) else []
    depth = 1
    while level:
        if depth > MAX_DEPTH:
            _find_and_raise(value, source, base, strings=False)
        below: list[Any] = []
        for node in level:
            children = node.values() if type(node) is dict else node
            below += [child for child in children if type(child) is dict or type(child) is list]
        level = below
        depth += 1
    if strings:
        _find_and_raise(value, source, base, strings=True)


def _find_and_raise(value: Any, source: str | Path | None, base: str, *, strings: bool) -> None:
    """Walk again keeping each node's path, and raise at the first container too deep or string not Unicode."""
    # Each entry: (value, depth, parent entry, path segment); the path is rebuilt only for the error.
    stack: list[tuple[Any, int, Any, str]] = [(value, 1, None, "")]
    while stack:
        entry = stack.pop()
        node, depth = entry[0], entry[1]
        if isinstance(node, dict):
            if depth > MAX_DEPTH:
                raise _depth_error(source, base + _rebuild(entry))
            for key, child in node.items():
                if strings and not _valid_unicode(key):
                    raise _unicode_error(source, base + _rebuild(entry), key, "a key")
                stack.append((child, depth + 1, entry, segment(key)))
        elif isinstance(node, list):
            if depth > MAX_DEPTH:
                raise _depth_error(source, base + _rebuild(entry))
            stack.extend((child, depth + 1, entry, f"[{i}]") for i, child in enumerate(node))
        elif strings and isinstance(node, str) and not _valid_unicode(node):
            raise _unicode_error(source, base + _rebuild(entry), node, "the string")


def _valid_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unicode_error(source: str | Path | None, path: str, text: str, what: str) -> TraceFormatError:
    bad = next(c for c in text if "\ud800" <= c <= "\udfff")
    return TraceFormatError(
        source, path, "valid Unicode text", f"{what} with a lone surrogate \\u{ord(bad):04x} (half a UTF-16 pair)"
    )


def _rebuild(entry: Any) -> str:
    parts: list[str] = []
    while entry is not None:
        parts.append(entry[3])
        entry = entry[2]
    return _compact(parts[::-1])


def _compact(segments: list[str]) -> str:
    """A path with repeats shortened: ``[0]`` a hundred times reads ``[0]...(x100)``, and a repeated group of up to
    four steps ``.a[0].a[0]...`` reads ``.a[0]...(x50)``; a deep path stays one readable line.
    """
    out: list[str] = []
    i = 0
    while i < len(segments):
        best_period, best_count = 1, 1
        for period in range(1, 5):
            block = segments[i : i + period]
            count = 1
            while segments[i + count * period : i + (count + 1) * period] == block:
                count += 1
            if count >= 4 and count * period > best_count * best_period:
                best_period, best_count = period, count
        block_text = "".join(segments[i : i + best_period])
        out.append(block_text + f"...(x{best_count})" if best_count >= 4 else block_text)
        i += best_period * best_count
    return "".join(out)


def _locate(
    text: str, *, value: Callable[[str], bool] | None = None, duplicate: bool = False, depth: bool = False
) -> tuple[str, str]:
    """``(path below the root, token)`` of the first value token ``value`` accepts, the first repeated key, or the
    first container past ``MAX_DEPTH``: a linear scan of the tokens with an explicit stack, so any depth is fine.

    Only error paths pay for it. ``("", "")`` (the root) when nothing matches, which cannot happen for a text the
    decoder refused for that reason.
    """
    # Frames: [is_object, current key or index, expecting a key, keys seen]
    stack: list[list[Any]] = []

    def path() -> str:
        return _compact([segment(f[1]) if f[0] else f"[{f[1]}]" for f in stack if f[1] is not None])

    for match in _TOKEN.finditer(text):
        token = match.group()
        top = stack[-1] if stack else None
        if token in "{[":
            if depth and len(stack) >= MAX_DEPTH:
                return path(), token
            stack.append([token == "{", None if token == "{" else 0, token == "{", set()])
        elif token in "}]":
            if stack:
                stack.pop()
        elif token == ",":
            if top is not None:
                if top[0]:
                    top[2] = True
                else:
                    top[1] += 1
        elif token == ":":
            continue
        elif top is not None and top[0] and top[2]:
            key = _string_token(token)
            if duplicate and key in top[3]:
                top[1] = key
                return path(), key
            top[1], top[2] = key, False
            top[3].add(key)
        elif value is not None and not token.startswith('"') and value(token):
            return path(), token
    return "", ""


def _string_token(token: str) -> str:
    if "\\" not in token:
        return token[1:-1]
    try:
        decoded = json.loads(token)
    except ValueError:
        return token
    return decoded if isinstance(decoded, str) else token


def segment(key: str) -> str:
    """One step of a JSON path: ``.name`` when the key reads plainly, else ``["..."]`` escaped and shortened.

    Keys come from the file; a newline or a control character in an error message would forge or hide lines.
    """
    return _plain_segment(key) if len(key) <= 80 else _quoted_segment(key)


@functools.lru_cache(maxsize=4096)  # the same short keys (spanId, attributes, ...) come back for every span
def _plain_segment(key: str) -> str:
    return "." + key if _PLAIN_KEY.fullmatch(key) and key.isprintable() else _quoted_segment(key)


def _quoted_segment(key: str) -> str:
    shown = key if len(key) <= 40 else key[:37] + "..."
    return "[" + json.dumps(shown) + "]"


def twice(key: str) -> str:
    """``'key' twice`` for duplicate-key messages: escaped (``ascii``) and at most about 40 characters."""
    return ascii(key if len(key) <= 40 else key[:37] + "...") + " twice"
