"""The gate over hand-made cases: rates, percentiles, token growth, regressions, fail-closed counting."""

from __future__ import annotations

import math

import pytest

from pytest_llmtrace.checks.outcome import CaseOutcome, CheckResult
from pytest_llmtrace.results import gate
from pytest_llmtrace.results.case_record import CaseRecord, as_case


def _case(
    case_id: str,
    *,
    sql: str = "passed",
    results: str = "passed",
    app_error: str | None = None,
    total_ms: float | None = 100.0,
    tokens: int = 100,
    golden_tokens: int = 100,
) -> CaseRecord:
    outcome = CaseOutcome(
        case_id=case_id,
        mode="replay",
        checks=(CheckResult("sql", sql), CheckResult("results", results)),  # type: ignore[arg-type]
        app_error=app_error,
        tokens={"total": tokens},
        golden_tokens={"total": golden_tokens},
        durations_ms={} if total_ms is None else {"total": total_ms, "SQL": total_ms / 10},
    )
    data = outcome.to_dict()
    data["verdict"] = "passed" if outcome.passed else "failed"
    return as_case(data)


def _one(expr: str, cases: list[CaseRecord], baseline: list[CaseRecord] | None = None) -> gate.GateResult:
    (result,) = gate.evaluate([gate.parse(expr)], cases, baseline)
    return result


def test_parse_reads_metric_kind_operator_and_number() -> None:
    assert gate.parse("latency_p95_ms[SQL] <= 500") == gate.Rule("latency_p95_ms", "SQL", "<=", 500.0)
    assert gate.parse("  cases==4 ") == gate.Rule("cases", None, "==", 4.0)
    assert str(gate.parse("sql_success_rate >= 0.95")) == "sql_success_rate >= 0.95"


@pytest.mark.parametrize(
    ("expr", "words"),
    [
        ("sql_success_rate > 0.95", "e.g. 'sql_success_rate >= 0.95'"),
        ("sql_sucess_rate >= 0.95", "did you mean 'sql_success_rate'?"),
        ("cases[SQL] >= 1", "only latency metrics take [KIND]"),
        ("sql_success_rate >= high", "METRIC OP NUMBER"),
    ],
)
def test_a_malformed_expression_says_why_and_shows_a_valid_one(expr: str, words: str) -> None:
    with pytest.raises(gate.GateError) as info:
        gate.parse(expr)
    assert words in str(info.value)


def test_rates_are_fail_closed_and_name_the_failing_cases() -> None:
    cases = [
        _case("a"),
        _case("b", sql="failed"),
        _case("c", sql="skipped"),  # a skipped check is not a success
        _case("d", app_error="RuntimeError: boom"),  # an app error fails every rate
    ]
    result = _one("sql_success_rate >= 0.95", cases)
    assert result.value == 0.25
    assert not result.passed
    assert result.cases == ("b", "c", "d")
    assert gate.format_result(result) == "llmtrace gate: FAILED sql_success_rate 0.25 < 0.95 (3 cases: b, c, d)"
    matched = _one("result_match_rate >= 0.5", cases)  # only d's results check did not pass
    assert (matched.value, matched.passed) == (0.75, True)
    assert gate.format_result(matched) == "llmtrace gate: passed result_match_rate 0.75 >= 0.5 (+0.25)"


def test_no_cases_fails_a_rate_gate() -> None:
    assert not _one("sql_success_rate >= 0.5", []).passed
    assert _one("cases == 0", []).passed


def test_latency_percentiles_use_nearest_rank_and_a_missing_value_is_infinitely_slow() -> None:
    cases = [_case(str(i), total_ms=float(i * 10)) for i in range(1, 21)]  # 10 .. 200 ms
    assert _one("latency_p50_ms <= 100", cases).value == 100.0
    assert _one("latency_p95_ms <= 190", cases).value == 190.0
    assert _one("latency_p95_ms[SQL] <= 19", cases).value == 19.0
    cases[0] = _case("1", total_ms=None)
    slow = _one("latency_p95_ms <= 195", cases)
    assert slow.value == 200.0
    assert not slow.passed
    assert slow.cases == ("1", "20")
    cases[1] = _case("2", total_ms=None)
    assert math.isinf(_one("latency_p95_ms <= 195", cases).value)
    assert gate.format_result(_one("latency_p95_ms <= 195", cases)).startswith(
        "llmtrace gate: FAILED latency_p95_ms inf > 195 (3 cases: 1, 2, 20)"
    )


def test_token_growth_is_total_now_over_total_golden() -> None:
    cases = [_case("a", tokens=110, golden_tokens=100), _case("b", tokens=300, golden_tokens=300)]
    result = _one("token_growth <= 0.02", cases)
    assert result.value == pytest.approx(0.025)
    assert not result.passed
    assert result.cases == ("a",)
    assert _one("token_growth <= 0.03", cases).passed


def test_regressions_are_cases_that_passed_in_the_baseline_and_fail_now() -> None:
    baseline = [_case("a"), _case("b"), _case("c", sql="failed")]
    now = [_case("a"), _case("b", results="failed"), _case("c", sql="failed"), _case("new", sql="failed")]
    result = _one("regressions == 0", now, baseline)
    assert (result.value, result.cases) == (1.0, ("b",))
    assert gate.format_result(result) == "llmtrace gate: FAILED regressions 1 != 0 (1 case: b)"
    with pytest.raises(gate.GateError, match="needs a baseline"):
        _one("regressions == 0", now)
