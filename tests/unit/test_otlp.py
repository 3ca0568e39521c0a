"""Golden files must survive read -> write -> read unchanged, or every re-record would produce a noisy diff."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmtrace.trace.jsondoc import INT64_MAX, INT64_MIN
from pytest_llmtrace.trace.model import AttrValue, Span, SpanEvent, SpanLink, Status, Trace
from pytest_llmtrace.trace.otlp import dumps, read_trace, trace_to_request, traces_from_request, write_trace

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def typed(value: Any) -> Any:
    """A comparable form that tells ``1`` from ``1.0`` and ``True`` (``==`` does not)."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, [typed(v) for v in value])
    return (type(value).__name__, value)


def rich_trace() -> Trace:
    """Every field the writer knows, across two resources and two scopes."""
    resource_a = {"service.name": "text2sql", "openinference.project.name": "shop"}
    resource_b = {"service.name": "db-proxy"}
    attrs: dict[str, AttrValue] = {
        "openinference.span.kind": "CHAIN",
        "input.value": "How many customers are in Berlin? — ünïcode",
        "int": 3,
        "float": 3.0,
        "big": INT64_MAX,
        "negative": INT64_MIN,
        "inf": math.inf,
        "flag": True,
        "tags": ("a", "b"),
        "mixed": (1, 2.5, "x", False),
        "nested": {"k": "v", "n": {"deep": (1, 2)}},
        "blob": b"\x00\xffbinary",
        "empty": "",
    }
    root = Span(
        trace_id=TRACE_ID,
        span_id="b7ad6b7169203331",
        parent_span_id=None,
        name="text_to_sql",
        start_time_unix_nano=1_700_000_000_000_000_001,
        end_time_unix_nano=1_700_000_000_900_000_000,
        attributes=attrs,
        status=Status.OK,
        otel_kind=2,
        trace_state="vendor=abc",
        flags=257,
        dropped_attributes_count=2,
        dropped_events_count=1,
        dropped_links_count=3,
        links=(SpanLink(trace_id="1" * 32, span_id="2" * 16, trace_state="x=y", attributes={"why": "retry"}, flags=1),),
        resource_attributes=resource_a,
        resource_schema_url="https://opentelemetry.io/schemas/1.26.0",
        scope_name="text2sql.app",
        scope_version="0.3.1",
        scope_attributes={"scope.attr": 1},
        scope_schema_url="https://example.com/scope",
    )
    llm = Span(
        trace_id=TRACE_ID,
        span_id="00f067aa0ba902b7",
        parent_span_id=root.span_id,
        name="ChatOllama",
        start_time_unix_nano=1_700_000_000_100_000_000,
        end_time_unix_nano=None,  # still open when captured
        attributes={"openinference.span.kind": "LLM", "llm.token_count.prompt": 412},
        resource_attributes=resource_a,
        resource_schema_url="https://opentelemetry.io/schemas/1.26.0",
        scope_name="openinference.instrumentation.langchain",
    )
    sql = Span(
        trace_id=TRACE_ID,
        span_id="53995c3f42cd8ad8",
        parent_span_id=root.span_id,
        name="SELECT shop",
        start_time_unix_nano=1_700_000_000_500_000_000,
        end_time_unix_nano=1_700_000_000_600_000_000,
        attributes={"db.query.text": "SELECT 1", "db.system.name": "postgresql"},
        status=Status.ERROR,
        status_message='relation "orderz" does not exist',
        otel_kind=3,
        events=(
            SpanEvent(
                name="exception",
                time_unix_nano=1_700_000_000_599_999_999,
                attributes={"exception.message": "boom", "exception.escaped": False},
                dropped_attributes_count=1,
            ),
            SpanEvent(name="empty event", time_unix_nano=1_700_000_000_599_999_999),
        ),
        resource_attributes=resource_b,
    )
    return Trace([root, llm, sql])


