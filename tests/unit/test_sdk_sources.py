"""Langfuse and LangSmith traces, made by the real SDKs from tests/sdk_apps.py and sent to a local server, imported
and read through the conventions registry; the API shapes validated with the SDKs' own pydantic models."""

from __future__ import annotations

import contextlib
import http.server
import json
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmtrace.checks.runner import sql_of
from pytest_llmtrace.cli import main as llmtrace
from pytest_llmtrace.core.errors import TraceFormatError, TraceFormatWarning
from pytest_llmtrace.modelapi import OllamaAPIServer
from pytest_llmtrace.modelapi.scripted import ScriptedBackend
from pytest_llmtrace.sources.importing import import_file
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.otlp import read_trace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sdk_apps import MODEL, SQL_ERROR, SYSTEM, langfuse_app, langsmith_app
from sdktraced.collector import Collected, collector, langfuse_observations

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
        client, answer, with_langchain, streaming = langsmith_app(url, ollama_url)
        answer(GOOD)
        answer(BAD)
        with_langchain(GOOD)
        streaming(GOOD)
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
    assert len(imported.traces) == 4
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


def test_a_streamed_langsmith_run_keeps_its_first_token_time_and_cost(
    langsmith_sent: Collected, tmp_path: Path
) -> None:
    """The run's ``first_token_time`` (else its first ``new_token`` event) gives the time to the first token; the
    counts and cost LangSmith's server adds to an export (``prompt_tokens``, ``total_cost``) are kept, as its ``Run``
    model has them."""
    from langsmith.schemas import Run

    runs = [dict(r) for r in langsmith_sent.run_list()]
    streamed = [r for r in runs if r["run_type"] == "llm" and any(e["name"] == "new_token" for e in r["events"])]
    assert streamed
    for run in streamed:
        run |= {"prompt_tokens": 308, "completion_tokens": 22, "total_tokens": 330, "total_cost": "0.0000594"}
        Run(**run)
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(runs))
    trace = _by_root(import_file(path).traces)["text2sql-streaming"]
    (call,) = trace.llm_calls
    attrs = call.span.attributes
    run = next(r for r in streamed if r["id"] == attrs["langsmith.run.id"])
    first_token = run.get("first_token_time") or next(e["time"] for e in run["events"] if e["name"] == "new_token")
    assert attrs["langsmith.first_token_time"] == first_token
    ttft = attrs["gen_ai.server.time_to_first_token"]
    assert isinstance(ttft, float)
    assert 0 < ttft < call.span.duration_ns / 1e9
    assert attrs["gen_ai.usage.cost"] == pytest.approx(0.0000594)
    assert attrs["langsmith.run.total_cost"] == 0.0000594
    assert (call.prompt_tokens, call.completion_tokens) == (308, 22)
    assert call.output_text == GOOD_SQL
    assert not any(e.name == "new_token" for e in call.span.events)


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


# -- capture from the servers ----------------------------------------------------------------------------------------


class _Api:
    """A local Langfuse or LangSmith API: ``answers`` is consumed first (status, headers) for errors; then pages."""

    def __init__(self, pages: list[Any], *, errors: list[tuple[int, dict[str, str]]] | None = None) -> None:
        self.pages = pages
        self.errors = list(errors or [])
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []


