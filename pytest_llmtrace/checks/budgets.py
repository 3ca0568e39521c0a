"""Latency and token limits: the regressions a correct answer can still have, and the only copy of their rules.

A prompt change that doubles the context, or a query that now scans a table, still returns the right rows; these
checks compare the new trace with the golden one (relative limits) and with fixed budgets (absolute limits). The
snapshot compares its stored durations and token counts with the same functions (``latency_vs_golden``,
``tokens_vs_golden``), so the two can never disagree about the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Literal

from pytest_llmtrace.checks.names import (
    LATENCY_METRICS,
    SPAN_KINDS,
    TOKEN_KINDS,
    TTFT,
    canonical_metric,
    canonical_token_kind,
)
from pytest_llmtrace.checks.options import CheckOptions, number_text
from pytest_llmtrace.checks.outcome import CheckResult, Measurement, Source, Status
from pytest_llmtrace.core.memo import memo
from pytest_llmtrace.trace.model import Span, SqlStatement, Trace
from pytest_llmtrace.trace.stream_timing import StreamTiming, trace_streams
from pytest_llmtrace.trace.views import span_kind

if TYPE_CHECKING:
    from pytest_llmtrace.trace.virtual import VirtualTrace

_DEFAULTS = CheckOptions()
NO_GOLDEN_USAGE = "the golden trace recorded no token usage"


def latencies_ms(trace: Trace) -> dict[str, float]:
    """Time per metric, in ms: ``total`` (first start to last end), ``LLM``, ``SQL`` and each other kind present.

    A kind's time is the sum of the durations of its outermost spans: a LangChain chain inside a chain (or an LLM
    span wrapping a retried LLM call) is counted once, not twice. Spans of one kind that run in parallel are still
    summed, so a kind's time can exceed ``total``; it measures work, which is what a budget per kind is about.
    ``SQL`` is every span that records a statement (``db.query.text``), whatever its OpenInference kind. ``total``,
    ``LLM`` and ``SQL`` are always present (0.0 when the trace has none), so budgets on them never silently vanish.
    """
    return dict(memo(trace, "_latencies_ms", _read_latencies_ms))  # read once per trace, asked for by every check


def _read_latencies_ms(trace: Trace) -> dict[str, float]:
    out = {"total": trace.duration_ms if trace else 0.0, **_by_metric(trace, lambda span: span.duration_ms)}
    streams = _streams(trace)
    if streams:  # the slowest call's time to first token, only where a convention recorded one
        out[TTFT] = max(s.ttft_ms for s in streams)
    return out


def _streams(trace: Trace | None) -> list[StreamTiming]:
    return trace_streams(trace)


def replayed_latencies_ms(virtual: VirtualTrace) -> dict[str, float]:
    """The part of each metric of ``latencies_ms(virtual.trace)`` that comes from the recording, not from this run.

    Counted by the same outermost-span rule, so ``LLM`` is replayed in full when every outermost LLM span replaced
    its call, and ``total`` and CHAIN hold the replayed calls inside them. Metrics with nothing replayed are left out.
    """
    parts = _by_metric(virtual.trace, virtual.replayed_ms)
    parts["total"] = min(virtual.total_replayed_ns / 1e6, virtual.trace.duration_ms if virtual.trace else 0.0)
    streams = _streams(virtual.trace)
    if streams:
        parts[TTFT] = max(streams, key=lambda s: s.ttft_ms).replayed_ms
    return {metric: ms for metric, ms in parts.items() if ms > 0}


def _by_metric(trace: Trace, ms_of: Callable[[Span], float]) -> dict[str, float]:
    out = {"LLM": 0.0, "SQL": 0.0}
    for span in trace:
        for metric in _metrics_of(span):
            if not any(metric in _metrics_of(a) for a in _ancestors(trace, span)):
                out[metric] = out.get(metric, 0.0) + ms_of(span)
    return out


def tokens_of(trace: Trace) -> dict[str, int]:
    """Token sums per kind (``TOKEN_KINDS``)."""
    return {"prompt": trace.prompt_tokens, "completion": trace.completion_tokens, "total": trace.total_tokens}


def _metrics_of(span: Span) -> tuple[str, ...]:
    found = span_kind(span)  # an LLM call in any convention is LLM, not only OpenInference's
    kind = found if found in SPAN_KINDS else None
    sql = "SQL" if SqlStatement.from_span(span) is not None else None
    return tuple(m for m in (kind, sql) if m is not None)


def _ancestors(trace: Trace, span: Span) -> Iterable[Span]:
    parent = trace.parent(span)
    while parent is not None:
        yield parent
        parent = trace.parent(parent)


def source_of(metric: str, unit: Literal["ms", "tokens"], *, replayed: bool) -> Source:
    """Whether a token count comes from the recording: when replaying, the model's counters are the recorded ones.
    (Durations say it with ``latency_source``, from what virtual time replaced.)"""
    return "replayed" if replayed and (unit == "tokens" or metric == "LLM") else "measured"


def latency_source(now_ms: float, replayed_ms: float) -> Source:
    """``replayed`` when all of a duration comes from the recording (within display rounding); a duration that only
    holds replayed time (``total`` around a replayed LLM call) stays ``measured``, with its replayed part beside it."""
    return "replayed" if replayed_ms > 0 and replayed_ms >= now_ms - 0.05 else "measured"


# -- the rules --------------------------------------------------------------------------------------------------------


def latency_vs_golden(
    metric: str, golden_ms: float, now_ms: float, *, tolerance: float, floor_ms: float, replayed_ms: float = 0.0
) -> Measurement:
    """Slower than ``tolerance`` times the golden value AND by more than ``floor_ms`` fails.

    The floor is there because durations of a few milliseconds are dominated by scheduling and cache noise: a SQL
    span going from 2 ms to 40 ms is not a regression anyone would act on. So the limit is the larger of the two.
    Faster is never a regression.
    """
    if tolerance < 0 or floor_ms < 0:
        raise ValueError(f"latency tolerance and floor must not be negative, got {tolerance!r}, {floor_ms!r}")
    if golden_ms * tolerance >= golden_ms + floor_ms:
        limit, rule = golden_ms * tolerance, f"<= {number_text(tolerance)}x golden ({golden_ms * tolerance:.1f} ms)"
    else:
        limit, rule = golden_ms + floor_ms, f"<= golden + {number_text(floor_ms)} ms ({golden_ms + floor_ms:.1f} ms)"
    status: Status = "failed" if now_ms > limit else "passed"
    source = latency_source(now_ms, replayed_ms)
    return Measurement(metric, "ms", now_ms, golden_ms, "relative", limit, rule, status, source, replayed=replayed_ms)


def latency_vs_budget(
    metric: str, golden_ms: float | None, now_ms: float, budget_ms: float, *, replayed_ms: float = 0.0
) -> Measurement:
    status: Status = "failed" if now_ms > budget_ms else "passed"
    rule = f"<= {number_text(budget_ms)} ms budget"
    source = latency_source(now_ms, replayed_ms)
    return Measurement(
        metric, "ms", now_ms, golden_ms, "absolute", budget_ms, rule, status, source, replayed=replayed_ms
    )


def tokens_vs_golden(
    kind: str, golden: float, now: float, *, tolerance: float, source: Source = "measured"
) -> Measurement:
    """Outside ``golden * (1 +- tolerance)`` fails; a golden count of 0 skips the comparison.

    Both directions count: a prompt that shrank may have lost the schema, and a much shorter answer may be cut off.
    A golden count of 0 means the golden trace recorded no usage (an instrumentation without usage data), so there is
    nothing to be relative to: the comparison is skipped, and only maxima apply.
    """
    if tolerance < 0:
        raise ValueError(f"token tolerance must not be negative, got {tolerance!r}")
    percent = f"within +-{number_text(tolerance * 100)}% of golden"
    if golden <= 0:
        return Measurement(
            kind,
            "tokens",
            now,
            golden,
            "relative",
            limit=None,
            rule=percent,
            status="skipped",
            source=source,
            reason=NO_GOLDEN_USAGE,
        )
    low, high = golden * (1 - tolerance), golden * (1 + tolerance)
    rule = f"{percent} ({math.ceil(low - 1e-9)}-{math.floor(high + 1e-9)})"
    status: Status = "passed" if low <= now <= high else "failed"
    return Measurement(kind, "tokens", now, golden, "relative", high, rule, status, source, low=low)


def tokens_vs_max(
    kind: str, golden: float | None, now: float, maximum: float, *, source: Source = "measured"
) -> Measurement:
    status: Status = "failed" if now > maximum else "passed"
    rule = f"<= {number_text(maximum)} max"
    return Measurement(kind, "tokens", now, golden, "absolute", maximum, rule, status, source)


# -- the checks -------------------------------------------------------------------------------------------------------


def check_latency(
    golden: Trace | None,
    now: Trace,
    *,
    budgets_ms: Mapping[str, float | None],
    tolerance: float = _DEFAULTS.latency_tolerance,
    floor_ms: float = _DEFAULTS.latency_floor_ms,
    replayed_ms: Mapping[str, float] | None = None,
    min_tokens_per_s: float = 0.0,
) -> CheckResult:
    """Each metric against its absolute budget (``None`` switches one off) and, with a golden trace, against the
    golden duration. Budget keys may be spelled in any case; an unknown one raises ``options.UnknownName``.

    ``replayed_ms`` is the part of each metric of ``now`` that replay took from the recording
    (``replayed_latencies_ms``); each measurement carries it, so a replayed number is never shown as measured."""
    budgets = {canonical_metric(k): v for k, v in budgets_ms.items()}
    n = latencies_ms(now)
    g = latencies_ms(golden) if golden is not None else None
    measurements: list[Measurement] = []
    for metric in LATENCY_METRICS:
        budget = budgets.get(metric)
        if metric not in n and (g is None or metric not in g) and budget is None:
            continue
        if metric == TTFT:
            measurements.extend(_ttft(n, g, budget, tolerance, floor_ms, (replayed_ms or {}).get(TTFT, 0.0)))
            continue
        n_ms, g_ms = n.get(metric, 0.0), None if g is None else g.get(metric, 0.0)
        part = (replayed_ms or {}).get(metric, 0.0)
        if budget is not None:
            measurements.append(latency_vs_budget(metric, g_ms, n_ms, budget, replayed_ms=part))
        if g_ms is not None:
            measurements.append(
                latency_vs_golden(metric, g_ms, n_ms, tolerance=tolerance, floor_ms=floor_ms, replayed_ms=part)
            )
    if min_tokens_per_s > 0:
        measurements.extend(_rates(now, golden, min_tokens_per_s))
    return _verdict("latency", measurements, "no latency budget set and no golden trace to compare with")


NO_TTFT = "no model call in this trace records a time to first token (a stream's timing)"


def _ttft(
    n: Mapping[str, float],
    g: Mapping[str, float] | None,
    budget: float | None,
    tolerance: float,
    floor_ms: float,
    replayed: float,
) -> list[Measurement]:
    """TTFT against its budget and the golden TTFT; a budget or golden TTFT with none now fails closed: a TTFT that
    went unrecorded must not pass a budget as 0 ms."""
    g_ms = None if g is None else g.get(TTFT)
    if TTFT not in n:
        if budget is None and g_ms is None:
            return []
        limit = budget if budget is not None else g_ms
        rule = f"<= {number_text(limit or 0)} ms" + (" budget" if budget is not None else " (golden)")
        basis: Literal["absolute", "relative"] = "absolute" if budget is not None else "relative"
        return [Measurement(TTFT, "ms", 0.0, g_ms, basis, limit, rule, "failed", reason=NO_TTFT)]
    out = []
    if budget is not None and replayed > budget:
        # the recording's own TTFT is over the budget: the model's time, the same in every replay, and nothing the
        # app under test can change; replayed time never fails a budget (live mode measures the model and judges it)
        rule = f"<= {number_text(budget)} ms budget"
        reason = f"the recorded TTFT ({replayed:.1f} ms) alone is over the budget: judged live, not in replay"
        out.append(
            Measurement(
                TTFT, "ms", n[TTFT], g_ms, "absolute", budget, rule, "skipped", replayed=replayed, reason=reason
            )
        )
    elif budget is not None:
        out.append(latency_vs_budget(TTFT, g_ms, n[TTFT], budget, replayed_ms=replayed))
    if g_ms is not None:
        out.append(latency_vs_golden(TTFT, g_ms, n[TTFT], tolerance=tolerance, floor_ms=floor_ms, replayed_ms=replayed))
    return out


def _rates(now: Trace, golden: Trace | None, minimum: float) -> list[Measurement]:
    """Each streamed call's tokens per second after its first token, at least ``minimum``."""
    golden_rates = [s.tokens_per_s for s in _streams(golden) if s.tokens_per_s] if golden is not None else []
    out = []
    for i, stream in enumerate(s for s in _streams(now) if s.tokens_per_s is not None):
        rate = stream.tokens_per_s or 0.0
        status: Status = "failed" if rate < minimum else "passed"
        g_rate = golden_rates[i] if i < len(golden_rates) else None
        source: Source = "replayed" if stream.replayed_ms else "measured"
        rule = f">= {number_text(minimum)} tokens/s"
        out.append(Measurement("stream", "tokens/s", rate, g_rate, "absolute", None, rule, status, source, low=minimum))
    return out


