"""Which case a span received from a service belongs to, and when a case has all of its spans.

By trace id: each request the plugin sends carries a W3C ``traceparent`` it made for the case; a service that
continues it exports the case's spans under that trace id, and nothing else can be mistaken for them. By time window:
a service that starts its own trace per request cannot be told apart that way, but cases run one at a time per
service process (each xdist worker starts its own), so the spans of other traces that arrive while a case is open are
that case's. A span that arrives while no case is open (a readiness probe, a background job, a late export) belongs
to no case: it is counted, never mixed into one.

A case is complete when its root span has arrived (the span whose parent is the plugin's ``traceparent`` span, or
has none) and nothing more has arrived for ``quiet_s``: a service exports its spans in batches, children before their
root or after it.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from pytest_llmtrace.trace.model import Span

Attribution = Literal["auto", "traceparent", "window"]
ATTRIBUTIONS: tuple[Attribution, ...] = ("auto", "traceparent", "window")
# A batch processor exports a span's children with it or before it: once the root is in, little is still to come.
DEFAULT_QUIET_S = 0.02
UNSURE_QUIET_S = 0.3


def describe(attribution: str) -> str:
    """The report header's words for the rule."""
    return {
        "auto": "by trace id (the W3C traceparent each request carries), else by the case's time window (cases run "
        "one at a time per service process)",
        "traceparent": "by trace id only (the W3C traceparent each request carries)",
        "window": "by the case's time window only (cases run one at a time per service process)",
    }[attribution]


@dataclass
class CaseSpans:
    """One case's collection: the traceparent it sends, and what arrived while it was open."""

    trace_id: str
    parent_span_id: str
    own: list[Span] = field(default_factory=list)  # under the case's trace id
    others: list[Span] = field(default_factory=list)  # other trace ids, arrived while the case was open
    last_arrival: float = 0.0  # time.monotonic()

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.parent_span_id}-01"


@dataclass(frozen=True)
class Collected:
    """What a case got: its spans, how they were attributed, and whether its root arrived before the wait ended."""

    spans: tuple[Span, ...]
    how: Literal["trace id", "time window", "none"]
    complete: bool


class SpanRouter:
    """Routes received spans to the open case; ``deliver`` is the receiver's callback (any thread)."""

    def __init__(self, attribution: Attribution = "auto", *, quiet_s: float = DEFAULT_QUIET_S) -> None:
        self.attribution = attribution
        self.quiet_s = quiet_s
        self.unattributed = 0  # spans of no case
        self.cases_by = {"trace id": 0, "time window": 0, "none": 0}
        # auto: how the first attributed case was attributed; a service continues traceparent always, or never
        self.learned: Literal["trace id", "time window", "none"] | None = None
        self._open: CaseSpans | None = None
        self._changed = threading.Condition()

    def begin(self) -> CaseSpans:
        """Open a case with a fresh trace id; spans that arrive from now on may be its."""
        case = CaseSpans(secrets.token_hex(16), secrets.token_hex(8))
        with self._changed:
            if self._open is not None:
                self.unattributed += len(self._open.others)
            self._open = case
        return case

    def deliver(self, spans: Sequence[Span]) -> None:
        with self._changed:
            case = self._open
            for span in spans:
                if case is not None and span.trace_id == case.trace_id:
                    case.own.append(span)
                elif case is not None and self.attribution != "traceparent":
                    case.others.append(span)
                else:
                    self.unattributed += 1
            if case is not None:
                case.last_arrival = time.monotonic()
            self._changed.notify_all()

    def collect(self, case: CaseSpans, *, wait_s: float) -> Collected:
        """Wait until the case's root arrived and the trace is quiet (at most ``wait_s``), then close the case."""
        deadline = time.monotonic() + wait_s
        with self._changed:
            while True:
                spans, how = self._chosen(case)
                now = time.monotonic()
                root_in = spans and any(_is_root(span, case) for span in spans)
                # Before the service has shown whether it continues traceparent, a window's trace waits longer: the
                # case's own spans may be a batch behind another trace's.
                quiet = self.quiet_s if how == "trace id" or self.learned else max(self.quiet_s, UNSURE_QUIET_S)
                if root_in and now - case.last_arrival >= quiet:
                    break
                if now >= deadline:
                    break
                wake = case.last_arrival + quiet if root_in else deadline
                self._changed.wait(max(0.001, min(wake, deadline) - now))
            if self._open is case:
                self._open = None
            spare = case.others if how == "trace id" else []
            self.unattributed += len(spare)
            self.cases_by[how] += 1
            if how != "none" and self.learned is None:
                self.learned = how
            return Collected(tuple(spans), how, bool(root_in))

    def abandon(self, case: CaseSpans) -> None:
        """Close a case that will not collect (its request failed before the service could answer)."""
        with self._changed:
            if self._open is case:
                self._open = None
                self.unattributed += len(case.own) + len(case.others)

    def _chosen(self, case: CaseSpans) -> tuple[list[Span], Literal["trace id", "time window", "none"]]:
        if case.own:
            # The traceparent's parent is the plugin's, never exported: the service's first span is the case's root.
            return [_rooted(span, case) for span in case.own], "trace id"
        # auto: a service that continued traceparent in an earlier case does so now; other traces are not this case's
        if case.others and self.attribution != "traceparent" and self.learned != "trace id":
            return list(case.others), "time window"
        return [], "none"


def _rooted(span: Span, case: CaseSpans) -> Span:
    return replace(span, parent_span_id=None) if span.parent_span_id == case.parent_span_id else span


def _is_root(span: Span, case: CaseSpans) -> bool:
    return span.parent_span_id in (None, case.parent_span_id)


def app_subtree(spans: Sequence[Span], root_name: str) -> tuple[tuple[Span, ...], int]:
    """The spans under (and including) the first span named ``root_name``, made the root, and how many were left out.

    A deployed service wraps the app's code in its framework's spans (an HTTP server span, FastAPI's endpoint and
    dependency spans) that a golden trace recorded from the app in process does not have. When the golden trace's
    root is found below the received root, the case is judged on that subtree, so the same app gives the same
    verdicts through its service as in process; a golden trace whose root is the server span keeps everything.
    """
    roots = [span for span in spans if span.parent_span_id is None]
    if len(roots) == 1 and roots[0].name == root_name:
        return tuple(spans), 0
    # a root of that name first (a framework span beside it, not around it), then the highest one below a root
    matches = sorted(
        (span for span in spans if span.name == root_name),
        key=lambda span: (span.parent_span_id is not None, span.start_time_unix_nano),
    )
    if not matches:
        return tuple(spans), 0
    top = matches[0]
    children: dict[str | None, list[Span]] = {}
    for span in spans:
        children.setdefault(span.parent_span_id, []).append(span)
    kept = [replace(top, parent_span_id=None)]
    stack = [top.span_id]
    while stack:
        for child in children.get(stack.pop(), []):
            kept.append(child)
            stack.append(child.span_id)
    return tuple(kept), len(spans) - len(kept)
