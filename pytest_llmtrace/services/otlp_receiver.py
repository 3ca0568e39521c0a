"""An OTLP/HTTP trace receiver on loopback: what a service under test (or any exporter) sends its spans to.

``POST /v1/traces`` with protobuf (``application/x-protobuf``) or JSON (``application/json``, as the JavaScript SDKs
send it), optionally gzip-compressed, parsed with the official ``opentelemetry-proto`` classes
(``trace.otlp_proto``). Each payload's spans, as trace-model ``Span`` objects, go to the ``on_spans`` callback, or, with
none, into a queue ``take()`` empties. A payload over the body limit gets 413; one that cannot be read gets 400 with
the reason, and is counted: a service's bad export never stops the run, it is reported.

The same payloads are taken at the paths the tracing SDKs add to their base URL: Langfuse's
``/api/public/otel/v1/traces`` (its ``LANGFUSE_BASE_URL``) and LangSmith's OpenTelemetry mode's ``/otel/v1/traces``.
Given ``on_runs``, it also serves LangSmith's run ingestion (``services.langsmith_runs``), so an app traced by either
SDK can be pointed at it with the SDK's own variables (``SDK_ENDPOINT_VARIABLES``) and nothing it sends leaves the
machine.

Pytest-free on purpose: the service session routes the spans to cases, and an importer (Langfuse's OTLP endpoint, a
staging service) can use the same class.
"""

from __future__ import annotations

import json
import threading
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from pytest_llmtrace.core.errors import LLMTraceError
from pytest_llmtrace.services.langsmith_runs import INFO, INFO_PATH, RUNS_PATHS, LangSmithRuns, RunPostError
from pytest_llmtrace.trace.otlp_proto import OtlpPayloadError, spans_from_json, spans_from_protobuf

if TYPE_CHECKING:
    from pytest_llmtrace.trace.model import Span

TRACES_PATH = "/v1/traces"
# OTLP/HTTP at the paths the SDKs add to their base URL: Langfuse's, and LangSmith's OpenTelemetry mode's
TRACES_PATHS = (TRACES_PATH, "/api/public/otel" + TRACES_PATH, "/otel" + TRACES_PATH)
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024  # decompressed; a trace with long prompts is a few MB at most
_KEPT_REASONS = 5


@dataclass
class ReceiverStats:
    """What arrived: accepted payloads and spans, refused payloads and the last few reasons (for messages)."""

    payloads: int = 0
    spans: int = 0
    refused: int = 0
    reasons: deque[str] = field(default_factory=lambda: deque(maxlen=_KEPT_REASONS))


class OtlpReceiver:
    """``with OtlpReceiver() as receiver:`` a ready receiver at ``receiver.endpoint`` (``.traces_url`` for exporters
    that take the full URL). ``port=0`` picks a free port."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        on_spans: Callable[[Sequence[Span]], None] | None = None,
        grpc_port: int | None = None,
        on_runs: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.grpc_port = grpc_port  # None: no gRPC; 0: a free port (needs the grpc extra)
        self._grpc: Any = None
        self.max_body_bytes = max_body_bytes
        self.stats = ReceiverStats()
        self._on_spans = on_spans
        self.runs = LangSmithRuns(on_runs) if on_runs is not None else None
        self._queue: list[Span] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        """The base URL, as ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes it (exporters add ``/v1/traces``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def traces_url(self) -> str:
        return self.endpoint + TRACES_PATH

    @property
    def grpc_endpoint(self) -> str | None:
        """The OTLP/gRPC endpoint (``http://host:port``, as exporters take it), when gRPC was asked for."""
        return f"http://{self.host}:{self.grpc_port}" if self._grpc is not None else None

    def start(self) -> OtlpReceiver:
        server = _Server((self.host, self.port), _Handler)
        server.receiver = self
        self.port = int(server.server_address[1])
        self._server = server
        # shutdown() waits for the loop's next poll: at the default 0.5 s, every session's end waited for it
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="llmtrace-otlp-receiver", daemon=True
        )
        self._thread.start()
        if self.grpc_port is not None:
            from pytest_llmtrace.services.otlp_grpc import start_grpc

            try:
                self._grpc, self.grpc_port = start_grpc(
                    self._accept, self._refuse, host=self.host, port=self.grpc_port, limit=self.max_body_bytes
                )
            except BaseException:
                self.stop()
                raise
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait(5)
            self._grpc = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def take(self) -> list[Span]:
        """The spans received since the last call (when no ``on_spans`` callback was given)."""
        with self._lock:
            spans, self._queue = self._queue, []
        return spans

    # -- called by the handler threads ------------------------------------------------------------------------------

    def _accept(self, spans: list[Span]) -> None:
        with self._lock:
            self.stats.payloads += 1
            self.stats.spans += len(spans)
            if self._on_spans is None:
                self._queue.extend(spans)
        if self._on_spans is not None:
            self._on_spans(spans)

    def sdk_environment(self) -> dict[str, str]:
        """The variables that point the Langfuse and LangSmith SDKs here (``SDK_ENDPOINT_VARIABLES``)."""
        return sdk_environment(self.endpoint)

    def _refuse(self, reason: str) -> None:
        with self._lock:
            self.stats.refused += 1
            self.stats.reasons.append(reason)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: OtlpReceiver


