"""Phoenix's export shapes -> the trace model, so traces already collected in Phoenix can become golden files.

Phoenix hands spans out in several shapes, none of them spec OTLP JSON, and each loses something different:

- ``GET /v1/projects/{project}/spans`` (the REST spans page): flat dotted attributes, the OpenInference span kind
  moved out to ``span_kind``, ISO times with microseconds, no OTel kind, resource or scope.
- ``GET /v1/projects/{project}/spans/otlpv1``: OTLP-like but snake_case, ``null`` in every empty slot, times
  rebuilt from microseconds through a float, and ``kind`` always ``SPAN_KIND_INTERNAL`` whatever the span was.
- the spans dataframe (``phoenix.client.Client().spans.get_spans_dataframe()``) saved by pandas: one record per
  span, attributes outside the OpenInference columns nested again, token counts as float64, epoch-millisecond
  times in JSON, ``pyarrow`` structs in parquet.
- ``GET /v1/projects/{project}/traces?include_spans=true``: spans without attributes. There is nothing to replay in
  it, so it is refused with a pointer to the spans endpoint instead of producing empty-looking traces.

What Phoenix dropped cannot be recovered, so converted spans have ``otel_kind`` 0 (UNSPECIFIED) and no resource or
scope; everything Phoenix kept is kept.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from pytest_llmtrace.core.errors import TraceFormatError, warn_format
from pytest_llmtrace.sources.phoenix_values import (
    any_time_ns,
    flatten_attributes,
    flatten_into,
    iso_to_ns,
    sorted_attributes,
)
from pytest_llmtrace.trace.jsondoc import (
    INT64_MAX,
    INT64_MIN,
    SCALAR_KINDS,
    Doc,
    decode_scalar,
    describe,
    keyed_items,
)
from pytest_llmtrace.trace.safejson import check_tree
from pytest_llmtrace.trace.span import SPAN_KIND, AttrValue, Span, SpanEvent, Status

DATAFRAME_INSTALL_HINT = "pip install pytest-llmtrace[dataframe]"

# Item kinds, as named in messages.
REST_SPANS = "Phoenix REST spans"
OTLPV1_SPANS = "Phoenix /spans/otlpv1 spans"
DATAFRAME_RECORDS = "Phoenix spans dataframe records"
TRACES_EXPORT = "Phoenix /traces export"

# OpenInference integer attributes that a dataframe turns into float64 (the column holds NaN for other spans).
# Other integral floats stay floats: ``metadata.ls_temperature = 0.0`` is a real float.
_FLOAT_INT_PREFIXES = ("llm.token_count.",)

_STATUS_NAMES = {"UNSET": Status.UNSET, "OK": Status.OK, "ERROR": Status.ERROR}
_REFUSAL = (
    "Phoenix's GET /v1/projects/{project}/traces?include_spans=true export, whose spans have no attributes "
    "(no inputs, LLM calls or SQL) and so cannot be replayed; export GET /v1/projects/{project}/spans "
    "(or /v1/projects/{project}/spans/otlpv1) instead"
)


# -- shape detection --------------------------------------------------------------------------------------------------


def is_phoenix_page(value: Any) -> bool:
    """A paginated Phoenix response: ``{"data": [...], "next_cursor": ...}``."""
    return isinstance(value, dict) and isinstance(value.get("data"), list)


def is_dataframe_record(value: Any) -> bool:
    return isinstance(value, dict) and "context.span_id" in value


def item_kind(value: Any) -> str | None:
    """Which Phoenix shape one element of ``data`` (or one dataframe record) is; ``None`` if none of them."""
    if not isinstance(value, dict):
        return None
    if is_dataframe_record(value):
        return DATAFRAME_RECORDS
    if isinstance(value.get("context"), dict) and "span_kind" in value:
        return REST_SPANS
    if "start_time_unix_nano" in value or ("span_id" in value and "trace_id" in value and "status" in value):
        return OTLPV1_SPANS
    if "spans" in value and ("trace_id" in value or "project_id" in value):
        return TRACES_EXPORT
    return None


def spans_from_items(items: list[Doc]) -> tuple[list[Span], dict[str, str], list[str]]:
    """Spans from Phoenix span objects of any supported shape, plus each span's JSON path and the shapes seen.

    A ``/traces`` export anywhere in the list is refused, because converting it would produce traces that look
    fine but have lost everything a regression test compares.
    """
    spans: list[Span] = []
    paths: dict[str, str] = {}
    kinds: list[str] = []
    for item in items:
        kind = item_kind(item.value)
        if kind == TRACES_EXPORT:
            refuse_traces_export(item)
        if kind == REST_SPANS:
            span = span_from_rest(item)
        elif kind == OTLPV1_SPANS:
            span = span_from_otlpv1(item)
        elif kind == DATAFRAME_RECORDS:
            span = span_from_dataframe_record(item)
        else:
            raise item.fail(
                "a Phoenix span (an object from GET /v1/projects/{project}/spans or /spans/otlpv1, "
                "or a spans dataframe record with 'context.span_id')"
            )
        if kind not in kinds:
            kinds.append(kind)
        paths.setdefault(span.span_id, item.path)
        spans.append(span)
    return spans, paths, kinds


def spans_from_page(doc: Doc) -> tuple[list[Span], dict[str, str], list[str]]:
    """One ``{"data": [...], "next_cursor": ...}`` response; warns when it is not the last page."""
    spans, paths, kinds = spans_from_items(doc.key("data").items(optional=False))
    cursor = doc.obj().get("next_cursor")
    if cursor is not None:
        warn_format(
            doc.source,
            doc.path + ".next_cursor",
            f"this is one page of a longer export (next_cursor {describe(cursor)}); spans on later pages are "
            "missing: fetch every page with ?cursor=... and save one response per line (JSONL)",
        )
    return spans, paths, kinds


def refuse_traces_export(doc: Doc) -> NoReturn:
    raise doc.error("spans with attributes", _REFUSAL, suffix=".spans")


# -- REST spans -------------------------------------------------------------------------------------------------------


def span_from_rest(doc: Doc) -> Span:
    """One span of ``GET /v1/projects/{project}/spans`` (Phoenix's ``Span`` model in ``routers/v1/spans.py``)."""
    return _named_span(doc, doc.key("context").key, flatten_attributes(doc.key("attributes")), iso_to_ns)


def _named_span(
    doc: Doc, ids: Callable[[str], Doc], attributes: dict[str, AttrValue], time: Callable[[Doc], int]
) -> Span:
    """A span of the two shapes that name their fields alike (the REST spans page and a dataframe record): ids
    under ``context``, ``start_time``/``end_time`` as ``time`` reads them, the OpenInference kind in ``span_kind``."""
    return _phoenix_span(
        doc,
        ids,
        "parent_id",
        (time(doc.key("start_time")), time(doc.key("end_time")) if doc.has("end_time") else None),
        _with_span_kind(attributes, doc.key("span_kind")),
        (_status(doc.key("status_code")), doc.key("status_message").string(optional=True)),
        (
            SpanEvent(
                name=e.key("name").string(),
                time_unix_nano=time(e.key("timestamp")),
                attributes=flatten_attributes(e.key("attributes")),
            )
            for e in doc.key("events").items()
        ),
    )


def _phoenix_span(
    doc: Doc,
    ids: Callable[[str], Doc],
    parent: str,
    times: tuple[int, int | None],
    attributes: Mapping[str, AttrValue],
    status: tuple[Status, str],
    events: Iterable[SpanEvent],
) -> Span:
    """What every Phoenix shape gives alike; ``otel_kind`` is 0 (UNSPECIFIED) since Phoenix dropped it."""
    return Span(
        trace_id=ids("trace_id").hex_id(16),
        span_id=ids("span_id").hex_id(8),
        parent_span_id=doc.key(parent).optional_hex_id(8),
        name=doc.key("name").string(),
        start_time_unix_nano=times[0],
        end_time_unix_nano=times[1],
        attributes=attributes,
        status=status[0],
        status_message=status[1],
        otel_kind=0,
        events=tuple(events),
    )


def _with_span_kind(attributes: dict[str, AttrValue], kind_doc: Doc) -> dict[str, AttrValue]:
    """Put ``span_kind`` back where OpenInference keeps it; ``UNKNOWN`` is Phoenix's word for "not OpenInference"."""
    kind = kind_doc.string(optional=True)
    if SPAN_KIND in attributes or not kind or kind.upper() == "UNKNOWN":
        return attributes
    return sorted_attributes({SPAN_KIND: kind, **attributes})


def _status(doc: Doc) -> Status:
    name = doc.string(optional=True, default="UNSET")
    try:
        return _STATUS_NAMES[name.upper()]
    except KeyError:
        raise doc.fail("one of UNSET, OK, ERROR") from None


# -- /spans/otlpv1 ----------------------------------------------------------------------------------------------------


def span_from_otlpv1(doc: Doc) -> Span:
    """One span of ``/spans/otlpv1`` (Phoenix's ``OtlpSpan``). ``kind`` is ignored: Phoenix always writes INTERNAL."""
    status = doc.key("status")
    code, message = 0, ""
    if status.value is not None:
        code = status.key("code").integer(optional=True, lo=0, hi=2)
        message = status.key("message").string(optional=True)
    end = doc.key("end_time_unix_nano")
    span = _phoenix_span(
        doc,
        doc.key,
        "parent_span_id",
        (_phoenix_ns(doc.key("start_time_unix_nano")), _phoenix_ns(end) if end.value not in (None, 0, "0") else None),
        _snake_attributes(doc.key("attributes")),
        (Status.from_otlp_code(code), message),
        (
            SpanEvent(
                name=e.key("name").string(optional=True),
                time_unix_nano=_phoenix_ns(e.key("time_unix_nano")),
                attributes=_snake_attributes(e.key("attributes")),
                dropped_attributes_count=e.key("dropped_attributes_count").integer(optional=True, lo=0),
            )
            for e in doc.key("events").items()
        ),
    )
    return replace(
        span,
        trace_state=doc.key("trace_state").string(optional=True),
        flags=doc.key("flags").integer(optional=True, lo=0, hi=2**32 - 1),
        dropped_attributes_count=doc.key("dropped_attributes_count").integer(optional=True, lo=0),
        dropped_events_count=doc.key("dropped_events_count").integer(optional=True, lo=0),
        dropped_links_count=doc.key("dropped_links_count").integer(optional=True, lo=0),
    )


def _phoenix_ns(doc: Doc) -> int:
    """Round to the microsecond Phoenix stored: its ``timestamp() * 1e9`` adds float noise in the last digits.

    Rounding makes the otlpv1 and REST exports of the same spans convert to identical traces.
    """
    ns = doc.integer(lo=0)
    return (ns + 500) // 1000 * 1000


_SNAKE_VALUE_KEYS = frozenset(
    {"string_value", "bool_value", "int_value", "double_value", "array_value", "kvlist_value", "bytes_value"}
)


def _snake_attributes(doc: Doc) -> dict[str, AttrValue]:
    """``[{"key": ..., "value": {"string_value": ..., "int_value": null, ...}}]``; all-null values are skipped."""
    result: dict[str, AttrValue] = {}
    for key, item in keyed_items(doc):
        value = _snake_value(item.key("value")) if item.has("value") else None
        if value is not None:
            result[key] = value
    return sorted_attributes(result)


def _snake_value(doc: Doc) -> AttrValue | None:
    obj = doc.obj()
    unknown = [k for k in obj if k not in _SNAKE_VALUE_KEYS]
    if unknown:
        raise doc.error("only the keys " + ", ".join(sorted(_SNAKE_VALUE_KEYS)), f"the key {unknown[0]!r}")
    present = [k for k, v in obj.items() if v is not None]
    if not present:
        return None  # Phoenix writes an all-null value for None and for nested objects it cannot express
    if len(present) > 1:
        raise doc.error("exactly one non-null value", "the keys " + ", ".join(present))
    key = present[0]
    inner = doc.key(key)
    if key.removesuffix("_value") in SCALAR_KINDS:
        return decode_scalar(key.removesuffix("_value"), inner)  # type: ignore[no-any-return]
    if key == "bytes_value":
        return _phoenix_bytes(inner)
    if key == "array_value":
        values = [_snake_value(v) for v in inner.key("values").items()]
        return tuple(v if v is not None else "" for v in values)
    # kvlist_value: Phoenix has no model for it yet and writes null; accept the OTLP shape if a later version does.
    return _snake_attributes(inner.key("values"))


def _phoenix_bytes(doc: Doc) -> bytes:
    """Phoenix writes bytes as hex (``value.hex()``) although its schema says base64; accept both."""
    text = doc.string()
    try:
        return bytes.fromhex(text)
    except ValueError:
        pass
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise doc.fail("hex or base64 bytes") from None


# -- the spans dataframe ----------------------------------------------------------------------------------------------


def span_from_dataframe_record(doc: Doc, *, epoch_unit: str | None = None) -> Span:
    """One row of ``get_spans_dataframe()`` as pandas writes it (``to_json(orient="records")`` or parquet).

    ``epoch_unit`` (``s``, ``ms``, ``us``, ``ns``) says what numeric times count; ``None`` guesses from the
    magnitude, since ``to_json`` writes milliseconds by default but ``date_unit`` can change that.
    """
    attributes: dict[str, AttrValue] = {}
    for column, value in doc.obj().items():
        if column.startswith("attributes.") and value is not None:
            flatten_into(attributes, column[len("attributes.") :], doc.key(column))
    for key, value in attributes.items():
        if key.startswith(_FLOAT_INT_PREFIXES) and isinstance(value, float) and value.is_integer() and _fits(value):
            attributes[key] = int(value)
    return _named_span(
        doc,
        lambda name: doc.key(f"context.{name}"),
        sorted_attributes(attributes),
        lambda t: any_time_ns(t, epoch_unit),
    )


def _fits(value: float) -> bool:
    """A float that becomes an int64 attribute (a larger one would make a golden file no reader accepts)."""
    return INT64_MIN <= value <= INT64_MAX


def spans_from_parquet(path: Path, data: bytes | None = None) -> tuple[list[Span], dict[str, str]]:
    """A spans dataframe saved with ``df.to_parquet()``; needs ``pyarrow`` (not pandas).

    ``data`` is the file's content when the caller has already read it within the size limit; the file is then not
    opened again (it could have grown or been replaced in between).
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(
            f"reading the parquet file {path} needs pyarrow: {DATAFRAME_INSTALL_HINT}", name=exc.name
        ) from None
    try:
        table = pq.read_table(pa.BufferReader(data) if data is not None else path)
    except (pa.ArrowException, OSError) as exc:
        raise TraceFormatError(path, "$", "a readable parquet file", str(exc).splitlines()[0]) from None
    # Timestamps become integer nanoseconds here, so rows hold only JSON-like values (no pandas.Timestamp).
    for index, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            as_ns = table.column(index).cast(pa.timestamp("ns", tz=field.type.tz)).cast(pa.int64())
            table = table.set_column(index, field.name, as_ns)
    spans: list[Span] = []
    paths: dict[str, str] = {}
    for row_index, row in enumerate(table.to_pylist()):
        doc = Doc(row, path, f"$[{row_index}]")
        check_tree(row, path, doc.path)
        if not is_dataframe_record(row):
            raise doc.fail("a spans dataframe row with a 'context.span_id' column")
        span = span_from_dataframe_record(doc, epoch_unit="ns")
        paths.setdefault(span.span_id, doc.path)
        spans.append(span)
    return spans, paths


# -- values -----------------------------------------------------------------------------------------------------------
