"""Langfuse's and LangSmith's own span attributes, read into plain values for the views.

Both SDKs trace with OpenTelemetry but keep a call's content as JSON of their own rather than in a semantic
convention: Langfuse (SDK v3 and newer) writes ``langfuse.observation.*`` (input and output as JSON text, or the text
itself when it is a string; usage and cost as JSON objects; the time the first token came as a JSON-quoted ISO
time), and LangSmith's OpenTelemetry exporter writes ``langsmith.span.kind`` with the run's whole inputs and outputs
as JSON in ``gen_ai.prompt`` / ``gen_ai.completion``. Those JSON documents hold messages in several shapes (OpenAI's
``{"role", "content"}``, LangChain's serialized and dumped messages, LangChain's ``generations``), read here into
``(role, text)`` pairs. Names checked against langfuse 4.18 / 5.2 (``_client/attributes.py``, ``_client/constants.py``)
and langsmith 0.15 (``_internal/otel/_otel_exporter.py``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from pytest_llmtrace.trace.attr_values import content_text, loads_json
from pytest_llmtrace.trace.span import GEN_AI_COMPLETION, GEN_AI_PROMPT, AttrValue, Span, attr_int, attr_str

LANGFUSE_TYPE = "langfuse.observation.type"
LANGFUSE_INPUT = "langfuse.observation.input"
LANGFUSE_OUTPUT = "langfuse.observation.output"
LANGFUSE_MODEL = "langfuse.observation.model.name"
LANGFUSE_MODEL_PARAMETERS = "langfuse.observation.model.parameters"
LANGFUSE_USAGE = "langfuse.observation.usage_details"
LANGFUSE_COST = "langfuse.observation.cost_details"
LANGFUSE_COMPLETION_START = "langfuse.observation.completion_start_time"
LANGFUSE_LEVEL = "langfuse.observation.level"
LANGFUSE_STATUS_MESSAGE = "langfuse.observation.status_message"
LANGFUSE_METADATA = "langfuse.observation.metadata"
LANGFUSE_TRACE_NAME = "langfuse.trace.name"
LANGFUSE_TRACE_INPUT = "langfuse.trace.input"  # SDK 3 and 4; SDK 5 keeps the input on the root observation only
LANGFUSE_TRACE_OUTPUT = "langfuse.trace.output"
LANGFUSE_TRACE_TAGS = "langfuse.trace.tags"
LANGFUSE_TRACE_METADATA = "langfuse.trace.metadata"
LANGSMITH_KIND = "langsmith.span.kind"
LANGSMITH_NAME = "langsmith.trace.name"
LANGSMITH_METADATA = "langsmith.metadata"
LANGSMITH_FIRST_TOKEN_TIME = "langsmith.first_token_time"  # not the exporter's: kept by llmtrace's run import

# What the OTel GenAI conventions have no stable name for yet; issue 23's budgets read these.
GEN_AI_USAGE_COST = "gen_ai.usage.cost"  # USD, a float
GEN_AI_TIME_TO_FIRST_TOKEN = "gen_ai.server.time_to_first_token"  # seconds, a float

LANGFUSE_GENERATION = "generation"  # of Langfuse's generation-like types, the one a replay can answer
LANGSMITH_LLM = "llm"
_SQL_HOLDERS = frozenset({"tool", "span", "chain", "retriever", "agent"})  # observation / run types that may run SQL
_ROLES = {"human": "user", "ai": "assistant", "humanmessage": "user", "aimessage": "assistant", "chat": "user"}
_ROLES |= {"systemmessage": "system", "toolmessage": "tool", "functionmessage": "function"}
_SQL = re.compile(
    r"^\s*(?:select\b[\s\S]*\bfrom\b|with\s+\w+\s+as\s*\(|insert\s+into\b|update\s+\S+\s+set\b|delete\s+from\b"
    r"|create\s|drop\s|alter\s|truncate\s|explain\s)",
    re.IGNORECASE,
)
_SQL_KEYS = ("sql", "query", "statement", "sql_query")

Messages = tuple[tuple[str, str], ...]


class CallFields(NamedTuple):
    """An LLM call as one of these SDKs recorded it, in plain values (``views`` makes the ``LLMCall``)."""

    model: str | None
    provider: str | None
    inputs: Messages
    outputs: Messages
    parameters: Mapping[str, Any]
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None


def observation_type(span: Span) -> str | None:
    value = attr_str(span.attributes.get(LANGFUSE_TYPE))
    return value.lower() if value else None


def langfuse_level(span: Span) -> str | None:
    value = attr_str(span.attributes.get(LANGFUSE_LEVEL))
    return value.upper() if value else None


def langfuse_status_message(span: Span) -> str | None:
    return attr_str(span.attributes.get(LANGFUSE_STATUS_MESSAGE))


def langsmith_kind(span: Span) -> str | None:
    value = attr_str(span.attributes.get(LANGSMITH_KIND))
    return value.lower() if value else None


def langfuse_generation(span: Span) -> CallFields | None:
    """A Langfuse ``generation`` observation; ``None`` for every other type (an embedding is no answer to replay)."""
    if observation_type(span) != LANGFUSE_GENERATION:
        return None
    attrs = span.attributes
    usage = _object(attrs.get(LANGFUSE_USAGE))
    params = _object(attrs.get(LANGFUSE_MODEL_PARAMETERS))
    return CallFields(
        model=attr_str(attrs.get(LANGFUSE_MODEL)),
        provider=attr_str(attrs.get("gen_ai.provider.name")) or attr_str(attrs.get("gen_ai.system")),
        inputs=messages(attrs.get(LANGFUSE_INPUT), "user"),
        outputs=messages(attrs.get(LANGFUSE_OUTPUT), "assistant"),
        parameters=params,
        prompt_tokens=_first(usage, "input", "prompt_tokens", "input_tokens", "promptTokens"),
        completion_tokens=_first(usage, "output", "completion_tokens", "output_tokens", "completionTokens"),
        total_tokens=_first(usage, "total", "total_tokens", "totalTokens"),
    )


def langsmith_llm(span: Span) -> CallFields | None:
    """A LangSmith ``llm`` run exported as a span: its inputs and outputs are JSON in ``gen_ai.prompt`` /
    ``gen_ai.completion``; the exporter already writes the model and token counts under ``gen_ai.*``."""
    if langsmith_kind(span) != LANGSMITH_LLM:
        return None
    attrs = span.attributes
    return CallFields(
        model=attr_str(attrs.get("gen_ai.request.model")) or attr_str(attrs.get("gen_ai.response.model")),
        provider=attr_str(attrs.get(f"{LANGSMITH_METADATA}.ls_provider")) or attr_str(attrs.get("gen_ai.system")),
        inputs=messages(attrs.get(GEN_AI_PROMPT), "user"),
        outputs=messages(attrs.get(GEN_AI_COMPLETION), "assistant"),
        parameters={
            k: v
            for k, v in span.prefixed("gen_ai.request").items()
            if k != "model" and "." not in k and isinstance(v, (str, int, float, bool))
        },
        prompt_tokens=attr_int(attrs.get("gen_ai.usage.input_tokens")),
        completion_tokens=attr_int(attrs.get("gen_ai.usage.output_tokens")),
        total_tokens=attr_int(attrs.get("gen_ai.usage.total_tokens")),
    )


def sql_input(span: Span) -> str | None:
    """The SQL a tool or span observation (a LangSmith tool or chain run) was given, when its input is SQL.

    Langfuse's default export keeps only spans with GenAI attributes, so a ``@observe``'d ``run_sql(sql)`` is often
    the only place the statement is. Root spans are left out: their input is the user's question.
    """
    if span.parent_span_id is None:
        return None
    kind = observation_type(span) or langsmith_kind(span)
    if kind not in _SQL_HOLDERS:
        return None
    holder = LANGFUSE_INPUT if observation_type(span) else GEN_AI_PROMPT
    return _sql_in(loads_json(span.attributes.get(holder), span.attributes.get(holder)))


def _sql_in(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip() if _SQL.match(value) else None
    if isinstance(value, Mapping):
        if isinstance(value.get("args"), list) or isinstance(value.get("kwargs"), Mapping):  # @observe's input
            found = [_sql_in(v) for v in (*(value.get("args") or ()), *(value.get("kwargs") or {}).values())]
            return next((f for f in found if f), None)
        for key in _SQL_KEYS:
            if isinstance(value.get(key), str) and _SQL.match(value[key]):
                return str(value[key]).strip()
        texts = [v for v in value.values() if isinstance(v, str)]
        return texts[0].strip() if len(texts) == 1 and _SQL.match(texts[0]) else None
    return None


def cost_usd(span: Span) -> float | None:
    """The call's cost: Langfuse's ``cost_details`` total (or the sum of its parts), else ``gen_ai.usage.cost``."""
    details = _object(span.attributes.get(LANGFUSE_COST))
    numbers = {k: v for k, v in details.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if "total" in numbers:
        return float(numbers["total"])
    if numbers:
        return float(sum(numbers.values()))
    value = span.attributes.get(GEN_AI_USAGE_COST)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def time_to_first_token_s(span: Span) -> float | None:
    """Seconds from the call's start to its first token: Langfuse's ``completion_start_time`` (a JSON-quoted ISO
    time) or the first-token time a LangSmith run import kept, minus the span's start."""
    for name in (LANGFUSE_COMPLETION_START, LANGSMITH_FIRST_TOKEN_TIME):
        ns = iso_ns(loads_json(span.attributes.get(name), span.attributes.get(name)))
        if ns is not None and ns >= span.start_time_unix_nano:
            return (ns - span.start_time_unix_nano) / 1e9
    return None


