"""Attribute values as the views read them: JSON held in a string, message content as text (a string, content
parts, or a string holding JSON parts), the first of several attribute names that is set.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pytest_llmtrace.trace.span import (
    GEN_AI_EVENT_CONTENT,
    AttrValue,
    Span,
    attr_int,
    attr_str,
)


def event_body(attrs: Mapping[str, AttrValue]) -> dict[str, Any]:
    """A message event's body: its attributes, with Azure's ``gen_ai.event.content`` JSON body merged in."""
    body: dict[str, Any] = dict(attrs)
    content = loads_json(body.pop(GEN_AI_EVENT_CONTENT, None))
    if isinstance(content, dict):
        body.update(content)
    return body


def content_text(value: Any) -> str:
    """A message's text, whether a string, a list of parts, or a string holding a JSON list of parts."""
    if isinstance(value, str):
        stripped = value.lstrip()
        if stripped[:1] in ("[", "{"):
            text = parts_text(loads_json(value))
            if text is not None:
                return text
        return value
    text = parts_text(value)
    return text if text is not None else ("" if value is None else str(value))


def parts_text(parts: Any) -> str | None:
    """The text of a list of content parts (``{"type": "text", "content"|"text": ...}``), ``None`` if it is not one.

    Parts that are not text (tool calls, images, reasoning) are left out: replay compares what was said.
    """
    if isinstance(parts, str):
        return parts
    if isinstance(parts, dict):
        parts = [parts]
    if not isinstance(parts, (list, tuple)) or not parts or not all(isinstance(p, dict) for p in parts):
        return None
    texts = []
    for part in parts:
        kind = part.get("type", "text")
        text = part.get("content", part.get("text"))
        if isinstance(text, dict):  # {"text": {"value": ...}}, as Azure's agents write it
            text = text.get("value")
        if kind == "text" and isinstance(text, str):
            texts.append(text)
    return "".join(texts) if texts else None


def request_parameters(span: Span) -> Mapping[str, Any]:
    """``gen_ai.request.*`` settings (temperature, max_tokens, ...): the GenAI conventions' invocation parameters."""
    return {
        key: value
        for key, value in span.prefixed("gen_ai.request").items()
        if key != "model" and "." not in key and isinstance(value, (str, int, float, bool))
    }


def first_str(attrs: Mapping[str, AttrValue], *names: str) -> str | None:
    return next((text for text in (attr_str(attrs.get(n)) for n in names) if text), None)


def first_int(attrs: Mapping[str, AttrValue], *names: str) -> int | None:
    return next((number for number in (attr_int(attrs.get(n)) for n in names) if number is not None), None)


def loads_json(value: Any, unreadable: Any = None) -> Any:
    """JSON text decoded; a structured value (OTLP kvlist, array) as it is; text that is no JSON as ``unreadable``."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError):  # RecursionError: a hostile trace nesting arrays thousands deep
        return unreadable


def json_object(value: AttrValue | None) -> Mapping[str, Any]:
    """A JSON-object attribute (invocation parameters); anything unreadable is an empty mapping, not an error."""
    if not isinstance(value, str) or not value:
        return {}
    loaded = loads_json(value)
    return loaded if isinstance(loaded, dict) else {}
