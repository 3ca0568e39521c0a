"""Virtual time: replayed answers put their recorded duration into the trace now, exactly, and nothing else changes.

Traces are built span by span with round timestamps (in ms), so every expected number is exact.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_llmtrace.trace.model import Span, Trace
from pytest_llmtrace.trace.otlp import read_trace
from pytest_llmtrace.trace.views import Message
from pytest_llmtrace.trace.virtual import ReplayedAnswer, virtualize

MS = 1_000_000
GOLDEN = Path(__file__).resolve().parents[2] / "golden_traces"
QUESTION = (Message("system", "Answer with SQL."), Message("user", "How many customers?"))
OTHER = (Message("system", "Answer with SQL."), Message("user", "How many orders?"))


def span(
    span_id: str,
    start_ms: float,
    end_ms: float,
    *,
    parent: str | None = None,
    kind: str = "CHAIN",
    messages: tuple[Message, ...] = (),
) -> Span:
    attributes: dict[str, str] = {"openinference.span.kind": kind}
    for i, message in enumerate(messages):
        attributes[f"llm.input_messages.{i}.message.role"] = message.role
        attributes[f"llm.input_messages.{i}.message.content"] = message.content
    if kind == "UNKNOWN":
        attributes = {"db.query.text": "SELECT 1"}
    return Span(
        trace_id="1" * 32,
        span_id=span_id.ljust(16, "0"),
        parent_span_id=parent.ljust(16, "0") if parent else None,
        name=span_id,
        start_time_unix_nano=int(start_ms * MS),
        end_time_unix_nano=int(end_ms * MS),
        attributes=attributes,
    )


def answer(
    received_ms: float, answered_ms: float, recorded_ms: float, messages: tuple[Message, ...] = QUESTION
) -> ReplayedAnswer:
    return ReplayedAnswer(int(received_ms * MS), int(answered_ms * MS), int(recorded_ms * MS), 0, messages)


def durations(trace: Trace) -> dict[str, float]:
    return {s.name: s.duration_ns / MS for s in trace}


def starts(trace: Trace) -> dict[str, float]:
    return {s.name: s.start_time_unix_nano / MS for s in trace}


def gateway_trace() -> Trace:
    """The reference gateway's shape: a CHAIN root, an LLM span, then a SQL span."""
    return Trace(
        [
            span("root", 0, 100),
            span("llm", 10, 20, parent="root", kind="LLM", messages=QUESTION),
            span("sql", 30, 80, parent="root", kind="UNKNOWN"),
        ]
    )


def test_the_llm_span_lasts_exactly_the_recorded_duration_and_the_rest_stays_measured() -> None:
    virtual = virtualize(gateway_trace(), [answer(12, 18, 2313)])

    assert durations(virtual.trace) == {"root": 100 + 2313 - 10, "llm": 2313.0, "sql": 50.0}
    assert starts(virtual.trace) == {"root": 0.0, "llm": 10.0, "sql": 30 + 2313 - 10}
    llm = virtual.trace.find("llm")[0]
    root = virtual.trace.root
    assert virtual.is_replayed(llm)
    assert virtual.replayed_ms(llm) == 2313.0
    assert virtual.replayed_ms(root) == 2313.0  # the rest of the root (90 ms) is measured
    assert not virtual.is_replayed(root)
    assert virtual.replayed_ms(virtual.trace.find("sql")[0]) == 0.0
    assert virtual.total_replayed_ns == 2313 * MS
    assert virtual.trace.duration_ms == 100 + 2313 - 10


def test_without_answers_the_trace_is_unchanged() -> None:
    now = gateway_trace()
    virtual = virtualize(now, [])

    assert virtual.trace == now
    assert virtual.replayed_ns == {}


def test_a_recording_shorter_than_the_measured_call_shrinks_the_chain() -> None:
    virtual = virtualize(gateway_trace(), [answer(12, 18, 4)])

    assert durations(virtual.trace) == {"root": 94.0, "llm": 4.0, "sql": 50.0}


def test_a_slower_sql_now_is_still_seen_through_the_replayed_llm_time() -> None:
    fast = virtualize(gateway_trace(), [answer(12, 18, 2313)])
    slow_sql = Trace(
        [
            span("root", 0, 400),
            span("llm", 10, 20, parent="root", kind="LLM", messages=QUESTION),
            span("sql", 30, 380, parent="root", kind="UNKNOWN"),
        ]
    )
    slow = virtualize(slow_sql, [answer(12, 18, 2313)])

    assert slow.trace.root.duration_ns - fast.trace.root.duration_ns == 300 * MS
    assert durations(slow.trace)["llm"] == durations(fast.trace)["llm"] == 2313.0


