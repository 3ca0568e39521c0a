"""Virtual time: a replayed run's trace on the clock the recording ran on, with every replayed number marked.

In replay mode a model call answers at once, so the LLM spans of the trace now last a few milliseconds of HTTP.
Comparing them (and the CHAIN and total durations that enclose them) with the golden trace would say nothing, and
waiting for the recorded durations makes a thousand cases take ten minutes. Instead each replayed call counts the
recorded call's duration as its latency, and everything else keeps what was measured in this run, so a regression
in the app's own code or in its SQL still shows:

- **Linking a request to its span.** The replay backend notes each answer as a ``ReplayedAnswer``: when it received
  the request and when it had the answer, on the wall clock the OpenTelemetry SDK stamps spans with
  (``time.time_ns``), and the recorded duration that answered it. The span the app's instrumentation made around
  the HTTP request starts before the request is sent and ends after the answer is read, so it *encloses* that
  window. The answer belongs to the innermost enclosing span that records an LLM call (any convention
  ``views.llm_call`` reads); when calls run concurrently and several such spans enclose it, the one whose input
  messages equal the request's wins, then the tightest. Windows need no cooperation from the app (no header to
  forward, no call order to keep) and hold for streaming, retries inside one span, and threads.
- **Replacing.** That span's duration becomes the recorded duration (the sum, when it holds several answers) and
  is marked replayed in full. Every span enclosing it in the tree grows or shrinks by the difference, and a span
  that starts after it ended moves by the difference, so ``total`` and the CHAIN spans become measured time plus
  replayed time. Concurrent spans that are not its ancestors keep their measured durations.
- **No LLM span.** An app that calls the model without instrumenting the call has no span to replace: the innermost
  span enclosing the answer grows by ``recorded - (answered - received)``, as it would have with the model's real
  wait, and that part of it is marked replayed. An answer no span encloses only moves the spans after it.

``VirtualTrace.replayed_ns`` says, per span, how much of its (virtual) duration is replayed, so a report can show
``2313.0 (replayed)`` for an LLM span and the replayed share of a total, and never present a replayed number as a
measured one.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.span import Span
from pytest_llmtrace.trace.views import Message, llm_call


@dataclass(frozen=True)
class ReplayedAnswer:
    """One model request answered from a recording, as the replay backend saw it.

    ``received_ns`` / ``answered_ns``: wall clock (``time.time_ns``, the clock spans are stamped with) when the
    backend got the request and when it had the answer; ``recorded_ns``: the duration the recording counts for it
    (the recorded LLM span's, capped at the case deadline); ``recorded_index``: which recorded call answered;
    ``messages``: the request's messages, which tell concurrent calls apart.
    """

    received_ns: int
    answered_ns: int
    recorded_ns: int
    recorded_index: int
    messages: tuple[Message, ...] = ()

    @property
    def measured_ns(self) -> int:
        return max(0, self.answered_ns - self.received_ns)


@dataclass(frozen=True)
class VirtualTrace:
    """The trace now on the virtual clock, and which part of each span's duration is replayed.

    - ``trace``: the spans with virtual timestamps (ids, attributes and tree unchanged);
    - ``replayed_ns``: span id -> the replayed part of that span's virtual duration (absent: all measured);
    - ``answers``: span id -> the answers replaced into that LLM span (in the order they were received);
    - ``unlinked``: answers no span encloses (they only moved the spans after them).
    """

    trace: Trace
    replayed_ns: Mapping[str, int]
    answers: Mapping[str, tuple[ReplayedAnswer, ...]]
    unlinked: tuple[ReplayedAnswer, ...] = ()
    total_replayed_ns: int = 0  # every answer's recorded time, each counted once: the replayed part of ``total``

    def replayed_ms(self, span: Span) -> float:
        return self.replayed_ns.get(span.span_id, 0) / 1e6

    def is_replayed(self, span: Span) -> bool:
        """The whole duration of this span comes from the recording."""
        replayed = self.replayed_ns.get(span.span_id, 0)
        return replayed > 0 and replayed >= span.duration_ns


@dataclass(frozen=True)
class _Shift:
    """``delta_ns`` added at ``at_ns`` on the measured clock; ``owner`` is the span it belongs to (or None)."""

    at_ns: int
    delta_ns: int
    owner: str | None
    replayed_ns: int


def virtualize(now: Trace, answers: Iterable[ReplayedAnswer]) -> VirtualTrace:
    """``now`` with each replayed answer's recorded duration in place of the time it took now (see module doc)."""
    answers = sorted(answers, key=lambda a: (a.received_ns, a.recorded_index))
    closed = [s for s in now if s.end_time_unix_nano is not None]
    llm_spans = [s for s in closed if llm_call(s) is not None]
    linked: dict[str, list[ReplayedAnswer]] = {}
    implicit: dict[str | None, list[ReplayedAnswer]] = {}
    for answer in answers:
        span = _enclosing(llm_spans, answer, prefer_messages=True)
        if span is not None:
            linked.setdefault(span.span_id, []).append(answer)
            continue
        host = _enclosing(closed, answer, prefer_messages=False)
        implicit.setdefault(host.span_id if host is not None else None, []).append(answer)

    shifts: list[_Shift] = []
    for span_id, found in linked.items():
        span = now.get(span_id)
        recorded = sum(a.recorded_ns for a in found)
        shifts.append(_Shift(_end(span), recorded - span.duration_ns, span_id, recorded))
    for owner, found in implicit.items():
        for answer in found:
            shifts.append(
                _Shift(answer.answered_ns, answer.recorded_ns - answer.measured_ns, owner, answer.recorded_ns)
            )
    replayed, owned = _by_subtree(now, shifts)
    virtual = _shifted(now, shifts, owned)
    return VirtualTrace(
        trace=virtual,
        replayed_ns=replayed,
        answers={k: tuple(v) for k, v in linked.items()},
        unlinked=tuple(implicit.get(None, ())),
        total_replayed_ns=sum(a.recorded_ns for a in answers),
    )


def retime(trace: Trace, durations_ns: Mapping[str, int]) -> Trace:
    """``trace`` with the spans named in ``durations_ns`` (span id -> ns) lasting that long, by the rules above.

    What the latency check uses when it has timed a statement again: the SQL span takes the fastest timing, and its
    ancestors and the spans after it move with it, as a replayed LLM span's do.
    """
    shifts = [
        _Shift(_end(span), ns - span.duration_ns, span.span_id, 0)
        for span in trace
        if span.span_id in durations_ns and span.end_time_unix_nano is not None
        for ns in [durations_ns[span.span_id]]
    ]
    _, owned = _by_subtree(trace, shifts)
    return _shifted(trace, shifts, owned)


def _shifted(now: Trace, shifts: list[_Shift], owned: Mapping[str, list[_Shift]]) -> Trace:
    """Every span moved by the shifts at or before its start, and grown by the shifts in its own subtree."""
    shifts.sort(key=lambda s: s.at_ns)
    points = [s.at_ns for s in shifts]
    before: list[int] = [0]  # before[i]: sum of the first i shifts' deltas
    for shift in shifts:
        before.append(before[-1] + shift.delta_ns)
    spans: list[Span] = []
    for span in now:
        moved = before[bisect.bisect_right(points, span.start_time_unix_nano)]  # shifts at or before its start
        start = span.start_time_unix_nano + moved
        if span.end_time_unix_nano is None:
            spans.append(dataclasses.replace(span, start_time_unix_nano=start))
            continue
        grown = sum(s.delta_ns for s in owned.get(span.span_id, ()) if s.at_ns > span.start_time_unix_nano)
        end = max(start, start + span.duration_ns + grown)
        spans.append(dataclasses.replace(span, start_time_unix_nano=start, end_time_unix_nano=end))
    return Trace(spans, source=now.source, warn_missing_parents=False)


def _end(span: Span) -> int:
    assert span.end_time_unix_nano is not None
    return span.end_time_unix_nano


def _enclosing(spans: Sequence[Span], answer: ReplayedAnswer, *, prefer_messages: bool) -> Span | None:
    """The span the app made around this request: encloses its window; same messages first, then the tightest."""
    around = [s for s in spans if s.start_time_unix_nano <= answer.received_ns and answer.answered_ns <= _end(s)]
    if len(around) < 2:  # nothing to choose between: the messages (often kilobytes of prompt) need no comparing
        return around[0] if around else None

    def key(span: Span) -> tuple[bool, int]:
        same = prefer_messages and _same_messages(span, answer.messages)
        return (not same, span.duration_ns)

    return min(around, key=key)


def _same_messages(span: Span, messages: Sequence[Message]) -> bool:
    call = llm_call(span)
    if call is None or not messages:
        return False

    def norm(ms: Sequence[Message]) -> list[tuple[str, str]]:
        return [(m.role.strip().lower(), re.sub(r"\s+", " ", m.content).strip()) for m in ms]

    return norm(call.input_messages) == norm(messages)


def _by_subtree(now: Trace, shifts: Sequence[_Shift]) -> tuple[dict[str, int], dict[str, list[_Shift]]]:
    """Per span: the replayed ns inside its subtree, and the shifts that make it grow (its own and its descendants').

    A replaced span that lies inside another replaced span's subtree is not counted twice.
    """
    replayed: dict[str, int] = {}
    owned: dict[str, list[_Shift]] = {}
    for shift in shifts:
        if shift.owner is None:
            continue
        span: Span | None = now.get(shift.owner)
        while span is not None:
            replayed[span.span_id] = replayed.get(span.span_id, 0) + shift.replayed_ns
            owned.setdefault(span.span_id, []).append(shift)
            span = now.parent(span)
    return replayed, owned
