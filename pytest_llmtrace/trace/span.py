"""One span, as every source of traces is converted into it: immutable, typed, with attributes kept flat.

Raw OpenTelemetry objects differ between the SDK (``ReadableSpan``), OTLP JSON and Phoenix's exports; tests and
checks should not care where a span came from. Attributes stay flat and dotted as OpenTelemetry and OpenInference
define them (``llm.input_messages.0.message.role``); the structured readings of them (an LLM call, a SQL statement)
are views built from a span, in ``views.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Union

# What an OTLP AnyValue can hold. ``dict`` stands for kvlistValue; ``bytes`` for bytesValue; a tuple for arrayValue.
AttrValue = Union[str, bool, int, float, bytes, tuple["AttrValue", ...], dict[str, "AttrValue"]]  # noqa: UP007 (recursive alias needs Union at runtime)

# OpenInference and OpenTelemetry attribute names the views read. The OpenInference package defines the same strings;
# they are spelled out here so the model can be read (and imported) without it.
SPAN_KIND = "openinference.span.kind"
INPUT_VALUE = "input.value"
OUTPUT_VALUE = "output.value"
LLM_MODEL_NAME = "llm.model_name"
LLM_PROVIDER = "llm.provider"
LLM_SYSTEM = "llm.system"
LLM_INVOCATION_PARAMETERS = "llm.invocation_parameters"
LLM_INPUT_MESSAGES = "llm.input_messages"
LLM_OUTPUT_MESSAGES = "llm.output_messages"
LLM_TOKENS_PROMPT = "llm.token_count.prompt"
LLM_TOKENS_COMPLETION = "llm.token_count.completion"
LLM_TOKENS_TOTAL = "llm.token_count.total"
DB_QUERY_TEXT = "db.query.text"
DB_STATEMENT_DEPRECATED = "db.statement"
DB_SYSTEM_NAME = "db.system.name"
DB_SYSTEM_DEPRECATED = "db.system"
DB_RETURNED_ROWS = "db.response.returned_rows"

# OpenLLMetry (Traceloop) and the OTel GenAI semantic conventions share the ``gen_ai.`` namespace; docs/conventions.md
# maps each to its concept. Checked against opentelemetry-semantic-conventions 0.66b1, -semantic-conventions-ai 0.5.1,
# opentelemetry-instrumentation-ollama 0.62.4 and -openai-v2 2.4b0.
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_SYSTEM = "gen_ai.system"  # the provider before semconv 1.37
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
# OpenLLMetry: gen_ai.prompt.{i}.role|content; older semconv: JSON, on the gen_ai.content.prompt span event
GEN_AI_PROMPT = "gen_ai.prompt"
GEN_AI_COMPLETION = "gen_ai.completion"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_PROMPT_TOKENS = "gen_ai.usage.prompt_tokens"  # the older names, still written by some instrumentations
GEN_AI_USAGE_COMPLETION_TOKENS = "gen_ai.usage.completion_tokens"
GEN_AI_USAGE_TOTAL_TOKENS = "gen_ai.usage.total_tokens"
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"  # semconv 1.37+: JSON
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"
GEN_AI_SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
GEN_AI_EVENT_CONTENT = "gen_ai.event.content"  # span events of Azure's SDKs: the event body as JSON
LLM_REQUEST_TYPE = "llm.request.type"  # OpenLLMetry: chat, completion, embedding, rerank
LLM_USAGE_TOTAL_TOKENS = "llm.usage.total_tokens"
TRACELOOP_ENTITY_INPUT = "traceloop.entity.input"  # OpenLLMetry's @workflow / @task: {"args": [...], "kwargs": {...}}


class Status(str, Enum):
    """OTel status codes by name; the integer values are the OTLP enum values."""

    UNSET = "UNSET"
    OK = "OK"
    ERROR = "ERROR"

    @property
    def otlp_code(self) -> int:
        return {"UNSET": 0, "OK": 1, "ERROR": 2}[self.value]

    @classmethod
    def from_otlp_code(cls, code: int) -> Status:
        return {0: cls.UNSET, 1: cls.OK, 2: cls.ERROR}[code]


@dataclass(frozen=True)
class SpanEvent:
    name: str
    time_unix_nano: int
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)
    dropped_attributes_count: int = 0


@dataclass(frozen=True)
class SpanLink:
    trace_id: str
    span_id: str
    trace_state: str = ""
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)
    dropped_attributes_count: int = 0
    flags: int = 0


@dataclass(frozen=True)
class Span:
    """One span. Resource and scope are kept per span so a trace written back to OTLP loses nothing."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    start_time_unix_nano: int
    end_time_unix_nano: int | None  # None: the span was still open when it was captured
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)
    status: Status = Status.UNSET
    status_message: str = ""
    otel_kind: int = 1  # SPAN_KIND_INTERNAL
    events: tuple[SpanEvent, ...] = ()
    links: tuple[SpanLink, ...] = ()
    trace_state: str = ""
    flags: int = 0
    dropped_attributes_count: int = 0
    dropped_events_count: int = 0
    dropped_links_count: int = 0
    resource_attributes: Mapping[str, AttrValue] = field(default_factory=dict)
    resource_schema_url: str = ""
    scope_name: str = ""
    scope_version: str = ""
    scope_attributes: Mapping[str, AttrValue] = field(default_factory=dict)
    scope_schema_url: str = ""

    @property
    def kind(self) -> str:
        """The OpenInference span kind (``LLM``, ``CHAIN``, ...); ``UNKNOWN`` for spans that are not OpenInference."""
        value = self.attributes.get(SPAN_KIND)
        return str(value).upper() if isinstance(value, str) and value else "UNKNOWN"

    @property
    def is_open(self) -> bool:
        return self.end_time_unix_nano is None

    @property
    def duration_ns(self) -> int:
        if self.end_time_unix_nano is None:
            return 0
        return self.end_time_unix_nano - self.start_time_unix_nano

    @property
    def duration_ms(self) -> float:
        return self.duration_ns / 1e6

    @property
    def input_value(self) -> str | None:
        return attr_str(self.attributes.get(INPUT_VALUE))

    @property
    def output_value(self) -> str | None:
        return attr_str(self.attributes.get(OUTPUT_VALUE))

    @property
    def exception_messages(self) -> tuple[str, ...]:
        """Messages of the ``exception`` events, which is where OTel puts the error text (Postgres errors too)."""
        return tuple(str(e.attributes.get("exception.message", "")) for e in self.events if e.name == "exception")

    @property
    def error_text(self) -> str:
        """The error as recorded: the status message, else the first exception event's message ("" if neither)."""
        return self.status_message or next(iter(self.exception_messages), "")

    def prefixed(self, prefix: str) -> dict[str, AttrValue]:
        """Attributes under a dotted prefix, with the prefix removed (``llm.input_messages`` -> ``0.message.role``)."""
        start = prefix + "."
        return {k[len(start) :]: v for k, v in self.attributes.items() if k.startswith(start)}


def attr_str(value: AttrValue | None) -> str | None:
    """An attribute as text: exporters disagree on whether ids, counts and flags are strings."""
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def attr_int(value: AttrValue | None) -> int | None:
    """Token counts arrive as int, float (Phoenix dataframes) or numeric strings; anything else is ``None``."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None
