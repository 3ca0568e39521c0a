"""OTLP trace payloads as a service sends them (protobuf, or JSON as the JavaScript SDKs send it) into trace-model
spans, parsed with the official ``opentelemetry-proto`` classes rather than by hand.

The JSON mapping of OTLP differs from protobuf's canonical JSON in one place: trace and span ids are hex, not base64.
Ids are turned into base64 before ``json_format`` reads the document, and base64 ids (what protobuf's own
``MessageToJson`` writes, and some exporters send) are taken as they are. Everything else (int64 as strings or numbers,
enums as names or numbers, unknown fields) is protobuf's JSON parser's business.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from typing import TYPE_CHECKING, Any

from pytest_llmtrace.core.errors import LLMTraceError
from pytest_llmtrace.trace.model import Span, SpanEvent, SpanLink, Status

if TYPE_CHECKING:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

_ID_BYTES = {"traceId": 16, "spanId": 8, "parentSpanId": 8}
_STATUS = {0: Status.UNSET, 1: Status.OK, 2: Status.ERROR}


class OtlpPayloadError(LLMTraceError):
    """An OTLP payload that cannot be read: the reason is what the sender gets back in the 400 answer."""


def spans_from_protobuf(body: bytes) -> list[Span]:
    """The spans of a binary ``ExportTraceServiceRequest``."""
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        raise OtlpPayloadError(f"not a protobuf ExportTraceServiceRequest: {exc}") from None
    return spans_from_message(request)


def spans_from_json(body: bytes) -> list[Span]:
    """The spans of an OTLP/JSON ``ExportTraceServiceRequest`` (hex ids as the spec says; base64 ids tolerated)."""
    from google.protobuf import json_format  # type: ignore[import-untyped]
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise OtlpPayloadError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise OtlpPayloadError(f"expected an ExportTraceServiceRequest object, got a JSON {type(document).__name__}")
    try:
        _ids_to_base64(document)
        request = json_format.ParseDict(document, ExportTraceServiceRequest(), ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError, AttributeError) as exc:
        raise OtlpPayloadError(f"not an OTLP/JSON ExportTraceServiceRequest: {exc}") from None
    return spans_from_message(request)


def _ids_to_base64(document: dict[str, Any]) -> None:
    """Hex ids (the OTLP/JSON spec) into the base64 protobuf's JSON parser expects, in place."""
    for resource_spans in _list(document.get("resourceSpans")):
        for scope_spans in _list(_dict(resource_spans).get("scopeSpans")):
            for span in _list(_dict(scope_spans).get("spans")):
                span = _dict(span)
                _fix_ids(span)
                for link in _list(span.get("links")):
                    _fix_ids(_dict(link))


def _fix_ids(obj: dict[str, Any]) -> None:
    for key, size in _ID_BYTES.items():
        value = obj.get(key)
        if isinstance(value, str) and len(value) == 2 * size:
            with contextlib.suppress(ValueError):  # not hex: base64 of the right length, read as such
                obj[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def spans_from_message(request: ExportTraceServiceRequest) -> list[Span]:
    """Every span of a parsed request, with its resource and scope (each converted once, shared by its spans)."""
    spans: list[Span] = []
    for rs_index, resource_spans in enumerate(request.resource_spans):
        resource = _attributes(resource_spans.resource.attributes)
        resource_schema = resource_spans.schema_url
        for ss_index, scope_spans in enumerate(resource_spans.scope_spans):
            scope = scope_spans.scope
            scope_name, scope_version, scope_schema = scope.name, scope.version, scope_spans.schema_url
            scope_attributes = _attributes(scope.attributes)
            for index, span in enumerate(scope_spans.spans):
                trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
                if len(trace_id) != 16 or len(span_id) != 8 or (parent and len(parent) != 8):
                    where = f"resourceSpans[{rs_index}].scopeSpans[{ss_index}].spans[{index}]"
                    _hex_id(trace_id, 16, f"{where}.traceId")
                    _hex_id(span_id, 8, f"{where}.spanId")
                    _hex_id(parent, 8, f"{where}.parentSpanId")
                status = span.status
                spans.append(
                    Span(
                        trace_id=_hex_id(trace_id, 16, "traceId"),
                        span_id=_hex_id(span_id, 8, "spanId"),
                        parent_span_id=parent.hex() if parent else None,
                        name=span.name,
                        start_time_unix_nano=span.start_time_unix_nano,
                        end_time_unix_nano=span.end_time_unix_nano or None,
                        attributes=_attributes(span.attributes),
                        status=_STATUS.get(status.code, Status.UNSET),
                        status_message=status.message,
                        otel_kind=span.kind if 0 <= span.kind <= 5 else 0,
                        events=tuple(
                            SpanEvent(e.name, e.time_unix_nano, _attributes(e.attributes), e.dropped_attributes_count)
                            for e in span.events
                        )
                        if span.events
                        else (),
                        links=tuple(
                            SpanLink(
                                _hex_id(lk.trace_id, 16, "links.traceId"),
                                _hex_id(lk.span_id, 8, "links.spanId"),
                                lk.trace_state,
                                _attributes(lk.attributes),
                                lk.dropped_attributes_count,
                                lk.flags,
                            )
                            for lk in span.links
                        )
                        if span.links
                        else (),
                        trace_state=span.trace_state,
                        flags=span.flags,
                        dropped_attributes_count=span.dropped_attributes_count,
                        dropped_events_count=span.dropped_events_count,
                        dropped_links_count=span.dropped_links_count,
                        resource_attributes=resource,
                        resource_schema_url=resource_schema,
                        scope_name=scope_name,
                        scope_version=scope_version,
                        scope_attributes=scope_attributes,
                        scope_schema_url=scope_schema,
                    )
                )
    return spans


def _hex_id(raw: bytes, size: int, where: str) -> str:
    if len(raw) != size or raw == bytes(size):
        shown = binascii.hexlify(raw).decode("ascii") or "(empty)"
        raise OtlpPayloadError(f"{where}: expected a non-zero {size}-byte id, got {shown}")
    return raw.hex()


def _attributes(items: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in items}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return ""  # an empty AnyValue: OTLP's "no value", as the golden-file reader has it
    if kind == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)