def test_two_answers_inside_one_llm_span_count_both_recorded_durations() -> None:
    """A client that retries inside one instrumented call: the span stands for both recorded calls."""
    virtual = virtualize(gateway_trace(), [answer(11, 12, 300), answer(15, 17, 200)])

    assert durations(virtual.trace)["llm"] == 500.0
    assert [a.recorded_ns // MS for a in virtual.answers["llm".ljust(16, "0")]] == [300, 200]


def test_concurrent_llm_spans_get_the_answer_to_their_own_messages() -> None:
    """Two calls in two threads, whose windows both enclose each answer: the messages decide, not the order."""
    now = Trace(
        [
            span("root", 0, 100),
            span("first", 10, 50, parent="root", kind="LLM", messages=QUESTION),
            span("second", 11, 49, parent="root", kind="LLM", messages=OTHER),
        ]
    )
    # the answer to the first span's question arrives inside the second span's window too, and the second is tighter
    virtual = virtualize(now, [answer(20, 30, 700, QUESTION), answer(21, 31, 900, OTHER)])

    assert durations(virtual.trace)["first"] == 700.0
    assert durations(virtual.trace)["second"] == 900.0
    # the root encloses both: it grows by both differences, as a parent waiting on two threads in a row would
    assert durations(virtual.trace)["root"] == 100 + (700 - 40) + (900 - 38)


def test_a_concurrent_sibling_keeps_its_measured_duration() -> None:
    now = Trace(
        [
            span("root", 0, 100),
            span("llm", 10, 20, parent="root", kind="LLM", messages=QUESTION),
            span("sql", 5, 60, parent="root", kind="UNKNOWN"),  # ran in another thread, across the LLM call
        ]
    )
    virtual = virtualize(now, [answer(12, 18, 1000)])

    assert durations(virtual.trace)["sql"] == 55.0
    assert starts(virtual.trace)["sql"] == 5.0


def test_the_innermost_llm_span_is_replaced_and_an_llm_wrapper_grows_with_it() -> None:
    """LangChain-like: an LLM chain span around the client's LLM span, both with the same messages."""
    now = Trace(
        [
            span("root", 0, 100),
            span("wrapper", 5, 40, parent="root", kind="LLM", messages=QUESTION),
            span("client", 10, 20, parent="wrapper", kind="LLM", messages=QUESTION),
        ]
    )
    virtual = virtualize(now, [answer(12, 18, 800)])

    assert durations(virtual.trace) == {"root": 890.0, "wrapper": 825.0, "client": 800.0}
    wrapper = virtual.trace.find("wrapper")[0]
    assert virtual.replayed_ms(wrapper) == 800.0
    assert not virtual.is_replayed(wrapper)  # 25 ms of it are the wrapper's own, measured


def test_an_uninstrumented_call_grows_the_span_around_it_by_the_recorded_wait() -> None:
    now = Trace([span("root", 0, 100), span("sql", 30, 80, parent="root", kind="UNKNOWN")])
    virtual = virtualize(now, [answer(12, 18, 500)])

    assert durations(virtual.trace) == {"root": 100 + 500 - 6, "sql": 50.0}
    assert starts(virtual.trace)["sql"] == 30 + 494
    assert virtual.replayed_ms(virtual.trace.root) == 500.0
    assert virtual.answers == {}


def test_an_answer_outside_every_span_only_moves_the_spans_after_it() -> None:
    now = Trace([span("before", 0, 10), span("after", 30, 40)])
    virtual = virtualize(now, [answer(12, 18, 500)])

    assert durations(virtual.trace) == {"before": 10.0, "after": 10.0}
    assert starts(virtual.trace)["after"] == 30 + 494
    assert len(virtual.unlinked) == 1
    assert virtual.trace.duration_ms == 40 + 494


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.stem)
def test_a_golden_trace_with_its_own_calls_as_answers_is_unchanged(path: Path) -> None:
    """Answers at a golden trace's own LLM windows, with its own durations: every span keeps its times exactly."""
    golden = read_trace(path)
    answers = [
        ReplayedAnswer(c.span.start_time_unix_nano, c.span.end_time_unix_nano or 0, c.span.duration_ns, i)
        for i, c in enumerate(golden.llm_calls)
    ]
    virtual = virtualize(golden, answers)

    assert answers
    assert [s.start_time_unix_nano for s in virtual.trace] == [s.start_time_unix_nano for s in golden]
    assert [s.end_time_unix_nano for s in virtual.trace] == [s.end_time_unix_nano for s in golden]
    assert all(virtual.is_replayed(c.span) for c in virtual.trace.llm_calls)
