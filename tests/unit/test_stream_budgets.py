"""TTFT, tokens/s and cost read from every convention that records them; budgets, prices and gate metrics on them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytest

from pytest_llmtrace.checks.budgets import check_latency, latencies_ms
from pytest_llmtrace.checks.options import CheckOptions
from pytest_llmtrace.checks.outcome import CaseOutcome, CheckResult
from pytest_llmtrace.checks.usage import PriceError, call_usage, trace_usage, usage_summary, with_cost
from pytest_llmtrace.results import gate, llm_gate
from pytest_llmtrace.results.case_record import CaseRecord, as_case
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.span import AttrValue, Span, SpanEvent
from pytest_llmtrace.trace.stream_timing import FrontTiming, stream_timing, with_front_timings
from pytest_llmtrace.trace.views import llm_call

START = 1_800_000_000_000_000_000  # ns
MS = 1_000_000


def llm_span(
    span_id: str = "a1",
    *,
    ms: float = 1000.0,
    events: tuple[SpanEvent, ...] = (),
    attrs: Mapping[str, AttrValue] | None = None,
) -> Span:
    attributes: dict[str, AttrValue] = {
        "openinference.span.kind": "LLM",
        "llm.model_name": "qwen-sql-prod",
        "llm.token_count.prompt": 300,
        "llm.token_count.completion": 41,
        **(attrs or {}),
    }
    return Span("t" * 32, span_id, None, "chat", START, START + int(ms * MS), attributes, events=events)


def ttft_of(span: Span) -> float | None:
    timing = stream_timing(span, 41)
    return None if timing is None else timing.ttft_ms


# -- reading TTFT where each convention records it ---------------------------------------------------------------------


def test_ttft_from_the_genai_attribute_langfuse_langsmith_and_first_token_events() -> None:
    assert ttft_of(llm_span(attrs={"gen_ai.server.time_to_first_token": 0.25})) == pytest.approx(250.0)
    at = 1_800_000_000 * 10**9
    shifted = Span("t" * 32, "c", None, "gen", at, at + 10**9, {"first_token_time": at / 1e9 + 0.4})
    assert ttft_of(shifted) == pytest.approx(400.0, abs=0.01)
    for name in ("First Token Stream Event", "first_token_time", "llm.content.completion.chunk", "new_token"):
        marked = llm_span(events=(SpanEvent(name, START + 120 * MS), SpanEvent(name, START + 300 * MS)))
        assert ttft_of(marked) == pytest.approx(120.0), name
    assert ttft_of(llm_span()) is None  # nothing recorded: no TTFT, never 0


def test_langfuse_completion_start_time_is_an_iso_time_from_the_span_start() -> None:
    start = 1_768_464_000 * 10**9  # 2026-01-15T08:00:00Z
    attrs: dict[str, AttrValue] = {"langfuse.observation.completion_start_time": '"2026-01-15T08:00:00.300000Z"'}
    span = Span("t" * 32, "b", None, "generation", start, start + 10**9, attrs)
    assert ttft_of(span) == pytest.approx(300.0, abs=0.01)


def test_tokens_per_second_is_completion_tokens_over_the_time_after_the_first_token() -> None:
    offsets = (200.0, 300.0, 400.0, 600.0)
    timing = stream_timing(
        llm_span(attrs={"gen_ai.server.time_to_first_token": 0.2, "llmtrace.stream.chunk_offsets_ms": offsets}), 41
    )
    assert timing is not None
    assert timing.tokens_per_s == pytest.approx(40 / 0.4)  # 41 tokens, the first at 200 ms, the last at 600 ms
    assert timing.gap_p95_ms == pytest.approx(200.0)
    tpot = stream_timing(
        llm_span(attrs={"gen_ai.server.time_to_first_token": 0.2, "gen_ai.server.time_per_output_token": 0.02})
    )
    assert tpot is not None
    assert tpot.tokens_per_s == pytest.approx(50.0)


def test_the_front_timing_goes_on_the_span_around_its_request_from_the_request_start() -> None:
    outer = Span("t" * 32, "r", None, "request", START, START + 2000 * MS, {"openinference.span.kind": "CHAIN"})
    inner = Span("t" * 32, "l", "r", "chat", START + 10 * MS, START + 1500 * MS, dict(llm_span().attributes))
    live = FrontTiming(
        START + 20 * MS, START + 320 * MS, START + 1400 * MS, chunk_ns=(START + 320 * MS, START + 1400 * MS)
    )
    (_, timed) = with_front_timings(Trace([outer, inner]), [live])
    assert ttft_of(timed) == pytest.approx(300.0)  # from the request (20 ms), not the span (10 ms)
    replayed = FrontTiming(START + 20 * MS, START + 21 * MS, START + 22 * MS, recorded_ttft_ns=700 * MS)
    (_, again) = with_front_timings(Trace([outer, inner]), [replayed])
    timing = stream_timing(again, 41)
    assert timing is not None
    assert timing.ttft_ms == pytest.approx(700.0)
    assert timing.replayed_ms == pytest.approx(700.0)


def test_a_slower_first_chunk_in_the_app_is_measured_on_top_of_the_recorded_ttft() -> None:
    """The app marks its first token 250 ms after the front sent it: that is the app's own path, measured."""
    mark = SpanEvent("First Token Stream Event", START + 280 * MS)
    span = Span("t" * 32, "l", None, "chat", START, START + 1500 * MS, dict(llm_span().attributes), events=(mark,))
    front = FrontTiming(START + 20 * MS, START + 30 * MS, START + 40 * MS, recorded_ttft_ns=400 * MS)
    (timed,) = with_front_timings(Trace([span]), [front])
    timing = stream_timing(timed, 41)
    assert timing is not None
    assert timing.ttft_ms == pytest.approx(400 + 250)
    assert timing.replayed_ms == pytest.approx(400)


