"""A trace as the bars of a waterfall (``outcome.Waterfall``), the data report.html draws golden and now from.

Kept apart from ``render`` (the terminal waterfall) because it needs the outcome types and the SQL view, and the
trace model must not import either.
"""

from __future__ import annotations

from collections.abc import Mapping

from pytest_llmtrace.checks.outcome import SpanBar, Waterfall
from pytest_llmtrace.trace.model import SqlStatement, Trace
from pytest_llmtrace.trace.span import Status
from pytest_llmtrace.trace.views import span_kind

NAME_LIMIT = 120  # characters of a span name kept: a report shows a label, not a hostile megabyte


def waterfall_of(trace: Trace, replayed_ns: Mapping[str, int] | None = None) -> Waterfall:
    """The trace's spans depth first, on a clock that starts at its first span.

    ``replayed_ns`` is ``VirtualTrace.replayed_ns`` for a trace on virtual time: span id -> the part of its
    duration the recording supplied. An open span is drawn to the trace's end, so a hang is visible as the bar that
    reaches the edge.
    """
    start, end = trace.start_time_unix_nano, trace.end_time_unix_nano
    replayed = replayed_ns or {}
    bars: list[SpanBar] = []
    walked = 0
    for depth, span in trace.walk():
        walked += 1
        if len(bars) >= Waterfall.MAX_BARS:
            continue
        stop = end if span.end_time_unix_nano is None else span.end_time_unix_nano
        name = span.name if len(span.name) <= NAME_LIMIT else span.name[: NAME_LIMIT - 1] + "…"
        bars.append(
            SpanBar(
                name=name,
                kind="SQL" if SqlStatement.from_span(span) is not None else span_kind(span),
                depth=depth,
                start_ms=_ms(span.start_time_unix_nano - start),
                duration_ms=_ms(max(0, stop - span.start_time_unix_nano)),
                replayed_ms=_ms(replayed.get(span.span_id, 0)),
                error=span.status is Status.ERROR,
                open=span.end_time_unix_nano is None,
            )
        )
    return Waterfall(tuple(bars), _ms(max(0, end - start)), walked - len(bars))


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)  # to the microsecond: finer only makes results.json larger