@contextlib.contextmanager
def _serve(api: _Api, route: Any) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            api.seen.append((self.command, self.path, dict(self.headers), body))
            if api.errors:
                status, headers = api.errors.pop(0)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                return
            status, payload = route(self.command, self.path, self.headers, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _handle

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _langfuse_route(pages: list[list[dict[str, Any]]]) -> Any:
    def route(method: str, path: str, headers: Any, body: bytes) -> tuple[int, Any]:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        assert path.startswith("/api/public/v2/observations")
        assert query["limit"] == ["1000"]
        index = int(query.get("cursor", ["0"])[0])
        meta = {"cursor": str(index + 1) if index + 1 < len(pages) else None}
        return 200, {"data": pages[index], "meta": meta}

    return route


def _capture(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = llmtrace(["capture", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_langfuse_capture_reads_cursor_pages_through_429_and_5xx(
    langfuse_sent: Collected, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    observations = langfuse_observations(langfuse_sent.otlp)
    pages = [observations[i : i + 2] for i in range(0, len(observations), 2)]
    api = _Api(pages, errors=[(429, {"Retry-After": "0"}), (503, {})])
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-local")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-local")
    with _serve(api, _langfuse_route(pages)) as url:
        code, out, err = _capture(["--langfuse-url", url, "--out", str(tmp_path / "golden")], capsys)
    assert code == 0, err
    assert "read API can lag its ingestion by minutes" in err
    assert {h.get("Authorization") for _, _, h, _ in api.seen} == {"Basic cGstbGYtbG9jYWw6c2stbGYtbG9jYWw="}
    assert len(api.seen) == 2 + len(pages)
    assert "wrote 2 traces" in out  # the LangChain run asks the same question with the same SQL: a duplicate
    assert "1 duplicates skipped" in out
    files = sorted((tmp_path / "golden").glob("*.json"))
    traces = {read_trace(f).question().text: read_trace(f) for f in files}
    good = traces[GOOD]
    resource = good.root.resource_attributes
    assert (resource["llmtrace.capture.source"], resource["llmtrace.capture.trace_id"]) == (
        "langfuse",
        good.trace_ids[0],
    )
    assert str(resource["llmtrace.capture.link"]).endswith(f"/trace/{good.trace_ids[0]}")
    (call,) = traces[BAD].llm_calls  # the decorated app's (the LangChain one, newer, kept the good question)
    assert call.span.attributes["gen_ai.usage.cost"] == pytest.approx(0.0004)
    assert call.span.attributes["gen_ai.server.time_to_first_token"] == pytest.approx(0.025, abs=0.002)
    assert [s.ok for s in traces[BAD].sql_statements] == [False]


def test_langfuse_capture_says_which_keys_a_401_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-wrong")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-wrong")
    api = _Api([], errors=[(401, {})])
    with _serve(api, _langfuse_route([[]])) as url:
        code, _, err = _capture(["--langfuse-url", url, "--out", str(tmp_path)], capsys)
    assert code == 1
    assert "answered 401 Unauthorized; fix: check LANGFUSE_PUBLIC_KEY / LANGFUSE_SECRET_KEY" in err
    assert "sk-lf-wrong" not in err


def test_langfuse_capture_without_keys_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LANGFUSE_PUBLIC_KEY", raising=False)
    code, _, err = _capture(["--langfuse-url", "http://127.0.0.1:9", "--out", str(tmp_path)], capsys)
    assert code == 2
    assert "set LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY" in err


def test_langfuse_capture_of_a_trace_not_yet_readable_notes_the_lag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk")
    with _serve(_Api([]), _langfuse_route([[]])) as url:
        code, _, err = _capture(["--langfuse-url", url, "--out", str(tmp_path), "--since", "5m"], capsys)
    assert code == 0
    assert "no traces match the filters (or not yet readable" in err


def test_langsmith_capture_reads_the_projects_runs_in_pages(
    langsmith_sent: Collected, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from langsmith.schemas import Run

    runs = [json.loads(Run(**r).model_dump_json()) for r in langsmith_sent.run_list()]  # as the SDK's model writes them
    pages = [runs[i : i + 4] for i in range(0, len(runs), 4)]

    def route(method: str, path: str, headers: Any, body: bytes) -> tuple[int, Any]:
        assert headers["x-api-key"] == "lsv2-local"
        if path.startswith("/sessions"):
            return 200, [{"id": "3f1c0e4e-0000-4000-8000-000000000001", "name": "text2sql"}]
        assert path == "/runs/query"
        query = json.loads(body)
        assert query["session"] == ["3f1c0e4e-0000-4000-8000-000000000001"]
        index = int(query.get("cursor") or 0)
        return 200, {"runs": pages[index], "cursors": {"next": str(index + 1) if index + 1 < len(pages) else None}}

    monkeypatch.setenv("LANGSMITH_API_KEY", "lsv2-local")
    api = _Api(pages, errors=[(500, {})])
    with _serve(api, route) as url:
        monkeypatch.setenv("LANGSMITH_ENDPOINT", url)
        code, out, err = _capture(
            ["--langsmith-project", "text2sql", "--out", str(tmp_path), "--errors-only", "--dedupe", "none"], capsys
        )
        root = next(r for r in runs if r["name"] == "text2sql-langchain")
        by_id = ["--trace-id", root["trace_id"], "--out", str(tmp_path / "one")]  # as LangSmith shows it: a UUID
        code_by_id, out_by_id, _ = _capture(["--langsmith-project", "text2sql", *by_id], capsys)
    assert code_by_id == 0
    assert "wrote 1 traces" in out_by_id
    assert read_trace(next((tmp_path / "one").glob("*.json"))).root.name == "text2sql-langchain"
    assert code == 0, err
    assert "wrote 1 traces" in out  # only the trace whose SQL failed
    (only,) = tmp_path.glob("*.json")
    trace = read_trace(only)
    assert trace.question().text == BAD
    assert trace.root.resource_attributes["llmtrace.capture.source"] == "langsmith"
    assert trace.llm_calls[0].convention == "langsmith"


# -- Langfuse's API shapes -------------------------------------------------------------------------------------------


def _legacy_usage(details: dict[str, int]) -> dict[str, Any]:
    tokens_in, tokens_out = details.get("input", 0), details.get("output", 0)
    return {"input": tokens_in, "output": tokens_out, "total": tokens_in + tokens_out, "unit": "TOKENS"}


def _full_trace(observations: list[dict[str, Any]], question: str) -> dict[str, Any]:
    """``GET /api/public/traces/{id}`` for the trace that asked ``question``, through the SDK's own model."""
    from langfuse.api import TraceWithFullDetails
    from langfuse.api.core.pydantic_utilities import parse_obj_as

    root = next(o for o in observations if o.get("parentObservationId") is None and question in json.dumps(o["input"]))
    mine = [
        {  # what the v1 API adds to each observation: the legacy usage object and empty defaults
            "modelParameters": {},
            "input": None,
            "output": None,
            "usageDetails": {},
            "costDetails": {},
            "environment": "default",
            **o,
            "usage": _legacy_usage(o.get("usageDetails", {})),
        }
        for o in observations
        if o["traceId"] == root["traceId"]
    ]
    document = {
        "id": root["traceId"],
        "timestamp": root["startTime"],
        "name": root["name"],
        "input": root["input"],
        "output": root.get("output"),
        "userId": "u-1001",
        "sessionId": "s-1",
        "tags": ["prod"],
        "metadata": {"release": "2024.05"},
        "public": False,
        "environment": "default",
        "htmlPath": f"/project/p/traces/{root['traceId']}",
        "observations": mine,
        "scores": [],
    }
    validated: dict[str, Any] = json.loads(parse_obj_as(TraceWithFullDetails, document).json())
    return validated


def test_a_langfuse_api_trace_imports_with_the_trace_fields_on_its_root(
    langfuse_sent: Collected, tmp_path: Path
) -> None:
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(_full_trace(langfuse_observations(langfuse_sent.otlp), BAD)))
    imported = import_file(path)
    assert imported.format.startswith("Langfuse trace")
    (trace,) = imported.traces
    assert trace.root.attributes["user.id"] == "u-1001"
    assert trace.root.attributes["langfuse.trace.tags"] == ("prod",)
    assert trace.question().text == BAD
    assert [(s.text, s.ok) for s in trace.sql_statements] == [(BAD_SQL, False)]
    assert trace.llm_calls[0].span.attributes["gen_ai.usage.cost"] == pytest.approx(0.0004)


def test_without_a_sql_span_the_sql_is_the_models_answer_and_import_says_so(
    langfuse_sent: Collected, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _full_trace(langfuse_observations(langfuse_sent.otlp), BAD)
    document["observations"] = [o for o in document["observations"] if o["type"] != "TOOL"]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(document))
    assert llmtrace(["import", str(path), "--out", str(tmp_path / "golden")]) == 0
    assert "no SQL span: the SQL is the model's answer" in capsys.readouterr().out
    (golden,) = (tmp_path / "golden").glob("*.json")
    assert sql_of(read_trace(golden)) == BAD_SQL


def test_a_malformed_langfuse_observation_names_its_path(langfuse_sent: Collected, tmp_path: Path) -> None:
    document = _full_trace(langfuse_observations(langfuse_sent.otlp), GOOD)
    document["observations"][1]["usageDetails"] = {"input": "many"}
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(document))
    with pytest.raises(TraceFormatError, match=r"at \$\.observations\[1\]\.usageDetails\.input: expected a number"):
        import_file(path)


def test_an_unknown_observation_type_is_a_plain_span(langfuse_sent: Collected, tmp_path: Path) -> None:
    observations = langfuse_observations(langfuse_sent.otlp)
    for o in observations:
        if o["type"] == "TOOL":
            o["type"] = "SQL_RUNNER"
    path = tmp_path / "page.json"
    path.write_text(json.dumps({"data": observations, "meta": {"cursor": None}}))
    with pytest.warns(TraceFormatWarning, match="observation type 'SQL_RUNNER'.*plain span"):
        imported = import_file(path)
    assert imported.span_count == len(observations)


# -- LangSmith's OpenTelemetry mode ----------------------------------------------------------------------------------


def test_langsmith_otel_mode_spans_are_read_through_the_conventions(ollama_url: str, tmp_path: Path) -> None:
    """``Client(tracing_mode="otel")``: the runs become OpenTelemetry spans (here into a private provider's memory)."""
    import ollama
    from langsmith import Client, traceable, tracing_context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from pytest_llmtrace.trace.otlp import trace_to_request
    from pytest_llmtrace.trace.sdk import trace_from_readable

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with collector() as (url, got):
        client = Client(api_url=url, api_key="lsv2-local", tracing_mode="otel", otel_tracer_provider=provider)

        @traceable(run_type="tool", name="run_sql")
        def run_sql(sql: str) -> dict[str, Any]:
            return {"rows": []}

        @traceable(run_type="llm", name="ollama.chat", metadata={"ls_model_name": MODEL, "ls_provider": "ollama"})
        def chat(messages: list[dict[str, str]]) -> dict[str, Any]:
            reply = ollama.Client(host=ollama_url).chat(model=MODEL, messages=messages)
            usage = {"input_tokens": reply.prompt_eval_count, "output_tokens": reply.eval_count}
            return {
                "choices": [{"message": {"role": "assistant", "content": reply.message.content}}],
                "usage_metadata": usage,
            }

        @traceable(name="text2sql")
        def traced(question: str, user_id: str | None = None) -> dict[str, Any]:
            reply = chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])
            return run_sql(reply["choices"][0]["message"]["content"])

        with tracing_context(enabled=True, client=client, project_name="text2sql"):
            traced(GOOD, user_id="u-1001")
        client.flush()
        assert got.run_list() == []  # otel mode: nothing posted as runs
    recorded = trace_from_readable(exporter.get_finished_spans())
    path = tmp_path / "langsmith-otel.json"
    path.write_text(json.dumps(trace_to_request(recorded)))
    trace = next(t for t in import_file(path).traces if t.root.name == "text2sql")
    (call,) = trace.llm_calls
    assert (call.convention, call.model, call.output_text) == ("langsmith", MODEL, GOOD_SQL)
    assert [m.role for m in call.input_messages] == ["system", "user"]
    assert call.prompt_tokens
    assert trace.question().text == GOOD
    assert [s.text for s in trace.sql_statements] == [GOOD_SQL]


