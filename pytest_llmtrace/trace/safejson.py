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
from pathlib import Path
from typing import Any

from pytest_llmtrace.core.errors import TraceFormatError

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
_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)  # strings, so their brackets are skipped
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


class _Refused:
    """A value the decoder hooks refused, left in its place so that the walk after parsing names its path."""

    __slots__ = ("expected", "got")

    def __init__(self, expected: str, got: str) -> None:
        self.expected = expected
        self.got = got


class _Repeated(dict[str, Any]):
    """An object with a key more than once; its pairs in text order say where the second one is."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs


_DUPLICATE = "each key once in an object (readers disagree about which duplicate wins)"


class _Hooks:
    """The standard library's decoder hooks for one document; ``refused`` says whether the value holds a problem."""

    def __init__(self) -> None:
        self.refused = False
        self.decoder = json.JSONDecoder(
            parse_int=self._int, parse_float=self._float, parse_constant=self._constant, object_pairs_hook=self._object
        )

    def _refuse(self, expected: str, got: str) -> _Refused:
        self.refused = True
        return _Refused(expected, got)

    def _number_too_long(self, token: str) -> _Refused:
        return self._refuse(
            f"a number of at most {MAX_NUMBER_CHARS} characters",
            f"a number of {len(token):,} characters ({token[:20]}...)",
        )

    def _int(self, token: str) -> int | _Refused:
        return self._number_too_long(token) if len(token) > MAX_NUMBER_CHARS else int(token)

    def _float(self, token: str) -> float | _Refused:
        if len(token) > MAX_NUMBER_CHARS:
            return self._number_too_long(token)
        value = float(token)
        if not math.isfinite(value):
            return self._refuse("a finite number", f"{token} (beyond the range of a 64-bit float)")
        return value

    def _constant(self, token: str) -> _Refused:
        return self._refuse(
            'a JSON number (NaN and Infinity are not JSON; OTLP writes them as the strings "NaN" and "Infinity")',
            f"the literal {token}",
        )

    def _object(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) == len(pairs):
            return result
        self.refused = True
        return _Repeated(pairs)


def parse(text: str, source: str | Path | None, base: str = "$", *, line: bool = False) -> Any:
    """One JSON document, checked against the limits above.

    ``base`` prefixes every path (``line 3: $`` for JSONL); ``line`` says the text is one line of a JSONL file, so a
    syntax error is described by column and "truncated" means the line, not the file.
    """
    hooks = _Hooks()
    try:
        value = hooks.decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise _syntax_error(text, exc, source, base, line) from None
    except RecursionError:
        # The C scanner recurses once per level. Everything up to where it gave up was valid JSON, so the text up to
        # its first container past MAX_DEPTH, closed there, parses, and the walk below names that container's path.
        hooks = _Hooks()
        value = hooks.decoder.decode(_cut_past_max_depth(text))
        _raise_first_problem(value, source, base, strings=False)
        raise _depth_error(source, base) from None  # not reached: the walk finds the container written there
    strings = _SURROGATE_ESCAPE.search(text) is not None
    if hooks.refused:
        _raise_first_problem(value, source, base, strings=strings)
    if strings or text.count("[") + text.count("{") > MAX_DEPTH:
        check_tree(value, source, base, strings=strings)
    return value


def _cut_past_max_depth(text: str) -> str:
    """``text`` up to its first array or object at level ``MAX_DEPTH + 1``, that one written ``[]`` and closed."""
    opened: list[str] = []
    for match in _BRACKET.finditer(text):
        token = match.group()
        if token in "[{":
            if len(opened) == MAX_DEPTH:
                closing = "".join("]" if bracket == "[" else "}" for bracket in reversed(opened))
                return text[: match.start()] + "[]" + closing
            opened.append(token)
        elif token in "]}" and opened:
            opened.pop()
    return text


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
            _raise_first_problem(value, source, base, strings=False)
        below: list[Any] = []
        for node in level:
            children = node.values() if type(node) is dict else node
            below += [child for child in children if type(child) is dict or type(child) is list]
        level = below
        depth += 1
    if strings:
        _raise_first_problem(value, source, base, strings=True)


def _raise_first_problem(value: Any, source: str | Path | None, base: str, *, strings: bool) -> None:
    """Walk the value in text order keeping each node's path, and raise at the first value the hooks refused, repeated
    key, container too deep or (when ``strings``) string that is not Unicode.
    """
    # Each entry: (value, depth, parent entry, path segment); the path is rebuilt only for the error.
    stack: list[tuple[Any, int, Any, str]] = [(value, 1, None, "")]
    while stack:
        entry = stack.pop()
        node, depth = entry[0], entry[1]
        if isinstance(node, _Refused):
            raise TraceFormatError(source, base + _rebuild(entry), node.expected, node.got)
        if isinstance(node, dict):
            if depth > MAX_DEPTH:
                raise _depth_error(source, base + _rebuild(entry))
            children: list[tuple[Any, int, Any, str]] = []
            seen: set[str] = set()
            for key, child in node.pairs if isinstance(node, _Repeated) else node.items():
                if strings and not _valid_unicode(key):
                    raise _unicode_error(source, base + _rebuild(entry), key, "a key")
                if key in seen:
                    child = _Refused(_DUPLICATE, twice(key))
                seen.add(key)
                children.append((child, depth + 1, entry, segment(key)))
            stack.extend(reversed(children))
        elif isinstance(node, list):
            if depth > MAX_DEPTH:
                raise _depth_error(source, base + _rebuild(entry))
            stack.extend((node[i], depth + 1, entry, f"[{i}]") for i in range(len(node) - 1, -1, -1))
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
