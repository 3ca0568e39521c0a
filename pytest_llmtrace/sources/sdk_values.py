"""Values Langfuse's and LangSmith's APIs share: ids that are not OpenTelemetry's, times without a zone, JSON kept as
the SDKs write it into span attributes."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from pytest_llmtrace.sources.phoenix_values import iso_to_ns
from pytest_llmtrace.trace.jsondoc import Doc
from pytest_llmtrace.trace.span import AttrValue

_HEX = re.compile(r"^[0-9a-f]+$")
_ZONE = re.compile(r"(?:[Zz]|UTC|[+-]\d{2}:?\d{2})$")


def time_ns(doc: Doc) -> int:
    """An ISO 8601 time; without a zone it is UTC (LangSmith's API and older Langfuse exports write it so)."""
    text = doc.string().strip()
    if text and not _ZONE.search(text):
        return iso_to_ns(Doc(text + "Z", doc.source, doc.path))
    return iso_to_ns(doc)


def trace_id(doc: Doc) -> str:
    """32 hex digits: an OpenTelemetry trace id as it is, a UUID without its dashes, anything else hashed."""
    return _id(doc, 32)


def span_id(doc: Doc) -> str:
    """16 hex digits: an OpenTelemetry span id as it is, the random end of a UUID (its start is a time in UUIDv7,
    the same for runs begun in one millisecond), anything else hashed."""
    return _id(doc, 16)


def _id(doc: Doc, digits: int) -> str:
    text = doc.string().strip().lower()
    if not text:
        raise doc.fail("a non-empty id")
    bare = text.replace("-", "")
    if _HEX.match(bare) and len(bare) == digits:
        return bare
    if _HEX.match(bare) and len(bare) == 32 and digits == 16:
        return bare[-16:]
    return hashlib.sha256(text.encode()).hexdigest()[:digits]


def json_text(value: Any) -> str:
    """What the SDKs write for an input or output: text as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def flat_metadata(prefix: str, metadata: Any) -> dict[str, AttrValue]:
    """``prefix.key`` per key: text, numbers and flags as they are, anything else as JSON (as the SDKs flatten it)."""
    if not isinstance(metadata, Mapping):
        return {} if metadata is None else {prefix: json_text(metadata)}
    out: dict[str, AttrValue] = {}
    for key, value in metadata.items():
        if value is None:
            continue
        if isinstance(value, (str, bool, int, float)):
            out[f"{prefix}.{key}"] = value
        else:
            out[f"{prefix}.{key}"] = json_text(value)
    return out
