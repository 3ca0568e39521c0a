"""A run's metrics over OTLP/HTTP, for a collector or a backend that takes OTLP metrics instead of scraping.

The same names and labels as the Prometheus file (``prom_metrics``; OTLP spells the counters without ``_total``,
which Prometheus adds back on ingestion), made with the OpenTelemetry SDK on a ``MeterProvider`` of their own (never
the app's global one) and sent once, at session end, when the provider shuts down. Histograms keep the Prometheus
file's bucket boundaries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_llmtrace.results import gate
from pytest_llmtrace.results.case_record import CaseRecord, usage_of, verdict_of
from pytest_llmtrace.results.prom_metrics import LATENCY_BUCKETS_S, LATENCY_KINDS, TTFT_BUCKETS_S, VERDICTS

EXPORT_TIMEOUT_MS = 10_000


def send(
    endpoint: str,
    cases: Sequence[CaseRecord],
    meta: Mapping[str, Any],
    gate_results: Sequence[gate.GateResult] = (),
    error_budget: tuple[str, float] | None = None,
) -> None:
    """Export the run's metrics to ``endpoint`` (``http://host:4318/v1/metrics``); raises when the export fails."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExportResult, PeriodicExportingMetricReader
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
    from opentelemetry.sdk.resources import Resource

    exporter = OTLPMetricExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT_MS / 1000)
    results: list[MetricExportResult] = []
    export = exporter.export

    def remembered(*args: Any, **kwargs: Any) -> MetricExportResult:
        result = export(*args, **kwargs)
        results.append(result)
        return result

    exporter.export = remembered  # type: ignore[method-assign]  # the reader swallows a failed export's result
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    views = [
        View(
            instrument_name="llmtrace_case_latency_seconds",
            aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS_S),
        ),
        View(
            instrument_name="llmtrace_llm_ttft_seconds", aggregation=ExplicitBucketHistogramAggregation(TTFT_BUCKETS_S)
        ),
    ]
    resource = Resource({"service.name": "llmtrace", "llmtrace.run": str(meta.get("run_id") or "")})
    provider = MeterProvider(metric_readers=[reader], resource=resource, views=views)
    try:
        _record(provider.get_meter("pytest-llmtrace"), cases, meta, gate_results, error_budget)
    finally:
        provider.shutdown(EXPORT_TIMEOUT_MS)  # the reader's last collection: the one export
    if not results or any(r is not MetricExportResult.SUCCESS for r in results):
        raise OSError(f"the OTLP metrics export to {endpoint} failed")


def _record(
    meter: Any,
    cases: Sequence[CaseRecord],
    meta: Mapping[str, Any],
    gate_results: Sequence[gate.GateResult],
    error_budget: tuple[str, float] | None,
) -> None:
    base = {"run": str(meta.get("run_id") or ""), "git_revision": str(meta.get("git_revision") or "")}
    digests = {str(m.get("name")): str(m.get("digest") or "") for m in meta.get("models") or () if isinstance(m, dict)}
    verdicts = meter.create_counter("llmtrace_cases", description="Golden cases by verdict.")
    for verdict in VERDICTS:
        verdicts.add(sum(1 for c in cases if verdict_of(c) == verdict), {**base, "verdict": verdict})
    latency = meter.create_histogram("llmtrace_case_latency_seconds", unit="s", description="Each case's latency.")
    for case in cases:
        for kind in LATENCY_KINDS:
            value = case["durations_ms"].get(kind)
            if isinstance(value, (int, float)):
                latency.record(value / 1000, {**base, "kind": kind})
    tokens = meter.create_counter("llmtrace_llm_tokens", description="Tokens the model calls used, by type.")
    cost = meter.create_counter("llmtrace_llm_cost_dollars", unit="USD", description="What the model calls cost.")
    ttft = meter.create_histogram("llmtrace_llm_ttft_seconds", unit="s", description="Each call's time to first token.")
    for case in cases:
        for call in usage_of(case)["calls"]:
            model = call["model"]
            labels = {**base, "model": model, "model_digest": digests.get(model, "")}
            tokens.add(call["input_tokens"], {**labels, "type": "input"})
            tokens.add(call["output_tokens"], {**labels, "type": "output"})
            if (spent := call["cost_usd"]) is not None:
                cost.add(spent, labels)
            if (first := call["ttft_ms"]) is not None:
                ttft.record(first / 1000, labels)
    gates = meter.create_gauge("llmtrace_gate_passed", description="1 when the gate held, 0 when it failed.")
    for result in gate_results:
        gates.set(1 if result.passed else 0, {**base, "gate": str(result.rule)})
    if error_budget is not None:
        budget = meter.create_gauge("llmtrace_error_budget_remaining", description="The SLO's unspent error budget.")
        budget.set(error_budget[1], {**base, "slo": error_budget[0]})