def test_a_list_of_langfuse_api_traces_imports_each(langfuse_sent: Collected, tmp_path: Path) -> None:
    observations = langfuse_observations(langfuse_sent.otlp)
    path = tmp_path / "traces.json"
    path.write_text(json.dumps([_full_trace(observations, GOOD), _full_trace(observations, BAD)]))
    imported = import_file(path)
    assert imported.format == "Langfuse traces or observations (a JSON list)"
    assert sorted(str(t.question().text) for t in imported.traces) == sorted([GOOD, BAD])
    assert all(len(t.llm_calls) == 1 for t in imported.traces)


def test_the_budgets_read_ttft_and_cost_of_imported_langfuse_and_langsmith_traces_as_recorded(
    langfuse_sent: Collected, langsmith_sent: Collected, tmp_path: Path
) -> None:
    """What the TTFT budget, the gate and results.json read is what the tool recorded: Langfuse's completion start,
    LangSmith's first token, each tool's cost (issue 23)."""
    from pytest_llmtrace.checks.budgets import latencies_ms
    from pytest_llmtrace.checks.usage import trace_usage, usage_summary

    imported = import_file(_write_jsonl(tmp_path / "langfuse.jsonl", langfuse_sent.otlp))
    good = next(t for t in imported.traces if t.root.name == "text2sql" and t.question().text == GOOD)
    (call,) = good.llm_calls
    recorded = float(call.span.attributes["gen_ai.server.time_to_first_token"]) * 1000  # type: ignore[arg-type]
    assert latencies_ms(good)["ttft"] == pytest.approx(recorded)
    summary = usage_summary(trace_usage(good, None)[0])
    assert summary["ttft_ms"] == pytest.approx(recorded, abs=0.001)
    assert summary["cost_usd"] == pytest.approx(0.0004)  # the trace's own cost: no price table needed

    runs = [dict(r) for r in langsmith_sent.run_list()]
    for run in runs:
        if run["run_type"] == "llm":
            run |= {"prompt_tokens": 308, "completion_tokens": 22, "total_tokens": 330, "total_cost": "0.0000594"}
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(runs, default=str))
    streamed = _by_root(import_file(path).traces)["text2sql-streaming"]
    (run_call,) = streamed.llm_calls
    first = float(run_call.span.attributes["gen_ai.server.time_to_first_token"]) * 1000  # type: ignore[arg-type]
    assert latencies_ms(streamed)["ttft"] == pytest.approx(first)
    assert usage_summary(trace_usage(streamed, None)[0])["cost_usd"] == pytest.approx(0.0000594)


