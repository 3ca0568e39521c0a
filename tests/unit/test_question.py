"""Question sources: parsing ``llmtrace_question`` and finding the question in a trace, first text wins."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
import support

from pytest_llmtrace.sources.capture.filters import dedupe_key
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.question import (
    DEFAULT_SOURCES,
    QuestionSource,
    QuestionSourceError,
    find_question,
    parse_sources,
)
from pytest_llmtrace.trace.span import AttrValue, Span

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
QUESTION = "How many customers?"


def span(
    span_id: str, parent: str | None = None, *, name: str = "s", attrs: Mapping[str, AttrValue] | None = None
) -> Span:
    return support.span(span_id, parent, name=name, attrs=attrs, start_ms=int(span_id), end_ms=100)


def workflow(args: list[object], kwargs: dict[str, object] | None = None) -> Span:
    """A root span as OpenLLMetry's @workflow(name="text2sql") writes it (traceloop-sdk 0.62 decorators/base.py)."""
    return span(
        "1",
        name="text2sql.workflow",
        attrs={
            "traceloop.span.kind": "workflow",
            "traceloop.entity.name": "text2sql",
            "traceloop.entity.input": json.dumps({"args": args, "kwargs": kwargs or {}}),
        },
    )


def llm(parent: str = "1", user: str = QUESTION, span_id: str = "2") -> Span:
    return span(
        span_id,
        parent,
        name="ollama.chat",
        attrs={
            "llm.request.type": "chat",
            "gen_ai.request.model": "m",
            "gen_ai.prompt.0.role": "system",
            "gen_ai.prompt.0.content": "You write SQL.",
            "gen_ai.prompt.1.role": "user",
            "gen_ai.prompt.1.content": user,
        },
    )


def test_default_sources_are_the_builtins_in_order() -> None:
    assert [str(s) for s in parse_sources(DEFAULT_SOURCES)] == [
        "input.value",
        "traceloop.entity.input",
        "langfuse.trace.input",
        "langfuse.observation.input",
        "gen_ai.prompt",
        "llm.last_user_message",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("traceloop.entity.input:kwargs.question", ("traceloop.entity.input", ("kwargs", "question"))),
        ("traceloop.entity.input:args[1]", ("traceloop.entity.input", ("args", "1"))),
        ("app.request:$.body.items[0].q", ("app.request", ("body", "items", "0", "q"))),
        ("app.request:args.0", ("app.request", ("args", "0"))),
        ('app.request:["key.with.dots"]', ("app.request", ("key.with.dots",))),
        ("input.value", ("input.value", None)),
    ],
)
def test_a_source_is_an_attribute_with_an_optional_json_path(text: str, expected: tuple[str, object]) -> None:
    (source,) = parse_sources(text)
    assert (source.attribute, source.path) == expected


def test_sources_are_separated_by_spaces_commas_or_lines() -> None:
    parsed = parse_sources("app.q:x,\n  input.value  llm.last_user_message")
    assert [str(s) for s in parsed] == ["app.q:x", "input.value", "llm.last_user_message"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no question source given"),
        (":kwargs.q", "has no attribute name"),
        ("app.q:", "empty JSON path"),
        ("app.q:a..b", "cannot read the JSON path at '.b'"),
        ("app.q:a[x]", "cannot read the JSON path at '[x]'"),
        ("llm.last_user_message:0", "takes no JSON path"),
    ],
)
def test_malformed_sources_name_the_source_and_the_fix(text: str, message: str) -> None:
    with pytest.raises(QuestionSourceError, match=message.replace("[", r"\[").replace(".", r"\.")):
        parse_sources(text)


def test_input_value_wins_when_present() -> None:
    root = span("1", attrs={"input.value": QUESTION, "traceloop.entity.input": json.dumps({"args": ["other"]})})
    found = Trace([root]).question()
    assert (found.text, str(found.source)) == (QUESTION, "input.value")


def test_traceloop_entity_input_args0_then_the_only_text_kwarg() -> None:
    by_arg = Trace([workflow([QUESTION])]).question()
    assert (by_arg.text, str(by_arg.source)) == (QUESTION, "traceloop.entity.input")
    assert [(str(s), why) for s, why in by_arg.tried] == [("input.value", "absent")]

    by_kwarg = Trace([workflow([], {"question": QUESTION, "limit": 5})]).question()
    assert by_kwarg.text == QUESTION


