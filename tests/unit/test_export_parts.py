"""Export to Phoenix without Phoenix: project names, UI links, what one test sends (real SDK spans, encoded by the
real OTLP protobuf encoder), verdict texts, and the REST client's one-line errors against real local sockets."""

from __future__ import annotations

import http.server
import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode
from support import http_server

from pytest_llmtrace.checks.outcome import CaseOutcome, CheckResult, ReplayMiss
from pytest_llmtrace.results.case_record import read_case
from pytest_llmtrace.results.summary import summary_markdown
from pytest_llmtrace.services.base import free_port
from pytest_llmtrace.sinks.naming import check_project_name, project_url, run_project_name, trace_url
from pytest_llmtrace.sinks.phoenix_rest import ExportError, PhoenixRest
from pytest_llmtrace.sinks.spans import (
    GIT_REVISION,
    PROJECT,
    TEST_NODEID,
    XDIST_WORKER,
    RunAttributes,
    prepare,
    roots,
    verdict,
    verdict_annotations,
)
from pytest_llmtrace.sources.redact import Redactor

API_KEY = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1w"
REDACTOR = Redactor(key=b"k" * 32)  # the session's, keyed by the project's key file
PLACEHOLDER = REDACTOR.text(API_KEY)
RUN = RunAttributes("llmtrace-20261201T101502Z-3c418b8", "3c418b8ca3064cffb1a4c385c63ae89c788d74e1", "gw1")

# -- naming and links -------------------------------------------------------------------------------------------------


def test_the_run_project_is_named_for_its_utc_time_and_short_revision() -> None:
    berlin = timezone(timedelta(hours=1))
    when = datetime(2026, 12, 1, 11, 15, 2, tzinfo=berlin)
    assert run_project_name(when, "3c418b8ca3064cffb1a4c385c63ae89c788d74e1") == "llmtrace-20261201T101502Z-3c418b8"
    assert run_project_name(when, None) == "llmtrace-20261201T101502Z"


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("team/nightly", "cannot hold /"),
        ("run?1#2", "cannot hold # or ?"),
        ("", "cannot be empty"),
        (" nightly", "cannot start or end with spaces"),
    ],
)
def test_project_names_phoenix_cannot_take_in_a_url_are_refused(name: str, problem: str) -> None:
    assert problem in (check_project_name(name) or "")


def test_a_plain_project_name_is_accepted() -> None:
    assert check_project_name("nightly-main") is None


def test_links_use_phoenixs_ui_route_with_the_project_id_and_the_otel_trace_id() -> None:
    base = "http://127.0.0.1:6006/"
    assert project_url(base, "UHJvamVjdDoxMA==") == "http://127.0.0.1:6006/projects/UHJvamVjdDoxMA=="
    assert (
        trace_url(base, "UHJvamVjdDoy", "cbde2454abae5de78f0369f2bc31e15b")
        == "http://127.0.0.1:6006/projects/UHJvamVjdDoy/traces/cbde2454abae5de78f0369f2bc31e15b"
    )


# -- what one test sends ----------------------------------------------------------------------------------------------


