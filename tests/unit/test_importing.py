"""Every export shape converts to the same traces; inputs are real Phoenix 20.26 exports (see tests/data/phoenix)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from support import load_traces

from pytest_llmtrace.core.errors import TraceFormatError, TraceFormatWarning
from pytest_llmtrace.sources.importing import import_file
from pytest_llmtrace.trace.model import Status, Trace
from pytest_llmtrace.trace.otlp import dumps, trace_to_request

DATA = Path(__file__).parent.parent / "data" / "phoenix"
REST = DATA / "rest_spans.json"
OTLPV1 = DATA / "spans_otlpv1.json"
DATAFRAME_JSONL = DATA / "spans_dataframe.jsonl"
PARQUET = DATA / "spans_dataframe.parquet"
TRACES_EXPORT = DATA / "traces_include_spans.json"
DATAFRAME_EXTRA = "needs pyarrow, from the README's set-up: pip install -e '.[dataframe]'"

QUESTIONS = [
    "How many customers are in Berlin?",
    "List the three most expensive products",
    "Total revenue per month in 2024",
]
TOKENS = [(412, 23, 435), (398, 31, 429), (405, 40, 445)]
SQL = [
    "SELECT count(*) FROM customers WHERE city = 'Berlin';",
    "SELECT name, price FROM products ORDER BY price DESC LIMIT 3;",
    "SELECT date_trunc('month', ordered_at) AS month, sum(total) FROM orderz GROUP BY 1;",
]


def check_text_to_sql_traces(traces: list[Trace]) -> None:
    """What the captured app did: question -> ChatOllama -> one SQL statement; the third SQL fails."""
    assert [t.input for t in traces] == QUESTIONS
    for trace, tokens, sql in zip(traces, TOKENS, SQL, strict=True):
        assert len(trace) == 3
        assert len(trace.trace_ids) == 1
        root = trace.root
        assert (root.name, root.kind, root.parent_span_id) == ("text_to_sql", "CHAIN", None)
        assert [(c.name, c.kind) for c in trace.children(root)] == [("ChatOllama", "LLM"), ("SELECT shop", "UNKNOWN")]
        assert root.attributes["tag.tags"] == ("regression", "sql")
        assert root.attributes["metadata.app_version"] == "0.3.1"
        (call,) = trace.llm_calls
        assert (call.model, call.provider) == ("qwen2.5-coder:1.5b", "ollama")
        counts = (call.prompt_tokens, call.completion_tokens, call.total_tokens)
        assert counts == tokens
        raw = [call.span.attributes[f"llm.token_count.{k}"] for k in ("prompt", "completion", "total")]
        assert [type(v) for v in raw] == [int, int, int]  # a float 412.0 would show up in every golden file
        assert [m.role for m in call.input_messages] == ["system", "user"]
        assert call.output_text == sql
        assert call.invocation_parameters == {"model": "qwen2.5-coder:1.5b", "temperature": 0.0}
        assert call.span.attributes["metadata.ls_temperature"] == 0.0
        assert type(call.span.attributes["metadata.ls_temperature"]) is float
        (statement,) = trace.sql_statements
        assert (statement.text, statement.system) == (sql, "postgresql")
        assert statement.span.attributes["server.port"] == 5432
        for span in trace:
            assert span.otel_kind == 0  # Phoenix drops the OTel kind: say "unspecified", do not invent one
            assert span.resource_attributes == {}
    ok, _, failed = (t.sql_statements[0] for t in traces)
    assert ok.ok
    assert ok.returned_rows == 1
    assert traces[2].root.status is Status.OK  # the app swallowed the error; only the SQL span says so
    assert failed.span.status is Status.ERROR
    assert failed.error == 'relation "orderz" does not exist'
    (event,) = failed.span.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "psycopg2.errors.UndefinedTable"
    assert failed.span.exception_messages == ('relation "orderz" does not exist',)


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        (REST, "Phoenix REST spans"),
        (OTLPV1, "Phoenix /spans/otlpv1 spans"),
        (DATAFRAME_JSONL, "Phoenix spans dataframe (JSONL)"),
        (PARQUET, "Phoenix spans dataframe (parquet)"),
    ],
    ids=["rest", "otlpv1", "dataframe-jsonl", "parquet"],
)
def test_phoenix_exports_convert(path: Path, fmt: str) -> None:
    if path.suffix == ".parquet":
        pytest.importorskip("pyarrow", reason=DATAFRAME_EXTRA)

    imported = import_file(path)

    assert imported.format == fmt
    assert imported.span_count == 9
    check_text_to_sql_traces(imported.traces)


def test_rest_otlpv1_and_parquet_give_identical_golden_files() -> None:
    """otlpv1 times carry float noise and parquet nests attributes; both must still match the REST export."""
    pytest.importorskip("pyarrow", reason=DATAFRAME_EXTRA)
    rest = [dumps(t) for t in load_traces(REST)]

    assert len(rest) == len(QUESTIONS)  # two empty loads would be equal too
    assert [dumps(t) for t in load_traces(OTLPV1)] == rest
    assert [dumps(t) for t in load_traces(PARQUET)] == rest


def test_rest_times_are_exact_to_the_microsecond() -> None:
    root = load_traces(REST)[2].root

    assert root.start_time_unix_nano == 1_795_456_655_004_780_000  # 2026-11-23T17:57:35.004780+00:00
    assert root.end_time_unix_nano == 1_795_456_655_046_127_000


def test_dataframe_jsonl_keeps_millisecond_times() -> None:
    """pandas writes epoch milliseconds: everything else matches the REST export, times to the millisecond."""
    dataframe, rest = load_traces(DATAFRAME_JSONL), load_traces(REST)
    assert [t.input for t in dataframe] == [t.input for t in rest] == QUESTIONS  # two empty loads would pass below
    for from_df, from_rest in zip(dataframe, rest, strict=True):
        assert {s.span_id for s in from_df} == {s.span_id for s in from_rest}
        assert len(from_rest) == 3
        for b in from_rest:
            a = from_df.get(b.span_id)  # same-millisecond spans may sort differently, so match by id
            assert (a.parent_span_id, a.name, a.status, dict(a.attributes)) == (
                b.parent_span_id,
                b.name,
                b.status,
                dict(b.attributes),
            )
            assert a.start_time_unix_nano == b.start_time_unix_nano // 1_000_000 * 1_000_000
            assert a.events == b.events  # event times stay ISO strings in the dataframe


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_dataframe_with_iso_dates_and_as_json_array(tmp_path: Path) -> None:
    """``to_json(date_format="iso")`` and ``orient="records"`` without ``lines`` are common too."""
    rows = records(DATAFRAME_JSONL)
    for row in rows:
        for column in ("start_time", "end_time"):
            row[column] = _iso_from_ms(row[column])
    path = tmp_path / "frame.json"
    path.write_text(json.dumps(rows), encoding="utf-8")

    traces = load_traces(path)

    assert [[s.start_time_unix_nano for s in t] for t in traces] == [
        [s.start_time_unix_nano for s in t] for t in load_traces(DATAFRAME_JSONL)
    ]
    check_text_to_sql_traces(traces)


def _iso_from_ms(ms: int) -> str:
    import datetime as dt

    moment = dt.datetime.fromtimestamp(ms // 1000, tz=dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def test_iso_times_keep_nanoseconds_and_offsets(tmp_path: Path) -> None:
    page = json.loads(REST.read_text(encoding="utf-8"))
    page["data"] = [s for s in page["data"] if s["parent_id"] is None][:1]
    page["data"][0]["start_time"] = "2026-11-23T18:57:35.004780123+01:00"
    path = tmp_path / "one.json"
    path.write_text(json.dumps(page), encoding="utf-8")

    (trace,) = load_traces(path)

    assert trace.root.start_time_unix_nano == 1_795_456_655_004_780_123


def test_spec_otlp_file_with_several_traces(tmp_path: Path) -> None:
    rest = load_traces(REST)
    path = tmp_path / "all.json"
    path.write_text(dumps([s for t in rest for s in t]), encoding="utf-8")

    imported = import_file(path)

    assert imported.format == "OTLP JSON"
    assert imported.traces == rest


def test_collector_file_exporter_jsonl_groups_a_trace_split_over_batches(tmp_path: Path) -> None:
    """The Collector writes one batch per line; a trace's spans may land on different lines."""
    rest = load_traces(REST)
    spans = [s for t in rest for s in t]
    lines = [json.dumps(trace_to_request(spans[:4])), "", json.dumps(trace_to_request(spans[4:]))]
    path = tmp_path / "collector-output"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    imported = import_file(path)

    assert imported.format == "OTLP JSONL (OTel Collector file exporter)"
    assert imported.traces == rest