def test_round_trip_loses_nothing(tmp_path: Path) -> None:
    original = rich_trace()
    again = read_trace(write_trace(original, tmp_path / "golden.json"))

    assert again == original
    for before, after in zip(original.spans, again.spans, strict=True):
        assert typed(dict(after.attributes)) == typed(dict(before.attributes)), before.name
        assert [typed(dict(e.attributes)) for e in after.events] == [typed(dict(e.attributes)) for e in before.events]
    assert again.get("00f067aa0ba902b7").is_open
    assert again.get("b7ad6b7169203331").attributes["blob"] == b"\x00\xffbinary"


def test_spans_are_grouped_by_resource_then_scope() -> None:
    request = trace_to_request(rich_trace())

    resources = request["resourceSpans"]
    assert [len(r["scopeSpans"]) for r in resources] == [2, 1]
    assert resources[0]["schemaUrl"] == "https://opentelemetry.io/schemas/1.26.0"
    assert [s["scope"]["name"] for s in resources[0]["scopeSpans"]] == [
        "text2sql.app",
        "openinference.instrumentation.langchain",
    ]


def test_spec_json_mapping_uses_strings_for_64_bit_ints_and_hex_ids() -> None:
    span = trace_to_request(rich_trace())["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    attrs = {a["key"]: a["value"] for a in span["attributes"]}

    assert span["startTimeUnixNano"] == "1700000000000000001"
    assert span["traceId"] == TRACE_ID
    assert attrs["int"] == {"intValue": "3"}
    assert attrs["float"] == {"doubleValue": 3.0}
    assert attrs["inf"] == {"doubleValue": "Infinity"}
    assert attrs["blob"] == {"bytesValue": "AP9iaW5hcnk="}


def test_write_is_canonical(tmp_path: Path) -> None:
    first = dumps(rich_trace())
    written = write_trace(rich_trace(), tmp_path / "a.json")

    assert dumps(rich_trace()) == first
    assert written.read_text(encoding="utf-8") == first
    assert dumps(read_trace(written)) == first
    assert first.endswith("}\n")
    assert "ünïcode" in first  # readable, not \u escapes


def test_reading_accepts_numbers_base64_ids_and_float_timestamps(tmp_path: Path) -> None:
    """Producers differ: MessageToDict writes base64 ids, LangChain timestamps pass through a float."""
    doc = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "CvdlGRbNQ92ESOshHIAxnA==",
                                "spanId": "t61rcWkgMzE=",
                                "name": "root",
                                "kind": 1,
                                "startTimeUnixNano": 1.7e18,
                                "endTimeUnixNano": 1700000000000000100,
                                "attributes": [{"key": "n", "value": {"intValue": 5}}],
                            }
                        ]
                    }
                ]
            }
        ]
    }
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc), encoding="utf-8")

    span = read_trace(path).root

    assert (span.trace_id, span.span_id) == (TRACE_ID, "b7ad6b7169203331")
    assert span.start_time_unix_nano == 1_700_000_000_000_000_000
    assert typed(span.attributes["n"]) == ("int", 5)
    assert span.end_time_unix_nano == 1_700_000_000_000_000_100


# -- property test ----------------------------------------------------------------------------------------------------

scalars = (
    st.text(max_size=20)
    | st.booleans()
    | st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
    | st.floats(allow_nan=False)
    | st.binary(max_size=16)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4).map(tuple) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(attributes=st.dictionaries(st.text(min_size=1, max_size=12), values, max_size=6))
def test_attribute_values_round_trip(attributes: dict[str, AttrValue]) -> None:
    span = Span(
        trace_id=TRACE_ID,
        span_id="b7ad6b7169203331",
        parent_span_id=None,
        name="s",
        start_time_unix_nano=1,
        end_time_unix_nano=2,
        attributes=attributes,
    )
    text = dumps([span])

    (again,) = traces_from_request(json.loads(text), "<property>")

    assert typed(dict(again.root.attributes)) == typed(attributes)
    assert dumps(again) == text


