"""What a case's model calls cost and how fast they streamed: per call, per model and per case.

Cost is read from the trace first (``trace.stream_timing.recorded_cost``: ``gen_ai.usage.cost``, Langfuse's
``cost_details``, LangSmith's ``total_cost``, OpenInference's ``llm.cost.total``), else computed from the price
table ``llmtrace_prices`` (USD per 1,000 input and output tokens, per model). A call with tokens, no recorded cost
and no price is a ``PriceError`` naming the model: a cost of $0 would pass every cost gate, so an unknown price
fails closed, as the gate does. Without any price table and without recorded costs a case's cost is unknown
(``None``), and a cost gate counts it as a failure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pytest_llmtrace.checks.outcome import CheckResult, Measurement, Source
from pytest_llmtrace.core.errors import LLMTraceError
from pytest_llmtrace.modelapi.backend import normalize_model_name
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.stream_timing import StreamTiming, recorded_cost, stream_timing, trace_streams
from pytest_llmtrace.trace.views import LLMCall, llm_call

Prices = Mapping[str, tuple[float, float]]  # model -> (USD per 1,000 input tokens, per 1,000 output tokens)


class PriceError(LLMTraceError, ValueError):
    """A model call with tokens and neither a recorded cost nor a price."""


def price_of(prices: Prices, model: str | None) -> tuple[float, float] | None:
    """The model's price; ``qwen`` and ``qwen:latest`` are the same model, as to Ollama."""
    if not model:
        return prices.get("*")
    wanted = normalize_model_name(model)
    for name, price in prices.items():
        if name == model or normalize_model_name(name) == wanted:
            return price
    return prices.get("*")


@dataclass(frozen=True)
class CallUsage:
    """One model call: its model, tokens, cost (``None``: unknown) and where the cost came from, and its stream."""

    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    cost_source: str  # "trace", "prices", or "" when unknown
    stream: StreamTiming | None

    def to_dict(self) -> dict[str, Any]:
        stream = self.stream
        return {
            "model": self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "cost_source": self.cost_source,
            "ttft_ms": None if stream is None else round(stream.ttft_ms, 3),
            "ttft_replayed_ms": None if stream is None else round(stream.replayed_ms, 3),
            "tokens_per_s": None if stream is None or stream.tokens_per_s is None else round(stream.tokens_per_s, 3),
            "gap_p95_ms": None if stream is None or stream.gap_p95_ms is None else round(stream.gap_p95_ms, 3),
        }


def call_usage(call: LLMCall, prices: Prices | None) -> CallUsage:
    """The call's usage; a ``PriceError`` when it has tokens, no recorded cost, and a price table without its model."""
    model = call.model or "unknown"
    tokens_in, tokens_out = call.prompt_tokens or 0, call.completion_tokens or 0
    cost, source = recorded_cost(call.span), "trace"
    if cost is None and prices:
        price = price_of(prices, call.model)
        if price is None:
            if tokens_in or tokens_out:
                raise PriceError(
                    f"model {model!r} used {tokens_in + tokens_out} tokens and has no price in llmtrace_prices "
                    f"(priced: {', '.join(sorted(prices)) or 'none'}); add '{model}=INPUT/OUTPUT' (USD per 1,000 "
                    "tokens)"
                )
            cost, source = 0.0, "prices"
        else:
            cost, source = (tokens_in * price[0] + tokens_out * price[1]) / 1000, "prices"
    return CallUsage(
        model, tokens_in, tokens_out, cost, source if cost is not None else "", stream_timing(call.span, tokens_out)
    )


def trace_usage(trace: Trace | None, prices: Prices | None) -> tuple[list[CallUsage], str]:
    """Every call's usage, and the first price error ("" when none); a call with a price error counts unknown."""
    usages: list[CallUsage] = []
    error = ""
    for call in trace.llm_calls if trace else ():
        try:
            usages.append(call_usage(call, prices))
        except PriceError as exc:
            error = error or str(exc)
            usages.append(
                CallUsage(call.model or "unknown", call.prompt_tokens or 0, call.completion_tokens or 0, None, "", None)
            )
    return usages, error


def usage_summary(usages: Sequence[CallUsage], others: Sequence[StreamTiming] = ()) -> dict[str, Any]:
    """A case's figures as results.json keeps them (``llm_usage``): cost (``None`` when any call's is unknown),
    TTFT (the slowest call's), tokens/s (completion tokens over the time after each first token), the p95 gap,
    and the calls. ``others``: timings of model calls no convention reads as LLM calls (``trace_streams``)."""
    costs = [u.cost_usd for u in usages]
    streams = [*(u.stream for u in usages if u.stream is not None), *others]
    ttft = max((s.ttft_ms for s in streams), default=None)
    rates = [(u.output_tokens, s.tokens_per_s) for u in usages for s in [u.stream] if s and s.tokens_per_s]
    seconds = sum(tokens / rate for tokens, rate in rates if tokens)
    tokens = sum(tokens for tokens, _ in rates)
    gaps = [s.gap_p95_ms for s in streams if s.gap_p95_ms is not None]
    return {
        "cost_usd": None if not usages or any(c is None for c in costs) else math.fsum(c or 0.0 for c in costs),
        "calls_without_llm_span": len(others),
        "ttft_ms": None if ttft is None else round(ttft, 3),
        "ttft_replayed_ms": round(max((s.replayed_ms for s in streams), default=0.0), 3),
        "tokens_per_s": round(tokens / seconds, 3) if seconds > 0 else None,
        "gap_p95_ms": round(max(gaps), 3) if gaps else None,
        "calls": [u.to_dict() for u in usages],
    }


def with_cost(
    tokens: CheckResult, usages: Sequence[CallUsage], golden: Sequence[CallUsage] | None, error: str, *, replayed: bool
) -> CheckResult:
    """The tokens check with the case's cost as one more row; a price error fails it (fail closed, never $0)."""
    summary, before = usage_summary(usages), usage_summary(golden) if golden else None
    cost, golden_cost = summary["cost_usd"], None if before is None else before["cost_usd"]
    source: Source = "replayed" if replayed else "measured"
    if error:
        row = Measurement(
            "cost", "usd", 0.0, golden_cost, "absolute", None, "a price for every model", "failed", source, reason=error
        )
        reason = "; ".join(r for r in (tokens.reason if tokens.failed else "", f"cost unknown: {error}") if r)
        return replace(tokens, status="failed", reason=reason, measurements=(*tokens.measurements, row))
    if cost is None:
        return tokens
    row = Measurement(
        "cost",
        "usd",
        cost,
        golden_cost,
        "absolute",
        None,
        "reported",
        "skipped",
        source,
        reason="cost is reported, not limited: gate on cost_usd",
    )
    return replace(tokens, measurements=(*tokens.measurements, row))


def streams_outside_calls(trace: Trace | None) -> list[StreamTiming]:
    """The timings ``trace_streams`` finds on spans that are not LLM calls (for ``usage_summary``'s ``others``)."""
    if not trace:
        return []
    return trace_streams(Trace([s for s in trace if llm_call(s) is None], warn_missing_parents=False))
