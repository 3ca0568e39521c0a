"""The trace model every other part of the plugin speaks: immutable, typed, and OpenInference-aware.

Raw OpenTelemetry objects differ between the SDK (``ReadableSpan``), OTLP JSON and Phoenix's exports; tests and
checks should not care where a trace came from, so every source is converted into these classes once.

Attributes are kept flat and dotted, as OpenTelemetry and OpenInference define them
(``llm.input_messages.0.message.role``); the accessors below reassemble the structured views (LLM calls, SQL
statements) that regression checks need.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Union

from pytest_llmtrace.errors import TraceFormatError, warn_format

__all__ = [
    "AttrValue",
    "LLMCall",
    "Message",
    "Span",
    "SpanEvent",
    "SpanLink",
    "SqlStatement",
    "Status",
    "Trace",
]

# What an OTLP AnyValue can hold. ``dict`` stands for kvlistValue; ``bytes`` for bytesValue; a tuple for arrayValue.
AttrValue = Union[str, bool, int, float, bytes, tuple["AttrValue", ...], dict[str, "AttrValue"]]  # noqa: UP007 (recursive alias needs Union at runtime)

# OpenInference and OpenTelemetry attribute names used by the accessors. The OpenInference package defines the same
# strings; they are spelled out here so the model can be read (and imported) without it.
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
        return _as_str(self.attributes.get(INPUT_VALUE))

    @property
    def output_value(self) -> str | None:
        return _as_str(self.attributes.get(OUTPUT_VALUE))

    @property
    def exception_messages(self) -> tuple[str, ...]:
        """Messages of the ``exception`` events, which is where OTel puts the error text (Postgres errors too)."""
        return tuple(str(e.attributes.get("exception.message", "")) for e in self.events if e.name == "exception")

    def prefixed(self, prefix: str) -> dict[str, AttrValue]:
        """Attributes under a dotted prefix, with the prefix removed (``llm.input_messages`` -> ``0.message.role``)."""
        start = prefix + "."
        return {k[len(start) :]: v for k, v in self.attributes.items() if k.startswith(start)}


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class LLMCall:
    """What a regression check needs from an OpenInference LLM span."""

    span: Span
    model: str | None
    provider: str | None
    input_messages: tuple[Message, ...]
    output_messages: tuple[Message, ...]
    invocation_parameters: Mapping[str, Any]
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None

    @property
    def output_text(self) -> str:
        """The assistant's answer: the output messages if recorded, else ``output.value``."""
        if self.output_messages:
            return "".join(m.content for m in self.output_messages)
        return self.span.output_value or ""

    @classmethod
    def from_span(cls, span: Span) -> LLMCall:
        attrs = span.attributes
        params_raw = attrs.get(LLM_INVOCATION_PARAMETERS)
        params: Mapping[str, Any] = {}
        if isinstance(params_raw, str) and params_raw:
            try:
                loaded = json.loads(params_raw)
            except ValueError:
                loaded = None
            if isinstance(loaded, dict):
                params = loaded
        total = _as_int(attrs.get(LLM_TOKENS_TOTAL))
        prompt = _as_int(attrs.get(LLM_TOKENS_PROMPT))
        completion = _as_int(attrs.get(LLM_TOKENS_COMPLETION))
        if total is None and prompt is not None and completion is not None:
            total = prompt + completion
        return cls(
            span=span,
            model=_as_str(attrs.get(LLM_MODEL_NAME)),
            provider=_as_str(attrs.get(LLM_PROVIDER)) or _as_str(attrs.get(LLM_SYSTEM)),
            input_messages=_messages(span.prefixed(LLM_INPUT_MESSAGES)),
            output_messages=_messages(span.prefixed(LLM_OUTPUT_MESSAGES)),
            invocation_parameters=params,
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=total,
        )


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
        return self.span.status_message or next(iter(self.span.exception_messages), "") or "error"

    @classmethod
    def from_span(cls, span: Span) -> SqlStatement | None:
        text = _as_str(span.attributes.get(DB_QUERY_TEXT)) or _as_str(span.attributes.get(DB_STATEMENT_DEPRECATED))
        if text is None:
            return None
        system = _as_str(span.attributes.get(DB_SYSTEM_NAME)) or _as_str(span.attributes.get(DB_SYSTEM_DEPRECATED))
        return cls(span=span, text=text, system=system, returned_rows=_as_int(span.attributes.get(DB_RETURNED_ROWS)))


