"""A service under test in the standard library only, for the failure paths: each mode misbehaves one way.

Run as ``python fake_service.py PORT``; ``FAKE_MODE`` picks the behaviour. In the modes that answer, each request's
span goes back to the receiver as OTLP/JSON under the request's traceparent, as a service that propagates would.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlsplit

MODE = os.environ.get("FAKE_MODE", "ok")


def _export(body: bytes, content_type: str) -> None:
    request = urllib.request.Request(
        os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"], data=body, headers={"Content-Type": content_type}
    )
    try:
        urllib.request.urlopen(request, timeout=5).close()
    except OSError as exc:
        print(f"export refused: {exc}", flush=True)


def _span(traceparent: str, question: str) -> bytes:
    _, trace_id, parent, _ = traceparent.split("-")
    now = time.time_ns()
    span = {
        "traceId": trace_id,
        "spanId": os.urandom(8).hex(),
        "parentSpanId": parent,
        "name": "fake.request",
        "kind": 2,
        "startTimeUnixNano": str(now - 1_000_000),
        "endTimeUnixNano": str(now),
        "attributes": [{"key": "input.value", "value": {"stringValue": question}}],
    }
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._answer(200, {"status": "ok"})

    def do_POST(self) -> None:
        question = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["question"]
        if MODE == "die" and not os.path.exists("died-once"):
            open("died-once", "w").close()
            print("fake service: dying on purpose", flush=True)
            os._exit(7)
        if MODE == "slow":
            time.sleep(60)
        if MODE == "malformed":
            _export(b"\x0a\xff\xff garbage", "application/x-protobuf")
        elif MODE != "silent":
            _export(_span(self.headers["traceparent"], question), "application/json")
        if MODE == "error":
            self._answer(503, {"detail": "model unavailable"})
            return
        db_user = urlsplit(os.environ["DB_URI"]).username
        self._answer(200, {"answer": question.upper(), "db_user": db_user, "ollama": os.environ["OLLAMA_HOST"]})

    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    if MODE == "crash":
        print("fake service: cannot read its config", flush=True)
        sys.exit(3)
    HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
