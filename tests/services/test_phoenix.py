"""The embedded Phoenix for real: the reference app's spans go to it over OTLP (protobuf) and come back over REST.

Phoenix takes 10-20 s to start, so this module holds every test that needs it and they share one session server.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from pytest_llmtrace.modelapi import OllamaAPIServer
from pytest_llmtrace.modelapi.scripted import ScriptedBackend
from pytest_llmtrace.services.phoenix import UrlPhoenix

if TYPE_CHECKING:
    from collections.abc import Iterator

    from opentelemetry.sdk.trace import TracerProvider

    from pytest_llmtrace.pytest.recording import TestRecording
    from pytest_llmtrace.services.base import Endpoint
    from pytest_llmtrace.services.postgres import PostgresDatabase

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CASES = json.loads((FIXTURES / "golden_cases.json").read_text())["cases"]


class _Forward(SpanProcessor):
    """Exports spans only while enabled: processors cannot be removed from the session provider afterwards."""

    def __init__(self, exporter: OTLPSpanExporter) -> None:
        self.exporter = exporter
        self.enabled = True

    def on_end(self, span: ReadableSpan) -> None:
        if self.enabled:
            self.exporter.export([span])


@pytest.fixture
def scripted_ollama(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    backend = ScriptedBackend({c["question"]: c["answer"] for c in CASES}, "qwen-sql-prod")
    with OllamaAPIServer(backend) as server:
        monkeypatch.setenv("OLLAMA_HOST", server.url)
        yield server.url


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_reference_app_spans_reach_phoenix_and_read_back_over_rest(
    llmtrace_phoenix: Endpoint,
    llmtrace_postgres: PostgresDatabase,
    llmtrace_tracer_provider: TracerProvider,
    scripted_ollama: str,
    llm_trace: TestRecording,
) -> None:
    assert llmtrace_phoenix.backend == "embedded"
    forward = _Forward(OTLPSpanExporter(endpoint=llmtrace_phoenix.extra["traces_endpoint"]))
    llmtrace_tracer_provider.add_span_processor(forward)
    sys.path.insert(0, str(FIXTURES))
    try:
        from gateway.app import handle_user_request

        case = CASES[0]
        result = handle_user_request(case["question"], user_id="u-phoenix", session_id="s-phoenix")
    finally:
        forward.enabled = False
        sys.path.remove(str(FIXTURES))
    assert result["error"] is None
    trace_id = llm_trace.root.trace_id

    spans: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(spans) < 3:
        page = _get(f"{llmtrace_phoenix.url}/v1/projects/default/spans?limit=100")
        spans = [s for s in page["data"] if s["context"]["trace_id"] == trace_id]
        time.sleep(0.5)
    by_name = {s["name"]: s for s in spans}
    assert set(by_name) == {"text2sql.request", "ollama.chat", "sql.execute"}, spans
    root = by_name["text2sql.request"]
    assert root["span_kind"] == "CHAIN"
    assert root["attributes"]["input.value"] == case["question"]
    assert root["attributes"]["user.id"] == "u-phoenix"
    llm = by_name["ollama.chat"]
    assert llm["span_kind"] == "LLM"
    assert llm["attributes"]["llm.model_name"] == "qwen-sql-prod"
    assert llm["attributes"]["llm.token_count.completion"] == llm_trace.llm_calls[0].completion_tokens
    assert by_name["sql.execute"]["attributes"]["db.query.text"] == llm_trace.sql_statements[0].text


def test_the_url_backend_accepts_a_running_phoenix(llmtrace_phoenix: Endpoint) -> None:
    endpoint = UrlPhoenix(llmtrace_phoenix.url + "/").start()
    assert endpoint.backend == "url"
    assert endpoint.url == llmtrace_phoenix.url
    assert endpoint.port == llmtrace_phoenix.port


def test_the_url_backend_refuses_a_dead_address_with_the_fix() -> None:
    with pytest.raises(Exception, match=r"phoenix \(url\) did not start: GET http://127.0.0.1:9/healthz") as excinfo:
        UrlPhoenix("http://127.0.0.1:9", timeout=0.5).start()
    assert "fix: start Phoenix there, fix the URL, or use --llmtrace-phoenix=embedded" in str(excinfo.value)


def test_phoenix_runs_without_telemetry_on_loopback(llmtrace_phoenix: Endpoint) -> None:
    """The server process must have been started with PHOENIX_TELEMETRY_ENABLED=false (offline by default)."""
    import psutil

    assert llmtrace_phoenix.port is not None
    owners = [
        c.pid
        for c in psutil.net_connections(kind="tcp")
        if c.laddr and c.laddr.port == llmtrace_phoenix.port and c.status == psutil.CONN_LISTEN
    ]
    assert owners, "nobody listens on the Phoenix port"
    environ = psutil.Process(owners[0]).environ()
    assert environ["PHOENIX_TELEMETRY_ENABLED"] == "false"
    assert environ["PHOENIX_HOST"] == "127.0.0.1"
    # its pid file (written once it serves, removed only at a clean exit) lands in the working dir the stop removes
    assert Path(environ["TMPDIR"]) == Path(environ["PHOENIX_WORKING_DIR"])
    pid_file = Path(environ["TMPDIR"], ".arize-phoenix", "pids", str(owners[0]))
    until = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < until:
        time.sleep(0.1)
    assert pid_file.exists(), f"Phoenix wrote no pid file at {pid_file}"
