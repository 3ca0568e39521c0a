"""The service's request template and the routing of received spans to cases: pure rules, no service needed."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from pytest_llmtrace.services.app_request import RequestTemplate, TemplateError
from pytest_llmtrace.services.app_service import _executable, parse_command, parse_ready
from pytest_llmtrace.services.span_router import UNSURE_QUIET_S, SpanRouter, app_subtree
from pytest_llmtrace.trace.model import Span


def _span(name: str, trace_id: str, span_id: str, parent: str | None, start: int = 0) -> Span:
    return Span(trace_id, span_id, parent, name, start, start + 10)


T1, T2 = "1" * 32, "2" * 32


# -- the request template -----------------------------------------------------------------------------------------


def test_fields_are_json_string_values_and_cannot_break_the_body() -> None:
    template = RequestTemplate.parse('POST /v1/ask {"question": "{question}", "note": "from {user_id}!"}')
    hostile = 'x", "admin": true, "y": "\\\n\u2028'
    body = json.loads(template.render({"question": hostile, "user_id": 'a"b'}))
    assert body == {"question": hostile, "note": 'from a"b!'}


def test_user_and_session_ids_and_any_root_attribute_come_from_the_golden_root() -> None:
    template = RequestTemplate.parse(
        'POST /ask {"q": "{question}", "u": "{user_id}", "s": "{session_id}", "t": "{tenant}"}'
    )
    values = template.values("Q?", {"user.id": "u1", "session.id": "s1", "tenant": 7})
    assert values == {"question": "Q?", "user_id": "u1", "session_id": "s1", "tenant": "7"}


def test_a_field_the_golden_root_lacks_names_it_and_the_fix() -> None:
    template = RequestTemplate.parse('POST /ask {"u": "{user_id}"}')
    with pytest.raises(TemplateError, match=r"names \{user_id\}, but this golden trace's root span has no 'user.id'"):
        template.values("Q?", {"input.value": "Q?"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("/v1/ask", "expected 'METHOD /path"),
        ("FETCH /v1/ask", "the method 'FETCH' is not one of"),
        ("POST v1/ask", "must start with '/'"),
        ('POST /v1/ask {"question": {question}}', "is not JSON once its fields are filled in"),
        ('POST /v1/ask {"question": "{question}"', "is not JSON once its fields are filled in"),
    ],
)
def test_a_template_that_does_not_parse_says_why(text: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message.replace("(", r"\(").replace("{", r"\{")):
        RequestTemplate.parse(text)


def test_headers_are_name_value_lines_and_a_bad_one_is_not_echoed() -> None:
    template = RequestTemplate.parse("GET /ask", "X-Tenant: acme\nAuthorization: Bearer s3cret")
    assert template.headers == (("X-Tenant", "acme"), ("Authorization", "Bearer s3cret"))
    with pytest.raises(TemplateError) as excinfo:
        RequestTemplate.parse("GET /ask", "Bearer s3cret")
    assert "line 1" in str(excinfo.value)
    assert "s3cret" not in str(excinfo.value)


def test_command_and_readiness_settings() -> None:
    assert parse_command("uvicorn server:app --host 127.0.0.1 --port {port}")[-1] == "{port}"
    assert parse_command("node 'my server.js' --listen=127.0.0.1:{port}")[1] == "my server.js"
    with pytest.raises(ValueError, match=r"has no \{port\}"):
        parse_command("uvicorn server:app")
    with pytest.raises(ValueError, match="cannot split"):
        parse_command("uvicorn 'server:app --port {port}")
    assert parse_ready("GET /healthz") == "/healthz"
    assert parse_ready("") is None
    with pytest.raises(ValueError, match="expected 'GET /path'"):
        parse_ready("POST /healthz")


# -- routing -----------------------------------------------------------------------------------------------------


def test_by_trace_id_the_case_gets_its_trace_and_nothing_else() -> None:
    router = SpanRouter("auto", quiet_s=0.01)
    router.deliver([_span("GET /healthz", T1, "a" * 16, None)])  # before any case: a readiness probe
    case = router.begin()
    root = _span("POST /v1/ask", case.trace_id, "b" * 16, case.parent_span_id)
    child = _span("text2sql.request", case.trace_id, "c" * 16, "b" * 16)
    router.deliver([child, _span("cron.job", T2, "d" * 16, None)])
    router.deliver([root])
    collected = router.collect(case, wait_s=5)
    assert collected.how == "trace id"
    assert collected.complete
    assert {span.name for span in collected.spans} == {"POST /v1/ask", "text2sql.request"}
    assert next(s for s in collected.spans if s.name == "POST /v1/ask").parent_span_id is None
    assert router.unattributed == 2  # the probe and the background job
    router.deliver([_span("late", case.trace_id, "e" * 16, "b" * 16)])
    assert router.unattributed == 3  # after its case closed


def test_without_propagation_the_case_window_takes_its_spans() -> None:
    router = SpanRouter("auto", quiet_s=0.01)
    case = router.begin()
    router.deliver([_span("text2sql.request", T2, "a" * 16, None), _span("sql.execute", T2, "b" * 16, "a" * 16)])
    collected = router.collect(case, wait_s=5)
    assert (collected.how, collected.complete, len(collected.spans)) == ("time window", True, 2)
    assert router.cases_by == {"trace id": 0, "time window": 1, "none": 0}


def test_traceparent_only_takes_no_other_trace() -> None:
    router = SpanRouter("traceparent", quiet_s=0.01)
    case = router.begin()
    router.deliver([_span("text2sql.request", T2, "a" * 16, None)])
    collected = router.collect(case, wait_s=0.05)
    assert (collected.how, collected.spans, router.unattributed) == ("none", (), 1)


def test_a_case_waits_for_its_root_then_for_quiet() -> None:
    router = SpanRouter("auto", quiet_s=0.05)
    case = router.begin()
    router.deliver([_span("sql.execute", case.trace_id, "c" * 16, "b" * 16)])
    later = threading.Timer(0.2, router.deliver, ([_span("root", case.trace_id, "b" * 16, case.parent_span_id)],))
    later.start()
    collected = router.collect(case, wait_s=10)
    later.join()
    assert collected.complete
    assert [span.name for span in collected.spans] == ["sql.execute", "root"]


def test_the_golden_roots_subtree_is_the_case_framework_spans_around_it_are_left_out() -> None:
    spans = [
        _span("POST /v1/ask", T1, "a" * 16, None),
        _span("fastapi.endpoint", T1, "b" * 16, "a" * 16),
        _span("text2sql.request", T1, "c" * 16, "b" * 16),
        _span("sql.execute", T1, "d" * 16, "c" * 16),
        _span("fastapi.dependencies", T1, "e" * 16, "a" * 16),
    ]
    kept, left_out = app_subtree(spans, "text2sql.request")
    assert [(s.name, s.parent_span_id) for s in kept] == [("text2sql.request", None), ("sql.execute", "c" * 16)]
    assert left_out == 3
    assert app_subtree(spans, "POST /v1/ask") == (tuple(spans), 0)
    assert app_subtree(spans, "not there") == (tuple(spans), 0)


def test_a_command_not_on_the_path_is_found_beside_this_python(tmp_path: Path) -> None:
    """``.venv/bin/pytest`` run without activating the venv: its ``uvicorn`` is not on the PATH, but next to Python."""
    beside = Path(sys.executable).parent
    tool = next(p.name for p in sorted(beside.iterdir()) if p.name.startswith("pytest") and os.access(p, os.X_OK))
    assert _executable(tool, str(tmp_path)) == str(beside / tool)
    assert _executable("python3", os.environ["PATH"]) == "python3"  # on the PATH: left to it
    assert _executable("./serve.sh", str(tmp_path)) == "./serve.sh"  # a path: as given
    assert _executable("no-such-tool", str(tmp_path)) == "no-such-tool"  # the start error says it cannot be run


def test_once_the_service_continued_traceparent_other_traces_are_never_a_cases() -> None:
    router = SpanRouter("auto", quiet_s=0.01)
    first = router.begin()
    router.deliver([_span("root", first.trace_id, "a" * 16, first.parent_span_id)])
    assert router.collect(first, wait_s=5).how == "trace id"
    second = router.begin()
    router.deliver([_span("cron.job", T2, "b" * 16, None)])  # a background job's trace, while the case is open
    later = threading.Timer(0.05, router.deliver, ([_span("root", second.trace_id, "c" * 16, second.parent_span_id)],))
    later.start()
    collected = router.collect(second, wait_s=5)
    later.join()
    assert (collected.how, [s.name for s in collected.spans]) == ("trace id", ["root"])
    assert router.unattributed == 1


def test_before_it_is_known_another_trace_waits_longer_for_the_cases_own_batch() -> None:
    """The first case: another trace's root is in, but the case's own spans may be a batch behind; the window is
    taken only after the longer quiet (a lower bound the code guarantees, not a race), and then kept."""
    router = SpanRouter("auto", quiet_s=0.01)
    case = router.begin()
    router.deliver([_span("text2sql.request", T2, "b" * 16, None)])
    started = time.monotonic()
    collected = router.collect(case, wait_s=5)
    assert time.monotonic() - started >= UNSURE_QUIET_S
    assert (collected.how, router.learned) == ("time window", "time window")
