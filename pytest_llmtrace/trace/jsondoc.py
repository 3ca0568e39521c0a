"""Reading untrusted JSON with errors that name the file, the JSON path and what was expected.

Every trace format reader goes through these helpers, so "truncated file", "an id that is a number", "a timestamp
that is a word" all produce the same kind of message: ``file: at $.resourceSpans[0].scopeSpans[0].spans[3].spanId:
expected 16 hex characters, got 12345``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pytest_llmtrace.core.errors import TraceFormatError
from pytest_llmtrace.trace.safejson import segment, twice

# Attribute values larger than this are refused: they are almost always a whole document or an image pasted into
# a span by mistake, and a golden file that size would make every diff unreadable.
MAX_ATTRIBUTE_CHARS = 1_000_000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1
# An integer written as a string: ASCII digits only (``int()`` would also take "٣" and "²"-like digits), and few
# enough of them that ``int()`` is cheap and cannot hit Python's 4,300-digit limit; 40 is twice what 64 bits need.
_DECIMAL = re.compile(r"-?[0-9]{1,40}")
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def _key_text(key: str) -> str:
    """A key as a message shows it: as is when short and printable, else quoted with escapes (no raw newlines)."""
    shown = key if len(key) <= 40 else key[:37] + "..."
    return shown if shown.isprintable() else json.dumps(shown)


def describe(value: Any) -> str:
    """A short description of a wrong value for an error message (never the whole value)."""
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}" + (f" ({len(value)} characters)" if len(value) > 40 else "")
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if value is None:
        return "null"
    if isinstance(value, list):
        return f"an array of {len(value)}"
    if isinstance(value, dict):
        keys = ", ".join(_key_text(k) for k in list(value)[:5])
        return "an object with keys {" + keys + ("..." if len(value) > 5 else "") + "}"
    return type(value).__name__


class Doc:
    """A JSON value plus where it came from; accessors check types and extend the path."""

    __slots__ = ("path", "source", "value")

    def __init__(self, value: Any, source: str | Path | None, path: str = "$") -> None:
        self.value = value
        self.source = source
        self.path = path

    def error(self, expected: str, got: str | None = None, *, suffix: str = "") -> TraceFormatError:
        return TraceFormatError(self.source, self.path + suffix, expected, got)

    def fail(self, expected: str) -> TraceFormatError:
        return self.error(expected, describe(self.value))

    # navigation
    def key(self, name: str) -> Doc:
        return Doc(self.obj().get(name), self.source, self.path + segment(name))

    def has(self, name: str) -> bool:
        return isinstance(self.value, dict) and self.value.get(name) is not None

    def index(self, i: int) -> Doc:
        return Doc(self.value[i], self.source, f"{self.path}[{i}]")

    # typed values
    def obj(self) -> Mapping[str, Any]:
        if not isinstance(self.value, dict):
            raise self.fail("an object")
        return self.value

    def items(self, *, optional: bool = True) -> list[Doc]:
        if self.value is None and optional:
            return []
        if not isinstance(self.value, list):
            raise self.fail("an array")
        return [Doc(v, self.source, f"{self.path}[{i}]") for i, v in enumerate(self.value)]

    def string(self, *, optional: bool = False, default: str = "") -> str:
        if self.value is None and optional:
            return default
        if not isinstance(self.value, str):
            raise self.fail("a string")
        check_size(self, self.value)
        return self.value

    def integer(self, *, optional: bool = False, default: int = 0, lo: int = INT64_MIN, hi: int = UINT64_MAX) -> int:
        """OTLP writes 64-bit ints as strings; some producers write numbers or (LangChain) floats."""
        value = self.value
        if value is None and optional:
            return default
        result: int | None = None
        if isinstance(value, bool):
            result = None
        elif isinstance(value, int):
            result = value
        elif isinstance(value, float) and value.is_integer():
            result = int(value)
        elif isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
            result = int(value.strip())
        elif isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
            raise self.error(f"an integer between {lo} and {hi}", f"a number of {len(value.strip()):,} digits")
        if result is None:
            raise self.fail("an integer (a number or a decimal string)")
        if not lo <= result <= hi:
            raise self.error(f"an integer between {lo} and {hi}", f"{result}")
        return result

    def optional_hex_id(self, nbytes: int) -> str | None:
        """A parent id: absent, null and "" all mean "no parent"."""
        return None if self.value is None or self.value == "" else self.hex_id(nbytes)

    def hex_id(self, nbytes: int) -> str:
        """A trace or span id: lowercase hex in spec OTLP JSON; base64 as protobuf's MessageToDict writes it."""
        value = self.value
        expected = f"{nbytes * 2} hex characters"
        if not isinstance(value, str):
            raise self.fail(expected)
        if len(value) == nbytes * 2 and _HEX.match(value):
            result = value.lower()
        else:
            try:
                raw = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != nbytes:
                raise self.fail(expected)
            result = raw.hex()
        if set(result) == {"0"}:
            raise self.error(expected + " (not all zero)", describe(value))
        return result