def _recorded() -> list[ReadableSpan]:
    """A root with a credential, a child that failed quoting a DSN, and a span whose parent the test never saw."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "gateway", "db.password": "hunter22"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("session fixture"):  # ends outside the test: not among its spans
        exporter.clear()
        with (
            tracer.start_as_current_span("handle", attributes={"input.value": "hi", "api_key": API_KEY}),
            tracer.start_as_current_span("sql") as sql,
        ):
            sql.set_status(Status(StatusCode.ERROR, "cannot connect to postgresql://app:s3cret@db/shop"))
            sql.add_event("exception", {"exception.message": f"Bearer {API_KEY}"})
        spans = list(exporter.get_finished_spans())
    return spans


def test_the_exported_spans_are_redacted_and_carry_the_run_and_the_test() -> None:
    spans = _recorded()
    sent = prepare(spans, RUN, "tests/test_app.py::test_tiers", REDACTOR)
    by_name = {s.name: s for s in sent}
    root, sql = by_name["handle"], by_name["sql"]
    assert root.attributes is not None
    assert sql.attributes is not None
    assert root.attributes["api_key"] in ("***", PLACEHOLDER)  # a key by its shape, like capture, or by its name
    assert root.attributes["input.value"] == "hi"
    assert root.attributes[TEST_NODEID] == "tests/test_app.py::test_tiers"  # Phoenix drops the resource: root too
    assert root.attributes[GIT_REVISION] == RUN.revision
    assert TEST_NODEID not in sql.attributes
    assert sql.status.status_code is StatusCode.ERROR
    description = sql.status.description or ""
    assert re.fullmatch(r"cannot connect to postgresql://app:<PASSWORD:[0-9a-f]{8}>@db/shop", description)
    assert API_KEY not in str(sql.events[0].attributes)
    for span in sent:
        resource = span.resource.attributes
        assert resource[PROJECT] == RUN.project
        assert resource[TEST_NODEID] == "tests/test_app.py::test_tiers"
        assert resource[XDIST_WORKER] == "gw1"
        assert resource["service.name"] == "gateway"
        assert resource["db.password"] == "***"
    assert [(s.context, s.parent) for s in sent] == [(s.context, s.parent) for s in spans]


def test_the_exported_spans_encode_as_otlp_protobuf_without_a_secret() -> None:
    wire = encode_spans(prepare(_recorded(), RUN, "t.py::t")).SerializeToString()
    assert RUN.project.encode() in wire
    assert API_KEY.encode() not in wire
    assert b"hunter22" not in wire
    assert b"s3cret" not in wire


def test_roots_are_the_spans_whose_parent_the_test_did_not_record() -> None:
    spans = _recorded()
    assert [s.name for s in roots(spans)] == ["handle"]  # its parent, the session fixture's span, is not in the test


def test_without_git_or_xdist_those_attributes_are_absent() -> None:
    sent = prepare(_recorded(), RunAttributes("p"), "t.py::t")
    assert all(GIT_REVISION not in s.resource.attributes and XDIST_WORKER not in s.resource.attributes for s in sent)


# -- verdicts ---------------------------------------------------------------------------------------------------------


def _outcome(case_id: str = "t.py::t", **changes: Any) -> CaseOutcome:
    return CaseOutcome(case_id, "test", **changes)


def test_a_passed_verdict_names_the_checks_that_ran() -> None:
    judged = verdict([_outcome(checks=(CheckResult("sql", "passed"), CheckResult("tokens", "passed")))])
    assert (judged.label, judged.explanation) == ("passed", "passed: sql, tokens")


def test_a_failed_verdict_explains_with_each_findings_first_line_redacted() -> None:
    failed = _outcome(
        app_error=f"RuntimeError: key {API_KEY} refused\nTraceback ...",
        replay_misses=(ReplayMiss("prompt_changed", "no recorded call answers\n--- diff"),),
        checks=(
            CheckResult("sql", "failed", "the SQL does not execute: column c.segment does not exist"),
            CheckResult("latency", "passed"),
        ),
    )
    judged = verdict([failed], REDACTOR)
    assert judged.label == "failed"
    assert judged.explanation.splitlines() == [
        f"app error: RuntimeError: key {PLACEHOLDER} refused",
        "replay prompt_changed: no recorded call answers",
        "[sql] the SQL does not execute: column c.segment does not exist",
    ]


def test_several_outcomes_in_one_test_are_told_apart_by_case() -> None:
    judged = verdict(
        [_outcome("a", checks=(CheckResult("tokens", "failed", "over"),)), _outcome("b", checks=())],
    )
    assert judged.explanation == "a: [tokens] over"


def test_annotations_follow_phoenixs_span_annotation_schema() -> None:
    items = verdict_annotations(["00f067aa0ba902b7"], verdict([_outcome()]), "t.py::t")
    assert items == [
        {
            "span_id": "00f067aa0ba902b7",
            "name": "llmtrace.verdict",
            "annotator_kind": "CODE",
            "result": {"label": "passed", "score": 1.0, "explanation": "passed: no check failed"},
            "metadata": {"nodeid": "t.py::t"},
            "identifier": "t.py::t",
        }
    ]


def test_summary_md_links_failing_cases_only_when_the_run_was_exported() -> None:
    case = read_case({"case_id": "error_syntax", "verdict": "failed", "app_error": "boom", "phoenix_url": None})
    assert "| case | verdict | why |\n|---|---|---|\n| `error_syntax` | failed | `boom` |\n" in summary_markdown(
        [case], []
    )
    linked = read_case({**case, "phoenix_url": "http://px/projects/P/traces/T"})
    assert "| `error_syntax` | failed | `boom` | [trace](http://px/projects/P/traces/T) |" in summary_markdown(
        [linked], []
    )
    hostile = read_case({**case, "phoenix_url": "javascript:alert(1)"})
    assert "javascript" not in summary_markdown([hostile], [])


# -- the REST client against real sockets -----------------------------------------------------------------------------


class _Phoenixish(http.server.BaseHTTPRequestHandler):
    status = 401
    seen: list[dict[str, str]] = []  # noqa: RUF012  # the headers each request carried

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers))
        body = json.dumps({"detail": "Invalid token"}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def refusing_server() -> Iterator[str]:
    with http_server(_Phoenixish) as url:
        yield url


def test_a_refused_api_key_is_one_line_with_the_fix_and_never_the_key(refusing_server: str) -> None:
    _Phoenixish.seen.clear()
    with pytest.raises(ExportError) as excinfo:
        PhoenixRest(refusing_server, api_key=API_KEY).project_id("p")
    message = str(excinfo.value)
    assert message == (
        f"Phoenix at {refusing_server} answered 401 Unauthorized; fix: PHOENIX_API_KEY is set but this Phoenix "
        "refused it; set it to a valid key (Settings > API Keys)"
    )
    assert excinfo.value.status == 401
    assert _Phoenixish.seen[0]["Authorization"] == f"Bearer {API_KEY}"  # sent, and only there


def test_an_unreachable_phoenix_is_one_line_naming_the_url_and_the_fix() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ExportError) as excinfo:
        PhoenixRest(url + "/", timeout=2).project_id("p")
    assert str(excinfo.value).startswith(f"cannot reach Phoenix at {url} (")
    assert str(excinfo.value).endswith(
        "fix: start Phoenix there, point --llmtrace-phoenix at a running one, or leave out --llmtrace-phoenix-export"
    )
    assert excinfo.value.status is None