def test_phoenix_pages_as_jsonl(tmp_path: Path) -> None:
    """Paginated exports saved one page per line are read as one export."""
    page = json.loads(REST.read_text(encoding="utf-8"))
    first = {"data": page["data"][:5], "next_cursor": "U3Bhbjo0"}
    second = {"data": page["data"][5:], "next_cursor": None}
    path = tmp_path / "pages.jsonl"
    path.write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n", encoding="utf-8")

    with pytest.warns(TraceFormatWarning, match=r"line 1: \$\.next_cursor: this is one page of a longer export"):
        traces = load_traces(path)

    check_text_to_sql_traces(traces)


def test_one_page_of_many_warns_and_keeps_orphans_as_roots(tmp_path: Path) -> None:
    page = json.loads(REST.read_text(encoding="utf-8"))
    page["data"] = [s for s in page["data"] if s["name"] != "text_to_sql"]
    page["next_cursor"] = "U3Bhbjo0"
    path = tmp_path / "page1.json"
    path.write_text(json.dumps(page), encoding="utf-8")

    with pytest.warns(TraceFormatWarning) as record:
        traces = load_traces(path)

    messages = [str(w.message) for w in record]
    assert messages[0] == (
        f"{path}: at $.next_cursor: this is one page of a longer export (next_cursor the string 'U3Bhbjo0'); spans "
        "on later pages are missing: fetch every page with ?cursor=... and save one response per line (JSONL)"
    )
    assert sum("kept as an extra root" in m for m in messages) == 6
    assert [len(t.roots) for t in traces] == [2, 2, 2]


