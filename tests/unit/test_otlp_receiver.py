"""The OTLP/HTTP receiver, driven by the SDK's real OTLP exporter and by raw HTTP for what exporters do not send."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
from collections.abc import Iterable, Iterator
from dataclasses import replace

import pytest
from google.protobuf import json_format  # type: ignore[import-untyped]
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from pytest_llmtrace.services.otlp_receiver import OtlpReceiver
from pytest_llmtrace.trace.model import Span
from pytest_llmtrace.trace.sdk import span_from_readable


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver(max_body_bytes=64 * 1024) as running:
        yield running


def _sdk_spans() -> tuple[ReadableSpan, ...]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "gateway"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test.scope", "1.2")
    with tracer.start_as_current_span("text2sql.request") as root:
        root.set_attribute("input.value", "How many customers?")
        root.set_attribute("openinference.span.kind", "CHAIN")
        with tracer.start_as_current_span("sql.execute") as child:
            child.set_attribute("db.query.text", "SELECT count(*) FROM customers")
            child.set_attribute("db.response.returned_rows", 1)
            child.set_attribute("tags", ["a", "b"])
            child.add_event("retry", {"attempt": 2})
            child.set_status(StatusCode.ERROR, "boom")
    provider.shutdown()
    return memory.get_finished_spans()


def _by_id(spans: Iterable[Span]) -> dict[str, Span]:
    """Spans by id; the flags aside (the SDK's encoder adds the W3C is-remote bits the recorder does not keep)."""
    return {span.span_id: replace(span, flags=0) for span in spans}


def _post(receiver: OtlpReceiver, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(receiver.host, receiver.port, timeout=10)
    try:
        connection.request("POST", "/v1/traces", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _otlp_json(spans: tuple[ReadableSpan, ...], *, hex_ids: bool) -> bytes:
    """OTLP/JSON as the spec (and the JavaScript SDKs) write it: hex ids; protobuf's own JSON has base64 ones."""
    document = json_format.MessageToDict(encode_spans(spans))
    if hex_ids:
        for resource_spans in document["resourceSpans"]:
            for scope_spans in resource_spans["scopeSpans"]:
                for span in scope_spans["spans"]:
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if key in span:
                            span[key] = base64.b64decode(span[key]).hex()
    return json.dumps(document).encode()


def test_the_sdk_exporter_protobuf_gzip_arrives_as_the_recorder_would_have_it(receiver: OtlpReceiver) -> None:
    sdk_spans = _sdk_spans()
    exporter = OTLPSpanExporter(endpoint=receiver.traces_url, compression=Compression.Gzip)
    assert exporter.export(sdk_spans).name == "SUCCESS"
    exporter.shutdown()  # type: ignore[no-untyped-call]
    assert _by_id(receiver.take()) == _by_id(map(span_from_readable, sdk_spans))
    assert receiver.stats.payloads == 1
    assert receiver.stats.spans == 2
    assert receiver.stats.refused == 0


@pytest.mark.parametrize("hex_ids", [True, False], ids=["hex ids (spec)", "base64 ids (tolerated)"])
def test_otlp_json_with_either_id_spelling(receiver: OtlpReceiver, hex_ids: bool) -> None:
    sdk_spans = _sdk_spans()
    status, body = _post(receiver, _otlp_json(sdk_spans, hex_ids=hex_ids), {"Content-Type": "application/json"})
    assert (status, json.loads(body)) == (200, {})
    assert _by_id(receiver.take()) == _by_id(map(span_from_readable, sdk_spans))


def test_gzip_json(receiver: OtlpReceiver) -> None:
    body = gzip.compress(_otlp_json(_sdk_spans(), hex_ids=True))
    status, _ = _post(receiver, body, {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert status == 200
    assert sorted(span.name for span in receiver.take()) == ["sql.execute", "text2sql.request"]


def test_a_body_over_the_limit_is_413_before_it_is_read(receiver: OtlpReceiver) -> None:
    status, body = _post(receiver, b"\0" * (64 * 1024 + 1), {"Content-Type": "application/x-protobuf"})
    assert status == 413
    assert b"over the receiver's limit of 65536 bytes" in body
    assert receiver.stats.refused == 1


def test_a_gzip_bomb_is_413(receiver: OtlpReceiver) -> None:
    bomb = gzip.compress(b"{" + b" " * (1024 * 1024) + b"}")
    assert len(bomb) < 64 * 1024
    status, _ = _post(receiver, bomb, {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert status == 413


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"\xff\xff\xff", "application/x-protobuf", "not a protobuf ExportTraceServiceRequest"),
        (b"{not json", "application/json", "not JSON"),
        (b'{"resourceSpans": 3}', "application/json", "not an OTLP/JSON ExportTraceServiceRequest"),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "00", "spanId": "0102030405060708"}]}]}]}',
            "application/json",
            "traceId: expected a non-zero 16-byte id",
        ),
    ],
    ids=["protobuf", "json syntax", "json shape", "short id"],
)
def test_a_malformed_payload_is_400_with_its_reason_counted_and_not_fatal(
    receiver: OtlpReceiver, body: bytes, content_type: str, reason: str
) -> None:
    status, answer = _post(receiver, body, {"Content-Type": content_type})
    assert status == 400
    assert reason in answer.decode()
    assert receiver.stats.refused == 1
    assert reason in receiver.stats.reasons[-1]
    status, _ = _post(receiver, _otlp_json(_sdk_spans(), hex_ids=True), {"Content-Type": "application/json"})
    assert status == 200  # still serving


def test_other_content_types_and_paths_are_refused(receiver: OtlpReceiver) -> None:
    assert _post(receiver, b"x", {"Content-Type": "text/plain"})[0] == 415
    assert _post(receiver, b"x", {"Content-Type": "application/x-protobuf", "Content-Encoding": "br"})[0] == 415
    connection = http.client.HTTPConnection(receiver.host, receiver.port, timeout=10)
    connection.request("POST", "/v1/logs", body=b"", headers={"Content-Type": "application/x-protobuf"})
    assert connection.getresponse().status == 404
    connection.close()
    assert receiver.stats.refused == 3


def test_otlp_grpc_from_the_sdk_exporter_and_a_malformed_request() -> None:
    pytest.importorskip("grpc")
    import grpc  # type: ignore[import-untyped]
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    with OtlpReceiver(grpc_port=0) as receiver:
        assert receiver.grpc_endpoint is not None
        sdk_spans = _sdk_spans()
        exporter = GrpcExporter(endpoint=receiver.grpc_endpoint, insecure=True)
        assert exporter.export(sdk_spans).name == "SUCCESS"
        exporter.shutdown()
        assert _by_id(receiver.take()) == _by_id(map(span_from_readable, sdk_spans))
        bad = encode_spans(sdk_spans)
        bad.resource_spans[0].scope_spans[0].spans[0].trace_id = b"\x01"
        with grpc.insecure_channel(f"{receiver.host}:{receiver.grpc_port}") as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.RpcError) as excinfo:
                stub.Export(ExportTraceServiceRequest.FromString(bad.SerializeToString()), timeout=10)
        assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "traceId: expected a non-zero 16-byte id" in str(excinfo.value.details())
        assert (receiver.stats.payloads, receiver.stats.refused) == (1, 1)
