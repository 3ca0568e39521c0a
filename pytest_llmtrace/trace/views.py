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

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_llmtrace.core.memo import memo
from pytest_llmtrace.trace.attr_values import (
    content_text,
    event_body,
    first_int,
    first_str,
    json_object,
    loads_json,
    parts_text,
    request_parameters,
)
from pytest_llmtrace.trace.sdk_attrs import (
    CallFields,
    langfuse_generation,
    langfuse_level,
    langfuse_status_message,
    langsmith_llm,
    sql_input,
)
from pytest_llmtrace.trace.span import (
    DB_QUERY_TEXT,
    DB_RETURNED_ROWS,
    DB_STATEMENT_DEPRECATED,
    DB_SYSTEM_DEPRECATED,
    DB_SYSTEM_NAME,
    GEN_AI_COMPLETION,
    GEN_AI_INPUT_MESSAGES,
    GEN_AI_OPERATION_NAME,
    GEN_AI_OUTPUT_MESSAGES,
    GEN_AI_PROMPT,
    GEN_AI_PROVIDER_NAME,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_RESPONSE_MODEL,
    GEN_AI_SYSTEM,
    GEN_AI_SYSTEM_INSTRUCTIONS,
    GEN_AI_USAGE_COMPLETION_TOKENS,
    GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_OUTPUT_TOKENS,
    GEN_AI_USAGE_PROMPT_TOKENS,
    GEN_AI_USAGE_TOTAL_TOKENS,
    LLM_INPUT_MESSAGES,
    LLM_INVOCATION_PARAMETERS,
    LLM_MODEL_NAME,
    LLM_OUTPUT_MESSAGES,
    LLM_PROVIDER,
    LLM_REQUEST_TYPE,
    LLM_SYSTEM,
    LLM_TOKENS_COMPLETION,
    LLM_TOKENS_PROMPT,
    LLM_TOKENS_TOTAL,
    LLM_USAGE_TOTAL_TOKENS,
    AttrValue,
    Span,
    Status,
    attr_int,
    attr_str,
)


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
        invocation_parameters=json_object(attrs.get(LLM_INVOCATION_PARAMETERS)),
        prompt_tokens=attr_int(attrs.get(LLM_TOKENS_PROMPT)),
        completion_tokens=attr_int(attrs.get(LLM_TOKENS_COMPLETION)),
        total_tokens=attr_int(attrs.get(LLM_TOKENS_TOTAL)),
        convention="openinference",
    )


def read_openllmetry(span: Span) -> LLMCall | None:
    """OpenLLMetry (Traceloop's instrumentations): ``llm.request.type`` and indexed ``gen_ai.prompt.{i}.*``.

    Its messages are flat indexed attributes (``gen_ai.prompt.0.role``, ``gen_ai.completion.0.content``), token
    counts use either generation of usage names, and the total is OpenLLMetry's own ``llm.usage.total_tokens``.
    Embedding and rerank requests are not LLM calls a replay could answer.
    """
    attrs = span.attributes
    request_type = attr_str(attrs.get(LLM_REQUEST_TYPE))
    prompts = span.prefixed(GEN_AI_PROMPT)
    completions = span.prefixed(GEN_AI_COMPLETION)
    if request_type is None:
        if not any(_INDEXED.match(k) for k in (*prompts, *completions)):
            return None
    elif request_type.lower() not in _OPENLLMETRY_CALLS:
        return None
    return LLMCall(
        span=span,
        model=first_str(attrs, GEN_AI_REQUEST_MODEL, GEN_AI_RESPONSE_MODEL),
        provider=attr_str(attrs.get(GEN_AI_SYSTEM)),
        input_messages=_indexed_messages(prompts, prefix=""),
        output_messages=_indexed_messages(completions, prefix=""),
        invocation_parameters=request_parameters(span),
        prompt_tokens=first_int(attrs, GEN_AI_USAGE_PROMPT_TOKENS, GEN_AI_USAGE_INPUT_TOKENS),
        completion_tokens=first_int(attrs, GEN_AI_USAGE_COMPLETION_TOKENS, GEN_AI_USAGE_OUTPUT_TOKENS),
        total_tokens=first_int(attrs, LLM_USAGE_TOTAL_TOKENS, GEN_AI_USAGE_TOTAL_TOKENS),
        convention="openllmetry",
    )


