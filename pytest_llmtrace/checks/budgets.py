"""Latency and token budgets: the regressions a correct answer can still have.

A prompt change that doubles the context, or a query that now scans a table, still returns the right rows; these
checks compare the new trace with the golden one (relative limits) and with fixed budgets (absolute limits).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from pytest_llmtrace.trace.model import Span, SqlStatement, Trace
from pytest_llmtrace.trace.views import span_kind

__all__ = ["LATENCY_METRICS", "Violation", "check_latency", "check_tokens", "format_table", "latencies_ms"]

# OpenInference span kinds, plus the two metrics that are not kinds: the whole trace and the SQL spans (which OTel's
# database conventions mark, not OpenInference).
_KINDS = ("LLM", "CHAIN", "TOOL", "RETRIEVER", "EMBEDDING", "AGENT", "RERANKER", "GUARDRAIL", "EVALUATOR", "PROMPT")
LATENCY_METRICS = ("total", "LLM", "SQL", *_KINDS[1:])


@dataclass(frozen=True)
class Violation:
    """One limit a trace broke. ``golden`` is ``None`` when the limit does not depend on the golden trace."""

    check: Literal["latency", "tokens"]
    metric: str
    golden: float | None
    now: float
    limit: str


def latencies_ms(trace: Trace) -> dict[str, float]:
    """Time per metric, in ms: ``total`` (first start to last end), ``LLM``, ``SQL`` and each other kind present.

    A kind's time is the sum of the durations of its outermost spans: a LangChain chain inside a chain (or an LLM
    span wrapping a retried LLM call) is counted once, not twice. Spans of one kind that run in parallel are still
    summed, so a kind's time can exceed ``total``; it measures work, which is what a budget per kind is about.
    ``SQL`` is every span that records a statement (``db.query.text``), whatever its OpenInference kind. ``total``,
    ``LLM`` and ``SQL`` are always present (0.0 when the trace has none), so budgets on them never silently vanish.
    """
    out = {"total": trace.duration_ms if trace else 0.0, "LLM": 0.0, "SQL": 0.0}
    for span in trace:
        for metric in _metrics_of(span):
            if not any(metric in _metrics_of(a) for a in _ancestors(trace, span)):
                out[metric] = out.get(metric, 0.0) + span.duration_ms
    return out


def _metrics_of(span: Span) -> tuple[str, ...]:
    found = span_kind(span)  # an LLM call in any convention is LLM, not only OpenInference's
    kind = found if found in _KINDS else None
    sql = "SQL" if SqlStatement.from_span(span) is not None else None
    return tuple(m for m in (kind, sql) if m is not None)


def _ancestors(trace: Trace, span: Span) -> Iterable[Span]:
    parent = trace.parent(span)
    while parent is not None:
        yield parent
        parent = trace.parent(parent)


def _canonical_metric(name: str) -> str:
    """Budget keys are case-insensitive (``llm``, ``Total``); an unknown key is a typo, not a budget to ignore."""
    for metric in LATENCY_METRICS:
        if name.strip().lower() == metric.lower():
            return metric
    raise ValueError(f"unknown latency budget {name!r}; expected one of {', '.join(LATENCY_METRICS)}")


def check_latency(
    golden: Trace,
    now: Trace,
    *,
    budgets_ms: Mapping[str, float | None],
    tolerance: float = 1.5,
    min_ms: float = 50.0,
) -> list[Violation]:
    """Latencies over an absolute budget, and latencies that grew past ``tolerance`` times the golden value.

    The relative check only fires when the growth is also more than ``min_ms``: durations of a few milliseconds are
    dominated by scheduling and cache noise, and a SQL span going from 2 ms to 4 ms is not a regression anyone would
    act on. A budget of ``None`` switches that metric's absolute check off.
    """
    if tolerance <= 0:
        raise ValueError(f"latency tolerance must be positive, got {tolerance!r}")
    budgets = {_canonical_metric(k): v for k, v in budgets_ms.items()}
    g, n = latencies_ms(golden), latencies_ms(now)
    metrics = [m for m in LATENCY_METRICS if m in g or m in n or m in budgets]
    violations: list[Violation] = []
    for metric in metrics:
        g_ms, n_ms = g.get(metric, 0.0), n.get(metric, 0.0)
        budget = budgets.get(metric)
        if budget is not None and n_ms > budget:
            violations.append(Violation("latency", f"{metric} ms", g_ms, n_ms, f"<= {_num(budget)} ms budget"))
        if n_ms > g_ms * tolerance and n_ms - g_ms > min_ms:
            if g_ms * tolerance >= g_ms + min_ms:
                limit = f"<= {_num(tolerance)}x golden ({g_ms * tolerance:.1f} ms)"
            else:
                limit = f"<= golden + {_num(min_ms)} ms ({g_ms + min_ms:.1f} ms)"
            violations.append(Violation("latency", f"{metric} ms", g_ms, n_ms, limit))
    return violations


def check_tokens(
    golden: Trace,
    now: Trace,
    *,
    tolerance: float = 0.10,
    max_prompt: int | None = None,
    max_completion: int | None = None,
    max_total: int | None = None,
) -> list[Violation]:
    """Token sums outside ``golden * (1 +- tolerance)``, and sums over an absolute maximum.

    Both directions count: a prompt that shrank may have lost the schema, and a much shorter answer may be cut off.
    A golden sum of 0 means the golden trace recorded no counts (an instrumentation without usage data), so there
    is nothing to be relative to and only the maxima apply.
    """
    if tolerance < 0:
        raise ValueError(f"token tolerance must not be negative, got {tolerance!r}")
    violations: list[Violation] = []
    for name, g_tokens, n_tokens, maximum in (
        ("prompt", golden.prompt_tokens, now.prompt_tokens, max_prompt),
        ("completion", golden.completion_tokens, now.completion_tokens, max_completion),
        ("total", golden.total_tokens, now.total_tokens, max_total),
    ):
        metric = f"{name} tokens"
        if maximum is not None and n_tokens > maximum:
            violations.append(Violation("tokens", metric, g_tokens, n_tokens, f"<= {maximum} max"))
        low, high = g_tokens * (1 - tolerance), g_tokens * (1 + tolerance)
        if g_tokens > 0 and not low <= n_tokens <= high:
            band = f"{math.ceil(low - 1e-9)}-{math.floor(high + 1e-9)}"
            violations.append(
                Violation("tokens", metric, g_tokens, n_tokens, f"within +-{_num(tolerance * 100)}% of golden ({band})")
            )
    return violations


def _num(value: float) -> str:
    """``5000`` rather than ``5000.0`` in limits people wrote as whole numbers."""
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _cell(check: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if check == "latency" else str(round(value))


def format_table(violations: Iterable[Violation]) -> str:
    """The violations as an aligned table for a test failure message; empty string when there are none.

    Numbers are right-aligned so that magnitudes can be compared at a glance; ms get one decimal, tokens none.
    """
    rows = [(v.metric, _cell(v.check, v.golden), _cell(v.check, v.now), v.limit) for v in violations]
    if not rows:
        return ""
    header = ("metric", "golden", "now", "limit")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(3)]

    def line(cells: tuple[str, str, str, str], numbers: bool) -> str:
        metric, g, n, limit = cells
        g_cell = g.rjust(widths[1]) if numbers else g.ljust(widths[1])
        n_cell = n.rjust(widths[2]) if numbers else n.ljust(widths[2])
        return f"{metric.ljust(widths[0])} | {g_cell} | {n_cell} | {limit}".rstrip()

    return "\n".join([line(header, numbers=False), *(line(r, numbers=True) for r in rows)])
