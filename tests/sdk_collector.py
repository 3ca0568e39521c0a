"""A local stand-in for the Langfuse and LangSmith servers: it records what the real SDKs send, so nothing leaves the
machine, and hands it back in the shapes the tests import.

- Langfuse (SDK v3+): OTLP/HTTP protobuf, gzip-compressed, at ``/api/public/otel/v1/traces``; kept as the OTLP JSON
  ``MessageToDict`` writes (one ``ExportTraceServiceRequest`` per request).
- LangSmith: ``GET /info`` first; the answer turns the multipart endpoint off, so the SDK posts JSON batches to
  ``/runs/batch`` (``{"post": [...], "patch": [...]}``) and single runs to ``/runs`` / ``PATCH /runs/{id}``; the runs
  are merged by id, as LangSmith's server stores them.
"""

from __future__ import annotations

import gzip
import http.server
import json
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Collected:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.otlp: list[dict[str, Any]] = []  # ExportTraceServiceRequest as OTLP JSON, one per POST
        self.runs: dict[str, dict[str, Any]] = {}  # LangSmith runs by id, posts and patches merged
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, path, headers

    def run_list(self) -> list[dict[str, Any]]:
        with self.lock:
            return sorted(self.runs.values(), key=lambda r: str(r.get("dotted_order") or r.get("start_time")))

    def add_run(self, run: dict[str, Any]) -> None:
        run_id = str(run.get("id"))
        with self.lock:
            self.runs.setdefault(run_id, {}).update({k: v for k, v in run.items() if v is not None})


def _otlp_json(body: bytes) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    return MessageToDict(ExportTraceServiceRequest.FromString(body), use_integers_for_enums=True)


_INGEST = {"size_limit": 100, "size_limit_bytes": 20_971_520, "scale_up_nthreads_limit": 1}
_INGEST |= {"scale_up_qsize_trigger": 1000, "scale_down_nempty_trigger": 4, "use_multipart_endpoint": False}
_INFO = {"version": "0.0.0-local", "batch_ingest_config": _INGEST}


class _Handler(http.server.BaseHTTPRequestHandler):
    collected: Collected

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        if encoding == "gzip":
            return gzip.decompress(data)
        if encoding == "deflate":
            return zlib.decompress(data)
        return data

    def _answer(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self) -> None:
        with self.collected.lock:
            self.collected.requests.append((self.command, self.path, dict(self.headers)))

    def do_GET(self) -> None:
        self._record()
        if self.path.split("?")[0].rstrip("/").endswith("/info"):
            self._answer(200, _INFO)
        else:
            self._answer(404, {"detail": "not here"})

    def do_POST(self) -> None:
        self._record()
        body = self._body()
        path = self.path.split("?")[0]
        if path.endswith("/v1/traces"):
            request = _otlp_json(body)
            with self.collected.lock:
                self.collected.otlp.append(request)
            self._answer(200, b"", "application/x-protobuf")
        elif path.endswith("/runs/batch"):
            batch = json.loads(body)
            for run in [*batch.get("post", []), *batch.get("patch", [])]:
                self.collected.add_run(run)
            self._answer(200, {})
        elif path.endswith("/runs"):
            self.collected.add_run(json.loads(body))
            self._answer(200, {})
        else:
            self._answer(404, {"detail": "not here"})

    def do_PATCH(self) -> None:
        self._record()
        run = json.loads(self._body())
        run.setdefault("id", self.path.rstrip("/").rsplit("/", 1)[-1])
        self.collected.add_run(run)
        self._answer(200, {})


@contextmanager
def collector() -> Iterator[tuple[str, Collected]]:
    """``(base URL, what arrived)``; the server stops and its port is freed on exit."""
    collected = Collected()
    handler = type("Handler", (_Handler,), {"collected": collected})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="sdk-collector", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", collected
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _hex(value: str) -> str:
    import base64

    return base64.b64decode(value).hex()


def _iso(ns: str) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(int(ns) / 1e9, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def langfuse_observations(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What Langfuse's server lists for the spans its SDK sent (``GET /api/public/v2/observations``), each one
    validated by the SDK's own ``ObservationV2`` model and written back by it."""
    from langfuse.api import ObservationV2
    from langfuse.api.core.pydantic_utilities import parse_obj_as

    observations = []
    for request in requests:
        for resource in request.get("resourceSpans", []):
            for scope in resource.get("scopeSpans", []):
                for span in scope.get("spans", []):
                    attrs = {a["key"]: next(iter(a["value"].values())) for a in span.get("attributes", [])}

                    def field(name: str, decode: bool = True, attrs: dict[str, Any] = attrs) -> Any:
                        value = attrs.get("langfuse.observation." + name)
                        if value is None or not decode:
                            return value
                        try:
                            return json.loads(value)
                        except ValueError:
                            return value

                    document = {
                        "id": _hex(span["spanId"]),
                        "traceId": _hex(span["traceId"]),
                        "projectId": "local-project",
                        "type": str(field("type", decode=False) or "span").upper(),
                        "name": span["name"],
                        "startTime": _iso(span["startTimeUnixNano"]),
                        "endTime": _iso(span["endTimeUnixNano"]),
                        "parentObservationId": _hex(span["parentSpanId"]) if span.get("parentSpanId") else None,
                        "input": field("input"),
                        "output": field("output"),
                        "model": field("model.name", decode=False),
                        "modelParameters": field("model.parameters"),
                        "usageDetails": field("usage_details"),
                        "costDetails": field("cost_details"),
                        "completionStartTime": field("completion_start_time"),
                        "level": field("level", decode=False) or "DEFAULT",
                        "statusMessage": field("status_message", decode=False),
                    }
                    model = parse_obj_as(ObservationV2, {k: v for k, v in document.items() if v is not None})
                    observations.append(json.loads(model.json()))
    return observations
