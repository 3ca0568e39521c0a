"""OpenTelemetry SDK ``ReadableSpan`` -> the trace model.

Both the per-test recorder and scripts that capture traces outside pytest go through this one conversion, so a
recorded trace and a golden file written from it hold exactly the same fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.span import Span, SpanEvent, SpanLink, Status

if TYPE_CHECKING:  # for the annotations only: converting reads attributes, so trace/ loads without the SDK
    from opentelemetry.sdk.trace import ReadableSpan

_STATUS = {"UNSET": Status.UNSET, "OK": Status.OK, "ERROR": Status.ERROR}


def _attrs(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """SDK attribute sequences are tuples or lists; the model keeps tuples so spans compare equal after a round trip."""
    if not attributes:
        return {}
    return {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in attributes.items()}


def span_from_readable(span: ReadableSpan, *, open_end: bool = False) -> Span:
    """Convert one SDK span. ``open_end`` marks a span still running (its end time is not set yet)."""
    context = span.get_span_context()
    assert context is not None, "SDK spans always carry a context"
    parent = span.parent
    scope = span.instrumentation_scope
    end = None if open_end else span.end_time
    return Span(
        trace_id=f"{context.trace_id:032x}",
        span_id=f"{context.span_id:016x}",
        parent_span_id=f"{parent.span_id:016x}" if parent is not None else None,
        name=span.name,
        start_time_unix_nano=span.start_time or 0,
        end_time_unix_nano=end,
        attributes=_attrs(span.attributes),
        status=_STATUS[span.status.status_code.name],
        status_message=span.status.description or "",
        otel_kind=span.kind.value + 1,  # the SDK's SpanKind starts at INTERNAL=0; OTLP has UNSPECIFIED=0
        events=tuple(
            SpanEvent(name=e.name, time_unix_nano=e.timestamp, attributes=_attrs(e.attributes)) for e in span.events
        ),
        links=tuple(
            SpanLink(
                trace_id=f"{lk.context.trace_id:032x}",
                span_id=f"{lk.context.span_id:016x}",
                attributes=_attrs(lk.attributes),
            )
            for lk in span.links
        ),
        trace_state=context.trace_state.to_header() if context.trace_state else "",
        flags=int(context.trace_flags),
        dropped_attributes_count=span.dropped_attributes,
        dropped_events_count=span.dropped_events,
        dropped_links_count=span.dropped_links,
        resource_attributes=_attrs(span.resource.attributes),
        resource_schema_url=span.resource.schema_url or "",
        scope_name=scope.name if scope else "",
        scope_version=(scope.version or "") if scope else "",
        scope_attributes=_attrs(scope.attributes) if scope else {},
        scope_schema_url=(scope.schema_url or "") if scope else "",
    )


def trace_from_readable(spans: Iterable[ReadableSpan], *, source: str | None = None) -> Trace:
    return Trace((span_from_readable(s) for s in spans), source=source)
