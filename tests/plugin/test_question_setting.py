"""``llmtrace_question`` as users meet it: a malformed source stops the run, a trace without a question fails its case
saying where it looked, and the app gets the golden Trace only when it asks for it by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pytest_llmtrace.pytest.golden import ask_app
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.otlp import write_trace
from pytest_llmtrace.trace.span import Span

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def test_a_malformed_question_source_is_a_usage_error_naming_the_knob(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\naddopts = -p no:phoenix\nllmtrace_question = app.request:body..q\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: ini llmtrace_question: question source 'app.request:body..q': cannot read the JSON path at '.q'*"]
    )

    from_env = pytester.runpytest("--llmtrace-question=llm.last_user_message:0")
    from_env.stderr.fnmatch_lines(
        ["ERROR: --llmtrace-question: question source 'llm.last_user_message:0': llm.last_user_message takes no *"]
    )


def test_a_case_without_a_question_fails_naming_the_sources_tried_and_the_root_attributes(
    pytester: pytest.Pytester, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMTRACE_POSTGRES", postgres_url)  # the session's server, not one of the inner run's own
    root = Span(
        trace_id=TRACE_ID,
        span_id="00000000000000a1",
        parent_span_id=None,
        name="text2sql.workflow",
        start_time_unix_nano=1_000_000,
        end_time_unix_nano=9_000_000,
        attributes={"traceloop.entity.inputs": '{"args": ["How many?"]}', "app.user": "u-1"},
    )
    write_trace(Trace([root]), pytester.path / "golden_traces" / "no_question.json")
    pytester.makeini("[pytest]\naddopts = -p no:phoenix\nllmtrace_target = nowhere:app\n")

    result = pytester.runpytest("golden_traces")

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "llmtrace question: the first text from input.value, traceloop.entity.input, langfuse.trace.input, "
            "langfuse.observation.input, gen_ai.prompt, llm.last_user_message (default)",
            "*no_question.json: no question to replay: tried input.value (absent); traceloop.entity.input (absent); "
            "langfuse.trace.input (absent); langfuse.observation.input (absent); gen_ai.prompt (absent); "
            "llm.last_user_message (the trace has no LLM call). The root span 'text2sql.workflow' has the attributes: "
            "traceloop.entity.inputs, app.user. traceloop.entity.input: did you mean 'traceloop.entity.inputs'? "
            "Set llmtrace_question *",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def golden() -> Trace:
    return Trace([])


@pytest.mark.parametrize(
    ("app", "gets_trace"),
    [
        (lambda question, trace: (question, trace), True),
        (lambda question, *, trace=None: (question, trace), True),
        (lambda question, user_id=None: (question, user_id), False),  # an optional argument is not the trace
        (lambda question, **kwargs: (question, kwargs.get("trace")), False),  # only a parameter named trace
        (lambda question: (question, None), False),
    ],
)
def test_the_app_gets_the_golden_trace_only_through_a_parameter_named_trace(
    app: Callable[..., tuple[str, Any]], gets_trace: bool
) -> None:
    recorded = golden()
    question, second = ask_app(app, "How many?", recorded)
    assert question == "How many?"
    assert (second is recorded) is gets_trace
