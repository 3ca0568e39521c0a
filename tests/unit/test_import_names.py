"""``llmtrace import`` names golden files after the question, wherever the app put it (issue 11)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest
import support

from pytest_llmtrace.cli import main
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.otlp import write_trace
from pytest_llmtrace.trace.span import AttrValue, Span

TRACE_ID = "5e1f0c2a9b8d47e6a1c3d5e7f9012345"
QUESTION = "How many customers are in Berlin?"
SLUG = "how-many-customers-are-in-berlin-5e1f0c2a.json"


def span(span_id: str, parent: str | None, name: str, attrs: Mapping[str, AttrValue]) -> Span:
    return support.span(span_id, parent, name=name, attrs=attrs, start_ms=int(span_id), end_ms=50, trace_id=TRACE_ID)


def export(tmp_path: Path, root_attrs: Mapping[str, AttrValue], *, user: str = "Berlin customers, please") -> Path:
    trace = Trace(
        [
            span("1", None, "text2sql.workflow", root_attrs),
            span(
                "2",
                "1",
                "ollama.chat",
                {
                    "llm.request.type": "chat",
                    "gen_ai.request.model": "qwen-sql-prod",
                    "gen_ai.prompt.0.role": "user",
                    "gen_ai.prompt.0.content": user,
                },
            ),
        ]
    )
    return write_trace(trace, tmp_path / "export.json")


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_workflow_trace_is_named_after_its_traceloop_entity_input(tmp_path: Path) -> None:
    source = export(tmp_path, {"traceloop.entity.input": json.dumps({"args": [QUESTION], "kwargs": {}})})

    assert main(["import", str(source), "--out", str(tmp_path / "golden")]) == 0
    assert names(tmp_path / "golden") == [SLUG]


def test_without_a_root_input_the_name_is_the_first_llm_calls_user_message(tmp_path: Path) -> None:
    source = export(tmp_path, {}, user=QUESTION)

    assert main(["import", str(source), "--out", str(tmp_path / "golden")]) == 0
    assert names(tmp_path / "golden") == [SLUG]


def test_question_sources_from_the_flag_and_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = export(tmp_path, {"app.request": json.dumps({"q": QUESTION}), "input.value": "raw body"})

    assert main(["import", str(source), "--out", str(tmp_path / "flag"), "--question", "app.request:q"]) == 0
    assert names(tmp_path / "flag") == [SLUG]

    monkeypatch.setenv("LLMTRACE_QUESTION", "app.request:q input.value")
    assert main(["import", str(source), "--out", str(tmp_path / "env")]) == 0
    assert names(tmp_path / "env") == [SLUG]


def test_with_no_question_the_root_span_name_is_the_slug(tmp_path: Path) -> None:
    source = export(tmp_path, {})

    assert main(["import", str(source), "--out", str(tmp_path / "golden"), "--question", "input.value"]) == 0
    assert names(tmp_path / "golden") == ["text2sql-workflow-5e1f0c2a.json"]


def test_a_malformed_question_source_is_one_error_line_naming_where_it_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = export(tmp_path, {})
    monkeypatch.setenv("LLMTRACE_QUESTION", "app.request:a..b")

    assert main(["import", str(source), "--out", str(tmp_path / "golden")]) == 2
    assert capsys.readouterr().err.startswith("error: LLMTRACE_QUESTION: question source 'app.request:a..b': cannot ")
    assert not (tmp_path / "golden").exists()