def test_the_header_says_when_a_sources_golden_sql_is_the_models_answer(
    langfuse_sent: Collected, pytester: pytest.Pytester
) -> None:
    """A Langfuse trace without its tool span (as Langfuse's default export filter leaves it) beside an
    OpenTelemetry one with its SQL span: the header names the Langfuse case, and only it."""
    document = _full_trace(langfuse_observations(langfuse_sent.otlp), BAD)
    document["observations"] = [o for o in document["observations"] if o["type"] != "TOOL"]
    source = pytester.path / "langfuse_trace.json"
    source.write_text(json.dumps(document))
    golden = pytester.path / "golden_traces"
    assert llmtrace(["import", str(source), "--out", str(golden)]) == 0
    source.unlink()
    repo_golden = Path(__file__).resolve().parents[2] / "golden_traces"
    otel_case = next(p for p in sorted(repo_golden.glob("*.json")) if read_trace(p).sql_statements)
    (golden / otel_case.name).write_text(otel_case.read_text())
    pytester.makeini("[pytest]\naddopts = -p no:phoenix -p no:randomly\n")
    result = pytester.runpytest_inprocess("--co", "golden_traces")
    result.stdout.fnmatch_lines(
        [
            "llmtrace golden sql: 1 of 1 Langfuse golden case(s) have no DB span; "
            "the SQL judged is the model's answer (*)"
        ]
    )
    assert "OpenTelemetry golden case(s)" not in result.stdout.str()