# -- budgets ---------------------------------------------------------------------------------------------------------


def _trace(ttft_s: float | None, replayed_ms: float = 0.0) -> Trace:
    attrs: dict[str, AttrValue] = {}
    if ttft_s is not None:
        attrs["gen_ai.server.time_to_first_token"] = ttft_s
    if replayed_ms:
        attrs["llmtrace.stream.ttft_replayed_ms"] = replayed_ms
    return Trace([llm_span(attrs=attrs)])


def test_a_ttft_budget_holds_and_fails_and_a_missing_ttft_fails_closed() -> None:
    assert check_latency(None, _trace(0.3), budgets_ms={"ttft": 500}).status == "passed"
    failed = check_latency(None, _trace(0.6), budgets_ms={"TTFT": 500})
    assert failed.status == "failed"
    assert "ttft ms" in failed.reason
    missing = check_latency(None, _trace(None), budgets_ms={"ttft": 500})
    assert missing.status == "failed"
    assert "time to first token" in missing.measurements[-1].reason


def test_ttft_against_golden_uses_the_relative_rule_and_the_replayed_part_is_marked() -> None:
    result = check_latency(_trace(0.2), _trace(0.9, replayed_ms=200), budgets_ms={}, replayed_ms={"ttft": 200.0})
    (ttft,) = [m for m in result.measurements if m.metric == "ttft"]
    assert (ttft.status, ttft.replayed) == ("failed", 200.0)
    assert ttft.golden == pytest.approx(200.0)
    assert "ttft" not in latencies_ms(Trace([llm_span()]))


def test_min_tokens_per_s_judges_each_stream() -> None:
    stream: dict[str, AttrValue] = {
        "gen_ai.server.time_to_first_token": 0.2,
        "gen_ai.server.time_per_output_token": 0.05,
    }
    now = Trace([llm_span(attrs=stream)])  # 20 tokens/s
    assert check_latency(None, now, budgets_ms={}, min_tokens_per_s=10).status == "passed"
    slow = check_latency(None, now, budgets_ms={}, min_tokens_per_s=30)
    assert slow.status == "failed"
    assert [m.label for m in slow.measurements if m.status == "failed"] == ["stream tokens/s"]


