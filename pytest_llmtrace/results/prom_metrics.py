"""A run's results as Prometheus metrics, in the names a text-to-SQL service's own dashboards use.

Built from the cases as results.json holds them (one per case, after the xdist workers' cases are merged and
repeats folded), so each metric counts each case once however the run was split. Every series carries the run's id
and git revision; the model series also carry the model's digest where the run knows it (``run.models``).

- ``llmtrace_cases_total{verdict}``: cases by verdict;
- ``llmtrace_case_latency_seconds{kind}``: a histogram of each case's latency per kind (``total``, ``LLM``, ``SQL``,
  ``ttft``), on the clock the latency check judged (replayed model time included);
- ``llmtrace_llm_tokens_total{type,model}``: input and output tokens;
- ``llmtrace_llm_ttft_seconds{model}``: a histogram of each model call's time to first token;
- ``llmtrace_llm_tokens_per_second{model}``: the median streaming rate of the model's calls;
- ``llmtrace_llm_cost_dollars_total{model}``: what the calls cost (calls of unknown cost are counted in
  ``llmtrace_llm_cost_unknown_calls_total{model}``, never as $0);
- ``llmtrace_gate_passed{gate}``: 1 for each gate that held, 0 for each that failed;
- ``llmtrace_error_budget_remaining{slo}``: the SLO's unspent error budget (1 none spent, 0 used up, below 0
  overspent).

``prometheus_client`` is imported here only: it is needed only when metrics are asked for.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pytest_llmtrace.results import gate
from pytest_llmtrace.results.case_record import CaseRecord, LLMCallRecord, usage_of, verdict_of
from pytest_llmtrace.results.llm_gate import percentile

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

INSTALL_HINT = "pip install prometheus-client"
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TTFT_BUCKETS_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
LATENCY_KINDS = ("total", "LLM", "SQL", "ttft")
VERDICTS = ("passed", "failed", "error")


def _histogram_buckets(values: Sequence[float], bounds: Sequence[float]) -> list[tuple[str, float]]:
    buckets = [(repr(float(b)), float(sum(1 for v in values if v <= b))) for b in bounds]
    return [*buckets, ("+Inf", float(len(values)))]


class RunCollector:
    """A ``prometheus_client`` collector over one run's cases (see the module docstring for the names)."""

    def __init__(
        self,
        cases: Sequence[CaseRecord],
        meta: Mapping[str, Any],
        gate_results: Sequence[gate.GateResult] = (),
        error_budget: tuple[str, float] | None = None,
    ) -> None:
        self.cases = list(cases)
        self.gate_results = list(gate_results)
        self.error_budget = error_budget
        self.run = str(meta.get("run_id") or "")
        self.revision = str(meta.get("git_revision") or "")
        self.digests = {
            str(m.get("name")): str(m.get("digest") or "") for m in meta.get("models") or () if isinstance(m, dict)
        }

    def _base(self) -> list[str]:
        return [self.run, self.revision]

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        base = ["run", "git_revision"]
        cases = CounterMetricFamily("llmtrace_cases", "Golden cases by verdict.", labels=["verdict", *base])
        for verdict in VERDICTS:
            count = sum(1 for c in self.cases if verdict_of(c) == verdict)
            cases.add_metric([verdict, *self._base()], float(count))
        yield cases

        latency = HistogramMetricFamily(
            "llmtrace_case_latency_seconds",
            "Each case's latency per kind (ttft: time to first token).",
            labels=["kind", *base],
        )
        for kind in LATENCY_KINDS:
            values = [
                float(v) / 1000
                for c in self.cases
                for v in [c["durations_ms"].get(kind)]
                if isinstance(v, (int, float))
            ]
            if values:
                latency.add_metric(
                    [kind, *self._base()], _histogram_buckets(values, LATENCY_BUCKETS_S), math.fsum(values)
                )
        yield latency

        model_labels = ["model", "model_digest", *base]
        tokens = CounterMetricFamily(
            "llmtrace_llm_tokens", "Tokens the model calls used, by type.", labels=["type", *model_labels]
        )
        cost = CounterMetricFamily(
            "llmtrace_llm_cost_dollars", "What the model calls cost, in USD.", labels=model_labels
        )
        unknown = CounterMetricFamily(
            "llmtrace_llm_cost_unknown_calls", "Model calls whose cost is unknown (no price).", labels=model_labels
        )
        ttft = HistogramMetricFamily(
            "llmtrace_llm_ttft_seconds", "Each model call's time to first token.", labels=model_labels
        )
        rate = GaugeMetricFamily(
            "llmtrace_llm_tokens_per_second", "Median tokens per second after the first token.", labels=model_labels
        )
        calls: dict[str, list[LLMCallRecord]] = {}
        for case in self.cases:
            for call in usage_of(case)["calls"]:
                calls.setdefault(call["model"], []).append(call)
        for model, found in sorted(calls.items()):
            labels = [model, self.digests.get(model, ""), *self._base()]
            tokens.add_metric(["input", *labels], float(sum(c["input_tokens"] for c in found)))
            tokens.add_metric(["output", *labels], float(sum(c["output_tokens"] for c in found)))
            known = [float(spent) for c in found if (spent := c["cost_usd"]) is not None]
            cost.add_metric(labels, math.fsum(known))
            unknown.add_metric(labels, float(len(found) - len(known)))
            firsts = [float(first) / 1000 for c in found if (first := c["ttft_ms"]) is not None]
            if firsts:
                ttft.add_metric(labels, _histogram_buckets(firsts, TTFT_BUCKETS_S), math.fsum(firsts))
            rates = [float(speed) for c in found if (speed := c["tokens_per_s"]) is not None]
            if rates:
                rate.add_metric(labels, percentile(rates, 50))
        yield from (tokens, cost, unknown, ttft, rate)

        gates = GaugeMetricFamily(
            "llmtrace_gate_passed", "1 when the gate held, 0 when it failed.", labels=["gate", *base]
        )
        for result in self.gate_results:
            gates.add_metric([str(result.rule), *self._base()], 1.0 if result.passed else 0.0)
        yield gates

        budget = GaugeMetricFamily(
            "llmtrace_error_budget_remaining",
            "The SLO's unspent error budget: 1 none spent, 0 used up, below 0 overspent.",
            labels=["slo", *base],
        )
        if self.error_budget is not None:
            budget.add_metric([self.error_budget[0], *self._base()], self.error_budget[1])
        yield budget


def registry_of(collector: RunCollector) -> CollectorRegistry:
    """A registry of its own holding only the run's metrics (never the process's default one)."""
    try:
        from prometheus_client import CollectorRegistry
    except ImportError:  # pragma: no cover - a dependency of the plugin; kept for installs that removed it
        raise ImportError(f"--llmtrace-metrics needs prometheus_client: {INSTALL_HINT}") from None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