class _Payload(LLMTraceError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: exporters reuse their connection

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a refused payload is counted and reported, not printed over the test output."""

    def do_POST(self) -> None:
        receiver = self.server.receiver
        json_body = "json" in self.headers.get("Content-Type", "")
        path = self.path.split("?", 1)[0].rstrip("/")
        if receiver.runs is not None and path in RUNS_PATHS:
            self._runs(receiver, receiver.runs, path)
            return
        try:
            if path not in TRACES_PATHS:
                raise _Payload(404, f"only POST {TRACES_PATH} is served here, not {self.path}")
            body = self._body(receiver.max_body_bytes)
            content_type = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            if content_type == "application/x-protobuf":
                spans = spans_from_protobuf(body)
            elif content_type == "application/json":
                spans = spans_from_json(body)
            else:
                raise _Payload(
                    415, f"Content-Type {content_type or '(none)'!r}: send application/x-protobuf or application/json"
                )
        except OtlpPayloadError as exc:
            receiver._refuse(str(exc))
            self._answer(400, str(exc), json_body)
            return
        except _Payload as exc:
            receiver._refuse(f"{exc.status}: {exc.reason}")
            self._answer(exc.status, exc.reason, json_body)
            return
        receiver._accept(spans)
        self._answer(200, "", json_body)

    def do_PATCH(self) -> None:
        receiver = self.server.receiver
        path = self.path.split("?", 1)[0].rstrip("/")
        if receiver.runs is not None and path.startswith("/runs/"):
            self._runs(receiver, receiver.runs, path)
        else:
            self._drain()
            self._answer(404, f"{self.path} is not served here", True)

    def do_GET(self) -> None:
        if self.server.receiver.runs is not None and self.path.split("?", 1)[0].rstrip("/") == INFO_PATH:
            data = json.dumps(INFO).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self._answer(405, f"send spans with POST {TRACES_PATH}", False)

    def _runs(self, receiver: OtlpReceiver, runs: LangSmithRuns, path: str) -> None:
        """LangSmith's run posts: merged, handed on as runs end; a refusal is counted like a bad OTLP payload."""
        try:
            body = self._body(receiver.max_body_bytes)
            runs.handle(self.command, path, self.headers.get("Content-Type", ""), body)
        except _Payload as exc:
            receiver._refuse(f"{exc.status}: {exc.reason}")
            self._answer(exc.status, exc.reason, True)
            return
        except RunPostError as exc:
            receiver._refuse(f"LangSmith {self.command} {path}: {exc}")
            self._answer(400, str(exc), True)
            return
        with receiver._lock:
            receiver.stats.payloads += 1
        self._answer(200, "", True)

    def _drain(self) -> None:
        length = self.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) <= self.server.receiver.max_body_bytes:
            self.rfile.read(int(length))
        else:
            self.close_connection = True

    def _body(self, limit: int) -> bytes:
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self.close_connection = True
            raise _Payload(411, "a Content-Length is required")
        try:
            length = int(length_text)
        except ValueError:
            self.close_connection = True
            raise _Payload(400, f"Content-Length {length_text!r} is not a number") from None
        if length > limit:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            raise _Payload(413, f"the body of {length} bytes is over the receiver's limit of {limit} bytes")
        body = self.rfile.read(length)
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding == "gzip":
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                body = inflater.decompress(body, limit + 1)
            except zlib.error as exc:
                raise _Payload(400, f"Content-Encoding gzip, but the body is not gzip: {exc}") from None
            if len(body) > limit or inflater.unconsumed_tail:
                raise _Payload(413, f"the gzip body inflates past the receiver's limit of {limit} bytes")
        elif encoding not in ("identity", ""):
            raise _Payload(415, f"Content-Encoding {encoding!r}: send gzip or no encoding")
        return body

    def _answer(self, status: int, reason: str, json_body: bool) -> None:
        """Success is an empty ExportTraceServiceResponse (an empty body in protobuf, ``{}`` in JSON)."""
        if json_body:
            data = json.dumps({"code": 3, "message": reason} if reason else {}).encode()
            content_type = "application/json"
        elif reason:
            data, content_type = reason.encode(), "text/plain; charset=utf-8"
        else:
            data, content_type = b"", "application/x-protobuf"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


# The SDKs' own variables for where they send, each read when the SDK's client is made (``Langfuse()`` /
# ``get_client()``; LangSmith's ``Client()``, and the cached client ``@traceable`` and LangChain's tracer share):
# Langfuse's base URL (``LANGFUSE_HOST`` is its older name; ``LANGFUSE_OTEL_TRACES_EXPORT_PATH`` would move the path),
# LangSmith's endpoint under both prefixes (``LANGSMITH_RUNS_ENDPOINTS`` would add replicas, and is refused beside an
# endpoint). Empty values are the SDKs' "unset".
SDK_ENDPOINT_VARIABLES = (
    "LANGFUSE_BASE_URL",
    "LANGFUSE_HOST",
    "LANGFUSE_OTEL_TRACES_EXPORT_PATH",
    "LANGSMITH_ENDPOINT",
    "LANGCHAIN_ENDPOINT",
    "LANGSMITH_RUNS_ENDPOINTS",
    "LANGSMITH_DISABLE_RUN_COMPRESSION",
)


def sdk_environment(endpoint: str) -> dict[str, str]:
    """``endpoint`` (a receiver's base URL) as every variable of ``SDK_ENDPOINT_VARIABLES`` gives it."""
    return {
        "LANGFUSE_BASE_URL": endpoint,
        "LANGFUSE_HOST": endpoint,
        "LANGFUSE_OTEL_TRACES_EXPORT_PATH": "",
        "LANGSMITH_ENDPOINT": endpoint,
        "LANGCHAIN_ENDPOINT": endpoint,
        "LANGSMITH_RUNS_ENDPOINTS": "",
        "LANGSMITH_DISABLE_RUN_COMPRESSION": "true",  # plain multipart: no zstd stream to take apart
    }
