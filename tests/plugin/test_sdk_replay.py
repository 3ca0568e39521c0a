"""An app traced only by the Langfuse SDK or only by the LangSmith SDK: its traces import and replay with the verdicts
of the OpenInference reference app, and a prompt change is caught (issue 22).

fixtures/sdktraced/app.py is the reference gateway's logic traced by ``@observe`` or ``@traceable``. The module
records it once (a subprocess; what the SDKs send is caught by a local server, so nothing leaves the machine), then
imports each of the three exports (Langfuse's OpenTelemetry spans, the same observations as Langfuse's v2 API lists
them, and LangSmith's run export) and replays them in pytester projects: ``--snapshot-update`` first, then a plain
run, then a run with the prompt changed. During the replays the app is traced as in production: Langfuse through the
session's OpenTelemetry provider (its OTLP export goes to a local server), LangSmith in its OpenTelemetry mode.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sdktraced.collector import Collected, collector
from test_autoinstr import CASES, EXPECTED, NEW_LINE, OLD_LINE, QUESTIONS, SQLSTATES, _run, _section, _verdicts

from pytest_llmtrace.cli import main as llmtrace
from pytest_llmtrace.services.postgres import PostgresDatabase
from pytest_llmtrace.trace.otlp import read_trace

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EXPORTS = {
    "langfuse-otel": ("langfuse.jsonl", "langfuse"),
    "langfuse-api": ("langfuse_observations.json", "langfuse"),
    "langsmith-runs": ("langsmith_runs.json", "langsmith"),
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, llmtrace_postgres: PostgresDatabase, pg_admin_url: str) -> Path:
    out = tmp_path_factory.mktemp("sdk-exports")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "fixtures"), str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "sdktraced.record", "--out", str(out), "--only", *CASES]
    command += ["--postgres", pg_admin_url, "--template", llmtrace_postgres.template]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.fixture
def local_servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collected]:
    """Where the SDKs would send during the replays without the plugin: a local server (the run's own loopback
    endpoint takes over, so it gets nothing)."""
    with collector() as (url, got):
        monkeypatch.setenv("LANGFUSE_BASE_URL", url)
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-local")
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-local")
        monkeypatch.setenv("LANGSMITH_ENDPOINT", url)
        monkeypatch.setenv("LANGSMITH_API_KEY", "lsv2-local")
        monkeypatch.setenv("LANGSMITH_TRACING", "true")
        monkeypatch.setenv("LANGSMITH_OTEL_ENABLED", "true")
        monkeypatch.setenv("LANGSMITH_OTEL_ONLY", "true")
        yield got


def _project(pytester: pytest.Pytester) -> None:
    shutil.copytree(REPO / "fixtures" / "company_db", pytester.path / "fixtures" / "company_db")
    for package in ("gateway", "sdktraced"):
        shutil.copytree(
            REPO / "fixtures" / package, pytester.path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    checks = "llmtrace_checks = sql results tokens snapshot\nllmtrace_latency_floor_ms = 600000\n"
    pytester.makeini(
        "[pytest]\naddopts = -p no:phoenix -p no:randomly\npythonpath = .\n"
        f"llmtrace_target = sdktraced.app:answer\n{checks}"
    )


def _imported(pytester: pytest.Pytester, export: Path) -> dict[str, str]:
    golden = pytester.path / "golden_traces"
    assert llmtrace(["import", str(export), "--out", str(golden)]) == 0
    names = {}
    for path in golden.glob("*.json"):
        trace = read_trace(path)
        question = trace.question().text
        assert question in QUESTIONS, f"{path.name}: question {question!r}"
        names[path.stem] = QUESTIONS[question]
        (call,) = trace.llm_calls
        assert call.prompt_tokens
        assert call.span.attributes["gen_ai.usage.input_tokens"] == call.prompt_tokens
    assert sorted(names.values()) == sorted(CASES)
    return names


@pytest.mark.parametrize("export", list(EXPORTS))
def test_sdk_traced_app_replays_with_the_verdicts_of_the_reference_app(
    pytester: pytest.Pytester,
    pg_admin_url: str,
    exports: Path,
    local_servers: Collected,
    monkeypatch: pytest.MonkeyPatch,
    export: str,
) -> None:
    filename, tracer = EXPORTS[export]
    monkeypatch.setenv("TRACER", tracer)
    _project(pytester)
    names = _imported(pytester, exports / filename)

    first = _run(pytester, pg_admin_url, "golden_traces", "--snapshot-update")
    again = _run(pytester, pg_admin_url, "golden_traces")

    assert _verdicts(first, names) == EXPECTED, first.stdout.str()[-3000:]
    assert _verdicts(again, names) == EXPECTED
    output = again.stdout.str()
    for stem, case in names.items():
        if case in SQLSTATES:
            assert f"(SQLSTATE {SQLSTATES[case]})" in _section(output, stem), case

    app = pytester.path / "gateway" / "app.py"
    app.write_text(app.read_text().replace(OLD_LINE, NEW_LINE))
    changed = _run(pytester, pg_admin_url, "golden_traces")
    changed.assert_outcomes(failed=len(CASES))
    text = changed.stdout.str()
    for stem in names:
        assert "[replay] prompt changed: no recorded LLM call matches the request to 'qwen-sql-prod'" in _section(
            text, stem
        )
    # The run pointed the SDKs at its own loopback endpoint (llmtrace_sdk_local), over the variables set here
    assert local_servers.requests == []


CONNECT_AUDIT = """
import ipaddress, os, sys

_LOG = os.path.join(os.path.dirname(__file__), "connects.txt")


def _audit(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple):
        with open(_LOG, "a") as log:
            log.write(str(args[1][0]) + "\\n")


sys.addaudithook(_audit)
"""


def test_an_app_traced_by_langsmith_in_its_default_mode_replays_with_nothing_leaving_the_machine(
    pytester: pytest.Pytester, pg_admin_url: str, exports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No OpenTelemetry mode and no collector of the test's own: the app's environment names LangSmith's public
    server, and the plugin's loopback endpoint takes the run posts, records them as the case's spans, and the cases
    replay with the reference app's verdicts. Every connection the inner runs open is to loopback."""
    monkeypatch.setenv("TRACER", "langsmith")
    monkeypatch.setenv("LANGSMITH_TRACING", "true")
    monkeypatch.setenv("LANGSMITH_API_KEY", "lsv2-not-a-real-key")
    monkeypatch.setenv("LANGSMITH_ENDPOINT", "https://api.smith.langchain.com")
    for name in ("LANGSMITH_OTEL_ENABLED", "LANGSMITH_OTEL_ONLY", "LANGCHAIN_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    _project(pytester)
    pytester.makeconftest(CONNECT_AUDIT)
    names = _imported(pytester, exports / "langsmith_runs.json")

    first = _run(pytester, pg_admin_url, "golden_traces", "--snapshot-update")
    again = _run(pytester, pg_admin_url, "golden_traces")

    assert _verdicts(first, names) == EXPECTED, first.stdout.str()[-3000:]
    assert _verdicts(again, names) == EXPECTED
    again.stdout.fnmatch_lines(["llmtrace sdks: Langfuse and LangSmith pointed at http://127.0.0.1:*"])
    hosts = set((pytester.path / "connects.txt").read_text().split())
    assert hosts, "nothing connected: the audit proves nothing"
    assert {host for host in hosts if not host.startswith("127.") and host != "::1"} == set()
