"""The re-timing rule: re-runs are for a busy machine's noise, so a SQL time far past its limit is judged at once.

Counted in executions of a stand-in ``run``, not in seconds: the rule decides how often the statement runs and under
which cut-off, and those numbers do not depend on how busy the machine is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from pytest_llmtrace.checks.runner import RETRY_NOISE, retimings


def _runs(times: Iterator[float | None], cutoffs: list[int]) -> Callable[[int], float | None]:
    def run(timeout_ms: int) -> float | None:
        cutoffs.append(timeout_ms)
        return next(times)

    return run


def test_a_time_within_the_noise_is_measured_again_under_a_cut_off_of_twice_the_limit() -> None:
    cutoffs: list[int] = []
    samples = retimings(300.0, 205.0, 3, 5000, _runs(iter([3.0, 4.0, 2.5]), cutoffs))

    assert samples == (300.0, 3.0, 4.0, 2.5)
    assert cutoffs == [410, 410, 410]  # RETRY_NOISE x the limit, well under the 5000 ms statement timeout


def test_a_time_past_twice_the_limit_is_judged_at_once() -> None:
    cutoffs: list[int] = []
    assert retimings(RETRY_NOISE * 205.0 + 0.1, 205.0, 3, 5000, _runs(iter([]), cutoffs)) == (410.1,)
    assert cutoffs == []


def test_at_twice_the_limit_exactly_it_is_still_noise() -> None:
    cutoffs: list[int] = []
    assert retimings(410.0, 205.0, 1, 5000, _runs(iter([200.0]), cutoffs)) == (410.0, 200.0)
    assert len(cutoffs) == 1


def test_a_re_run_that_does_not_finish_within_the_cut_off_ends_the_re_runs() -> None:
    cutoffs: list[int] = []
    assert retimings(300.0, 205.0, 3, 5000, _runs(iter([250.0, None, 1.0]), cutoffs)) == (300.0, 250.0)
    assert len(cutoffs) == 2


def test_the_statement_timeout_caps_the_cut_off_when_it_is_sooner() -> None:
    cutoffs: list[int] = []
    retimings(3000.0, 2000.0, 2, 1000, _runs(iter([900.0, 950.0]), cutoffs))
    assert cutoffs == [1000, 1000]


def test_no_retries_means_no_re_runs() -> None:
    cutoffs: list[int] = []
    assert retimings(300.0, 205.0, 0, 5000, _runs(iter([]), cutoffs)) == (300.0,)
    assert cutoffs == []
