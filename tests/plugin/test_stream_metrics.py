"""Streams, budgets and run metrics end to end: replayed streams judged by TTFT budgets, the metrics file parsed back
with prometheus_client against results.json, a Pushgateway push recorded by a local HTTP server, and a live
SmolLM2 stream through llama.cpp (slow tier).

Each run is a small pytester project of copies of the gateway, company_db and golden cases (as in
test_golden_replay.py), on this session's Postgres server.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import bundled_smollm2, live_model_missing

from pytest_llmtrace.trace.otlp import read_trace
from pytest_llmtrace.trace.stream_timing import stream_timing

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "golden_traces"

# The gateway, but its stream handling takes 300 ms over the first chunk (a slow parser, a blocking callback): the
# app's own path to its first token, which a TTFT budget must catch in replay.
SLOW_FIRST_CHUNK = """
import time

import ollama

from gateway import app


class SlowFirstChunk(ollama.Client):
    def chat(self, *args, **kwargs):
        stream = super().chat(*args, **kwargs)
        if not kwargs.get("stream"):
            return stream

        def slowed():
            for i, part in enumerate(stream):
                if i == 0:
                    time.sleep(0.3)
                yield part

        return slowed()


def handle_user_request(question):
    original = app._ollama  # put back afterwards: the gateway module may outlive this run in sys.modules
    app._ollama = lambda host: SlowFirstChunk(host=host)
    try:
        return app.handle_user_request(question)
    finally:
        app._ollama = original