def iso_ns(value: Any) -> int | None:
    """An ISO 8601 time (UTC when it has no offset) as Unix nanoseconds; ``None`` for anything else."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(re.sub(r"[Zz]$", "+00:00", value.strip()))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    delta = parsed - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


# -- messages ---------------------------------------------------------------------------------------------------------


def messages(value: AttrValue | None, role: str) -> Messages:
    """``(role, text)`` pairs from JSON text in any shape these SDKs record; ``role`` for text without one.

    Input text that is no JSON is one message with that text (Langfuse writes a string input as it is).
    """
    if value is None:
        return ()
    loaded = loads_json(value, value)
    return tuple((r, t) for r, t in _messages(loaded, role) if t or r)


def _messages(value: Any, role: str) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(role, value)] if value.strip() else []
    if isinstance(value, (list, tuple)):
        return [m for item in value for m in _messages(item, role)]
    if not isinstance(value, Mapping):
        return []
    one = _message(value)
    if one is not None:
        return [one]
    for key in ("messages", "generations", "choices", "prompts", "input", "output"):
        if key in value:
            return _messages(value[key], role)
    if "args" in value or "kwargs" in value:  # @observe's input
        given = value.get("kwargs")
        kwargs: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
        if kwargs and "messages" in kwargs:
            return _messages(kwargs["messages"], role)
        return _messages(list(value.get("args") or ()) + list(kwargs.values()), role)
    texts = [v for v in value.values() if isinstance(v, str)]
    return [(role, texts[0])] if len(texts) == 1 else []


def _message(value: Mapping[str, Any]) -> tuple[str, str] | None:
    """One message in OpenAI's, LangChain's serialized or dumped shape, or a LangChain generation."""
    if value.get("lc") is not None and isinstance(value.get("kwargs"), Mapping):
        kwargs = value["kwargs"]
        ids = value.get("id")
        name = str(ids[-1]) if isinstance(ids, list) and ids else ""
        return _role(str(kwargs.get("type") or name)), content_text(kwargs.get("content", ""))
    if "role" in value and "content" in value:
        return _role(str(value["role"])), content_text(value["content"])
    if isinstance(value.get("type"), str) and "content" in value:
        return _role(value["type"]), content_text(value["content"])
    if "message" in value and isinstance(value["message"], Mapping):  # a generation or a choice
        return _message(value["message"])
    if isinstance(value.get("text"), str) and ("generation_info" in value or "type" in value or len(value) == 1):
        return "assistant", value["text"]
    return None


def _role(name: str) -> str:
    lowered = name.lower()
    return _ROLES.get(lowered, lowered)


def _object(value: AttrValue | None) -> dict[str, Any]:
    loaded = loads_json(value)
    return dict(loaded) if isinstance(loaded, Mapping) else {}


def _first(values: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        number = values.get(key)
        if isinstance(number, (int, float)) and not isinstance(number, bool) and float(number).is_integer():
            return int(number)
    return None