def test_marks_and_ini_take_ttft_min_tokens_per_s_and_prices() -> None:
    mark = pytest.mark.llmtrace(latency_budgets_ms={"ttft": 800}, min_tokens_per_s=5, prices={"m": (1, 2)}).mark
    options = CheckOptions().with_marker(mark, "case")
    assert options.latency_budgets_ms["ttft"] == 800.0
    assert options.min_tokens_per_s == 5.0
    assert options.prices == {"m": (1.0, 2.0)}
    with pytest.raises(pytest.UsageError, match="expected MODEL=INPUT/OUTPUT"):
        CheckOptions().with_marker(pytest.mark.llmtrace(prices="gpt-4o").mark, "case")


# -- cost -------------------------------------------------------------------------------------------------------------


def test_cost_from_the_trace_first_then_the_price_table() -> None:
    (call,) = Trace([llm_span(attrs={"gen_ai.usage.cost": 0.5})]).llm_calls
    assert call_usage(call, {"qwen-sql-prod": (1.0, 1.0)}).cost_usd == 0.5
    langfuse = llm_call(llm_span(attrs={"langfuse.observation.cost_details": '{"input": 0.1, "output": 0.2}'}))
    assert langfuse is not None
    assert call_usage(langfuse, None).cost_usd == pytest.approx(0.3)
    priced = llm_call(llm_span())
    assert priced is not None
    usage = call_usage(priced, {"qwen-sql-prod:latest": (0.5, 1.5)})
    assert usage.cost_usd == pytest.approx((300 * 0.5 + 41 * 1.5) / 1000)
    assert usage.cost_source == "prices"


def test_a_model_with_tokens_and_no_price_fails_closed_naming_the_model() -> None:
    call = llm_call(llm_span())
    assert call is not None
    with pytest.raises(PriceError, match="model 'qwen-sql-prod' used 341 tokens and has no price"):
        call_usage(call, {"gpt-4o": (2.5, 10.0)})
    usages, error = trace_usage(Trace([llm_span()]), {"gpt-4o": (2.5, 10.0)})
    assert usage_summary(usages)["cost_usd"] is None  # unknown, never $0
    tokens = with_cost(CheckResult("tokens", "passed"), usages, None, error, replayed=False)
    assert tokens.status == "failed"
    assert "no price" in tokens.reason
    assert usage_summary(trace_usage(Trace([llm_span()]), None)[0])["cost_usd"] is None  # no table: unknown


# -- gate metrics ---------------------------------------------------------------------------------------------------


def _case(case_id: str, *, sql: str = "passed", ttft: float | None = 100.0, cost: float | None = 0.01) -> CaseRecord:
    usage: dict[str, Any] = {"cost_usd": cost, "ttft_ms": ttft, "tokens_per_s": 50.0, "calls": [{"model": "m"}]}
    outcome = CaseOutcome(case_id, "replay", checks=(CheckResult("sql", sql),), llm_usage=usage)  # type: ignore[arg-type]
    data = outcome.to_dict()
    data["verdict"] = "passed" if outcome.passed else "failed"
    return as_case(data)


def _gate(expr: str, cases: list[CaseRecord], slo: str | None = None) -> gate.GateResult:
    (result,) = gate.evaluate([gate.parse(expr)], cases, slo=gate.parse_slo(slo) if slo else None)
    return result


def test_ttft_p95_cost_and_tokens_per_s_gates_fail_closed() -> None:
    cases = [_case(f"c{i}", ttft=100.0 + i, cost=0.01) for i in range(19)] + [_case("slow", ttft=900.0)]
    assert _gate("ttft_p95_ms <= 150", cases).passed
    missing = _gate("ttft_p95_ms <= 150", [_case("a"), _case("none", ttft=None)])  # no TTFT: infinitely slow
    assert (missing.passed, missing.cases) == (False, ("none",))
    assert _gate("cost_usd <= 0.5", cases).value == pytest.approx(0.2)
    unknown = _gate("cost_usd <= 0.5", [*cases, _case("unpriced", cost=None)])
    assert (unknown.passed, math.isinf(unknown.value), unknown.cases[0]) == (False, True, "unpriced")
    assert _gate("cost_usd_p95 <= 0.01", cases).passed
    assert _gate("tokens_per_s_p50 >= 40", cases).passed


