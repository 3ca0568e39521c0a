"""The cost check's rule and the re-timed SQL's findings, on given numbers: what decides, what is kept, what shows."""

from __future__ import annotations

from pytest_llmtrace.checks.cost import FLOOR_BLOCKS, SqlCost, check_cost
from pytest_llmtrace.checks.outcome import CheckResult, Measurement
from pytest_llmtrace.checks.report import format_table
from pytest_llmtrace.checks.runner import UNSTABLE_SPREAD, _with_reruns


def test_buffers_decide_when_both_statements_ran() -> None:
    golden, now = SqlCost(8.3, 4), SqlCost(120.0, 4)  # a planner estimate that grew, the same work done
    check = check_cost(now, golden, tolerance=2.0)

    assert check.status == "passed"
    blocks, planner = check.measurements
    assert (blocks.label, blocks.golden, blocks.now, blocks.status) == ("hit+read blocks", 4, 4, "passed")
    assert (planner.label, planner.status, planner.reason) == ("planner cost", "skipped", "buffers decide")


def test_more_than_tolerance_times_the_golden_work_fails() -> None:
    check = check_cost(SqlCost(900.0, 201), SqlCost(400.0, 100), tolerance=2.0)

    assert check.status == "failed"
    assert check.reason == "the SQL now does more work: hit+read blocks"
    assert format_table([m for m in check.measurements if m.status == "failed"]).splitlines() == [
        "metric          | golden | now | limit",
        "hit+read blocks |    100 | 201 | <= 2x golden (200)",
    ]
    assert check_cost(SqlCost(900.0, 200), SqlCost(400.0, 100), tolerance=2.0).status == "passed"


def test_a_few_blocks_more_are_never_a_regression() -> None:
    assert check_cost(SqlCost(9.0, 2 + FLOOR_BLOCKS), SqlCost(8.3, 2), tolerance=2.0).status == "passed"
    failed = check_cost(SqlCost(9.0, 3 + FLOOR_BLOCKS), SqlCost(8.3, 2), tolerance=2.0)
    assert failed.status == "failed"
    assert failed.measurements[0].rule == f"<= golden + {FLOOR_BLOCKS} ({2 + FLOOR_BLOCKS})"


def test_the_planner_decides_when_a_statement_could_not_run() -> None:
    now = SqlCost(250.0, None, "canceling statement due to statement timeout")
    check = check_cost(now, SqlCost(100.0, 40), tolerance=2.0)

    assert check.status == "failed"
    assert [(m.label, m.now, m.golden, m.status) for m in check.measurements] == [
        ("planner cost", 250.0, 100.0, "failed")
    ]


def test_without_a_plan_the_check_is_skipped_saying_why() -> None:
    check = check_cost(SqlCost(None, None, 'relation "invoices" does not exist'), SqlCost(None, None), tolerance=2.0)
    assert (check.status, check.reason) == ("skipped", 'no cost to compare: relation "invoices" does not exist')
    assert check_cost(None, None, tolerance=2.0).status == "skipped"


def _sql(status: str, basis: str = "relative") -> Measurement:
    return Measurement("SQL", "ms", 900.0, 5.0, basis, 205.0, "<= golden + 200 ms (205.0 ms)", status)  # type: ignore[arg-type]


def test_re_timed_sql_keeps_every_timing_and_names_what_it_found() -> None:
    steady = _with_reruns(CheckResult("latency", "failed", "", (_sql("failed"),)), (2000.0, 900.0, 910.0, 905.0))
    noisy = _with_reruns(CheckResult("latency", "failed", "", (_sql("failed"),)), (2000.0, 900.0, 2000.0, 950.0))
    recovered = _with_reruns(CheckResult("latency", "passed", "", (_sql("passed"),)), (2000.0, 3.0, 4.0, 9.0))

    assert steady.measurements[0].samples == (2000.0, 900.0, 910.0, 905.0)
    assert steady.measurements[0].finding == "regressed"
    assert UNSTABLE_SPREAD < 2000.0 / 900.0
    assert noisy.measurements[0].finding == "unstable"
    assert recovered.measurements[0].finding == ""
    assert format_table(steady.measurements).splitlines()[1] == (
        "SQL ms |    5.0 | 900.0 (fastest of 4, regressed) | <= golden + 200 ms (205.0 ms)"
    )
    absolute = _with_reruns(CheckResult("latency", "failed", "", (_sql("failed", "absolute"),)), (9.0, 8.0, 20.0))
    assert absolute.measurements[0].finding == ""  # a budget is a budget: no trend to report


def test_a_measurement_with_timings_survives_the_results_file() -> None:
    measured = _with_reruns(CheckResult("latency", "failed", "", (_sql("failed"),)), (2000.0, 900.0, 910.0))
    again = CheckResult.from_dict(measured.to_dict())
    assert again == measured
