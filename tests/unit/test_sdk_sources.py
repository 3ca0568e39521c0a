"""Langfuse and LangSmith traces, made by the real SDKs from tests/sdk_apps.py and sent to a local server, imported
and read through the conventions registry; the API shapes validated with the SDKs' own pydantic models."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmtrace.core.errors import TraceFormatError, TraceFormatWarning
from pytest_llmtrace.modelapi import OllamaAPIServer
from pytest_llmtrace.modelapi.scripted import ScriptedBackend
from pytest_llmtrace.sources.importing import import_file
from pytest_llmtrace.trace.model import Trace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sdk_apps import MODEL, SQL_ERROR, SYSTEM, langfuse_app, langsmith_app
from sdk_collector import Collected, collector

GOOD = "How many customers do we have in each tier?"
GOOD_SQL = "SELECT tier, count(*) AS customers FROM customers GROUP BY tier;"
BAD = "What is the revenue by region?"
BAD_SQL = "SELECT region, revenue FROM customers;"


@pytest.fixture(scope="module")
def ollama_url() -> Iterator[str]:
    with OllamaAPIServer(ScriptedBackend({GOOD: GOOD_SQL, BAD: BAD_SQL}, MODEL)) as server:
        yield server.url


@pytest.fixture(scope="module")
def langfuse_sent(ollama_url: str) -> Iterator[Collected]:
    with collector() as (url, got):
        client, answer, with_langchain = langfuse_app(url, ollama_url)
        answer(GOOD, user_id="u-1001")
        answer(BAD)
        with_langchain(GOOD)
        client.flush()
        client.shutdown()
        yield got


@pytest.fixture(scope="module")
def langsmith_sent(ollama_url: str) -> Iterator[Collected]:
    with collector() as (url, got):
        client, answer, with_langchain = langsmith_app(url, ollama_url)
        answer(GOOD)
        answer(BAD)
        with_langchain(GOOD)
        client.flush()
        yield got


def _write_jsonl(path: Path, documents: list[Any]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in documents))
    return path


def _by_root(traces: list[Trace]) -> dict[str, Trace]:
    return {t.root.name: t for t in traces}


# -- Langfuse's OpenTelemetry spans ----------------------------------------------------------------------------------


def test_langfuse_sdk_spans_are_read_through_the_conventions(langfuse_sent: Collected, tmp_path: Path) -> None:
    assert all(p.endswith("/api/public/otel/v1/traces") for m, p, _ in langfuse_sent.requests if m == "POST")
    imported = import_file(_write_jsonl(tmp_path / "langfuse.jsonl", langfuse_sent.otlp))
    assert len(imported.traces) == 3
    good = next(t for t in imported.traces if t.root.name == "text2sql" and t.question().text == GOOD)
    (call,) = good.llm_calls
    assert call.convention == "langfuse"
    assert (call.model, call.input_messages[0].content, call.input_messages[1].role) == (MODEL, SYSTEM, "user")
    assert call.output_text == GOOD_SQL
    assert call.prompt_tokens
    assert call.completion_tokens
    assert str(good.question().source) == "langfuse.observation.input"
    assert [s.text for s in good.sql_statements] == [GOOD_SQL]
    attrs = call.span.attributes
    assert attrs["gen_ai.usage.input_tokens"] == call.prompt_tokens  # kept beside the source's own
    assert attrs["gen_ai.usage.cost"] == pytest.approx(0.0004)
    assert attrs["gen_ai.server.time_to_first_token"] == pytest.approx(0.025, abs=0.002)
    assert json.loads(str(attrs["gen_ai.output.messages"]))[0]["parts"][0]["content"] == GOOD_SQL
    assert "langfuse.observation.usage_details" in attrs


def test_a_langfuse_sql_error_marked_by_level_is_a_failed_statement(langfuse_sent: Collected, tmp_path: Path) -> None:
    imported = import_file(_write_jsonl(tmp_path / "langfuse.jsonl", langfuse_sent.otlp))
    bad = next(t for t in imported.traces if t.question().text == BAD)
    (statement,) = bad.sql_statements
    assert (statement.ok, statement.error) == (False, SQL_ERROR)


def test_langfuse_langchain_handler_generation_is_an_llm_call(langfuse_sent: Collected, tmp_path: Path) -> None:
    imported = import_file(_write_jsonl(tmp_path / "langfuse.jsonl", langfuse_sent.otlp))
    trace = _by_root(imported.traces)["text2sql-langchain"]
    (call,) = trace.llm_calls
    assert call.convention == "langfuse"
    assert [m.role for m in call.input_messages] == ["system", "user"]
    assert call.output_text == GOOD_SQL
    assert trace.question().text == GOOD


# -- LangSmith's runs ------------------------------------------------------------------------------------------------


def test_langsmith_runs_posted_by_the_sdk_import_as_a_run_export(langsmith_sent: Collected, tmp_path: Path) -> None:
    from langsmith.schemas import Run

    runs = langsmith_sent.run_list()
    for run in runs:
        Run(**{**run, "id": run["id"]})  # the SDK's own model of a run accepts each one
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(runs))
    imported = import_file(path)
    assert imported.format == "LangSmith run export"
    assert len(imported.traces) == 3
    good = next(t for t in imported.traces if t.root.name == "text2sql" and t.question().text == GOOD)
    (call,) = good.llm_calls
    assert (call.convention, call.model, call.output_text) == ("langsmith", MODEL, GOOD_SQL)
    assert call.prompt_tokens
    assert call.span.attributes["gen_ai.usage.input_tokens"] == call.prompt_tokens
    assert [s.text for s in good.sql_statements] == [GOOD_SQL]
    bad = next(t for t in imported.traces if t.question().text == BAD)
    assert [(s.ok, SQL_ERROR in (s.error or "")) for s in bad.sql_statements] == [(False, True)]


def test_langsmith_langchain_runs_give_the_chat_model_call(langsmith_sent: Collected, tmp_path: Path) -> None:
    imported = import_file(_write_jsonl(tmp_path / "runs.jsonl", langsmith_sent.run_list()))
    trace = _by_root(imported.traces)["text2sql-langchain"]
    (call,) = trace.llm_calls
    assert call.output_text == GOOD_SQL
    assert [m.role for m in call.input_messages] == ["system", "user"]
    assert call.prompt_tokens
    assert call.completion_tokens
    assert trace.question().text == GOOD


def test_a_langsmith_run_tree_imports_with_its_children(langsmith_sent: Collected, tmp_path: Path) -> None:
    runs = langsmith_sent.run_list()
    root = next(r for r in runs if r.get("parent_run_id") is None and r["name"] == "text2sql")
    children = [
        {k: v for k, v in r.items() if k not in ("parent_run_id", "trace_id")}
        for r in runs
        if r.get("parent_run_id") == root["id"]
    ]
    tree = {k: v for k, v in root.items() if k != "trace_id"} | {"child_runs": children}
    path = tmp_path / "tree.json"
    path.write_text(json.dumps(tree))
    (trace,) = import_file(path).traces
    assert len(trace) == 3
    assert len(trace.children(trace.root)) == 2


def test_an_unknown_run_type_is_a_plain_span_with_a_warning(langsmith_sent: Collected, tmp_path: Path) -> None:
    runs = [dict(r) for r in langsmith_sent.run_list()]
    tool = next(r for r in runs if r["run_type"] == "tool")
    tool["run_type"] = "sql-runner"
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(runs))
    with pytest.warns(TraceFormatWarning, match=r"\$\[\d+\]\.run_type: run type 'sql-runner'.*plain span"):
        imported = import_file(path)
    assert sum(len(t) for t in imported.traces) == len(runs)


def test_a_malformed_run_names_the_file_the_path_and_what_was_expected(
    langsmith_sent: Collected, tmp_path: Path
) -> None:
    runs = [dict(r) for r in langsmith_sent.run_list()]
    runs[1]["start_time"] = 17
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(runs))
    with pytest.raises(TraceFormatError) as info:
        import_file(path)
    assert str(info.value).startswith(f"{path}: at $[1].start_time: expected a string")