def read_otel_genai(span: Span) -> LLMCall | None:
    """The OpenTelemetry GenAI semantic conventions, in each generation of where they put the messages.

    A span is an inference when ``gen_ai.operation.name`` is ``chat``, ``text_completion`` or
    ``generate_content`` (or, before that attribute existed, when it names a requested model). Messages are read
    from the first place that has them: the JSON attributes ``gen_ai.input.messages`` / ``gen_ai.output.messages``
    / ``gen_ai.system_instructions`` (semconv 1.37+), the same attributes on a
    ``gen_ai.client.inference.operation.details`` span event, one span event per message
    (``gen_ai.system.message``, ``gen_ai.user.message``, ``gen_ai.assistant.message``, ``gen_ai.tool.message``,
    ``gen_ai.choice``) with the body in the event's attributes, or the oldest ``gen_ai.content.prompt`` /
    ``gen_ai.content.completion`` events. The provider is ``gen_ai.provider.name``, formerly ``gen_ai.system``.
    """
    attrs = span.attributes
    operation = attr_str(attrs.get(GEN_AI_OPERATION_NAME))
    if operation is not None:
        if operation.lower() not in _GENAI_INFERENCE_OPERATIONS:
            return None
    elif LLM_REQUEST_TYPE in attrs or not first_str(attrs, GEN_AI_REQUEST_MODEL, GEN_AI_RESPONSE_MODEL):
        return None  # an OpenLLMetry span its reader turned down (an embedding), or no model call at all
    inputs, outputs = _genai_messages(span)
    return LLMCall(
        span=span,
        model=first_str(attrs, GEN_AI_REQUEST_MODEL, GEN_AI_RESPONSE_MODEL),
        provider=first_str(attrs, GEN_AI_PROVIDER_NAME, GEN_AI_SYSTEM),
        input_messages=inputs,
        output_messages=outputs,
        invocation_parameters=request_parameters(span),
        prompt_tokens=first_int(attrs, GEN_AI_USAGE_INPUT_TOKENS, GEN_AI_USAGE_PROMPT_TOKENS),
        completion_tokens=first_int(attrs, GEN_AI_USAGE_OUTPUT_TOKENS, GEN_AI_USAGE_COMPLETION_TOKENS),
        total_tokens=attr_int(attrs.get(GEN_AI_USAGE_TOTAL_TOKENS)),
        convention="otel-genai",
    )


def read_langfuse(span: Span) -> LLMCall | None:
    """Langfuse (SDK v3 and newer): a ``generation`` observation, its content in ``langfuse.observation.*`` JSON."""
    fields = langfuse_generation(span)
    return _from_fields(span, fields, "langfuse") if fields is not None else None


def read_langsmith(span: Span) -> LLMCall | None:
    """LangSmith's OpenTelemetry export: ``langsmith.span.kind`` = ``llm``, the run's JSON in ``gen_ai.prompt``."""
    fields = langsmith_llm(span)
    return _from_fields(span, fields, "langsmith") if fields is not None else None


def _from_fields(span: Span, fields: CallFields, convention: str) -> LLMCall:
    return LLMCall(
        span=span,
        model=fields.model,
        provider=fields.provider,
        input_messages=tuple(Message(role, text) for role, text in fields.inputs),
        output_messages=tuple(Message(role, text) for role, text in fields.outputs),
        invocation_parameters=fields.parameters,
        prompt_tokens=fields.prompt_tokens,
        completion_tokens=fields.completion_tokens,
        total_tokens=fields.total_tokens,
        convention=convention,
    )


