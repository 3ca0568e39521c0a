"""The daemon threads a case's calls run in (``services.case_bounds``): reused, except one a call still holds."""

from __future__ import annotations

import contextvars
import threading

import pytest

from pytest_llmtrace.services.case_bounds import CASE_THREAD, Abandoned, call_within, in_daemon_thread

WHO = contextvars.ContextVar("WHO", default="nobody")


def _thread_of_a_call() -> threading.Thread:
    """The thread a call ran in: the object, not its ident, which the system may give a later thread again."""
    job = in_daemon_thread(threading.current_thread, CASE_THREAD)
    assert job.ended.wait(10)
    assert isinstance(job.value, threading.Thread)
    return job.value


def test_a_returned_call_leaves_its_thread_to_the_next_and_an_unreturned_one_keeps_it() -> None:
    # idle again once each call returned: reused, not started anew. At most one other thread may come in between,
    # an earlier test's abandoned call going idle meanwhile; a thread per call would make twenty.
    assert len({_thread_of_a_call() for _ in range(20)}) <= 2
    holding: list[threading.Thread] = []
    release = threading.Event()

    def held() -> None:
        holding.append(threading.current_thread())
        release.wait(30)

    stuck = in_daemon_thread(held, CASE_THREAD)
    try:
        while not holding:
            threading.Event().wait(0.01)
        assert _thread_of_a_call() is not holding[0]  # a call still running keeps its thread to itself
    finally:
        release.set()
    assert stuck.ended.wait(10)


def test_call_within_runs_in_the_callers_context_and_raises_what_the_call_raised() -> None:
    WHO.set("the test")
    never_fired = threading.Event()
    assert call_within(WHO.get, lambda: None, never_fired) == "the test"

    def fails() -> None:
        raise KeyError("from the call")

    with pytest.raises(KeyError, match="from the call"):
        call_within(fails, lambda: None, never_fired)


def test_a_call_past_its_deadline_is_abandoned_and_its_thread_is_not_reused_while_it_runs() -> None:
    release = threading.Event()
    acted = threading.Event()
    acted.set()  # the watchdog's work is done: only the grace is left
    with pytest.raises(Abandoned):
        call_within(lambda: release.wait(30), lambda: 0.0, acted)
    running = [t for t in threading.enumerate() if t.name == CASE_THREAD]
    release.set()
    assert running, "the abandoned call's thread still runs it"


# -- the memory watch --------------------------------------------------------------------------------------------------


def test_a_memory_watch_trips_once_past_its_limit_and_never_after_its_case() -> None:
    """One sampler thread serves every case's watch: past the limit ``exceeded`` is called once, with the growth; a
    watch that has ended is never sampled again, however its end falls between two samples."""
    import time

    from pytest_llmtrace.services.memory_watch import MEMORY_SAMPLE_S, MemoryWatch

    calls: list[tuple[float, float]] = []
    with MemoryWatch(-1.0, lambda grown, peak: calls.append((grown, peak))).running() as watch:
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:  # the first sample comes after MEMORY_SAMPLE_S
            time.sleep(MEMORY_SAMPLE_S)
        time.sleep(5 * MEMORY_SAMPLE_S)  # more samples: still one call
    assert len(calls) == 1
    assert watch.tripped
    assert calls[0][1] == watch.peak_mb >= watch.start_mb

    late: list[int] = []
    for i in range(90):  # watches that end at every point of the sampler's cycle
        active = [True]

        def exceeded(grown: float, peak: float, active: list[bool] = active, i: int = i) -> None:
            if not active[0]:
                late.append(i)

        with MemoryWatch(-1.0, exceeded).running():
            time.sleep(MEMORY_SAMPLE_S * (i % 3) / 2)
        active[0] = False
    time.sleep(3 * MEMORY_SAMPLE_S)
    assert late == []
    assert sum(1 for t in threading.enumerate() if t.name == "llmtrace-memory") == 1
