"""Phoenix's attribute values and times as the trace model holds them: dotted keys flattened in natural order,
scalars checked against OTLP's ranges, ISO 8601 and epoch times to nanoseconds.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re

from pytest_llmtrace.trace.jsondoc import (
    INT64_MAX,
    INT64_MIN,
    UINT64_MAX,
    Doc,
    check_size,
    describe,
)
from pytest_llmtrace.trace.safejson import twice
from pytest_llmtrace.trace.span import AttrValue

_ISO = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?\s*"
    r"(Z|z|[+-][0-9]{2}:?[0-9]{2}|UTC)$",
)


def flatten_attributes(doc: Doc) -> dict[str, AttrValue]:
    """Phoenix's JSON attributes back to flat dotted OTel keys.

    Nested objects become dotted keys and lists of objects become indexed keys (``llm.input_messages.0.message.role``),
    which is what OpenInference writes; lists of plain values stay arrays. ``null`` means "not set" and is skipped.
    """
    result: dict[str, AttrValue] = {}
    if doc.value is None:
        return result
    doc.obj()
    flatten_into(result, "", doc)
    return sorted_attributes(result)


def sorted_attributes(attributes: dict[str, AttrValue]) -> dict[str, AttrValue]:
    """Keys in natural order (``.2`` before ``.10``).

    Phoenix returns attributes in storage order, which differs between its export shapes; sorting makes every shape
    of the same spans write the same golden file, and Phoenix kept no meaningful order to lose.
    """
    return dict(sorted(attributes.items(), key=lambda item: _natural_key(item[0])))


def _natural_key(key: str) -> tuple[tuple[int, int, str], ...]:
    """ASCII digit runs compare by length, then text: numeric order without ``int()`` (no digit limit, no "²")."""
    return tuple(
        (0, len(part.lstrip("0")), part.lstrip("0")) if part.isascii() and part.isdigit() else (1, 0, part)
        for part in key.split(".")
    )


def flatten_into(out: dict[str, AttrValue], prefix: str, doc: Doc) -> None:
    value = doc.value
    if value is None:
        return
    if isinstance(value, dict):
        for key in value:
            flatten_into(out, f"{prefix}.{key}" if prefix else key, doc.key(key))
    elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
        for i, item in enumerate(doc.items()):
            flatten_into(out, f"{prefix}.{i}", item)
    elif prefix in out:
        # {"a.b": 1, "a": {"b": 2}} names one attribute twice; which one wins would depend on the export's key order
        raise doc.error("each attribute once (a nested key and a dotted key name the same attribute)", twice(prefix))
    elif isinstance(value, list):
        out[prefix] = tuple(_scalar(item) for item in doc.items())
    else:
        out[prefix] = _scalar(doc)


def _scalar(doc: Doc) -> AttrValue:
    value = doc.value
    if isinstance(value, bool | float | bytes):
        return value
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise doc.error(f"an integer between {INT64_MIN} and {INT64_MAX}", str(value))
        return value
    if isinstance(value, str):
        check_size(doc, value)
        return value
    raise doc.fail("an attribute value (a string, number, boolean or array of them)")


def iso_to_ns(doc: Doc) -> int:
    """An ISO 8601 time with a zone, exact to the nanosecond (``datetime`` would stop at microseconds)."""
    text = doc.string()
    match = _ISO.match(text.strip())
    if match is None:
        raise doc.fail("an ISO 8601 time with a time zone, like 2024-01-01T12:00:00.123456+00:00")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zone = match.group(7) or "", match.group(8)
    try:
        dt.datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise doc.error("a valid date and time", f"{text!r} ({exc})") from None
    offset = 0
    if zone not in ("Z", "z", "UTC"):
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset = sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
    ns = seconds * 1_000_000_000 + int(fraction.ljust(9, "0"))
    if ns < 0:
        raise doc.error("a time after 1970-01-01", repr(text))
    return ns


_EPOCH_SCALE = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def any_time_ns(doc: Doc, unit: str | None) -> int:
    """Dataframe times: epoch numbers (pandas' default JSON) or ISO strings (``date_format="iso"``)."""
    value = doc.value
    if isinstance(value, str):
        return iso_to_ns(doc)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        if unit is None:
            magnitude = abs(value)
            unit = "s" if magnitude < 1e11 else "ms" if magnitude < 1e14 else "us" if magnitude < 1e17 else "ns"
        scaled = value * _EPOCH_SCALE[unit]
        if scaled <= UINT64_MAX:  # a float that large would be inf or lose the nanoseconds anyway
            return round(scaled) if isinstance(scaled, float) else scaled
        raise doc.error(f"a time before the year 2554 (at most {UINT64_MAX} ns)", describe(value))
    raise doc.fail("a time: epoch milliseconds or an ISO 8601 string")