# Convention name -> reader, in the order they are tried: OpenInference's kind is explicit, OpenLLMetry's indexed
# attributes are specific, Langfuse's and LangSmith's own attributes are richer than the GenAI ones they may sit
# beside, and the OTel GenAI conventions are the broadest test (any span naming a requested model).
LLM_READERS: Mapping[str, LLMReader] = {
    "openinference": read_openinference,
    "openllmetry": read_openllmetry,
    "langfuse": read_langfuse,
    "langsmith": read_langsmith,
    "otel-genai": read_otel_genai,
}


def llm_call(span: Span) -> LLMCall | None:
    """The LLM call this span records, or ``None`` when no known convention says it is one; read once per span (the
    checks of a case ask for the same span's call dozens of times)."""
    return memo(span, "_llm_call", _read_llm_call)


def _read_llm_call(span: Span) -> LLMCall | None:
    return next((call for call in (read(span) for read in LLM_READERS.values()) if call is not None), None)


def span_kind(span: Span) -> str:
    """The span's OpenInference kind; ``LLM`` for an LLM call in another convention; else ``UNKNOWN``.

    Latency per kind, ``Trace.find(kind=...)``, the waterfall and the outcome snapshot all use this, so an
    auto-instrumented model call counts as an LLM call everywhere, not only in ``Trace.llm_calls``.
    """
    kind = span.kind
    if kind == "UNKNOWN" and llm_call(span) is not None:
        return "LLM"
    return kind


@dataclass(frozen=True)
class SqlStatement:
    """A statement the application executed, read from OTel database semantic conventions."""

    span: Span
    text: str
    system: str | None
    returned_rows: int | None

    @property
    def ok(self) -> bool:
        """No ERROR status, nor a Langfuse ``level`` of ERROR (an app that catches the error sets only that)."""
        return self.span.status is not Status.ERROR and langfuse_level(self.span) != "ERROR"

    @property
    def error(self) -> str | None:
        """The database error as recorded: the status message, else the exception event's message."""
        if self.ok:
            return None
        return self.span.error_text or langfuse_status_message(self.span) or "error"

    @classmethod
    def from_span(cls, span: Span) -> SqlStatement | None:
        """The statement, from the stable ``db.query.text`` or the deprecated ``db.statement`` most exporters use;
        else the SQL input of a Langfuse tool or span observation or a LangSmith tool run (``sdk_attrs.sql_input``)."""
        return memo(span, "_sql_statement", cls._read)

    @classmethod
    def _read(cls, span: Span) -> SqlStatement | None:
        attrs = span.attributes
        text = attr_str(attrs.get(DB_QUERY_TEXT)) or attr_str(attrs.get(DB_STATEMENT_DEPRECATED)) or sql_input(span)
        if text is None:
            return None
        system = attr_str(attrs.get(DB_SYSTEM_NAME)) or attr_str(attrs.get(DB_SYSTEM_DEPRECATED))
        return cls(span=span, text=text, system=system, returned_rows=attr_int(attrs.get(DB_RETURNED_ROWS)))


# -- helpers shared by the readers ------------------------------------------------------------------------------------

_INDEXED = re.compile(r"^(\d+)\.(.+)$")
_OPENLLMETRY_CALLS = frozenset({"chat", "completion"})
_GENAI_INFERENCE_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})
_GENAI_DETAILS_EVENT = "gen_ai.client.inference.operation.details"
_GENAI_MESSAGE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
_GENAI_CHOICE_EVENT = "gen_ai.choice"
_GENAI_PROMPT_EVENT = "gen_ai.content.prompt"
_GENAI_COMPLETION_EVENT = "gen_ai.content.completion"


