"""The terminal waterfall: one line per span, indented by depth, with the attributes a reviewer looks at first."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_llmtrace.trace.model import LLMCall, Span, SqlStatement, Status

if TYPE_CHECKING:
    from pytest_llmtrace.trace.model import Trace

BAR_WIDTH = 20
MAX_VALUE_CHARS = 60


def _short(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def key_attributes(span: Span) -> str:
    """The few attributes that say what a span did, by OpenInference kind."""
    parts: list[str] = []
    if span.kind == "LLM":
        call = LLMCall.from_span(span)
        if call.model:
            parts.append(f"model={call.model}")
        if call.prompt_tokens is not None or call.completion_tokens is not None:
            parts.append(f"tokens={call.prompt_tokens or 0}+{call.completion_tokens or 0}")
    sql = SqlStatement.from_span(span)
    if sql is not None:
        parts.append(f"sql={_short(sql.text)!r}")
        if sql.returned_rows is not None:
            parts.append(f"rows={sql.returned_rows}")
    elif span.parent_span_id is None and span.input_value is not None:
        parts.append(f"input={_short(span.input_value)!r}")
    if span.status is Status.ERROR:
        error = span.status_message or next(iter(span.exception_messages), "")
        if error:
            parts.append(f"error={_short(error)!r}")
    return "  ".join(parts)


def render_waterfall(trace: Trace) -> str:
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
                "  " * depth + span.name,
                span.kind,
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