def test_traces_export_is_refused_with_a_pointer_to_the_spans_endpoint() -> None:
    with pytest.raises(TraceFormatError) as info:
        load_traces(TRACES_EXPORT)

    assert str(info.value) == (
        f"{TRACES_EXPORT}: at $.data[0].spans: expected spans with attributes, got Phoenix's "
        "GET /v1/projects/{project}/traces?include_spans=true export, whose spans have no attributes (no inputs, "
        "LLM calls or SQL) and so cannot be replayed; export GET /v1/projects/{project}/spans "
        "(or /v1/projects/{project}/spans/otlpv1) instead"
    )


@pytest.mark.parametrize(
    ("source", "name"),
    [(REST, "spans.parquet"), (PARQUET, "spans.json"), (DATAFRAME_JSONL, "export.json"), (OTLPV1, "x.jsonl")],
)
def test_format_comes_from_content_not_extension(tmp_path: Path, source: Path, name: str) -> None:
    if source.suffix == ".parquet":
        pytest.importorskip("pyarrow", reason=DATAFRAME_EXTRA)
    misnamed = tmp_path / name
    shutil.copyfile(source, misnamed)

    assert import_file(misnamed).format == import_file(source).format
    check_text_to_sql_traces(load_traces(misnamed))


def test_parquet_without_pyarrow_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)

    with pytest.raises(ImportError, match=r"needs pyarrow: pip install pytest-llmtrace\[dataframe\]"):
        load_traces(PARQUET)
