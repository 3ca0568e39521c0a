"""A broken trace file must say which file, where in it and what was expected: these messages are the UI."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import load_traces

from pytest_llmtrace.core.errors import TraceFormatError, TraceFormatWarning
from pytest_llmtrace.trace.jsondoc import MAX_ATTRIBUTE_CHARS
from pytest_llmtrace.trace.otlp import read_trace, write_trace
from pytest_llmtrace.trace.safejson import DEFAULT_MAX_TRACE_BYTES

DATAFRAME_EXTRA = "needs pyarrow, from the README's set-up: pip install -e '.[dataframe]'"
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
        "spans dataframe record, a Langfuse trace or observations page, or LangSmith runs, got an object with keys "
        "{hello}",
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
    pytest.importorskip("pyarrow", reason=DATAFRAME_EXTRA)
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1" + b"\x00" * 20)

    with pytest.raises(TraceFormatError) as info:
        load_traces(path)

    assert matches(str(info.value), f"{path}: at $: expected a readable parquet file, got *")


# -- hostile input: limits that keep one file from ending a collection ------------------------------------------------


def planted(fragment: str, where: str = "value") -> str:
    """A valid golden document with ``fragment`` written verbatim as the first attribute's ``where``."""
    doc = request(span(A, attributes=[attr("input.value", {"stringValue": "q"})]))
    attribute = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"][0]
    attribute[where] = "PLANTED"
    return json.dumps(doc).replace('"PLANTED"', fragment)


def span_with(**raw: str) -> str:
    """A valid golden document whose span fields in ``raw`` are written verbatim (numbers, literals)."""
    doc = request(span(A, **dict.fromkeys(raw, "PLANTED")))
    text = json.dumps(doc)
    for fragment in raw.values():
        text = text.replace('"PLANTED"', fragment, 1)
    return text


ATTR0 = f"{SPANS}[0].attributes[0]"
LIMIT_CASES: dict[str, tuple[str, str]] = {
    "nesting-100000": (
        planted("[" * 100_000 + "]" * 100_000),
        f"{ATTR0}.value[0]...(x91): expected at most 100 levels of nested arrays and objects, got level 101 here",
    ),
    "nesting-101-objects": (
        planted('{"a":' * 101 + "1" + "}" * 101),
        f"{ATTR0}.value.a...(x91): expected at most 100 levels of nested arrays and objects, got level 101 here",
    ),
    "timestamp-5000-digits": (
        span_with(startTimeUnixNano="1" * 5000),
        f"{SPANS}[0].startTimeUnixNano: expected a number of at most 100 characters, got a number of 5,000 "
        "characters (11111111111111111111...)",
    ),
    "timestamp-5000-digit-string": (
        span_with(startTimeUnixNano='"' + "1" * 5000 + '"'),
        f"{SPANS}[0].startTimeUnixNano: expected an integer between 0 and 18446744073709551615, got a number of "
        "5,000 digits",
    ),
    "float-5000-digits": (
        planted("-" + "9" * 5000 + ".5"),
        f"{ATTR0}.value: expected a number of at most 100 characters, got a number of 5,003 characters "
        "(-9999999999999999999...)",
    ),
    "float-out-of-range": (
        planted("1e999"),
        f"{ATTR0}.value: expected a finite number, got 1e999 (beyond the range of a 64-bit float)",
    ),
    "nan-literal": (
        span_with(endTimeUnixNano="NaN"),
        f"{SPANS}[0].endTimeUnixNano: expected a JSON number (NaN and Infinity are not JSON; OTLP writes them as "
        'the strings "NaN" and "Infinity"), got the literal NaN',
    ),
    "infinity-literal": (planted("-Infinity"), f"{ATTR0}.value: expected a JSON number * got the literal -Infinity"),
    "duplicate-key": (
        json.dumps(request(span(A))).replace('"name":', '"spanId": "2222222222222222", "name":'),
        f"{SPANS}[0].spanId: expected each key once in an object (readers disagree about which duplicate wins), "
        "got 'spanId' twice",
    ),
    "lone-surrogate": (
        json.dumps(request(span(A, name="\ud800"))),
        f"{SPANS}[0].name: expected valid Unicode text, got the string with a lone surrogate \\ud800 (half a "
        "UTF-16 pair)",
    ),
    "arabic-indic-digits": (
        json.dumps(request(span(A, startTimeUnixNano="\u0661\u0662"))),
        f"{SPANS}[0].startTimeUnixNano: expected an integer (a number or a decimal string), "
        "got the string '\u0661\u0662'",
    ),
    "key-with-newline": (
        planted('{"a\\nb": NaN}'),
        f'{ATTR0}.value["a\\nb"]: expected a JSON number * got the literal NaN',
    ),
}


@pytest.mark.parametrize("case", list(LIMIT_CASES))
@pytest.mark.parametrize("loader", [read_trace, load_traces], ids=["read_trace", "load_traces"])
def test_hostile_documents_are_format_errors_with_the_path(
    tmp_path: Path, case: str, loader: Callable[[Path], Any]
) -> None:
    text, expected = LIMIT_CASES[case]
    path = tmp_path / f"{case}.json"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))

    with pytest.raises(TraceFormatError) as info:
        loader(path)

    assert matches(str(info.value), f"{path}: at {expected}"), str(info.value)
    assert "\n" not in str(info.value)


