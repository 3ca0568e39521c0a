"""During a run, the Langfuse and LangSmith SDKs send to a loopback endpoint of the run, never to their servers, and
what they send is recorded (issue 22): real SDKs, configured with public hosts that must not be reached."""

from __future__ import annotations

import ipaddress
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmtrace.services.otlp_receiver import OtlpReceiver

REPO = Path(__file__).resolve().parents[2]
PUBLIC = {
    "LANGSMITH_ENDPOINT": "https://api.smith.langchain.com",
    "LANGCHAIN_ENDPOINT": "https://api.smith.langchain.com",
    "LANGFUSE_BASE_URL": "https://cloud.langfuse.com",
    "LANGFUSE_HOST": "https://us.cloud.langfuse.com",
}

_connects: list[Any] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Every socket connect of the process while a test listens (an audit hook: the real calls, nothing replaced)."""
    if _connects is not None and event == "socket.connect":
        _connects.append(args[1])


sys.addaudithook(_audit)


@pytest.fixture
def connects() -> Any:
    global _connects
    _connects = []
    try:
        yield _connects
    finally:
        _connects = None


def _loopback(address: Any) -> bool:
    if not isinstance(address, tuple):
        return True  # a unix socket
    try:
        return ipaddress.ip_address(address[0]).is_loopback
    except ValueError:
        return False  # a name: the SDKs connect to names only when pointed away


@pytest.fixture
def public_hosts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The SDKs configured for production, as an app's environment often is; a fresh LangSmith cached client."""
    import langsmith.run_trees as run_trees
    from langsmith.utils import get_env_var

    for name, value in PUBLIC.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LANGSMITH_API_KEY", "lsv2-not-a-real-key")
    monkeypatch.setenv("LANGSMITH_TRACING", "true")
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-not-real")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-not-real")
    for name in ("LANGSMITH_OTEL_ENABLED", "LANGSMITH_OTEL_ONLY", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(run_trees, "_CLIENT", None)  # as in a fresh process: made from the environment when used
    # LangSmith caches what it read of LANGSMITH_TRACING: forget other tests' values
    get_env_var.cache_clear()  # type: ignore[attr-defined]
    yield
    get_env_var.cache_clear()  # type: ignore[attr-defined]


APP = """
import os
from langsmith import traceable


@traceable(run_type="llm", name="ollama.chat", metadata={"ls_model_name": "qwen-sql-prod", "ls_provider": "ollama"})
def chat(messages):
    return {"choices": [{"message": {"role": "assistant", "content": "SELECT count(*) FROM customers;"}}]}


@traceable(run_type="tool", name="run_sql")
def run_sql(sql):
    return {"rows": [[3]]}


@traceable(name="text2sql")
def answer(question):
    reply = chat([{"role": "user", "content": question}])
    return run_sql(reply["choices"][0]["message"]["content"])


def test_langsmith_default_mode_is_recorded_locally(llm_trace):
    assert os.environ["LANGSMITH_ENDPOINT"].startswith("http://127.0.0.1:")
    assert os.environ["LANGFUSE_BASE_URL"] == os.environ["LANGSMITH_ENDPOINT"]
    answer("How many customers?")
    trace = llm_trace.trace
    assert sorted(s.name for s in trace.spans) == ["ollama.chat", "run_sql", "text2sql"]
    assert trace.root.name == "text2sql"
    (call,) = llm_trace.llm_calls
    assert call.model == "qwen-sql-prod"
    assert "SELECT count(*) FROM customers;" in call.output_text


def test_langfuse_with_a_provider_of_its_own_is_recorded_locally(llm_trace):
    from langfuse import Langfuse
    from opentelemetry.sdk.trace import TracerProvider

    client = Langfuse(tracer_provider=TracerProvider())  # base URL and keys from the environment
    with client.start_as_current_observation(as_type="generation", name="lf.chat", model="qwen-sql-prod") as g:
        g.update(output={"role": "assistant", "content": "SELECT 1;"})
    client.flush()
    names = [s.name for s in llm_trace.trace.spans]
    client.shutdown()
    assert names == ["lf.chat"]
"""


def test_the_sdks_send_to_the_runs_loopback_endpoint_and_are_recorded(
    pytester: pytest.Pytester, public_hosts: None, connects: list[Any]
) -> None:
    pytester.makepyfile(test_app=APP)
    result = pytester.runpytest_inprocess("-p", "no:randomly", "-p", "no:xdist")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["llmtrace sdks: Langfuse and LangSmith pointed at http://127.0.0.1:*"])
    assert connects, "the SDKs connected nowhere: the test proves nothing"
    assert [a for a in connects if not _loopback(a)] == []
    import os

    assert {name: os.environ[name] for name in PUBLIC} == PUBLIC  # put back after the run


