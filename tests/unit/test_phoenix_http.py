"""The HTTP clients that talk to a Phoenix (``llmtrace capture``, the export's REST calls and its OTLP exporter)
against real local servers that misbehave: a redirect to another origin must not carry the API key, and an answer
that is too big, too deep, too slow or endless is one error line, not a traceback, a hang or gigabytes of memory."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pytest_llmtrace.capture import phoenix_api
from pytest_llmtrace.capture.phoenix_api import PhoenixClient
from pytest_llmtrace.cli import main
from pytest_llmtrace.export.phoenix_rest import ExportError, PhoenixRest

API_KEY = "px-key-Zq81nVb27Xc0"
Respond = Callable[["Handler"], None]


class Handler(http.server.BaseHTTPRequestHandler):
    """Records each request's method, path and headers, then lets the test's ``respond`` answer it."""

    server: Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._handle()

    def _handle(self) -> None:
        self.server.seen.append((self.command, self.path, dict(self.headers)))
        self.server.respond(self)

    def send_json(self, value: object, status: int = 200) -> None:
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, target: str, status: int = 302) -> None:
        self.send_response(status)
        self.send_header("Location", target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.respond: Respond = lambda h: h.send_json({"data": [], "next_cursor": None})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def keys_seen(self) -> list[str]:
        return [h.get("Authorization", "") + h.get("api_key", "") for _, _, h in self.seen]


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    """Two servers on loopback: two origins (their ports differ)."""
    pair = (Server(), Server())
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True) for s in pair]
    for thread in threads:
        thread.start()
    try:
        yield pair
    finally:
        for server, thread in zip(pair, threads, strict=True):
            server.shutdown()
            server.server_close()
            thread.join(5)


def _capture(url: str, out: Path, *extra: str) -> list[str]:
    return ["capture", "--phoenix-url", url, "--project", "p", "--out", str(out), *extra]


# -- finding 1: the API key stays at its origin --------------------------------------------------------------------


def test_capture_does_not_carry_the_api_key_through_a_redirect_to_another_origin(
    servers: tuple[Server, Server], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    phoenix, elsewhere = servers
    phoenix.respond = lambda h: h.redirect(elsewhere.url)
    monkeypatch.setenv("PHOENIX_API_KEY", API_KEY)

    assert main(_capture(phoenix.url, tmp_path / "o")) == 1

    assert phoenix.keys_seen() == [f"Bearer {API_KEY}"]  # sent once, to the origin the user named
    assert elsewhere.seen == []  # not even asked: the redirect was refused, not followed without the key
    error = capsys.readouterr().err.splitlines()[-1]
    assert error == (
        f"error: GET {phoenix.url}/v1/projects/p/spans was redirected to {elsewhere.url}, another origin; the API key "
        f"({phoenix_api.API_KEY_ENV}) goes only to {phoenix.url}, so the redirect was not followed; fix: set "
        f"--phoenix-url to the address Phoenix answers at"
    )
    assert API_KEY not in error


def test_a_redirect_within_the_origin_is_followed_with_the_key(servers: tuple[Server, Server]) -> None:
    phoenix, _ = servers

    def respond(h: Handler) -> None:
        if h.path.startswith("/old"):
            h.send_response(308)
            h.send_header("Location", h.path.removeprefix("/old"))
            h.send_header("Content-Length", "0")
            h.end_headers()
        else:
            h.send_json({"data": [{"name": "p"}]})

    phoenix.respond = respond
    assert PhoenixClient(phoenix.url + "/old", api_key=API_KEY).projects() == ["p"]
    assert phoenix.keys_seen() == [f"Bearer {API_KEY}"] * 2


def test_without_a_key_a_redirect_to_another_origin_is_followed(servers: tuple[Server, Server]) -> None:
    """Nothing secret to carry: an http -> https or proxy move keeps working for a Phoenix without authentication."""
    phoenix, elsewhere = servers
    phoenix.respond = lambda h: h.redirect(elsewhere.url)
    elsewhere.respond = lambda h: h.send_json({"data": [{"name": "p"}]})
    assert PhoenixClient(phoenix.url).projects() == ["p"]
    assert elsewhere.keys_seen() == [""]


@pytest.mark.parametrize("status", [302, 307])
def test_export_does_not_carry_the_api_key_through_a_redirect_to_another_origin(
    servers: tuple[Server, Server], status: int
) -> None:
    phoenix, elsewhere = servers
    phoenix.respond = lambda h: h.redirect(elsewhere.url, status)
    elsewhere.respond = lambda h: h.send_json({"data": {"id": "UHJvamVjdDox"}})

    with pytest.raises(ExportError) as excinfo:
        PhoenixRest(phoenix.url, api_key=API_KEY).project_id("p")

    assert elsewhere.seen == []
    assert str(excinfo.value) == (
        f"GET {phoenix.url}/v1/projects/p was redirected to {elsewhere.url}, another origin; the API key "
        f"(PHOENIX_API_KEY) goes only to {phoenix.url}, so the redirect was not followed; fix: point "
        "--llmtrace-phoenix at the address Phoenix answers at"
    )


def test_the_otlp_exporter_does_not_follow_a_redirect_at_all(servers: tuple[Server, Server]) -> None:
    """OpenTelemetry's exporter posts with ``allow_redirects=False``; this pins it, since spans and key go together."""
    from pytest_llmtrace.export.sender import batch_processor

    phoenix, elsewhere = servers
    phoenix.respond = lambda h: h.redirect(elsewhere.url, 307)
    processor, exporter = batch_processor(phoenix.url, API_KEY)
    try:
        memory = InMemorySpanExporter()
        provider = TracerProvider(resource=Resource.create({}))
        provider.add_span_processor(SimpleSpanProcessor(memory))
        provider.get_tracer("t").start_span("s").end()
        assert exporter.export(memory.get_finished_spans()) is SpanExportResult.FAILURE
    finally:
        processor.shutdown()  # type: ignore[no-untyped-call]
    assert [(m, p) for m, p, _ in phoenix.seen] == [("POST", "/v1/traces")]
    assert elsewhere.seen == []