class Trace:
    """All spans of one trace (or of one test, which may hold several traces), as a parent tree.

    Construction validates the tree: duplicate span ids, parent cycles and spans that end before they start raise
    ``TraceFormatError``; spans whose parent is absent are kept as extra roots with a warning, because partial exports
    (a sampled-out parent, a parent in another service) are common and still worth testing.
    """

    def __init__(
        self,
        spans: Iterable[Span],
        *,
        source: str | Path | None = None,
        span_paths: Mapping[str, str] | None = None,
        warn_missing_parents: bool = True,
    ) -> None:
        self.source = str(source) if source is not None else None
        ordered = sorted(spans, key=lambda s: (s.start_time_unix_nano, s.span_id))
        paths = dict(span_paths or {})
        by_id: dict[str, Span] = {}
        for span in ordered:
            where = paths.get(span.span_id, f"$.spans[span_id={span.span_id}]")
            if span.span_id in by_id:
                raise TraceFormatError(source, where + ".spanId", "unique span ids", f"{span.span_id!r} twice")
            if span.end_time_unix_nano is not None and span.end_time_unix_nano < span.start_time_unix_nano:
                raise TraceFormatError(
                    source,
                    where + ".endTimeUnixNano",
                    "an end time at or after the start time",
                    f"end {span.end_time_unix_nano} < start {span.start_time_unix_nano}",
                )
            by_id[span.span_id] = span
        self.spans: tuple[Span, ...] = tuple(ordered)
        self._by_id = by_id
        self._children: dict[str | None, list[Span]] = {}
        orphan_ids: set[str] = set()
        for span in ordered:
            parent = span.parent_span_id
            if parent is not None and parent not in by_id:
                orphan_ids.add(span.span_id)
                if warn_missing_parents:
                    warn_format(
                        source,
                        paths.get(span.span_id, f"$.spans[span_id={span.span_id}]") + ".parentSpanId",
                        f"parent span {parent!r} of span {span.name!r} is not in the trace; kept as an extra root",
                    )
                parent = None
            self._children.setdefault(parent, []).append(span)
        self.orphan_span_ids: frozenset[str] = frozenset(orphan_ids)
        self._check_cycles(source, paths)

    def _check_cycles(self, source: str | Path | None, paths: Mapping[str, str]) -> None:
        reachable: set[str] = set()
        stack = list(self._children.get(None, []))
        while stack:
            span = stack.pop()
            reachable.add(span.span_id)
            stack.extend(self._children.get(span.span_id, []))
        for span in self.spans:
            if span.span_id not in reachable:
                cycle = [span.span_id]
                cursor = span.parent_span_id
                while cursor is not None and cursor not in cycle:
                    cycle.append(cursor)
                    cursor = self._by_id[cursor].parent_span_id
                raise TraceFormatError(
                    source,
                    paths.get(span.span_id, f"$.spans[span_id={span.span_id}]") + ".parentSpanId",
                    "a parent chain that ends at a root span",
                    "a cycle " + " -> ".join([*cycle, cursor or ""]),
                )

    # -- the tree ---------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.spans)

    def __iter__(self) -> Iterator[Span]:
        return iter(self.spans)

    def __bool__(self) -> bool:
        return bool(self.spans)

    def __repr__(self) -> str:
        return f"<Trace {len(self.spans)} spans, roots={[s.name for s in self.roots]!r}>"

    def __str__(self) -> str:
        from pytest_llmtrace.trace.render import render_waterfall

        return render_waterfall(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Trace) and self.spans == other.spans

    __hash__ = None  # type: ignore[assignment]

    @property
    def trace_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.trace_id for s in self.spans))

    @property
    def roots(self) -> tuple[Span, ...]:
        return tuple(self._children.get(None, []))

    @property
    def root(self) -> Span:
        """The first root span. Raises ``LookupError`` on an empty trace, so a test cannot silently check nothing."""
        roots = self.roots
        if not roots:
            raise LookupError("the trace has no spans")
        return roots[0]

    def children(self, span: Span) -> tuple[Span, ...]:
        return tuple(self._children.get(span.span_id, []))

    def parent(self, span: Span) -> Span | None:
        if span.parent_span_id is None:
            return None
        return self._by_id.get(span.parent_span_id)

    def get(self, span_id: str) -> Span:
        return self._by_id[span_id]

    def walk(self) -> Iterator[tuple[int, Span]]:
        """Depth-first, children in start order: (depth, span)."""
        stack = [(0, s) for s in reversed(self.roots)]
        while stack:
            depth, span = stack.pop()
            yield depth, span
            stack.extend((depth + 1, c) for c in reversed(self.children(span)))

    # -- lookups ----------------------------------------------------------------------------------------------------

    def find(self, name: str | None = None, *, kind: str | None = None) -> tuple[Span, ...]:
        """Spans by exact name and/or OpenInference kind (case-insensitive), in start order."""
        wanted_kind = kind.upper() if kind is not None else None
        return tuple(
            s for s in self.spans if (name is None or s.name == name) and (wanted_kind is None or s.kind == wanted_kind)
        )

    def find_one(self, name: str | None = None, *, kind: str | None = None) -> Span:
        """Exactly one matching span, or a ``LookupError`` that lists what the trace does have."""
        found = self.find(name, kind=kind)
        if len(found) == 1:
            return found[0]
        wanted = " ".join(p for p in (f"name={name!r}" if name else "", f"kind={kind}" if kind else "") if p)
        have = ", ".join(f"{s.name!r} ({s.kind})" for s in self.spans) or "no spans"
        raise LookupError(f"expected exactly one span with {wanted}, found {len(found)}; the trace has: {have}")

    @property
    def open_spans(self) -> tuple[Span, ...]:
        return tuple(s for s in self.spans if s.is_open)

    @property
    def llm_calls(self) -> tuple[LLMCall, ...]:
        return tuple(LLMCall.from_span(s) for s in self.find(kind="LLM"))

    @property
    def sql_statements(self) -> tuple[SqlStatement, ...]:
        found = (SqlStatement.from_span(s) for s in self.spans)
        return tuple(s for s in found if s is not None)

    @property
    def input(self) -> str | None:
        """The root span's ``input.value``: for a text-to-SQL app, the user's question."""
        return self.root.input_value if self.spans else None

    @property
    def output(self) -> str | None:
        return self.root.output_value if self.spans else None

    @property
    def start_time_unix_nano(self) -> int:
        return min((s.start_time_unix_nano for s in self.spans), default=0)

    @property
    def end_time_unix_nano(self) -> int:
        return max((s.end_time_unix_nano or s.start_time_unix_nano for s in self.spans), default=0)

    @property
    def duration_ms(self) -> float:
        return (self.end_time_unix_nano - self.start_time_unix_nano) / 1e6

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens or 0 for c in self.llm_calls)

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens or 0 for c in self.llm_calls)

    @property
    def total_tokens(self) -> int:
        return sum(c.total_tokens or 0 for c in self.llm_calls)


# -- helpers ----------------------------------------------------------------------------------------------------------

_INDEXED = re.compile(r"^(\d+)\.(.+)$")


def _messages(flat: Mapping[str, AttrValue]) -> tuple[Message, ...]:
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


def _as_str(value: AttrValue | None) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _as_int(value: AttrValue | None) -> int | None:
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