def test_sdk_local_no_leaves_the_variables_alone(pytester: pytest.Pytester, public_hosts: None) -> None:
    pytester.makepyfile(
        test_env="import os\n\ndef test_env():\n    assert os.environ['LANGSMITH_ENDPOINT'] == "
        f"{PUBLIC['LANGSMITH_ENDPOINT']!r}\n"
    )
    pytester.runpytest_inprocess("-p", "no:randomly", "-o", "llmtrace_sdk_local=no").assert_outcomes(passed=1)


def test_langsmith_run_posts_in_halves_are_merged_and_handed_on_when_ended() -> None:
    """The real SDK's multipart posts (its default) through the receiver: each run handed on once, whole."""
    from langsmith import Client, traceable, tracing_context

    got: list[dict[str, Any]] = []
    with OtlpReceiver(on_runs=got.extend) as receiver:
        client = Client(api_url=receiver.endpoint, api_key="lsv2-local")

        @traceable(name="inner", run_type="tool")
        def inner(x: int) -> int:
            return x + 1

        @traceable(name="outer")
        def outer(x: int) -> int:
            return inner(x)

        with tracing_context(enabled=True, client=client, project_name="p"):
            outer(1)
        client.flush()
        assert receiver.runs is not None
        assert receiver.runs.runs == 2
        assert receiver.stats.refused == 0
    by_name = {run["name"]: run for run in got}
    assert sorted(by_name) == ["inner", "outer"]
    assert by_name["inner"]["parent_run_id"] == by_name["outer"]["id"]
    assert by_name["outer"]["outputs"] == {"output": 2}
    assert by_name["inner"]["inputs"] == {"x": 1}


def test_the_receiver_takes_langfuses_otlp_path() -> None:
    from langfuse import Langfuse
    from opentelemetry.sdk.trace import TracerProvider

    with OtlpReceiver() as receiver:
        client = Langfuse(
            public_key="pk", secret_key="sk", base_url=receiver.endpoint, tracer_provider=TracerProvider()
        )
        with client.start_as_current_observation(as_type="span", name="lf.span"):
            pass
        client.flush()
        client.shutdown()
        spans = receiver.take()
    assert [s.name for s in spans] == ["lf.span"]


LANGSMITH_SERVICE = '''
"""A service traced only by LangSmith in its default mode (run posts): python langsmith_service.py PORT."""
import ipaddress, json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from langsmith import traceable

LEFT = []


def _audit(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple):
        try:
            if not ipaddress.ip_address(args[1][0]).is_loopback:
                LEFT.append(str(args[1][0]))
        except ValueError:
            LEFT.append(str(args[1][0]))


sys.addaudithook(_audit)


@traceable(run_type="llm", name="ollama.chat", metadata={"ls_model_name": "qwen-sql-prod"})
def chat(messages):
    return {"choices": [{"message": {"role": "assistant", "content": "SELECT count(*) FROM customers;"}}]}


@traceable(name="text2sql")
def answer(question):
    return chat([{"role": "user", "content": question}])


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        question = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["question"]
        answer(question)
        names = ("LANGSMITH_ENDPOINT", "LANGFUSE_BASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT")
        body = json.dumps({name: os.environ.get(name) for name in names} | {"left": LEFT}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''

ASKS_THE_SERVICE = """
def test_asks(llmtrace_app, llm_trace):
    answer = llmtrace_app("How many customers?")
    assert answer["status"] == 200, answer
    body = answer["body"]
    assert body["LANGSMITH_ENDPOINT"] == body["LANGFUSE_BASE_URL"] == body["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert body["LANGSMITH_ENDPOINT"].startswith("http://127.0.0.1:")
    assert sorted(span.name for span in llm_trace.spans) == ["ollama.chat", "text2sql"]
    (call,) = llm_trace.llm_calls
    assert call.model == "qwen-sql-prod"
    assert llm_trace.trace.question().text == "How many customers?"
    assert body["left"] == []
"""


@pytest.mark.slow
def test_a_service_traced_by_langsmith_sends_its_runs_to_the_sessions_receiver(
    pytester: pytest.Pytester, postgres_url: str, public_hosts: None
) -> None:
    """The service under test gets the SDKs' variables pointed at the session's receiver, whatever the run's own
    environment says; its run posts become the case's spans (attributed by time window: LangSmith does not continue
    a W3C traceparent)."""
    shutil.copytree(REPO / "fixtures" / "company_db", pytester.path / "fixtures" / "company_db")
    pytester.makefile(".py", langsmith_service=LANGSMITH_SERVICE)
    pytester.makeini(
        "[pytest]\naddopts = -p no:phoenix -p no:randomly\n"
        f"llmtrace_app_command = {sys.executable} langsmith_service.py {{port}}\nllmtrace_app_span_wait_s = 10\n"
    )
    pytester.makepyfile(test_asks=ASKS_THE_SERVICE)
    result = pytester.runpytest_subprocess(f"--llmtrace-postgres={postgres_url}", "-p", "no:xdist", timeout=300)
    result.assert_outcomes(passed=1)
