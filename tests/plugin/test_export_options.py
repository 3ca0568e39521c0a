"""``--llmtrace-phoenix-export`` as users meet it, without a Phoenix: the header with each setting's source, nothing
of it loaded while it is off, a bad project name, and a server that is not Phoenix (one warning, no failed test).

The export into a real Phoenix is tests/services/test_phoenix_export.py.
"""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from support import http_server

from pytest_llmtrace.pytest import export_hooks as export
from pytest_llmtrace.pytest.export_session import WORKER_KEY, PhoenixExport
from pytest_llmtrace.sinks.spans import RunAttributes

TESTS = """
from opentelemetry import trace


def test_in_budget(llm_trace, llmtrace_check):
    with trace.get_tracer("app").start_as_current_span("handle", attributes={"llm.token_count.total": 50}):
        pass
    llmtrace_check.within_budget(tokens={"total": 100})


def test_plain():
    with trace.get_tracer("app").start_as_current_span("plain"):
        pass
"""
EXPORT_MODULES = (
    "pytest_llmtrace.sinks.sender",
    "pytest_llmtrace.sinks.spans",
    "pytest_llmtrace.sinks.phoenix_rest",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
)


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\naddopts = -p no:phoenix -p no:randomly\n")
    pytester.makepyfile(test_app=TESTS)
    return pytester


def test_with_export_off_the_header_says_so(project: pytest.Pytester) -> None:
    result = project.runpytest("--co", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["llmtrace phoenix export: no (default)"])


def test_the_plugin_loads_none_of_exports_machinery_until_export_is_on() -> None:
    """A fresh interpreter, as pytest starts one: the OTLP exporter (requests, protobuf) costs tens of ms to import."""
    code = f"import pytest_llmtrace.plugin, sys; print(sorted(n for n in {EXPORT_MODULES!r} if n in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


class _NotPhoenix(http.server.BaseHTTPRequestHandler):
    """Answers /healthz like Phoenix and 404 to everything else: a wrong URL that looks alive."""

    requests: list[str] = []  # noqa: RUF012

    def _answer(self) -> None:
        type(self).requests.append(f"{self.command} {self.path}")
        ok = self.path == "/healthz"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK" if ok else b"no")

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def not_phoenix() -> Iterator[str]:
    _NotPhoenix.requests.clear()
    with http_server(_NotPhoenix) as url:
        yield url


def test_a_server_that_is_not_phoenix_is_one_warning_with_the_url_and_the_fix(
    project: pytest.Pytester, not_phoenix: str
) -> None:
    project.makeini("[pytest]\naddopts = -p no:phoenix -p no:randomly\nllmtrace_phoenix_project = nightly\n")
    result = project.runpytest(
        f"--llmtrace-phoenix={not_phoenix}", "--llmtrace-phoenix-export", "--llmtrace-report=reports"
    )
    result.assert_outcomes(passed=2, warnings=1)  # one warning for the run, not one per test
    result.stdout.fnmatch_lines(
        [
            "llmtrace phoenix export: yes (command line), project nightly (ini), redact yes (default)",
            f"*PhoenixExportWarning: pytest-llmtrace: export to Phoenix is off for this run: POST {not_phoenix}"
            "/v1/projects answered 404 Not Found; fix: --llmtrace-phoenix must be Phoenix's base URL*",
        ]
    )
    assert " spans of " not in result.stdout.str()  # nothing was sent, so no summary line claims it
    cases = json.loads((project.path / "reports" / "results.json").read_text())["cases"]
    assert [c["phoenix_url"] for c in cases] == [None]
    # asked for the project, tried to create it, then gave up: no span was sent
    assert _NotPhoenix.requests == ["GET /healthz", "GET /v1/projects/nightly", "POST /v1/projects"]


def test_a_project_name_phoenix_cannot_take_is_a_usage_error_naming_its_source(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMTRACE_PHOENIX_EXPORT", "yes")
    monkeypatch.setenv("LLMTRACE_PHOENIX_PROJECT", "team/nightly")
    result = project.runpytest("--co", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: LLMTRACE_PHOENIX_PROJECT 'team/nightly': Phoenix project names used in its REST API cannot "
            "hold /; fix: choose another name"
        ]
    )


def test_xdist_workers_export_into_the_project_the_controller_named(pytester: pytest.Pytester) -> None:
    """The hand-over xdist makes, with real configs: a worker does not name a project of its own (its clock may have
    moved to the next second), and the controller's summary adds up the workers'."""
    pytester.makeini("[pytest]\naddopts = -p no:phoenix -p no:randomly\n")
    controller = pytester.parseconfigure("--llmtrace-phoenix-export")
    node = SimpleNamespace(config=controller, workerinput={})
    export.configure_node(node)
    named = node.workerinput[WORKER_KEY]
    assert re.fullmatch(r"llmtrace-\d{8}T\d{6}Z", named["project"])  # no git here: no revision in the name
    worker = pytester.parseconfig("--llmtrace-phoenix-export")
    worker.workerinput = {**node.workerinput, "workerid": "gw1"}  # type: ignore[attr-defined]
    assert PhoenixExport.from_config(worker).run == RunAttributes(named["project"], None, "gw1")
    for sent in ({"tests": 2, "spans": 6, "annotations": 2, "project_url": "http://px/projects/P"}, {"tests": 1}):
        export.testnodedown(SimpleNamespace(config=controller, workeroutput={WORKER_KEY: json.dumps(sent)}))
    line = export.get_state(controller).summary_line()
    assert line == (
        f"llmtrace phoenix export: 6 spans of 3 tests and 2 verdict annotations sent to project {named['project']}: "
        "http://px/projects/P"
    )