def test_a_named_kwarg_and_a_json_path_into_any_attribute() -> None:
    root = workflow(["u-1"], {"question": QUESTION, "locale": "de"})
    assert Trace([root]).question("traceloop.entity.input:kwargs.question").text == QUESTION
    nested = span("1", attrs={"app.request": json.dumps({"body": {"items": [{"q": QUESTION}]}})})
    assert Trace([nested]).question("app.request:body.items[0].q").text == QUESTION
    structured = span("1", attrs={"app.request": {"q": QUESTION}})  # an OTLP kvlist value, not JSON text
    assert Trace([structured]).question("app.request:q").text == QUESTION


def test_last_user_message_of_the_first_llm_call_in_any_convention() -> None:
    trace = Trace([span("1", name="root"), llm(user=QUESTION), llm(user="later question", span_id="3")])
    found = trace.question()
    assert (found.text, str(found.source)) == (QUESTION, "llm.last_user_message")


def test_first_text_wins_and_non_text_values_are_skipped_with_a_reason() -> None:
    root = span("1", attrs={"app.id": 42, "app.blank": "  ", "app.q": QUESTION})
    found = find_question(root, (), "app.id app.blank app.q")
    assert found.text == QUESTION
    assert [why for _, why in found.tried] == ["not text (int)", "empty"]


def test_no_question_names_every_source_tried_and_the_root_attributes() -> None:
    root = span("1", name="text2sql.workflow", attrs={"traceloop.entity.inputs": "{}", "app.user": "u-1"})
    found = Trace([root]).question("input.value traceloop.entity.input llm.last_user_message app.q:body.q")

    assert found.text is None
    message = found.explain()
    assert (
        "tried input.value (absent); traceloop.entity.input (absent); llm.last_user_message (the trace has no "
        in message
    )
    assert "app.q:body.q (absent)" in message
    assert "The root span 'text2sql.workflow' has the attributes: traceloop.entity.inputs, app.user." in message
    assert "traceloop.entity.input: did you mean 'traceloop.entity.inputs'?" in message
    assert "Set llmtrace_question" in message


@pytest.mark.parametrize(
    ("attrs", "source", "why"),
    [
        ({"app.q": "{not json"}, "app.q:q", "not JSON"),
        ({"app.q": json.dumps({"a": 1, "b": 2})}, "app.q:q", "the value has no 'q' (keys: a, b)"),
        ({"app.q": json.dumps({"a": [1]})}, "app.q:a[3]", ".a has no '3' (list)"),
        (
            {"traceloop.entity.input": json.dumps({"args": [{"x": 1}], "kwargs": {}})},
            "traceloop.entity.input",
            "name one",
        ),
        ({"traceloop.entity.input": "[" * 100_000}, "traceloop.entity.input", "not the JSON object @workflow writes"),
    ],
)
def test_why_a_source_yields_nothing(attrs: Mapping[str, AttrValue], source: str, why: str) -> None:
    found = find_question(span("1", attrs=attrs), (), source)
    assert found.text is None
    assert why in found.tried[0][1]


def test_a_source_prints_as_it_is_written() -> None:
    assert (
        str(QuestionSource("traceloop.entity.input", ("kwargs", "question")))
        == "traceloop.entity.input:kwargs.question"
    )
    assert str(QuestionSource("app.q", ("items", "0", "q"))) == "app.q:items[0].q"


def test_the_waterfall_shows_the_workflow_input_as_the_root_input() -> None:
    first = str(Trace([workflow([QUESTION])])).splitlines()[1]
    assert first.endswith(f"input={QUESTION!r}")


def test_captures_dedupe_key_finds_the_question_where_the_app_put_it() -> None:
    asked = Trace([workflow([QUESTION])])
    asked_again = Trace([workflow([QUESTION.upper() + "  "])])
    assert dedupe_key(asked, ("question",)) == ("how many customers",)
    assert dedupe_key(asked, ("question",)) == dedupe_key(asked_again, ("question",))
