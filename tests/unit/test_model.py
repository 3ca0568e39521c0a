"""The trace model: one span, the views read from it (LLM call, SQL statement), the tree, and the waterfall."""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from pathlib import Path

import pytest
from support import span

from pytest_llmtrace.core.errors import TraceFormatError, TraceFormatWarning
from pytest_llmtrace.trace import views
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.render import render_waterfall
from pytest_llmtrace.trace.span import AttrValue, Span, SpanEvent, Status
from pytest_llmtrace.trace.views import LLMCall, Message, SqlStatement, llm_call

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PACKAGE = Path(__file__).resolve().parents[2] / "pytest_llmtrace"


def openinference_llm(span_id: str, parent: str | None = None, attrs: Mapping[str, AttrValue] | None = None) -> Span:
    oi: dict[str, AttrValue] = {"openinference.span.kind": "LLM", "llm.model_name": "qwen-sql-prod"}
    return span(span_id, parent, name="ChatOllama", start_ms=2, end_ms=8, attrs={**oi, **(attrs or {})})


def test_openinference_messages_are_rebuilt_in_numeric_index_order_and_parts_are_joined() -> None:
    attributes: dict[str, AttrValue] = {f"llm.input_messages.{i}.message.role": "user" for i in (0, 2, 10)}
    attributes.update({f"llm.input_messages.{i}.message.content": f"m{i}" for i in (0, 2, 10)})
    attributes["llm.input_messages.1.message.role"] = "user"
    attributes["llm.input_messages.1.message.contents.0.message_content.text"] = "part one, "
    attributes["llm.input_messages.1.message.contents.1.message_content.text"] = "part two"
    call = llm_call(openinference_llm("1", attrs=attributes))

    assert call is not None
    assert [m.content for m in call.input_messages] == ["m0", "part one, part two", "m2", "m10"]
    assert call.convention == "openinference"


def test_llm_call_reads_model_provider_parameters_and_counts_in_any_exported_type() -> None:
    call = llm_call(
        openinference_llm(
            "1",
            attrs={
                "llm.system": "openai",
                "llm.invocation_parameters": json.dumps({"temperature": 0}),
                "llm.token_count.prompt": "12",  # spec OTLP JSON: int64 as a string
                "llm.token_count.completion": 3.0,  # Phoenix dataframes: float64
                "llm.output_messages.0.message.role": "assistant",
                "llm.output_messages.0.message.content": "SELECT 1",
            },
        )
    )

    assert call is not None
    assert (call.model, call.provider) == ("qwen-sql-prod", "openai")
    assert call.invocation_parameters == {"temperature": 0}
    assert (call.prompt_tokens, call.completion_tokens, call.total_tokens) == (12, 3, 15)  # total filled in
    assert call.output_text == "SELECT 1"


def test_unreadable_invocation_parameters_are_empty_not_an_error() -> None:
    for raw in ("{not json", "[1, 2]", "[" * 100_000 + "]" * 100_000):
        call = llm_call(openinference_llm("1", attrs={"llm.invocation_parameters": raw}))
        assert call is not None
        assert call.invocation_parameters == {}


def test_a_recorded_total_is_kept_even_when_it_is_not_the_sum() -> None:
    attributes: dict[str, AttrValue] = {
        "llm.token_count.prompt": 5,
        "llm.token_count.completion": 5,
        "llm.token_count.total": 11,
    }
    call = llm_call(openinference_llm("1", attrs=attributes))
    assert call is not None
    assert call.total_tokens == 11


def test_a_span_no_convention_recognises_is_no_llm_call() -> None:
    plain = span("1", attrs={"llm.model_name": "qwen-sql-prod"})  # no openinference.span.kind
    assert llm_call(plain) is None
    assert Trace([plain]).llm_calls == ()
    assert LLMCall.from_span(plain).model == "qwen-sql-prod"  # an explicit request reads what is there


def test_a_new_convention_is_one_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """What issue 11's readers will do: one function, and the trace, sums and waterfall all see the call."""

    def read_toy(s: Span) -> LLMCall | None:
        if "toy.model" not in s.attributes:
            return None
        return LLMCall(
            span=s,
            model=str(s.attributes["toy.model"]),
            provider=None,
            input_messages=(Message("user", "q"),),
            output_messages=(),
            invocation_parameters={},
            prompt_tokens=7,
            completion_tokens=2,
            total_tokens=None,
            convention="toy",
        )

    monkeypatch.setitem(views.LLM_READERS, "toy", read_toy)
    trace = Trace([span("1", name="root"), span("2", "1", name="chat", start_ms=1, attrs={"toy.model": "m"})])

    (call,) = trace.llm_calls
    assert (call.convention, call.model, call.total_tokens) == ("toy", "m", 9)
    assert (trace.prompt_tokens, trace.completion_tokens, trace.total_tokens) == (7, 2, 9)
    assert "model=m  tokens=7+2" in render_waterfall(trace)


