"""The gate metrics of the model calls and of the error budget: ``ttft_p95_ms``, ``tokens_per_s_p50``, ``cost_usd``,
``cost_usd_p95`` and ``error_budget_remaining``.

Kept apart from ``gate`` so the release gate's own metrics stay one table there; each function reads cases as
results.json holds them (``llm_usage``, ``checks.usage.usage_summary``) and is fail-closed like the rest of the gate:
a case without a TTFT counts as infinitely slow, without a rate as 0 tokens/s, without a known cost as infinitely
expensive (a price error is never $0).

The error budget is the share of the failures an SLO allows that is still unspent: for ``sql_success_rate >= 0.95``
the budget is 5% of the cases; 1.0 means no failure spent, 0 the budget used up, below 0 overspent. An SLO is a
rate metric of the gate (``sql_success_rate``, ``result_match_rate``) with ``>=`` and a threshold below 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from pytest_llmtrace.results.case_record import CaseRecord, LLMUsageRecord, usage_of

METRICS = ("ttft_p95_ms", "tokens_per_s_p50", "cost_usd", "cost_usd_p95", "error_budget_remaining")
SLO_RATES = ("sql_success_rate", "result_match_rate")
SLO_EXAMPLE = "sql_success_rate >= 0.95"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank, as ``gate.percentile``: a reported p95 is a value some case had."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def _figure(case: CaseRecord, key: Literal["ttft_ms", "tokens_per_s", "cost_usd"]) -> float | None:
    value = usage_of(case)[key]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def ttft_ms(case: CaseRecord) -> float:
    value = None if case["app_error"] else _figure(case, "ttft_ms")
    return math.inf if value is None else value


def tokens_per_s(case: CaseRecord) -> float:
    value = None if case["app_error"] else _figure(case, "tokens_per_s")
    return 0.0 if value is None else value


def cost_usd(case: CaseRecord) -> float:
    value = _figure(case, "cost_usd")
    return math.inf if value is None else value


def value(
    metric: str, cases: Sequence[CaseRecord], slo_value: Callable[[], float] | None, slo_threshold: float | None
) -> tuple[float, list[tuple[float, str]], bool]:
    """The metric's value over ``cases``, each case's own figure (for naming the cases that pulled it), and whether
    a larger figure is worse (latency, cost) or better (rate, budget)."""
    ids = [c["case_id"] for c in cases]
    if metric == "ttft_p95_ms":
        figures = [ttft_ms(c) for c in cases]
        return (percentile(figures, 95) if figures else math.inf), list(zip(figures, ids, strict=True)), True
    if metric == "tokens_per_s_p50":
        figures = [tokens_per_s(c) for c in cases]
        return (percentile(figures, 50) if figures else 0.0), list(zip(figures, ids, strict=True)), False
    if metric in ("cost_usd", "cost_usd_p95"):
        figures = [cost_usd(c) for c in cases]
        if metric == "cost_usd":
            total = math.fsum(figures) if figures and all(math.isfinite(f) for f in figures) else math.inf
            return total, list(zip(figures, ids, strict=True)), True
        return (percentile(figures, 95) if figures else math.inf), list(zip(figures, ids, strict=True)), True
    assert slo_value is not None
    assert slo_threshold is not None
    return error_budget(slo_value(), slo_threshold), [], False


def error_budget(rate: float, threshold: float) -> float:
    """The unspent share of the failures ``rate >= threshold`` allows: 1 - (1 - rate) / (1 - threshold)."""
    allowed = 1 - threshold
    return 1 - (1 - rate) / allowed


def totals(cases: Sequence[CaseRecord]) -> dict[str, Any]:
    """The run's cost (``None`` when a case's is unknown), and per model its tokens, the cost of the calls whose cost
    is known and how many calls' cost is unknown."""
    return usage_totals(usage_of(case) for case in cases)


def usage_totals(usages: Iterable[LLMUsageRecord]) -> dict[str, Any]:
    """``totals`` from each case's ``usage_of``, read in one pass: a run's ``CaseLog`` reads a case anew each time."""
    by_model: dict[str, dict[str, float]] = {}
    costs_of: dict[str, list[float]] = {}
    costs: list[float] = []
    unknown = False
    for usage in usages:
        if usage["calls"]:
            unknown = unknown or usage["cost_usd"] is None
            costs.append(float(usage["cost_usd"] or 0.0))
        for call in usage["calls"]:
            name = call["model"]
            model = by_model.setdefault(
                name, {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0, "unknown_calls": 0}
            )
            model["input_tokens"] += call["input_tokens"]
            model["output_tokens"] += call["output_tokens"]
            costs_of.setdefault(name, []).append(float(call["cost_usd"] or 0.0))
            model["unknown_calls"] += call["cost_usd"] is None
    for name, found in costs_of.items():
        by_model[name]["cost_usd"] = math.fsum(found)
    total = None if unknown or not costs else math.fsum(costs)
    return {"cost_usd": total, "models": by_model}