def _indexed_messages(flat: Mapping[str, AttrValue], prefix: str = "message.") -> tuple[Message, ...]:
    """Rebuild ``{i}.message.role`` / ``{i}.message.content`` pairs (OpenLLMetry: ``{i}.role``) in index order.

    Multimodal messages (OpenInference's ``message.contents.{j}.message_content.text``, OpenLLMetry's JSON list of
    parts) are joined into one text, which is what a prompt diff needs.
    """
    rows: dict[int, dict[str, str]] = {}
    for key, value in flat.items():
        match = _INDEXED.match(key)
        if not match:
            continue
        index, rest = int(match.group(1)), match.group(2)
        row = rows.setdefault(index, {})
        if rest == prefix + "role":
            row["role"] = str(value)
        elif rest == prefix + "content":  # OpenLLMetry writes multimodal content as a JSON list of parts
            row["content"] = str(value) if prefix else content_text(value)
        elif rest.startswith("message.contents.") and rest.endswith(".message_content.text"):
            row["parts"] = row.get("parts", "") + str(value)
    return tuple(
        Message(role=row.get("role", ""), content=row.get("content", row.get("parts", "")))
        for _, row in sorted(rows.items())
    )


def _genai_messages(span: Span) -> tuple[tuple[Message, ...], tuple[Message, ...]]:
    """Input and output messages from the first of the GenAI conventions' places that holds any."""
    holders = [span.attributes]
    holders.extend(e.attributes for e in span.events if e.name == _GENAI_DETAILS_EVENT)
    for attrs in holders:
        inputs = _json_messages(attrs.get(GEN_AI_INPUT_MESSAGES))
        outputs = _json_messages(attrs.get(GEN_AI_OUTPUT_MESSAGES))
        system = content_text(attrs.get(GEN_AI_SYSTEM_INSTRUCTIONS))
        if system and not any(m.role == "system" and m.content == system for m in inputs):
            inputs = (Message("system", system), *inputs)
        if inputs or outputs:
            return inputs, outputs
    events_in: list[Message] = []
    events_out: list[Message] = []
    for event in span.events:
        body = event_body(event.attributes)
        if event.name in _GENAI_MESSAGE_EVENTS:
            events_in.append(Message(_GENAI_MESSAGE_EVENTS[event.name], content_text(body.get("content", ""))))
        elif event.name == _GENAI_CHOICE_EVENT:
            message = loads_json(body.get("message"))
            if isinstance(message, dict):
                role, content = message.get("role") or "assistant", message.get("content", "")
            elif "message" in body:  # the content itself, or its blocks as JSON (Strands)
                role, content = "assistant", body["message"]
            else:
                role = str(body.get("message.role") or body.get("role") or "assistant")
                content = body.get("message.content", body.get("content", ""))
            events_out.append(Message(str(role), content_text(content)))
        elif event.name == _GENAI_PROMPT_EVENT:
            events_in.extend(_json_messages(event.attributes.get(GEN_AI_PROMPT)))
        elif event.name == _GENAI_COMPLETION_EVENT:
            events_out.extend(_json_messages(event.attributes.get(GEN_AI_COMPLETION), role="assistant"))
    return tuple(events_in), tuple(events_out)


def _json_messages(value: AttrValue | None, role: str = "") -> tuple[Message, ...]:
    """JSON messages: ``[{"role", "parts": [{"type": "text", "content"}]}]`` (semconv 1.37+), or with ``content``."""
    loaded = loads_json(value)
    if isinstance(loaded, dict):
        loaded = [loaded]
    if not isinstance(loaded, (list, tuple)):
        return ()
    messages = []
    for item in loaded:
        if isinstance(item, str):
            messages.append(Message(role, item))
        elif isinstance(item, dict):
            inner: dict[str, Any] = item["message"] if isinstance(item.get("message"), dict) else item
            text = parts_text(inner["parts"]) if "parts" in inner else None
            messages.append(Message(str(inner.get("role") or role), text or content_text(inner.get("content", ""))))
    return tuple(messages)
