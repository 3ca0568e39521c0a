"""The reference gateway against real Postgres and the Ollama API front: the spans it emits are what golden traces hold.

If the gateway's instrumentation drifts from OpenInference and OTel database conventions, every check built on
golden traces reads the wrong attributes; these tests pin the contract at its source.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ollama
import psycopg2
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from pytest_llmtrace.modelapi import ChatRequest, ChatResult, OllamaAPIServer
from pytest_llmtrace.modelapi.modelfile import parse_modelfile
from pytest_llmtrace.modelapi.scripted import ScriptedBackend
from pytest_llmtrace.services.base import Endpoint
from pytest_llmtrace.services.pg_databases import clone_database, create_template, drop_database
from pytest_llmtrace.services.postgres import EmbeddedPostgres

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TEMPLATE = "company_db_template"
MODEL = "qwen-sql-prod"
CASES = {c["name"]: c for c in json.loads((FIXTURES / "golden_cases.json").read_text())["cases"]}

Gateway = Callable[..., dict[str, Any]]


class RememberingBackend(ScriptedBackend):
    """The scripted backend, keeping what it answered so tests compare spans with what went over the wire."""

    def __init__(self) -> None:
        super().__init__({c["question"]: c["answer"] for c in CASES.values()}, MODEL)
        self.results: list[ChatResult] = []

    def chat_stream(self, request: ChatRequest, emit: Callable[[str], None] | None) -> ChatResult:
        """Both routes end here (``chat`` too): the gateway streams its model call."""
        result = super().chat_stream(request, emit)
        self.results.append(result)
        return result


@pytest.fixture(scope="module")
def postgres() -> Iterator[Endpoint]:
    with EmbeddedPostgres() as endpoint:
        create_template(endpoint.url, TEMPLATE, sorted(FIXTURES.rglob("*.sql")))
        yield endpoint


@pytest.fixture(scope="module")
def backend() -> RememberingBackend:
    return RememberingBackend()


@pytest.fixture(scope="module")
def ollama_url(backend: RememberingBackend) -> Iterator[str]:
    with OllamaAPIServer(backend) as server:
        yield server.url


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """Spans of this module's tests. Joins the global SDK provider if one is installed (pytest-llmtrace's own
    recorder may have done so), because OpenTelemetry lets a process set the global provider only once."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    assert isinstance(trace.get_tracer_provider(), TracerProvider), "a non-SDK global TracerProvider is installed"
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield memory
    memory.shutdown()  # processors cannot be removed; a shut-down exporter drops what later modules emit


@pytest.fixture
def database(postgres: Endpoint) -> Iterator[str]:
    """A clone per test: the destructive case must not leak into the next one."""
    url = clone_database(postgres.url, TEMPLATE)
    yield url
    drop_database(postgres.url, url.rsplit("/", 1)[1].split("?", 1)[0])