def check_tokens(
    golden: Trace | None,
    now: Trace,
    *,
    tolerance: float = _DEFAULTS.token_tolerance,
    maxima: Mapping[str, int | None] | None = None,
    replayed: bool = False,
) -> CheckResult:
    """Token sums against their maxima and, with a golden trace, within ``tolerance`` of the golden sums."""
    limits = {canonical_token_kind(k): v for k, v in (maxima or {}).items()}
    n = tokens_of(now)
    g = tokens_of(golden) if golden is not None else None
    measurements: list[Measurement] = []
    for kind in TOKEN_KINDS:
        maximum = limits.get(kind)
        source = source_of(kind, "tokens", replayed=replayed)
        g_tokens = None if g is None else g[kind]
        if maximum is not None:
            measurements.append(tokens_vs_max(kind, g_tokens, n[kind], maximum, source=source))
        if g_tokens is not None:
            measurements.append(tokens_vs_golden(kind, g_tokens, n[kind], tolerance=tolerance, source=source))
    return _verdict("tokens", measurements, "no token maximum set and no golden trace to compare with")


def _verdict(name: str, measurements: list[Measurement], nothing: str) -> CheckResult:
    """Failed if any limit failed, passed if any applied, else skipped with the reasons the limits gave."""
    failed = [m for m in measurements if m.status == "failed"]
    if failed:
        labels = ", ".join(dict.fromkeys(m.label for m in failed))
        return CheckResult(name, "failed", f"out of limits: {labels}", tuple(measurements))
    if any(m.status == "passed" for m in measurements):
        return CheckResult(name, "passed", "", tuple(measurements))
    reasons = "; ".join(dict.fromkeys(m.reason for m in measurements if m.reason)) or nothing
    return CheckResult(name, "skipped", reasons, tuple(measurements))
