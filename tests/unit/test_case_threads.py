"""The daemon threads a case's calls run in (``services.case_bounds``): reused, except one a call still holds."""

from __future__ import annotations

import contextvars
import threading

import pytest

from pytest_llmtrace.services.case_bounds import CASE_THREAD, Abandoned, call_within, in_daemon_thread

WHO = contextvars.ContextVar("WHO", default="nobody")


def _ident_of_a_call() -> int:
    job = in_daemon_thread(threading.get_ident, CASE_THREAD)
    assert job.ended.wait(10)
    return int(job.value)


def test_a_returned_call_leaves_its_thread_to_the_next_and_an_unreturned_one_keeps_it() -> None:
    first = _ident_of_a_call()
    assert _ident_of_a_call() == first  # idle again once the call returned: reused, not started anew
    holding: list[int] = []
    release = threading.Event()

    def held() -> None:
        holding.append(threading.get_ident())
        release.wait(30)

    stuck = in_daemon_thread(held, CASE_THREAD)
    try:
        while not holding:
            threading.Event().wait(0.01)
        assert _ident_of_a_call() != holding[0]  # a call still running keeps its thread to itself
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
