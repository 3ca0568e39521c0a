"""Typed, read-only views of what a span did: the LLM call it made, or the SQL statement it ran.

Instrumentations write the same facts under different attribute names (OpenInference's ``llm.*``, OpenLLMetry's and
the OTel GenAI conventions' ``gen_ai.*``). Checks, replay and reports read the views, never the attribute names, so a
new convention is one reader here and nothing elsewhere changes.

Adding a convention: write ``def read_x(span: Span) -> LLMCall | None`` that returns ``None`` for spans that are not
LLM calls in that convention, and add it to ``LLM_READERS``. Readers are tried in that order and the first that
recognises a span wins, so a span carrying several conventions is read by the most complete one. A reader fills only
what its convention records; the missing total token count is filled in by ``LLMCall`` itself (prompt + completion).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_llmtrace.trace.span import (
    DB_QUERY_TEXT,
    DB_RETURNED_ROWS,
    DB_STATEMENT_DEPRECATED,
    DB_SYSTEM_DEPRECATED,
    DB_SYSTEM_NAME,
    LLM_INPUT_MESSAGES,
    LLM_INVOCATION_PARAMETERS,
    LLM_MODEL_NAME,
    LLM_OUTPUT_MESSAGES,
    LLM_PROVIDER,
    LLM_SYSTEM,
    LLM_TOKENS_COMPLETION,
    LLM_TOKENS_PROMPT,
    LLM_TOKENS_TOTAL,
    AttrValue,
    Span,
    Status,
    attr_int,
    attr_str,
)

__all__ = [
    "LLM_READERS",
    "LLMCall",
    "LLMReader",
    "Message",
    "SqlStatement",
    "llm_call",
    "read_openinference",
]


@dataclass(frozen=True)
class Message:
    """One chat message, as a recorded LLM call holds it and as a request to the model carries it."""

    role: str
    content: str


@dataclass(frozen=True)
class LLMCall:
    """What a regression check needs from an LLM span, whichever convention recorded it (``convention``)."""

    span: Span
    model: str | None
    provider: str | None
    input_messages: tuple[Message, ...]
    output_messages: tuple[Message, ...]
    invocation_parameters: Mapping[str, Any]
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    convention: str = "openinference"

    def __post_init__(self) -> None:
        # Instrumentations that record both counts often leave out the total; every reader gets the same rule.
        if self.total_tokens is None and self.prompt_tokens is not None and self.completion_tokens is not None:
            object.__setattr__(self, "total_tokens", self.prompt_tokens + self.completion_tokens)

    @property
    def output_text(self) -> str:
        """The assistant's answer: the output messages if recorded, else ``output.value``."""
        if self.output_messages:
            return "".join(m.content for m in self.output_messages)
        return self.span.output_value or ""

    @classmethod
    def from_span(cls, span: Span) -> LLMCall:
        """The span read by the first convention that recognises it, else its OpenInference attributes (if any)."""
        return llm_call(span) or _openinference(span)


LLMReader = Callable[[Span], "LLMCall | None"]


def read_openinference(span: Span) -> LLMCall | None:
    """OpenInference: a span of kind ``LLM`` with ``llm.*`` attributes."""
    return _openinference(span) if span.kind == "LLM" else None


def _openinference(span: Span) -> LLMCall:
    attrs = span.attributes
    return LLMCall(
        span=span,
        model=attr_str(attrs.get(LLM_MODEL_NAME)),
        provider=attr_str(attrs.get(LLM_PROVIDER)) or attr_str(attrs.get(LLM_SYSTEM)),
        input_messages=_indexed_messages(span.prefixed(LLM_INPUT_MESSAGES)),
        output_messages=_indexed_messages(span.prefixed(LLM_OUTPUT_MESSAGES)),
        invocation_parameters=_json_object(attrs.get(LLM_INVOCATION_PARAMETERS)),
        prompt_tokens=attr_int(attrs.get(LLM_TOKENS_PROMPT)),
        completion_tokens=attr_int(attrs.get(LLM_TOKENS_COMPLETION)),
        total_tokens=attr_int(attrs.get(LLM_TOKENS_TOTAL)),
        convention="openinference",
    )


# Convention name -> reader, in the order they are tried.
LLM_READERS: Mapping[str, LLMReader] = {
    "openinference": read_openinference,
}


def llm_call(span: Span) -> LLMCall | None:
    """The LLM call this span records, or ``None`` when no known convention says it is one."""
    for reader in LLM_READERS.values():
        call = reader(span)
        if call is not None:
            return call
    return None


@dataclass(frozen=True)
class SqlStatement:
    """A statement the application executed, read from OTel database semantic conventions."""

    span: Span
    text: str
    system: str | None
    returned_rows: int | None

    @property
    def ok(self) -> bool:
        return self.span.status is not Status.ERROR

    @property
    def error(self) -> str | None:
        """The database error as recorded: the status message, else the exception event's message."""
        if self.ok:
            return None
        return self.span.error_text or "error"

    @classmethod
    def from_span(cls, span: Span) -> SqlStatement | None:
        """The statement, from the stable ``db.query.text`` or the deprecated ``db.statement`` most exporters use."""
        attrs = span.attributes
        text = attr_str(attrs.get(DB_QUERY_TEXT)) or attr_str(attrs.get(DB_STATEMENT_DEPRECATED))
        if text is None:
            return None
        system = attr_str(attrs.get(DB_SYSTEM_NAME)) or attr_str(attrs.get(DB_SYSTEM_DEPRECATED))
        return cls(span=span, text=text, system=system, returned_rows=attr_int(attrs.get(DB_RETURNED_ROWS)))


# -- helpers shared by the readers ------------------------------------------------------------------------------------

_INDEXED = re.compile(r"^(\d+)\.(.+)$")


def _indexed_messages(flat: Mapping[str, AttrValue]) -> tuple[Message, ...]:
    """Rebuild ``{i}.message.role`` / ``{i}.message.content`` pairs in index order.

    Multimodal messages (``message.contents.{j}.message_content.text``) are joined into one text, which is what a
    prompt diff needs.
    """
    rows: dict[int, dict[str, str]] = {}
    for key, value in flat.items():
        match = _INDEXED.match(key)
        if not match:
            continue
        index, rest = int(match.group(1)), match.group(2)
        row = rows.setdefault(index, {})
        if rest == "message.role":
            row["role"] = str(value)
        elif rest == "message.content":
            row["content"] = str(value)
        elif rest.startswith("message.contents.") and rest.endswith(".message_content.text"):
            row["parts"] = row.get("parts", "") + str(value)
    return tuple(
        Message(role=row.get("role", ""), content=row.get("content", row.get("parts", "")))
        for _, row in sorted(rows.items())
    )


def _json_object(value: AttrValue | None) -> Mapping[str, Any]:
    """A JSON-object attribute (invocation parameters); anything unreadable is an empty mapping, not an error."""
    if not isinstance(value, str) or not value:
        return {}
    try:
        loaded = json.loads(value)
    except (ValueError, RecursionError):  # RecursionError: a hostile trace nesting arrays thousands deep
        return {}
    return loaded if isinstance(loaded, dict) else {}