"""


@pytest.fixture(scope="module")
def pg_url(pg_admin_url: str) -> str:
    return pg_admin_url


def _project(pytester: pytest.Pytester, *cases: str, ini: str = "") -> None:
    shutil.copytree(REPO / "fixtures" / "company_db", pytester.path / "fixtures" / "company_db")
    shutil.copytree(REPO / "fixtures" / "gateway", pytester.path / "gateway")
    golden = pytester.path / "golden_traces"
    (golden / "__snapshots__").mkdir(parents=True)
    for case in cases:
        shutil.copy(GOLDEN / f"{case}.json", golden / f"{case}.json")
        shutil.copy(GOLDEN / "__snapshots__" / f"{case}.json", golden / "__snapshots__" / f"{case}.json")
    pytester.makeini(
        "[pytest]\naddopts = -p no:phoenix -p no:randomly\npythonpath = .\n"
        f"llmtrace_target = gateway.app:handle_user_request\n{ini}"
    )


def _recorded_ttft_ms(case: str) -> float:
    (call,) = read_trace(GOLDEN / f"{case}.json").llm_calls
    timing = stream_timing(call.span, call.completion_tokens)
    assert timing is not None, f"{case}: the golden trace records no stream timing"
    return timing.ttft_ms


def test_a_slower_first_chunk_in_the_app_fails_a_ttft_budget_and_replayed_time_never_does(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    recorded = _recorded_ttft_ms("customers_by_tier")
    budget = round(recorded + 150)
    _project(pytester, "customers_by_tier", ini=f"llmtrace_latency_budgets_ms = ttft={budget}\n")
    pytester.makepyfile(slow_first=SLOW_FIRST_CHUNK)
    postgres = f"--llmtrace-postgres={pg_url}"

    fast = pytester.runpytest(postgres, "--llmtrace-report=fast")
    fast.assert_outcomes(passed=1)
    (case,) = json.loads((pytester.path / "fast" / "results.json").read_text())["cases"]
    assert case["golden_durations_ms"]["ttft"] == pytest.approx(recorded, abs=0.01)  # the golden TTFT as recorded
    assert recorded <= case["durations_ms"]["ttft"] < budget

    slow = pytester.runpytest(postgres, "-o", "llmtrace_target=slow_first:handle_user_request")
    slow.assert_outcomes(failed=1)
    slow.stdout.fnmatch_lines(["[[]latency]*", f"*ttft ms*({recorded:.1f} replayed)*<= {budget} ms budget*"])

    # a budget the recording alone breaks: the model's recorded time, never the app's fault in replay
    tight = pytester.runpytest(postgres, "-o", f"llmtrace_latency_budgets_ms=ttft={round(recorded / 2)}")
    tight.assert_outcomes(passed=1)


def _families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _samples(families: dict[str, Any], family: str, sample: str | None = None) -> list[Any]:
    return [s for s in families[family].samples if s.name == (sample or family)]


def test_the_metrics_file_says_what_results_json_says(pytester: pytest.Pytester, pg_url: str) -> None:
    _project(
        pytester,
        "customers_by_tier",
        "error_syntax",
        "top_customers_2024",
        ini="llmtrace_prices = qwen-sql-prod=0.0005/0.0015\nllmtrace_slo = sql_success_rate >= 0.5\n",
    )
    result = pytester.runpytest(
        f"--llmtrace-postgres={pg_url}",
        "--llmtrace-report=reports",
        "--llmtrace-metrics=metrics/llmtrace.prom",
        "--llmtrace-gate=cost_usd <= 1",
        "--llmtrace-gate=ttft_p95_ms <= 1",
        "--llmtrace-gate=error_budget_remaining >= 0",
    )
    result.assert_outcomes(passed=2, failed=1)
    doc = json.loads((pytester.path / "reports" / "results.json").read_text())
    families = _families((pytester.path / "metrics" / "llmtrace.prom").read_text())
    run = doc["run"]

    by_verdict = {s.labels["verdict"]: s.value for s in _samples(families, "llmtrace_cases", "llmtrace_cases_total")}
    assert by_verdict == {"passed": 2, "failed": 1, "error": 0}
    for sample in families["llmtrace_cases"].samples:
        assert (sample.labels["run"], sample.labels["git_revision"]) == (run["run_id"], run["git_revision"] or "")

    calls = [call for case in doc["cases"] for call in case["llm_usage"]["calls"]]
    tokens = {s.labels["type"]: s.value for s in _samples(families, "llmtrace_llm_tokens", "llmtrace_llm_tokens_total")}
    assert tokens == {
        "input": sum(c["input_tokens"] for c in calls),
        "output": sum(c["output_tokens"] for c in calls),
    }
    (cost,) = _samples(families, "llmtrace_llm_cost_dollars", "llmtrace_llm_cost_dollars_total")
    assert cost.labels["model"] == "qwen-sql-prod"
    assert cost.value == pytest.approx(doc["llm_totals"]["cost_usd"])
    assert cost.value == pytest.approx(sum(c["cost_usd"] for c in calls))

    (ttft_count,) = _samples(families, "llmtrace_llm_ttft_seconds", "llmtrace_llm_ttft_seconds_count")
    (ttft_sum,) = _samples(families, "llmtrace_llm_ttft_seconds", "llmtrace_llm_ttft_seconds_sum")
    assert ttft_count.value == len(calls)
    assert ttft_sum.value == pytest.approx(sum(c["ttft_ms"] for c in calls) / 1000)
    latency_count = {
        s.labels["kind"]: s.value
        for s in _samples(families, "llmtrace_case_latency_seconds", "llmtrace_case_latency_seconds_count")
    }
    assert latency_count["ttft"] == latency_count["total"] == len(doc["cases"])

    gates = {s.labels["gate"]: s.value for s in _samples(families, "llmtrace_gate_passed")}
    assert gates == {"cost_usd <= 1": 1.0, "ttft_p95_ms <= 1": 0.0, "error_budget_remaining >= 0": 1.0}
    (budget,) = _samples(families, "llmtrace_error_budget_remaining")
    assert budget.labels["slo"] == "sql_success_rate >= 0.5"
    assert budget.value == pytest.approx(run["slo"]["error_budget_remaining"])
    assert budget.value == pytest.approx(1 - (1 / 3) / 0.5)
    assert result.ret == 6  # the TTFT gate failed: the metrics say so and the exit status too


class _Recorder(BaseHTTPRequestHandler):
    pushed: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.pushed.append((self.command, self.path, self.rfile.read(length)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def pushgateway() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    pushed: list[tuple[str, str, bytes]] = []
    handler = type("Handler", (_Recorder,), {"pushed": pushed})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", pushed
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_pushgateway_gets_the_runs_metrics_under_job_llmtrace_grouped_by_run(
    pytester: pytest.Pytester, pg_url: str, pushgateway: tuple[str, list[tuple[str, str, bytes]]]
) -> None:
    url, pushed = pushgateway
    _project(pytester, "customers_by_tier")
    result = pytester.runpytest(
        f"--llmtrace-postgres={pg_url}", "--llmtrace-report=reports", f"--llmtrace-pushgateway={url}"
    )
    result.assert_outcomes(passed=1)
    run_id = json.loads((pytester.path / "reports" / "results.json").read_text())["run"]["run_id"]
    ((method, path, body),) = pushed
    assert (method, path) == ("PUT", f"/metrics/job/llmtrace/run/{run_id}")
    families = _families(body.decode())
    (passed,) = [
        s for s in _samples(families, "llmtrace_cases", "llmtrace_cases_total") if s.labels["verdict"] == "passed"
    ]
    assert passed.value == 1


def test_an_unreachable_pushgateway_is_reported_not_silent(pytester: pytest.Pytester, pg_url: str) -> None:
    _project(pytester, "customers_by_tier")
    result = pytester.runpytest(f"--llmtrace-postgres={pg_url}", "--llmtrace-pushgateway=http://127.0.0.1:9")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["llmtrace metrics: not written: push to http://127.0.0.1:9: *"])


@pytest.mark.slow
def test_a_live_smollm2_stream_through_llama_cpp_has_a_real_bounded_ttft(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    """The front streams llama.cpp's pieces as they are generated and times them: the TTFT is the model's."""
    gguf = bundled_smollm2()
    if gguf is None or live_model_missing() is not None:
        pytest.skip(str(live_model_missing()))
    _project(pytester, "customers_by_tier")
    modelfile = (REPO / "fixtures" / "Modelfile").read_text()
    modelfile = "\n".join(f"FROM {gguf}" if line.startswith("FROM ") else line for line in modelfile.splitlines())
    pytester.path.joinpath("fixtures", "Modelfile").write_text(modelfile)
    result = pytester.runpytest_subprocess(
        f"--llmtrace-postgres={pg_url}",
        "--llmtrace-mode=live",
        "--llmtrace-report=reports",
        "--llmtrace-metrics=live.prom",
        "--llmtrace-case-timeout-s=600",  # two busy cores take minutes over a 330-token prompt, not the 2 s idle
        timeout=900,
    )
    (case,) = json.loads((pytester.path / "reports" / "results.json").read_text())["cases"]
    usage = case["llm_usage"]
    (call,) = usage["calls"]
    print(f"live SmolLM2: TTFT {usage['ttft_ms']:.1f} ms, {usage['tokens_per_s']:.1f} tokens/s, {call}")
    assert usage["ttft_replayed_ms"] == 0  # measured, nothing from a recording
    assert 0 < usage["ttft_ms"] < case["durations_ms"]["LLM"]  # the first token came before the answer was done
    assert usage["tokens_per_s"] > 0
    assert call["output_tokens"] > 1
    families = _families((pytester.path / "live.prom").read_text())
    (count,) = _samples(families, "llmtrace_llm_ttft_seconds", "llmtrace_llm_ttft_seconds_count")
    assert count.value == 1
    assert result.ret in (0, 1)  # SmolLM2 does not write correct SQL: the case may fail; its timing is what counts


@pytest.mark.slow  # two xdist workers, each a process of its own
def test_under_xdist_the_controller_writes_the_metrics_and_counts_each_case_once(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    _project(pytester, "customers_by_tier", "error_syntax", "top_customers_2024")
    result = pytester.runpytest_subprocess(
        f"--llmtrace-postgres={pg_url}", "-n", "2", "--llmtrace-metrics=m.prom", "--llmtrace-report=r", timeout=600
    )
    result.assert_outcomes(passed=2, failed=1)
    families = _families((pytester.path / "m.prom").read_text())
    by_verdict = {s.labels["verdict"]: s.value for s in _samples(families, "llmtrace_cases", "llmtrace_cases_total")}
    assert by_verdict == {"passed": 2, "failed": 1, "error": 0}
    (output,) = [
        s
        for s in _samples(families, "llmtrace_llm_tokens", "llmtrace_llm_tokens_total")
        if s.labels["type"] == "output"
    ]
    doc = json.loads((pytester.path / "r" / "results.json").read_text())
    assert output.value == sum(c["output_tokens"] for case in doc["cases"] for c in case["llm_usage"]["calls"])


def test_otlp_metrics_go_to_the_configured_endpoint(
    pytester: pytest.Pytester, pg_url: str, pushgateway: tuple[str, list[tuple[str, str, bytes]]]
) -> None:
    """The same names over OTLP/HTTP: a local endpoint records the protobuf request."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    url, received = pushgateway
    _project(pytester, "customers_by_tier", ini="llmtrace_prices = qwen-sql-prod=0.0005/0.0015\n")
    result = pytester.runpytest(
        f"--llmtrace-postgres={pg_url}", "--llmtrace-report=r", f"--llmtrace-otlp-metrics={url}/v1/metrics"
    )
    result.assert_outcomes(passed=1)
    ((method, path, body),) = received
    assert (method, path) == ("POST", "/v1/metrics")
    request = ExportMetricsServiceRequest.FromString(body)
    metrics = {m.name: m for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert {
        "llmtrace_cases",
        "llmtrace_case_latency_seconds",
        "llmtrace_llm_tokens",
        "llmtrace_llm_ttft_seconds",
    } <= set(metrics)
    passed = [
        p.as_int
        for p in metrics["llmtrace_cases"].sum.data_points
        if {a.key: a.value.string_value for a in p.attributes}["verdict"] == "passed"
    ]
    assert passed == [1]
    (case,) = json.loads((pytester.path / "r" / "results.json").read_text())["cases"]
    (cost_point,) = metrics["llmtrace_llm_cost_dollars"].sum.data_points
    assert cost_point.as_double == pytest.approx(case["llm_usage"]["cost_usd"])
