"""Outcomes as data (JSON round trip) and the failure text made from them."""

from __future__ import annotations

import json

import pytest

from pytest_llmtrace.checks.execute import check_sql, execute_untrusted
from pytest_llmtrace.checks.outcome import (
    SCHEMA_VERSION,
    CaseOutcome,
    CheckResult,
    Measurement,
    ReplayMiss,
    SqlOutcome,
    Timings,
)
from pytest_llmtrace.checks.report import failure_message

SQL = "SELECT tier, count(*) FROM customers GROUP BY tier"


def full_outcome() -> CaseOutcome:
    latency = Measurement("SQL", "ms", 2084.31, 7.7, "relative", 207.7, "<= golden + 200 ms (207.7 ms)", "failed")
    skipped = Measurement(
        "prompt", "tokens", 300, 0, "relative", None, "within +-10% of golden", "skipped", "replayed",
        reason="the golden trace recorded no token usage",
    )  # fmt: skip
    return CaseOutcome(
        case_id="customers_by_tier",
        mode="replay",
        file="golden_traces/customers_by_tier.json",
        checks=(
            CheckResult("sql", "passed"),
            CheckResult("results", "failed", "the rows differ", details=("missing:    ('SMB', 181)",)),
            CheckResult("latency", "failed", "out of limits: SQL ms", (latency,)),
            CheckResult("tokens", "skipped", "the golden trace recorded no token usage", (skipped,)),
        ),
        app_error=None,
        replay_misses=(ReplayMiss("call_never_made", "the app did not call m with the recorded prompt (2 messages)"),),
        sql=SQL + " ORDER BY 1",
        golden_sql=SQL,
        result=SqlOutcome(True, ("tier", "count"), (("SMB", 180), ("Tags", (1, (2, 3)))), 2, False, None, None, 3.5),
        tokens={"prompt": 300, "completion": 40, "total": 340},
        golden_tokens={"prompt": 0, "completion": 0, "total": 0},
        durations_ms={"total": 2100.0, "LLM": 10.0, "SQL": 2084.31},
        golden_durations_ms={"total": 20.0, "LLM": 10.0, "SQL": 7.7},
        timings=Timings(wall_ms=2200.0, app_ms=2150.0, checks_ms=50.0),
    )


def test_a_case_outcome_round_trips_through_json() -> None:
    outcome = full_outcome()
    data = json.loads(json.dumps(outcome.to_dict(), allow_nan=False))
    assert data["schema"] == SCHEMA_VERSION
    assert data["passed"] is False
    assert data["checks"][2]["measurements"][0]["source"] == "measured"
    assert CaseOutcome.from_dict(data) == outcome
    with pytest.raises(ValueError, match="schema"):
        CaseOutcome.from_dict({**data, "schema": 999})


def test_passed_means_no_app_error_no_replay_miss_and_no_failed_check() -> None:
    assert CaseOutcome("c", "test", checks=(CheckResult("sql", "passed"), CheckResult("tokens", "skipped"))).passed
    assert not CaseOutcome("c", "test", app_error="ValueError: boom").passed
    assert not CaseOutcome("c", "test", replay_misses=(ReplayMiss("prompt_changed", "x"),)).passed
    assert not CaseOutcome("c", "test", checks=(CheckResult("sql", "failed", "no"),)).passed


def test_the_failure_message_is_pinned() -> None:
    assert failure_message(full_outcome(), title="golden case customers_by_tier") == (
        "golden case customers_by_tier: 3 checks failed\n"
        "\n"
        "[replay] recorded call never made: the app did not call m with the recorded prompt (2 messages)\n"
        "\n"
        "[results] the rows differ\n"
        "    missing:    ('SMB', 181)\n"
        "\n"
        "    --- golden SQL\n"
        "    +++ SQL now\n"
        "    @@ -1 +1 @@\n"
        "    -SELECT tier, count(*) FROM customers GROUP BY tier\n"
        "    +SELECT tier, count(*) FROM customers GROUP BY tier ORDER BY 1\n"
        "\n"
        "[latency]\n"
        "    metric | golden | now    | limit\n"
        "    SQL ms |    7.7 | 2084.3 | <= golden + 200 ms (207.7 ms)"
    )


def test_a_connection_failure_is_an_sql_outcome_not_a_traceback() -> None:
    result = execute_untrusted("postgresql://llmtrace_reader@127.0.0.1:9/nowhere", "SELECT 1", 1000)
    assert not result.ok
    assert result.error is not None
    assert result.error.startswith("cannot connect to the session database as the read-only role: ")
    assert result.sqlstate is None
    check = check_sql("SELECT 1", result, golden_sql=None, against_golden=False)
    message = failure_message(CaseOutcome("t", "test", checks=(check,), sql="SELECT 1", result=result))
    assert message.startswith("[sql] the SQL does not execute: cannot connect to the session database")
    assert "SQLSTATE" not in message  # there is none to show
    assert message.endswith("\n    SELECT 1")


def test_the_sql_check_without_sql_fails_only_when_sql_was_expected() -> None:
    assert check_sql(None, None, golden_sql=None, against_golden=False).reason == (
        "the trace has no SQL span and no model answer"
    )
    assert check_sql(None, None, golden_sql=SQL, against_golden=True).reason == (
        "the app ran no SQL now (the golden trace did)"
    )
    assert check_sql(None, None, golden_sql=None, against_golden=True).status == "skipped"


def test_the_kept_outcome_holds_the_first_rows_within_the_byte_cap_and_counts_the_rest() -> None:
    many = SqlOutcome(True, ("n",), tuple((i,) for i in range(120)), 120, False, None, None, 1.0)
    kept = many.kept()
    assert kept.rows == many.rows[: SqlOutcome.REPORT_ROWS]
    assert (kept.row_count, kept.rows_omitted) == (120, 120 - SqlOutcome.REPORT_ROWS)
    assert SqlOutcome.from_dict(json.loads(json.dumps(kept.to_dict()))) == kept
    wide = SqlOutcome(True, ("t",), (("a",), ("x" * SqlOutcome.REPORT_BYTES,), ("b",)), 3, False, None, None, 1.0)
    assert (wide.kept().rows, wide.kept().rows_omitted) == ((("a",),), 2)  # a row past the byte cap ends the kept ones
    few = SqlOutcome(True, ("n",), ((1,),), 1, False, None, None, 1.0)
    assert few.kept() is few
