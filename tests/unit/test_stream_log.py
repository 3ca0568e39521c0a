"""The front's log of answer timings: a case reads its own, and what came before it is forgotten."""

from __future__ import annotations

import time

from pytest_llmtrace.modelapi import stream_log
from pytest_llmtrace.modelapi.stream_log import StreamLog
from pytest_llmtrace.trace.stream_timing import FrontTiming


def _cut() -> int:
    """A time on the log's clock after every timing added so far and no later than any added from now on."""
    now = time.time_ns()
    while (later := time.time_ns()) == now:
        pass
    return later


def _timing(received_ns: int) -> FrontTiming:
    return FrontTiming(received_ns=received_ns, first_ns=received_ns + 1, done_ns=received_ns + 2, chunk_ns=(1, 2, 3))


def test_forget_before_drops_what_was_added_earlier_and_keeps_the_rest() -> None:
    log = StreamLog()
    log.add(_timing(time.time_ns()))
    log.add(_timing(time.time_ns()))
    cut = _cut()
    later = _timing(time.time_ns())
    log.add(later)
    assert len(log.since(0)) == 3
    log.forget_before(cut)
    assert log.since(0) == [later]
    log.forget_before(cut)  # again: nothing more goes
    assert log.since(0) == [later]


def test_the_module_function_trims_every_live_front_and_recent_reads_what_is_left() -> None:
    first, second = StreamLog(), StreamLog()
    start = time.time_ns()
    first.add(_timing(start))
    second.add(_timing(start))
    cut = _cut()
    kept = _timing(time.time_ns())
    second.add(kept)
    stream_log.forget_before(cut)
    assert first.since(0) == []
    assert second.since(0) == [kept]
    assert kept in stream_log.recent(start)