# Attribute lists as files hold them: mostly plain values, each list with some of the values the checked reading
# reads in its own way or refuses.
_PLAIN_SCALAR = st.one_of(
    st.builds(lambda v: {"stringValue": v}, st.text(max_size=5)),
    st.builds(lambda v: {"intValue": str(v)}, st.integers(INT64_MIN, INT64_MAX)),
    st.builds(lambda v: {"intValue": v}, st.integers(INT64_MIN, INT64_MAX)),
    st.builds(lambda v: {"doubleValue": v}, st.one_of(st.floats(allow_nan=False), st.integers(-9, 9))),
    st.builds(lambda v: {"boolValue": v}, st.booleans()),
)
_EDGE_SCALAR = st.sampled_from(
    [
        *({"intValue": v} for v in (True, 1.0, " 7", "007", "-0", "1e3", "", INT64_MAX + 1, INT64_MIN - 1)),
        *({"intValue": str(v)} for v in (INT64_MAX + 1, INT64_MIN - 1)),
        *({"boolValue": v} for v in ("true", 1, 0, None)),
        *({"doubleValue": v} for v in (True, "NaN", "Infinity", "1.5", None)),
        *({"stringValue": v} for v in (5, None, True)),
        {"bytesValue": "AA=="},
        {"string_value": "s"},
        {"stringValue": "a", "intValue": "1"},
        {},
        None,
    ]
)
_ARRAY = st.builds(
    lambda vs: {"arrayValue": {"values": vs}}, st.lists(st.one_of(_PLAIN_SCALAR, _EDGE_SCALAR), max_size=3)
)
_ODD_ARRAYS = st.sampled_from(
    [
        {"arrayValue": {}},
        {"arrayValue": {"values": None}},
        {"arrayValue": {"values": [{"arrayValue": {}}]}},
        {"arrayValue": {"values": []}, "x": 1},
        {"kvlistValue": {"values": [{"key": "k", "value": {"stringValue": "v"}}]}},
    ]
)
_ITEM = st.builds(
    lambda k, v: {"key": k, "value": v},
    st.text(min_size=1, max_size=4),
    st.one_of(_PLAIN_SCALAR, _PLAIN_SCALAR, _ARRAY, _EDGE_SCALAR, _ODD_ARRAYS),
)
_ODD_ITEM = st.sampled_from(
    [{"key": 1, "value": {"stringValue": "s"}}, {"key": "k"}, {"key": "a", "value": {"stringValue": "s"}, "x": 1}, "s"]
)
_ITEMS = st.lists(st.one_of(_ITEM, _ITEM, _ITEM, _ITEM, _ODD_ITEM), max_size=4)


@settings(max_examples=500, deadline=None, database=None)
@given(items=st.one_of(_ITEMS, st.none(), st.just({"key": "a"})))
def test_plain_attributes_read_as_the_checked_reading_reads_them(items: Any) -> None:
    """The fast reading of plain attributes gives what the checked reading gives, value for value and type for
    type, and leaves to it everything it does not read (it never accepts what the checked reading refuses)."""
    from pytest_llmtrace.core.errors import TraceFormatError
    from pytest_llmtrace.trace.jsondoc import Doc, _checked_attributes, _plain_attributes

    fast = _plain_attributes(items)
    try:
        checked: Any = _checked_attributes(Doc(items, "t.json", "$.attributes"))
    except TraceFormatError:
        checked = TraceFormatError
    if fast is not None:
        assert checked is not TraceFormatError
        assert typed(fast) == typed(checked)


def test_the_plain_reading_takes_the_usual_attributes_and_leaves_the_rest() -> None:
    """The values golden files are made of go the fast way (else it would never run); a kvlist does not."""
    from pytest_llmtrace.trace.jsondoc import _plain_attributes

    usual = [
        {"key": "s", "value": {"stringValue": "text"}},
        {"key": "i", "value": {"intValue": "42"}},
        {"key": "d", "value": {"doubleValue": 1}},
        {"key": "b", "value": {"boolValue": False}},
        {"key": "a", "value": {"arrayValue": {"values": [{"doubleValue": 0.5}, {"intValue": 2}]}}},
    ]
    assert typed(_plain_attributes(usual)) == typed({"s": "text", "i": 42, "d": 1.0, "b": False, "a": (0.5, 2)})
    assert _plain_attributes([{"key": "k", "value": {"kvlistValue": {"values": []}}}]) is None