def test_sql_statement_prefers_the_stable_attribute_and_reads_the_error_from_the_exception_event() -> None:
    failed = span(
        "1",
        status=Status.ERROR,
        events=(SpanEvent("exception", 5, {"exception.message": 'relation "x" does not exist'}),),
        attrs={"db.query.text": "SELECT * FROM x", "db.statement": "old", "db.system": "postgresql"},
    )
    statement = SqlStatement.from_span(failed)

    assert statement is not None
    assert (statement.text, statement.system, statement.ok) == ("SELECT * FROM x", "postgresql", False)
    assert statement.error == 'relation "x" does not exist'
    assert SqlStatement.from_span(span("2")) is None
    ok = SqlStatement.from_span(span("3", attrs={"db.statement": "SELECT 1", "db.response.returned_rows": "1"}))
    assert ok is not None
    assert (ok.text, ok.returned_rows, ok.error) == ("SELECT 1", 1, None)


def test_the_tree_walks_depth_first_in_start_order() -> None:
    trace = Trace(
        [
            span("3", "1", name="sql", start_ms=5),
            span("1", name="root", end_ms=20),
            span("2", "1", name="llm", start_ms=1),
            span("4", "2", name="http", start_ms=2),
        ]
    )
    assert [(depth, s.name) for depth, s in trace.walk()] == [(0, "root"), (1, "llm"), (2, "http"), (1, "sql")]
    assert trace.parent(trace.get("4".rjust(16, "0"))) == trace.get("2".rjust(16, "0"))
    assert trace.duration_ms == 20.0


def test_a_missing_parent_is_a_warning_and_an_extra_root() -> None:
    with pytest.warns(TraceFormatWarning, match="parent span '0000000000000009'"):
        trace = Trace([span("1", name="root"), span("2", "9", name="orphan", start_ms=1)])
    assert [s.name for s in trace.roots] == ["root", "orphan"]
    assert trace.orphan_span_ids == {"2".rjust(16, "0")}


@pytest.mark.parametrize(
    ("spans", "expected"),
    [
        ([span("1"), span("1", start_ms=1)], "unique span ids"),
        ([span("1", "2"), span("2", "1")], "a parent chain that ends at a root span"),
        ([span("1", start_ms=5, end_ms=4)], "an end time at or after the start time"),
    ],
)
def test_a_broken_tree_is_a_format_error(spans: list[Span], expected: str) -> None:
    with pytest.raises(TraceFormatError, match=expected):
        Trace(spans, source="t.json")


def test_find_one_lists_what_the_trace_has() -> None:
    trace = Trace([span("1", name="root", attrs={"openinference.span.kind": "CHAIN"}), openinference_llm("2", "1")])
    assert trace.find_one(kind="llm").name == "ChatOllama"
    with pytest.raises(LookupError, match=r"found 0; the trace has: 'root' \(CHAIN\), 'ChatOllama' \(LLM\)"):
        trace.find_one("SELECT")


def test_printing_a_trace_shows_the_waterfall_with_the_key_attributes() -> None:
    trace = Trace(
        [
            span("1", name="request", end_ms=20, attrs={"input.value": "How many customers?"}),
            openinference_llm("2", "1", attrs={"llm.token_count.prompt": 40, "llm.token_count.completion": 6}),
            span(
                "3", "1", name="SELECT", start_ms=9, end_ms=None, status=Status.ERROR, attrs={"db.statement": "SELECT"}
            ),
        ]
    )
    lines = str(trace).splitlines()

    assert lines[0] == f"trace {TRACE_ID}  3 spans  20.0 ms"
    assert lines[1].startswith("request ")
    assert lines[1].endswith("input='How many customers?'")
    assert lines[2].startswith("  ChatOllama  LLM")
    assert lines[2].endswith("model=qwen-sql-prod  tokens=40+6")
    assert lines[3].startswith("  SELECT")
    assert lines[3].endswith("sql='SELECT'")
    assert "open  ERROR" in lines[3]
    assert render_waterfall(Trace([])) == "(no spans)"


def _imports(module: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize(
    ("module", "may_not_import"),
    [
        ("span", {"views", "render", "model"}),
        ("views", {"render", "model"}),
        ("render", {"model"}),
    ],
)
def test_trace_modules_depend_one_way(module: str, may_not_import: set[str]) -> None:
    """span <- views <- render <- model: the waterfall reads a trace through a protocol, not by importing it."""
    imported = _imports(PACKAGE / "trace" / f"{module}.py")
    assert not imported & {f"pytest_llmtrace.trace.{m}" for m in may_not_import}
