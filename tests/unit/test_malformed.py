"""A broken trace file must say which file, where in it and what was expected: these messages are the UI."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_llmtrace.errors import TraceFormatError, TraceFormatWarning
from pytest_llmtrace.trace.importing import load_traces
from pytest_llmtrace.trace.jsondoc import MAX_ATTRIBUTE_CHARS
from pytest_llmtrace.trace.otlp import read_trace

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPANS = "$.resourceSpans[0].scopeSpans[0].spans"


def matches(message: str, pattern: str) -> bool:
    """``fnmatch`` with only ``*`` special: JSON paths are full of ``[0]``, which fnmatch reads as a character set."""
    return re.fullmatch(".*".join(re.escape(part) for part in pattern.split("*")), message, re.DOTALL) is not None


def span(span_id: str, parent: str | None = None, **fields: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "traceId": TRACE_ID,
        "spanId": span_id,
        "name": f"span-{span_id[:4]}",
        "kind": 1,
        "startTimeUnixNano": "100",
        "endTimeUnixNano": "200",
        "attributes": [],
    }
    if parent is not None:
        result["parentSpanId"] = parent
    result.update(fields)
    return result


def request(*spans: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"scope": {"name": "t"}, "spans": spans}]}]
    }


def attr(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"key": key, "value": value}


A, B, C = "1111111111111111", "2222222222222222", "3333333333333333"

CASES: dict[str, tuple[dict[str, Any], str]] = {
    "int-id": (
        request(span(A), span(B, spanId=12345)),
        f"{SPANS}[1].spanId: expected 16 hex characters, got the number 12345",
    ),
    "ten-char-id": (
        request(span(A, spanId="abcdef0123")),
        f"{SPANS}[0].spanId: expected 16 hex characters, got the string 'abcdef0123'",
    ),
    "short-trace-id": (
        request(span(A, traceId="0af7651916cd43dd")),
        f"{SPANS}[0].traceId: expected 32 hex characters, got the string '0af7651916cd43dd'",
    ),
    "parent-cycle": (
        request(span(A), span(B, C), span(C, B)),
        f"{SPANS}[1].parentSpanId: expected a parent chain that ends at a root span, got a cycle {B} -> {C} -> {B}",
    ),
    "duplicate-span-id": (
        request(span(A), span(A)),
        f"{SPANS}[0].spanId: expected unique span ids, got '{A}' twice",
    ),
    "end-before-start": (
        request(span(A, startTimeUnixNano="300", endTimeUnixNano="200")),
        f"{SPANS}[0].endTimeUnixNano: expected an end time at or after the start time, got end 200 < start 300",
    ),
    "huge-attribute": (
        request(span(A, attributes=[attr("input.value", {"stringValue": "x" * (MAX_ATTRIBUTE_CHARS + 1)})])),
        f"{SPANS}[0].attributes[0].value.stringValue: expected a value of at most 1,000,000 characters, "
        "got 1,000,001 characters",
    ),
    "int64-overflow": (
        request(span(A, attributes=[attr("llm.token_count.prompt", {"intValue": "9223372036854775808"})])),
        f"{SPANS}[0].attributes[0].value.intValue: expected an integer between -9223372036854775808 and "
        "9223372036854775807, got 9223372036854775808",
    ),
    "timestamp-word": (
        request(span(A, startTimeUnixNano="yesterday")),
        f"{SPANS}[0].startTimeUnixNano: expected an integer (a number or a decimal string), got the string 'yesterday'",
    ),
    "two-values-in-any-value": (
        request(span(A, attributes=[attr("x", {"stringValue": "a", "intValue": "1"})])),
        f"{SPANS}[0].attributes[0].value: expected exactly one of stringValue, boolValue, intValue, doubleValue, "
        "arrayValue, kvlistValue, bytesValue, got an object with keys {stringValue, intValue}",
    ),
    "two-traces-in-golden-file": (
        request(span(A), span(B, traceId="1" * 32)),
        f"$.resourceSpans: expected exactly one trace per golden file, got 2 traces ({TRACE_ID}, {'1' * 32})",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_otlp_names_file_path_and_expectation(tmp_path: Path, case: str) -> None:
    document, expected = CASES[case]
    path = tmp_path / f"{case}.json"
    path.write_text(json.dumps(document), encoding="utf-8")

    with pytest.raises(TraceFormatError) as info:
        read_trace(path)

    assert str(info.value) == f"{path}: at {expected}"
    assert info.value.source == str(path)


def test_truncated_json(tmp_path: Path) -> None:
    path = tmp_path / "truncated.json"
    path.write_text(json.dumps(request(span(A)), indent=2)[:-25], encoding="utf-8")

    with pytest.raises(TraceFormatError) as info:
        read_trace(path)

    assert matches(
        str(info.value), f"{path}: at $: expected valid JSON, got end of file (the file is truncated) at line *"
    )


def test_non_utf8_bytes(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(json.dumps(request(span(A, name="caf\u00e9")), ensure_ascii=False).encode("latin-1"))

    with pytest.raises(TraceFormatError) as info:
        read_trace(path)

    assert matches(str(info.value), f"{path}: at $: expected UTF-8 encoded JSON, got byte 0xe9 at offset *")


def test_missing_parent_is_kept_as_extra_root_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "orphan.json"
    path.write_text(json.dumps(request(span(A), span(B, "9999999999999999"))), encoding="utf-8")

    with pytest.warns(TraceFormatWarning) as record:
        trace = read_trace(path)

    assert [str(w.message) for w in record] == [
        f"{path}: at {SPANS}[1].parentSpanId: parent span '9999999999999999' of span 'span-2222' is not in the "
        "trace; kept as an extra root"
    ]
    assert [s.span_id for s in trace.roots] == [A, B]
    assert trace.orphan_span_ids == {B}


# -- import formats ---------------------------------------------------------------------------------------------------


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def rest_span(**fields: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "id": "U3Bhbjox",
        "name": "root",
        "context": {"trace_id": TRACE_ID, "span_id": A},
        "span_kind": "CHAIN",
        "parent_id": None,
        "start_time": "2026-11-23T17:57:35.004780+00:00",
        "end_time": "2026-11-23T17:57:35.046127+00:00",
        "status_code": "OK",
        "status_message": "",
        "attributes": {},
        "events": [],
    }
    result.update(fields)
    return result


IMPORT_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "jsonl-bad-line": (
        lambda p: write_lines(p, json.dumps(request(span(A))), json.dumps(request(span(B, spanId=7)))),
        f"line 2: {SPANS}[0].spanId: expected 16 hex characters, got the number 7",
    ),
    "jsonl-truncated-line": (
        lambda p: write_lines(p, json.dumps(request(span(A))), json.dumps(request(span(B)))[:40]),
        "line 2: $: expected valid JSON, got end of line (the line is truncated) at column 41",
    ),
    "jsonl-unknown-line": (
        lambda p: write_lines(p, json.dumps(request(span(A))), '{"hello": "world"}'),
        "line 2: $: expected on each line an OTLP ExportTraceServiceRequest, a Phoenix spans page or a Phoenix "
        "spans dataframe record, got an object with keys {hello}",
    ),
    "rest-bad-time": (
        lambda p: write_lines(p, json.dumps({"data": [rest_span(start_time="23/11/2026 17:57")]})),
        "$.data[0].start_time: expected an ISO 8601 time with a time zone, like 2024-01-01T12:00:00.123456+00:00, "
        "got the string '23/11/2026 17:57'",
    ),
    "rest-naive-time": (
        lambda p: write_lines(p, json.dumps({"data": [rest_span(end_time="2026-11-23T17:57:35.046127")]})),
        "$.data[0].end_time: expected an ISO 8601 time with a time zone, like 2024-01-01T12:00:00.123456+00:00, "
        "got the string '2026-11-23T17:57:35.046127'",
    ),
    "rest-bad-status": (
        lambda p: write_lines(p, json.dumps({"data": [rest_span(status_code="FINE")]})),
        "$.data[0].status_code: expected one of UNSET, OK, ERROR, got the string 'FINE'",
    ),
    "rest-int64-overflow": (
        lambda p: write_lines(p, json.dumps({"data": [rest_span(attributes={"llm.token_count.prompt": 2**63})]})),
        "$.data[0].attributes.llm.token_count.prompt: expected an integer between -9223372036854775808 and "
        "9223372036854775807, got 9223372036854775808",
    ),
    "rest-huge-attribute": (
        lambda p: write_lines(
            p, json.dumps({"data": [rest_span(attributes={"input": {"value": "x" * (MAX_ATTRIBUTE_CHARS + 1)}})]})
        ),
        "$.data[0].attributes.input.value: expected a value of at most 1,000,000 characters, got 1,000,001 characters",
    ),
    "dataframe-record-bad-id": (
        lambda p: write_lines(
            p, json.dumps({"context.span_id": 1, "context.trace_id": TRACE_ID, "name": "x", "start_time": 1})
        ),
        "line 1: $.context.span_id: expected 16 hex characters, got the number 1",
    ),
    "unknown-document": (
        lambda p: write_lines(p, json.dumps({"spans": []})),
        "$: expected one of the formats llmtrace can import: spec OTLP JSON *; OTel Collector file exporter output *; "
        "Phoenix REST spans *; Phoenix GET /v1/projects/{project}/spans/otlpv1; Phoenix spans dataframe saved as "
        "JSON lines *; Phoenix spans dataframe saved as parquet *, got an object with keys {spans}",
    ),
    "empty-file": (lambda p: write_lines(p, ""), "$: expected a trace export, got an empty file"),
}


@pytest.mark.parametrize("case", list(IMPORT_CASES))
def test_malformed_imports_name_file_path_and_expectation(tmp_path: Path, case: str) -> None:
    make, expected = IMPORT_CASES[case]
    path = make(tmp_path / f"{case}.data")

    with pytest.raises(TraceFormatError) as info:
        load_traces(path)

    message = str(info.value)
    assert matches(message, f"{path}: at {expected}"), message


def test_corrupt_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1" + b"\x00" * 20)

    with pytest.raises(TraceFormatError) as info:
        load_traces(path)

    assert matches(str(info.value), f"{path}: at $: expected a readable parquet file, got *")
