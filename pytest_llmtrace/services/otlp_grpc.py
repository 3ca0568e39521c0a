"""OTLP/gRPC for the receiver: the ``TraceService/Export`` method beside ``POST /v1/traces``, when the ``grpc`` extra
(grpcio) is installed. Services whose SDK exports over gRPC by default (``OTEL_EXPORTER_OTLP_PROTOCOL=grpc``) need no
change of protocol then. Requests are parsed by gRPC itself into the same ``opentelemetry-proto`` message the HTTP
path decodes, and land in the same receiver: same callback, same counts, same limit.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pytest_llmtrace.core.errors import LLMTraceError
from pytest_llmtrace.trace.otlp_proto import OtlpPayloadError, spans_from_message

if TYPE_CHECKING:
    from pytest_llmtrace.trace.model import Span

INSTALL_HINT = "pip install 'pytest-llmtrace[grpc]' (grpcio)"


class GrpcUnavailable(LLMTraceError):
    """OTLP/gRPC was asked for without grpcio installed."""


def start_grpc(
    accept: Callable[[list[Span]], None], refuse: Callable[[str], None], *, host: str, port: int, limit: int
) -> tuple[Any, int]:
    """A started gRPC server handing each request's spans to ``accept`` (a refused one's reason to ``refuse``), and
    its port (``port`` 0: a free one). The receiver's callbacks, passed in so this module does not import it."""
    try:
        import grpc  # type: ignore[import-untyped]
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
    except ImportError as exc:
        raise GrpcUnavailable(f"OTLP/gRPC needs grpcio ({exc}); {INSTALL_HINT}") from None

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            try:
                spans = spans_from_message(request)
            except OtlpPayloadError as exc:
                refuse(str(exc))
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            accept(spans)
            return ExportTraceServiceResponse()

    server = grpc.server(
        ThreadPoolExecutor(max_workers=4, thread_name_prefix="llmtrace-otlp-grpc"),
        options=[("grpc.max_receive_message_length", limit), ("grpc.so_reuseport", 0)],
    )
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port} for OTLP/gRPC")
    server.start()
    return server, bound