def test_nesting_up_to_the_limit_is_read(tmp_path: Path) -> None:
    """100 levels in all: the document's own 9 (down to the attribute object) plus 91 arrays inside it."""
    path = tmp_path / "deep-but-allowed.json"
    path.write_text(planted("[" * 91 + "]" * 91, where="extra"), encoding="utf-8")

    assert read_trace(path).root.span_id == A

    path.write_text(planted("[" * 92 + "]" * 92, where="extra"), encoding="utf-8")
    with pytest.raises(TraceFormatError, match=r"expected at most 100 levels"):
        read_trace(path)


@pytest.mark.parametrize("loader", [read_trace, load_traces], ids=["read_trace", "load_traces"])
def test_files_over_the_size_limit_are_refused_with_the_way_to_raise_it(
    tmp_path: Path, loader: Callable[..., Any]
) -> None:
    path = tmp_path / "big.json"
    path.write_text(json.dumps(request(span(A))), encoding="utf-8")
    size = path.stat().st_size

    with pytest.raises(TraceFormatError) as info:
        loader(path, max_bytes=size - 1)

    assert str(info.value) == (
        f"{path}: at $: expected a file of at most {size - 1:,} bytes (raise the limit with the ini key "
        "llmtrace_max_trace_bytes or the environment variable LLMTRACE_MAX_TRACE_BYTES (llmtrace import: "
        f"--max-trace-bytes)), got {size:,} bytes"
    )
    assert loader(path, max_bytes=size)  # exactly at the limit is fine


def test_default_size_limit_is_50_mb() -> None:
    assert DEFAULT_MAX_TRACE_BYTES == 50_000_000
    assert inspect.signature(read_trace).parameters["max_bytes"].default == DEFAULT_MAX_TRACE_BYTES
    assert inspect.signature(load_traces).parameters["max_bytes"].default == DEFAULT_MAX_TRACE_BYTES


def test_a_device_that_never_ends_is_read_only_to_the_limit() -> None:
    zero = Path("/dev/zero")
    if not zero.exists():
        pytest.skip("no /dev/zero on this system")

    with pytest.raises(TraceFormatError) as info:
        read_trace(zero, max_bytes=1_000)

    assert str(info.value).endswith("got more than 1,000 bytes")


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    good = json.dumps(request(span(A)))
    path = write_lines(tmp_path / "batches.jsonl", good, '{"resourceSpans": [' * 150 + "]}" * 150, good)

    with pytest.raises(TraceFormatError) as info:
        load_traces(path)

    assert matches(str(info.value), f"{path}: at line 2: $.resourceSpans[0]...(x50): expected at most 100 levels *")


def test_jsonl_lines_end_only_at_newlines(tmp_path: Path) -> None:
    """U+2028 is legal raw inside a JSON string; ``str.splitlines`` would cut the line there."""
    first = json.dumps(request(span(A, name="a\u2028b")), ensure_ascii=False)
    path = write_lines(tmp_path / "batches.jsonl", first, json.dumps(request(span(B, traceId="1" * 32))))

    traces = load_traces(path)

    assert [t.root.name for t in traces] == ["a\u2028b", "span-2222"]


def test_phoenix_nested_and_dotted_key_for_one_attribute_is_refused(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "rest.json",
        json.dumps({"data": [rest_span(attributes={"input.value": "a", "input": {"value": "b"}})]}),
    )

    with pytest.raises(TraceFormatError) as info:
        load_traces(path)

    assert str(info.value) == (
        f"{path}: at $.data[0].attributes.input.value: expected each attribute once (a nested key and a dotted key "
        "name the same attribute), got 'input.value' twice"
    )


def test_dataframe_token_count_beyond_int64_stays_a_float_and_round_trips(tmp_path: Path) -> None:
    record = {
        "context.span_id": A,
        "context.trace_id": TRACE_ID,
        "name": "llm",
        "start_time": 1_795_456_655_004,
        "attributes.llm.token_count.prompt": 4.45e23,
        "attributes.llm.token_count.completion": 12.0,
    }
    source = write_lines(tmp_path / "df.jsonl", json.dumps(record), json.dumps({**record, "context.span_id": B}))

    (trace,) = load_traces(source)
    written = write_trace(trace, tmp_path / "golden.json")

    assert trace.root.attributes["llm.token_count.prompt"] == 4.45e23
    assert trace.root.attributes["llm.token_count.completion"] == 12
    assert read_trace(written) == trace


def test_dataframe_time_beyond_uint64_nanoseconds_is_refused(tmp_path: Path) -> None:
    record = {"context.span_id": A, "context.trace_id": TRACE_ID, "name": "x", "start_time": 1e300}
    path = write_lines(tmp_path / "df.jsonl", json.dumps(record), json.dumps({**record, "context.span_id": B}))

    with pytest.raises(TraceFormatError) as info:
        load_traces(path)

    assert str(info.value) == (
        f"{path}: at line 1: $.start_time: expected a time before the year 2554 (at most 18446744073709551615 ns), "
        "got the number 1e+300"
    )
