"""The HTTP clients that talk to a Phoenix (``llmtrace capture``, the export's REST calls and its OTLP exporter)
against real local servers that misbehave: a redirect to another origin must not carry the API key, and an answer
that is too big, too deep, too slow or endless is one error line, not a traceback, a hang or gigabytes of memory."""

from __future__ import annotations

import http.server
import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pytest_llmtrace.cli import main
from pytest_llmtrace.sinks.phoenix_rest import ExportError, PhoenixRest
from pytest_llmtrace.sources import phoenix_client
from pytest_llmtrace.sources.capture import phoenix_api
from pytest_llmtrace.sources.capture.filters import CaptureError
from pytest_llmtrace.sources.capture.phoenix_api import PhoenixClient

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
        f"({phoenix_client.API_KEY_ENV}) goes only to {phoenix.url}, so the redirect was not followed; fix: set "
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
    from pytest_llmtrace.sinks.sender import batch_processor

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


# -- finding 2: a hostile answer is one error line, within bounded memory and time ------------------------------------


def _stream(h: Handler, pieces: Iterator[bytes], *, length: int | None = None) -> None:
    """A 200 whose body is written piece by piece, with no Content-Length unless ``length`` (then closed)."""
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    if length is not None:
        h.send_header("Content-Length", str(length))
    h.send_header("Connection", "close")
    h.end_headers()
    try:
        for piece in pieces:
            h.wfile.write(piece)
            h.wfile.flush()
    except OSError:  # the client stopped reading and closed
        pass
    h.close_connection = True


def test_an_answer_over_the_byte_limit_stops_the_read_at_the_limit(
    servers: tuple[Server, Server], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Memory stays bounded because reading stops: the error says how many bytes were read, limit + 1."""
    phoenix, _ = servers
    chunk = b" " * 65536
    phoenix.respond = lambda h: _stream(h, (chunk for _ in range(800)))  # 52 MB, no Content-Length

    assert main(_capture(phoenix.url, tmp_path / "o", "--max-response-bytes", "1000000")) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: GET {phoenix.url}/v1/projects/p/spans answered more than the limit of 1,000,000 bytes (reading "
        "stopped after 1,000,001); fix: if this is Phoenix, raise --max-response-bytes"
    )


def test_a_declared_length_over_the_limit_is_refused_before_reading(servers: tuple[Server, Server]) -> None:
    phoenix, _ = servers
    phoenix.respond = lambda h: _stream(h, iter([b"{}"]), length=800_000_000)
    with pytest.raises(
        CaptureError,
        match=r"answered 800,000,000 bytes \(its Content-Length\), over the limit of 1,000; nothing was read",
    ):
        PhoenixClient(phoenix.url, max_bytes=1000).projects()


def test_json_nested_too_deep_is_one_line(
    servers: tuple[Server, Server], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    phoenix, _ = servers
    deep = b"[" * 200_000 + b"]" * 200_000
    phoenix.respond = lambda h: _stream(h, iter([deep]), length=len(deep))

    assert main(_capture(phoenix.url, tmp_path / "o")) == 1
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == (
        f"error: GET {phoenix.url}/v1/projects/p/spans: at $[0]...(x100): expected at most 100 levels of nested "
        "arrays and objects, got level 101 here; fix: check that --phoenix-url is a Phoenix server"
    )


def test_a_cursor_answered_twice_stops_the_listing(servers: tuple[Server, Server]) -> None:
    phoenix, _ = servers

    def respond(h: Handler) -> None:
        if len(phoenix.seen) > 50:  # the old client never stops: end the test instead of hanging it
            h.send_json({"detail": "looped"}, 500)
        else:
            h.send_json({"data": [{"name": "p"}], "next_cursor": "c1" if "cursor=c1" not in h.path else "c2"})

    phoenix.respond = respond
    with pytest.raises(CaptureError) as excinfo:
        PhoenixClient(phoenix.url).projects()
    assert str(excinfo.value) == (
        f"GET {phoenix.url}/v1/projects answered the page cursor 'c1' a second time, which would list the same pages "
        "forever; fix: check that --phoenix-url is a Phoenix server"
    )
    assert len(phoenix.seen) == 3  # pages without a cursor, at c1, at c2 (which points back to c1)


def test_a_listing_that_never_ends_stops_after_max_pages(
    servers: tuple[Server, Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    phoenix, _ = servers
    monkeypatch.setattr(phoenix_api, "MAX_PAGES", 5)

    def respond(h: Handler) -> None:
        if len(phoenix.seen) > 50:
            h.send_json({"detail": "looped"}, 500)
        else:
            h.send_json({"data": [], "next_cursor": f"c{len(phoenix.seen)}"})  # always a new one

    phoenix.respond = respond
    with pytest.raises(CaptureError, match=r"still had a next page after 5 pages; stopped there; fix: "):
        PhoenixClient(phoenix.url).projects()
    assert len(phoenix.seen) == 5


def test_the_timeout_bounds_the_whole_request_not_each_read(
    servers: tuple[Server, Server], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A byte every 0.1 s never trips a per-read timeout of 1 s; the whole answer would take 6 s."""
    phoenix, _ = servers
    body = json.dumps({"data": [], "next_cursor": None}).encode().ljust(60)

    def trickle() -> Iterator[bytes]:
        for byte in body:
            time.sleep(0.1)
            yield bytes([byte])

    phoenix.respond = lambda h: _stream(h, trickle(), length=len(body))

    assert main(_capture(phoenix.url, tmp_path / "o", "--timeout", "1")) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: cannot reach Phoenix at {phoenix.url} (no complete answer within 1 s); fix: start Phoenix there or "
        "correct --phoenix-url"
    )


@pytest.fixture
def tls_phoenix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Server, str]]:
    """A server on loopback behind TLS with a self-signed certificate the client trusts; its https:// URL."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", key, "-out", cert),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted as a CA's would be: the client's default context
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = Server()
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server, server.url.replace("http://", "https://")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_over_https_the_answer_arrives_and_the_timeout_still_bounds_the_whole_request(
    tls_phoenix: tuple[Server, str],
) -> None:
    """The deadline watches a TLS connection's socket too: a trickled answer is cut at the timeout, not read to its
    end (6 s) and only then found late."""
    phoenix, url = tls_phoenix
    phoenix.respond = lambda h: h.send_json({"data": [{"name": "p"}], "next_cursor": None})
    assert PhoenixClient(url).projects() == ["p"]

    body = json.dumps({"data": [], "next_cursor": None}).encode().ljust(60)
    sent = [0]

    def trickle() -> Iterator[bytes]:
        for byte in body:
            time.sleep(0.1)
            sent[0] += 1
            yield bytes([byte])

    phoenix.respond = lambda h: _stream(h, trickle(), length=len(body))
    with pytest.raises(CaptureError) as excinfo:
        PhoenixClient(url, timeout=1).projects()
    assert str(excinfo.value) == (
        f"cannot reach Phoenix at {url} (no complete answer within 1 s); fix: start Phoenix there or correct "
        "--phoenix-url"
    )
    # the socket was shut at the deadline: the answer did not run to its end first (the timeout seen only afterwards)
    assert sent[0] < len(body)
