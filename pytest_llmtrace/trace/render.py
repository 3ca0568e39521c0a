"""The terminal waterfall: one line per span, indented by depth, with the attributes a reviewer looks at first.

It reads a trace through the small ``SpanTree`` protocol rather than the ``Trace`` class, so the trace can print
itself (``str(trace)``) without the two modules importing each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from pytest_llmtrace.core.inert import one_line
from pytest_llmtrace.trace.question import QuestionSource, find_question
from pytest_llmtrace.trace.span import INPUT_VALUE, TRACELOOP_ENTITY_INPUT, Span, Status
from pytest_llmtrace.trace.views import SqlStatement, llm_call, span_kind

BAR_WIDTH = 20
MAX_VALUE_CHARS = 60
# The root's input as the default question sources read it from the root span alone (the waterfall reads one span).
ROOT_INPUT_SOURCES = (QuestionSource(INPUT_VALUE), QuestionSource(TRACELOOP_ENTITY_INPUT))


class SpanTree(Protocol):
    """What the waterfall needs from a trace; ``Trace`` has it."""

    @property
    def spans(self) -> tuple[Span, ...]: ...

    @property
    def trace_ids(self) -> tuple[str, ...]: ...

    @property
    def start_time_unix_nano(self) -> int: ...

    @property
    def end_time_unix_nano(self) -> int: ...

    @property
    def duration_ms(self) -> float: ...

    def walk(self) -> Iterator[tuple[int, Span]]: ...


def _short(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def key_attributes(span: Span) -> str:
    """The few attributes that say what a span did: the LLM convention, model and tokens, SQL and rows, the question,
    the error."""
    parts: list[str] = []
    call = llm_call(span)
    if call is not None:
        parts.append(f"convention={call.convention}")
        if call.model:
            parts.append(f"model={one_line(call.model)}")
        if call.prompt_tokens is not None or call.completion_tokens is not None:
            parts.append(f"tokens={call.prompt_tokens or 0}+{call.completion_tokens or 0}")
    sql = SqlStatement.from_span(span)
    if sql is not None:
        parts.append(f"sql={_short(sql.text)!r}")
        if sql.returned_rows is not None:
            parts.append(f"rows={sql.returned_rows}")
    elif span.parent_span_id is None:
        question = find_question(span, (), ROOT_INPUT_SOURCES).text
        if question is not None:
            parts.append(f"input={_short(question)!r}")
    if span.status is Status.ERROR and span.error_text:
        parts.append(f"error={_short(span.error_text)!r}")
    return "  ".join(parts)


def render_waterfall(trace: SpanTree) -> str:
    """An indented tree with a time bar, so the slow span stands out without opening Phoenix."""
    if not trace.spans:
        return "(no spans)"
    start = trace.start_time_unix_nano
    total = max(trace.end_time_unix_nano - start, 1)
    rows: list[tuple[str, str, str, str, str]] = []
    for depth, span in trace.walk():
        offset = int((span.start_time_unix_nano - start) / total * BAR_WIDTH)
        width = max(1, round(span.duration_ns / total * BAR_WIDTH))
        bar = " " * min(offset, BAR_WIDTH - 1) + "#" * min(width, BAR_WIDTH - min(offset, BAR_WIDTH - 1))
        duration = "open" if span.is_open else f"{span.duration_ms:,.1f} ms"
        rows.append(
            (
                "  " * depth + one_line(span.name),  # names come from the trace: no terminal escapes
                one_line(span_kind(span)),
                duration,
                span.status.value,
                f"|{bar:<{BAR_WIDTH}}| " + key_attributes(span),
            )
        )
    name_w = max(len(r[0]) for r in rows)
    kind_w = max(len(r[1]) for r in rows)
    dur_w = max(len(r[2]) for r in rows)
    lines = [
        f"{name:<{name_w}}  {kind:<{kind_w}}  {dur:>{dur_w}}  {status:<5}  {rest}".rstrip()
        for name, kind, dur, status, rest in rows
    ]
    header = f"trace {', '.join(trace.trace_ids)}  {len(trace.spans)} spans  {trace.duration_ms:,.1f} ms"
    return "\n".join([header, *lines])