@pytest.fixture
def gateway(database: str, ollama_url: str, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    monkeypatch.setenv("OLLAMA_HOST", ollama_url)
    monkeypatch.setenv("DB_URI", database)
    monkeypatch.delenv("LLM_MODEL", raising=False)
    monkeypatch.syspath_prepend(str(FIXTURES))
    from gateway.app import handle_user_request

    exporter.clear()
    return handle_user_request


def spans_by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    spans = exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    assert len(by_name) == len(spans), f"span names repeat: {[s.name for s in spans]}"
    return by_name


def test_answer_is_traced_with_openinference_and_db_attributes(
    gateway: Gateway, exporter: InMemorySpanExporter, backend: RememberingBackend
) -> None:
    case = CASES["smb_revenue_by_region"]
    result = gateway(case["question"], user_id="u-42", session_id="s-7")

    assert result["error"] is None
    assert result["sql"] == case["answer"]
    assert [row["region"] for row in result["rows"]] == ["NA", "APAC", "EMEA"]

    spans = spans_by_name(exporter)
    assert set(spans) == {"text2sql.request", "ollama.chat", "sql.execute"}
    root, llm, sql = spans["text2sql.request"], spans["ollama.chat"], spans["sql.execute"]
    assert root.parent is None
    assert llm.parent is not None and llm.parent.span_id == root.context.span_id  # noqa: PT018
    assert sql.parent is not None and sql.parent.span_id == root.context.span_id  # noqa: PT018
    assert (llm.kind, sql.kind) == (SpanKind.CLIENT, SpanKind.CLIENT)

    root_attrs = dict(root.attributes or {})
    assert root_attrs["openinference.span.kind"] == "CHAIN"
    assert root_attrs["input.value"] == case["question"]
    assert root_attrs["user.id"] == "u-42"
    assert root_attrs["session.id"] == "s-7"
    assert json.loads(str(root_attrs["output.value"])) == json.loads(json.dumps(result, default=str))
    assert root_attrs["output.mime_type"] == "application/json"

    llm_attrs = dict(llm.attributes or {})
    reported = backend.results[-1]
    assert llm_attrs["openinference.span.kind"] == "LLM"
    assert llm_attrs["llm.model_name"] == MODEL
    assert llm_attrs["llm.provider"] == "ollama"
    assert llm_attrs["llm.system"] == "ollama"
    assert json.loads(str(llm_attrs["llm.invocation_parameters"])) == {"temperature": 0}
    assert llm_attrs["llm.input_messages.0.message.role"] == "system"
    assert "orders(id integer primary key" in str(llm_attrs["llm.input_messages.0.message.content"])
    assert llm_attrs["llm.input_messages.1.message.role"] == "user"
    assert llm_attrs["llm.input_messages.1.message.content"] == case["question"]
    assert llm_attrs["llm.output_messages.0.message.role"] == "assistant"
    assert llm_attrs["llm.output_messages.0.message.content"] == case["answer"]
    assert llm_attrs["llm.token_count.prompt"] == reported.prompt_eval_count
    assert llm_attrs["llm.token_count.completion"] == reported.eval_count
    assert llm_attrs["llm.token_count.total"] == reported.prompt_eval_count + reported.eval_count

    sql_attrs = dict(sql.attributes or {})
    assert sql_attrs["db.system.name"] == "postgresql"
    assert sql_attrs["db.query.text"] == case["answer"]
    assert sql_attrs["db.response.returned_rows"] == 3
    assert sql.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize(
    ("case_name", "sqlstate", "message"),
    [
        ("error_unknown_column", "42703", "column c.segment does not exist"),
        ("error_syntax", "42601", 'syntax error at or near "LIMT"'),
        ("error_unknown_table", "42P01", 'relation "invoices" does not exist'),
    ],
)
def test_sql_error_marks_the_sql_span_with_the_postgres_message_and_sqlstate(
    gateway: Gateway, exporter: InMemorySpanExporter, case_name: str, sqlstate: str, message: str
) -> None:
    result = gateway(CASES[case_name]["question"])

    assert result == {"sql": CASES[case_name]["answer"], "rows": [], "error": message}
    spans = spans_by_name(exporter)
    sql = spans["sql.execute"]
    assert sql.status.status_code is StatusCode.ERROR
    assert sql.status.description == message
    assert dict(sql.attributes or {})["db.response.status_code"] == sqlstate
    assert "db.response.returned_rows" not in (sql.attributes or {})
    exception = next(e for e in sql.events if e.name == "exception")
    assert message in str((exception.attributes or {})["exception.message"])
    # The app handled the error and answered: its root span is not an error, as in real apps of this kind.
    assert spans["text2sql.request"].status.status_code is StatusCode.UNSET
    root_attrs = dict(spans["text2sql.request"].attributes or {})
    assert "user.id" not in root_attrs
    assert json.loads(str(root_attrs["output.value"]))["error"] == message


def test_fenced_answer_is_executed_without_the_fences(gateway: Gateway, exporter: InMemorySpanExporter) -> None:
    case = CASES["fenced_largest_order"]
    result = gateway(case["question"])

    assert result["error"] is None
    assert len(result["rows"]) == 1
    spans = spans_by_name(exporter)
    query = str(dict(spans["sql.execute"].attributes or {})["db.query.text"])
    assert query.startswith("SELECT o.id")
    assert "```" not in query
    assert str(dict(spans["ollama.chat"].attributes or {})["llm.output_messages.0.message.content"]).startswith(
        "```sql"
    )


def test_destructive_answer_changes_only_the_clone(gateway: Gateway, database: str, postgres: Endpoint) -> None:
    result = gateway(CASES["destructive_delete_discounted_items"]["question"])

    assert result == {"sql": "DELETE FROM order_items WHERE discount > 0;", "rows": [], "error": None}
    counts = {}
    for url in (database, clone_database(postgres.url, TEMPLATE, "check_template_untouched")):
        conn = psycopg2.connect(url)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM order_items")
                counts[url] = cur.fetchone()
        finally:
            conn.close()
    drop_database(postgres.url, "check_template_untouched")
    assert list(counts.values()) == [(1800,), (6000,)]


def test_model_error_propagates_and_marks_root_and_llm_spans(gateway: Gateway, exporter: InMemorySpanExporter) -> None:
    with pytest.raises(ollama.ResponseError, match="no scripted answer"):
        gateway("Which sales rep closed the most deals?")

    spans = spans_by_name(exporter)
    assert set(spans) == {"text2sql.request", "ollama.chat"}
    assert spans["ollama.chat"].status.status_code is StatusCode.ERROR
    assert spans["text2sql.request"].status.status_code is StatusCode.ERROR


def test_model_comes_from_llm_model(
    gateway: Gateway, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_MODEL", "qwen-sql-canary")
    with pytest.raises(ollama.ResponseError, match='model "qwen-sql-canary" not found'):
        gateway(CASES["customers_by_tier"]["question"])
    assert dict(spans_by_name(exporter)["ollama.chat"].attributes or {})["llm.model_name"] == "qwen-sql-canary"


def test_seed_is_deterministic_and_sized_as_documented(database: str) -> None:
    conn = psycopg2.connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM products),"
                " (SELECT count(*) FROM orders), (SELECT count(*) FROM order_items),"
                " (SELECT sum(amount) FROM orders),"
                " (SELECT count(*) FROM orders o WHERE amount <> (SELECT sum(quantity * unit_price)"
                "  FROM order_items i WHERE i.order_id = o.id))"
            )
            row = cur.fetchone()
    finally:
        conn.close()
    assert row is not None
    assert row[:4] == (300, 12, 3000, 6000)
    assert str(row[4]) == "124373995.00"
    assert row[5] == 0  # every order's amount is the sum of its items


def test_modelfile_system_prompt_is_the_gateways(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FIXTURES))
    from gateway.app import SYSTEM_PROMPT

    modelfile = parse_modelfile(FIXTURES / "Modelfile")
    assert modelfile.system == SYSTEM_PROMPT
    assert modelfile.options()["temperature"] == 0
    assert modelfile.source == "./models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