def check_size(doc: Doc, value: str) -> None:
    if len(value) > MAX_ATTRIBUTE_CHARS:
        raise doc.error(f"a value of at most {MAX_ATTRIBUTE_CHARS:,} characters", f"{len(value):,} characters")


SCALAR_KINDS = ("string", "bool", "int", "double")
_SPECIAL_DOUBLES = {"nan": "nan", "infinity": "inf", "-infinity": "-inf", "inf": "inf", "-inf": "-inf"}


def decode_scalar(kind: str, inner: Doc) -> Any:
    """The scalar AnyValue kinds, shared by spec OTLP (``stringValue``) and Phoenix's snake_case (``string_value``).

    Doubles may be JSON numbers or, for the values JSON cannot write, "NaN" / "Infinity" (any case).
    """
    if kind == "string":
        return inner.string()
    if kind == "bool":
        if not isinstance(inner.value, bool):
            raise inner.fail("true or false")
        return inner.value
    if kind == "int":
        return inner.integer(lo=INT64_MIN, hi=INT64_MAX)
    if isinstance(inner.value, (int, float)) and not isinstance(inner.value, bool):
        return float(inner.value)
    if isinstance(inner.value, str) and inner.value.lower() in _SPECIAL_DOUBLES:
        return float(_SPECIAL_DOUBLES[inner.value.lower()])
    raise inner.fail("a number")


def attr_value_to_python(doc: Doc) -> Any:
    """Decode an OTLP ``AnyValue`` object (``{"stringValue": ...}``) into the model's ``AttrValue``."""
    obj = doc.obj()
    if not obj:
        return ""  # an empty AnyValue: OTLP's way of writing "no value"
    if len(obj) != 1:
        raise doc.error(
            "exactly one of stringValue, boolValue, intValue, doubleValue, arrayValue, kvlistValue, bytesValue",
            describe(obj),
        )
    ((key, _),) = obj.items()
    inner = doc.key(key)
    if key.removesuffix("Value") in SCALAR_KINDS:
        return decode_scalar(key.removesuffix("Value"), inner)
    if key == "arrayValue":
        return tuple(attr_value_to_python(v) for v in inner.key("values").items())
    if key == "kvlistValue":
        return attributes_from_otlp(inner.key("values"))
    if key == "bytesValue":
        text = inner.string()
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise inner.fail("base64 bytes") from None
    raise doc.error(
        "one of stringValue, boolValue, intValue, doubleValue, arrayValue, kvlistValue, bytesValue", f"the key {key!r}"
    )


def keyed_items(doc: Doc) -> Iterator[tuple[str, Doc]]:
    """``(key, item)`` of each item of an OTLP ``[{"key": ..., "value": ...}]`` list, camelCase or Phoenix's snake_case
    values alike; a key twice is an error, also where the first one's value is null."""
    seen: set[str] = set()
    for item in doc.items():
        key = item.key("key").string()
        if key in seen:
            raise item.error("unique attribute keys", twice(key), suffix=".key")
        seen.add(key)
        yield key, item