@pytest.mark.parametrize(("failures", "remaining"), [(0, 1.0), (1, 0.5), (2, 0.0), (3, -0.5)])
def test_error_budget_remaining_against_the_slo(failures: int, remaining: float) -> None:
    cases = [_case(f"bad{i}", sql="failed") for i in range(failures)] + [_case(f"ok{i}") for i in range(40 - failures)]
    result = _gate("error_budget_remaining >= 0", cases, slo="sql_success_rate >= 0.95")
    assert result.value == pytest.approx(remaining)
    assert result.passed is (remaining >= 0)
    assert llm_gate.error_budget(0.95, 0.95) == pytest.approx(0.0)


def test_an_error_budget_needs_a_rate_slo() -> None:
    with pytest.raises(gate.GateError, match="needs an SLO"):
        _gate("error_budget_remaining >= 0", [_case("a")])
    with pytest.raises(gate.GateError, match="expected a rate at least a threshold below 1"):
        gate.parse_slo("latency_p95_ms <= 5000")


def test_replayed_time_never_fails_a_ttft_budget_the_apps_own_path_does() -> None:
    over = check_latency(None, _trace(0.9, replayed_ms=850), budgets_ms={"ttft": 500}, replayed_ms={"ttft": 850.0})
    assert over.status == "skipped"
    assert "judged live, not in replay" in over.reason
    pushed = check_latency(None, _trace(0.6, replayed_ms=400), budgets_ms={"ttft": 500}, replayed_ms={"ttft": 400.0})
    assert pushed.status == "failed"


def test_cost_and_ttft_per_case_and_in_total_in_every_report() -> None:
    from pytest_llmtrace.results import llm_report
    from pytest_llmtrace.results.html import render
    from pytest_llmtrace.results.summary import summary_markdown

    cases = [_case("<b>a</b>", ttft=120.0, cost=0.25), _case("b", ttft=80.0, cost=0.5)]
    for case in cases:
        usage = case.get("llm_usage")
        assert usage is not None
        usage["calls"] = [
            {
                "model": "m",
                "input_tokens": 10,
                "output_tokens": 5,
                "cost_usd": 0.25,
                "cost_source": "prices",
                "ttft_ms": None,
                "ttft_replayed_ms": None,
                "tokens_per_s": None,
                "gap_p95_ms": None,
            }
        ]
    lines = llm_report.terminal_lines(cases)
    assert lines[-1] == "cost: $0.750000 total over 2 cases (m $0.500000)"
    assert any(line.startswith("b ") and "80.0 / -" in line and "$0.500000" in line for line in lines)
    markdown = summary_markdown(cases, [])
    assert "| b | 80.0 / - | 50.0 | $0.500000 | - |" in markdown
    page = render({"cases": cases, "run": {}})
    assert "<td>&lt;b&gt;a&lt;/b&gt;</td><td>120.0 / -</td>" in page
    unpriced = [_case("c", cost=None)]
    assert llm_report.terminal_lines(unpriced)[1].split()[-2:] == ["unknown", "-"]  # never $0


def test_a_model_call_no_convention_reads_still_gets_its_ttft_on_the_span_around_it() -> None:
    """An app with a bare HTTP client inside a CHAIN span: the front's timing lands on that span and counts."""
    chain = Span("t" * 32, "c", None, "request", START, START + 900 * MS, {"openinference.span.kind": "CHAIN"})
    front = FrontTiming(START + 10 * MS, START + 11 * MS, START + 12 * MS, recorded_ttft_ns=250 * MS)
    timed = with_front_timings(Trace([chain]), [front])
    assert latencies_ms(timed)["ttft"] == pytest.approx(250.0)
    from pytest_llmtrace.checks.usage import streams_outside_calls

    assert usage_summary([], streams_outside_calls(timed))["ttft_ms"] == pytest.approx(250.0)
