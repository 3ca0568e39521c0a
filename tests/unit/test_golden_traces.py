"""The shipped golden traces: every file reads, and each holds the gateway's shape (CHAIN root, LLM call, SQL).

They are the fixtures the plugin's own replay and checks are tested against, so a file that silently lost its SQL
span or token counts would make those tests pass for the wrong reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_llmtrace.trace.model import Status, Trace
from pytest_llmtrace.trace.otlp import read_trace

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "golden_traces"
CASES = {c["name"]: c for c in json.loads((ROOT / "fixtures" / "golden_cases.json").read_text())["cases"]}
FILES = sorted(GOLDEN.glob("*.json"))


def test_there_is_one_golden_file_per_scripted_case() -> None:
    assert len(FILES) >= 20
    assert {f.stem for f in FILES} == set(CASES)


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_golden_trace_has_the_gateway_shape(path: Path) -> None:
    trace = read_trace(path)
    case = CASES[path.stem]

    root = trace.root
    assert len(trace.roots) == 1
    assert (root.name, root.kind) == ("text2sql.request", "CHAIN")
    assert trace.input == case["question"]
    assert root.attributes.get("user.id") == case["user_id"]
    assert root.attributes.get("session.id") == case["session_id"]
    output = json.loads(trace.output or "")
    assert set(output) == {"sql", "rows", "error"}

    (llm,) = trace.llm_calls
    assert llm.span.parent_span_id == root.span_id
    assert (llm.model, llm.provider) == ("qwen-sql-prod", "ollama")
    assert [m.role for m in llm.input_messages] == ["system", "user"]
    assert llm.output_text == case["answer"]
    assert llm.prompt_tokens is not None
    assert llm.prompt_tokens > 0
    assert llm.completion_tokens is not None
    assert llm.total_tokens == llm.prompt_tokens + llm.completion_tokens

    (sql,) = trace.sql_statements
    assert sql.span.parent_span_id == root.span_id
    assert sql.system == "postgresql"
    assert sql.text == output["sql"]
    assert sql.error == output["error"]
    if sql.ok:
        assert sql.returned_rows == len(output["rows"])


def _trace(name: str) -> Trace:
    return read_trace(GOLDEN / f"{name}.json")


def test_error_cases_carry_postgres_message_and_sqlstate() -> None:
    errors = {p.stem: _trace(p.stem).sql_statements[0] for p in FILES if p.stem.startswith("error_")}
    assert {name: (s.span.attributes["db.response.status_code"], s.error) for name, s in errors.items()} == {
        "error_syntax": ("42601", 'syntax error at or near "LIMT"'),
        "error_unknown_column": ("42703", "column c.segment does not exist"),
        "error_unknown_table": ("42P01", 'relation "invoices" does not exist'),
    }
    assert all(s.span.status is Status.ERROR and s.span.exception_messages for s in errors.values())


def test_special_cases_are_what_their_names_say() -> None:
    fenced = _trace("fenced_largest_order")
    assert fenced.llm_calls[0].output_text.startswith("```sql")
    assert not fenced.sql_statements[0].text.startswith("```")
    assert _trace("destructive_delete_discounted_items").sql_statements[0].text.startswith("DELETE")
    slow = _trace("slow_higher_priced_items").sql_statements[0].span
    assert 1000 < slow.duration_ms < 10_000