def attributes_from_otlp(doc: Doc) -> dict[str, Any]:
    """An OTLP ``[{"key": ..., "value": AnyValue}]`` list into a dict; duplicate keys are an error."""
    plain = _plain_attributes(doc.value)
    return plain if plain is not None else _checked_attributes(doc)


def _checked_attributes(doc: Doc) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, item in keyed_items(doc):
        value_doc = item.key("value")
        result[key] = attr_value_to_python(value_doc) if value_doc.value is not None else ""
    return result


def _plain_attributes(value: Any) -> dict[str, Any] | None:
    """The attributes of a list whose every item is a plain ``{"key": text, "value": {"<kind>Value": scalar}}`` (or
    an ``arrayValue`` of such scalars), read without a ``Doc`` per value; ``None`` for anything else (a kvlist, bytes,
    a number as a string with spaces, a duplicate key, a value too large...), which the checked reading above then
    reads, or names the error of.

    The result is what the checked reading gives for the same list: the checked path was three quarters of a golden
    file's reading, and nearly every attribute is one of these.
    """
    if value is None:
        return {}
    if type(value) is not list:
        return None
    result: dict[str, Any] = {}
    for item in value:
        if type(item) is not dict or len(item) != 2:
            return None
        key = item.get("key")
        if type(key) is not str or len(key) > MAX_ATTRIBUTE_CHARS or key in result:
            return None
        decoded = _plain_value(item.get("value"), array=True)
        if decoded is _NOT_PLAIN:
            return None
        result[key] = decoded
    return result


_NOT_PLAIN = object()


def _plain_value(any_value: Any, *, array: bool) -> Any:
    """A scalar ``AnyValue`` (or, with ``array``, an ``arrayValue`` of them) as the checked reading decodes it, else
    ``_NOT_PLAIN``."""
    if type(any_value) is not dict or len(any_value) != 1:
        return _NOT_PLAIN
    ((kind, scalar),) = any_value.items()
    if kind == "stringValue":
        return scalar if type(scalar) is str and len(scalar) <= MAX_ATTRIBUTE_CHARS else _NOT_PLAIN
    if kind == "intValue":
        if type(scalar) is str and _DECIMAL.fullmatch(scalar):
            scalar = int(scalar)
        return scalar if type(scalar) is int and INT64_MIN <= scalar <= INT64_MAX else _NOT_PLAIN
    if kind == "doubleValue":
        return float(scalar) if type(scalar) is float or type(scalar) is int else _NOT_PLAIN
    if kind == "boolValue":
        return scalar if type(scalar) is bool else _NOT_PLAIN
    if kind == "arrayValue" and array and type(scalar) is dict and len(scalar) == 1:
        values = scalar.get("values")
        if type(values) is not list:
            return _NOT_PLAIN
        decoded = tuple(_plain_value(v, array=False) for v in values)
        return _NOT_PLAIN if _NOT_PLAIN in decoded else decoded
    return _NOT_PLAIN


def attr_value_to_otlp(value: Any) -> dict[str, Any]:
    """The inverse of ``attr_value_to_python``: spec OTLP JSON (64-bit ints as strings)."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return {"doubleValue": {float("inf"): "Infinity", float("-inf"): "-Infinity"}.get(value, "NaN")}
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (tuple, list)):
        return {"arrayValue": {"values": [attr_value_to_otlp(v) for v in value]}}
    if isinstance(value, Mapping):
        return {"kvlistValue": {"values": attributes_to_otlp(value)}}
    raise TypeError(f"cannot write attribute value of type {type(value).__name__}")


def attributes_to_otlp(attributes: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": attr_value_to_otlp(v)} for k, v in attributes.items()]
