"""The Ollama-API front under hostile or broken clients: raw sockets against the real server, no client library.

Each test sends bytes a well-behaved client never would (another Host, a lying Content-Length, half a request) and
checks what comes back and that the server still answers everyone else. Nothing here asserts how long something
took: a stalled request is proven cut off by the server's answer (408) and its closing the connection, while the
client is still stalled; the sockets' own timeouts are only a safety net far above the server's limits.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from pytest_llmtrace.modelapi import Limits, ModelInfo, OllamaAPIServer
from pytest_llmtrace.modelapi.loopback import is_loopback_host
from pytest_llmtrace.modelapi.scripted import ScriptedBackend

MODEL = "qwen-sql-prod"
QUESTION = "How many customers?"
ANSWER = "SELECT count(*) FROM customers;"
BODY_LIMIT = 4096
SAFETY_NET_S = 30.0  # far above every server limit below: reached only if the server fails to act
LIMITS = Limits(read_timeout_s=0.5, idle_timeout_s=0.5, max_body_bytes=BODY_LIMIT)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after the reply

    def json(self) -> Any:
        return json.loads(self.body)


@pytest.fixture(scope="module")
def server() -> Iterator[OllamaAPIServer]:
    with OllamaAPIServer(ScriptedBackend({QUESTION: ANSWER}, [ModelInfo(MODEL)]), limits=LIMITS) as running:
        yield running


def connect(server: OllamaAPIServer) -> socket.socket:
    parts = urlsplit(server.url)
    assert parts.hostname is not None
    assert parts.port is not None
    return socket.create_connection((parts.hostname, parts.port), timeout=SAFETY_NET_S)


def read_reply(sock: socket.socket) -> Reply:
    """One response (Content-Length framed, as all of the front's refusals are), then whether the server closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"the server closed the connection without a complete response: {data!r}"
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        piece = sock.recv(65536)
        assert piece, "the server closed the connection in the middle of a response body"
        body += piece
    closed = headers.get("connection", "").lower() == "close" and sock.recv(1) == b""
    return Reply(int(status_line.split()[1]), headers, body[:length], closed)


def send(server: OllamaAPIServer, raw: bytes) -> Reply:
    with connect(server) as sock:
        sock.sendall(raw)
        return read_reply(sock)


def post(body: bytes, *, host: str = "localhost", headers: str | None = None, path: str = "/api/chat") -> bytes:
    framing = f"Content-Length: {len(body)}\r\n" if headers is None else headers
    return f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{framing}\r\n".encode() + body


def chat_body() -> bytes:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "stream": False}).encode()


def assert_still_answers(server: OllamaAPIServer) -> None:
    reply = send(server, post(chat_body()))
    assert reply.status == 200
    assert reply.json()["message"]["content"] == ANSWER


# -- Host -------------------------------------------------------------------------------------------------------------

LOOPBACK = [
    "localhost",
    "localhost:11434",
    "LocalHost",
    "127.0.0.1",
    "127.0.0.1:80",
    "127.8.9.10:1",
    "[::1]",
    "[::1]:8",
]
NOT_LOOPBACK = [
    "evil.example",
    "evil.example:11434",
    "localhost.evil.example",
    "127.0.0.1.nip.io",
    "10.0.0.1",
    "0.0.0.0",
    "::1",  # IPv6 needs brackets in a Host header
    "[::1",
    "localhost:port",
    "127.1",
    "",
]


@pytest.mark.parametrize("host", LOOPBACK)
def test_loopback_host_names_are_answered(server: OllamaAPIServer, host: str) -> None:
    reply = send(server, post(chat_body(), host=host))
    assert reply.status == 200
    assert not reply.closed


@pytest.mark.parametrize("host", NOT_LOOPBACK)
def test_other_host_names_are_refused_with_a_json_error(server: OllamaAPIServer, host: str) -> None:
    reply = send(server, post(chat_body(), host=host))
    assert reply.status == 403
    assert reply.json()["error"].startswith(f"Host {host!r} is not a loopback name")
    assert "DNS rebinding" in reply.json()["error"]
    assert reply.closed


def test_a_request_without_exactly_one_host_is_a_400(server: OllamaAPIServer) -> None:
    body = chat_body()
    missing = send(server, f"POST /api/chat HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    twice = send(server, post(body, headers=f"Host: localhost\r\nContent-Length: {len(body)}\r\n"))

    assert (missing.status, missing.json()) == (400, {"error": "the request needs exactly one Host header"})
    assert twice.status == 400


def test_allowed_hosts_admit_another_name() -> None:
    limits = Limits(allowed_hosts=("gateway.test",))
    with OllamaAPIServer(ScriptedBackend({QUESTION: ANSWER}, MODEL), limits=limits) as running:
        assert send(running, post(chat_body(), host="Gateway.test:11434")).status == 200
        assert send(running, post(chat_body(), host="other.test")).status == 403


def test_the_openai_route_refuses_in_the_openai_envelope(server: OllamaAPIServer) -> None:
    reply = send(server, post(chat_body(), host="evil.example", path="/v1/chat/completions"))
    assert reply.status == 403
    assert reply.json()["error"]["type"] == "api_error"


def test_is_loopback_host_agrees_with_the_server() -> None:
    assert all(is_loopback_host(h) for h in LOOPBACK)
    assert not any(is_loopback_host(h) for h in NOT_LOOPBACK)
    assert is_loopback_host("gateway.test", ["GATEWAY.test"])


# -- Content-Length and chunked bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("framing", "message"),
    [
        ("", "a POST needs a Content-Length header (or Transfer-Encoding: chunked)"),
        ("Content-Length: -1\r\n", "invalid Content-Length '-1': expected a number of bytes"),
        ("Content-Length: abc\r\n", "invalid Content-Length 'abc': expected a number of bytes"),
        ("Content-Length: +5\r\n", "invalid Content-Length '+5': expected a number of bytes"),
        ("Content-Length: 1e3\r\n", "invalid Content-Length '1e3': expected a number of bytes"),
        ("Content-Length: 5\r\nContent-Length: 6\r\n", "conflicting Content-Length headers ['5', '6']"),
        ("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "a request may not carry both"),
        ("Transfer-Encoding: gzip, chunked\r\n", "unsupported Transfer-Encoding 'gzip, chunked'"),
    ],
)
def test_bad_framing_is_a_400_that_closes_the_connection(server: OllamaAPIServer, framing: str, message: str) -> None:
    reply = send(server, post(b"", headers=framing))

    assert reply.status == 400
    assert reply.json()["error"].startswith(message)
    assert reply.closed
    assert_still_answers(server)


@pytest.mark.parametrize(
    ("raw", "status"),
    [(b"GARBAGE\r\n\r\n", 400), (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414)],
    ids=["garbage", "long-line"],
)
def test_http_level_refusals_are_json_too(server: OllamaAPIServer, raw: bytes, status: int) -> None:
    reply = send(server, raw)
    assert reply.status == status
    assert isinstance(reply.json()["error"], str)
    assert reply.closed


def test_a_body_that_ends_early_is_a_400(server: OllamaAPIServer) -> None:
    with connect(server) as sock:
        sock.sendall(post(b'{"model"', headers="Content-Length: 100\r\n"))
        sock.shutdown(socket.SHUT_WR)  # the client is done sending: 8 of 100 bytes
        reply = read_reply(sock)
    assert (reply.status, reply.json()) == (400, {"error": "the body ended after 8 of 100 bytes"})


@pytest.mark.parametrize(
    "length", [str(BODY_LIMIT + 1), str(10**12), "9" * 5000], ids=["limit+1", "1e12", "5000-digits"]
)
def test_a_declared_body_over_the_limit_is_a_413_before_it_is_read(server: OllamaAPIServer, length: str) -> None:
    reply = send(server, post(b"", headers=f"Content-Length: {length}\r\n"))  # the body is never sent

    assert reply.status == 413
    assert reply.json() == {"error": f"the request body is over the limit of {BODY_LIMIT} bytes"}
    assert reply.closed


def test_a_client_that_sends_an_oversized_body_anyway_reads_the_413_not_a_reset(server: OllamaAPIServer) -> None:
    """What users meet: the body is sent in full before the client reads, and the answer is still the 413.

    (The server drains refused input before closing so a reset cannot discard the answer on a real network; on
    loopback a reset rarely shows, so this pins the outcome rather than proving the drain.)
    """
    body = b"x" * 512 * 1024
    for _ in range(3):
        reply = send(server, post(body))
        assert (reply.status, reply.closed) == (413, True)


def test_a_chunked_body_is_read_and_answered(server: OllamaAPIServer) -> None:
    body = chat_body()
    chunked = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (body[:10], body[10:])) + b"0\r\n\r\n"
    with connect(server) as sock:
        sock.sendall(post(chunked, headers="Transfer-Encoding: chunked\r\n"))
        first = read_reply(sock)
        sock.sendall(post(body))  # the same connection goes on: the chunked body was consumed exactly
        second = read_reply(sock)

    assert [first.json()["message"]["content"], second.json()["message"]["content"]] == [ANSWER, ANSWER]


def test_chunked_bodies_are_held_to_the_limit_and_to_their_syntax(server: OllamaAPIServer) -> None:
    chunk = b"x" * 1000
    too_big = b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
    over = send(server, post(too_big, headers="Transfer-Encoding: chunked\r\n"))
    malformed = send(server, post(b"zz\r\n{}\r\n0\r\n\r\n", headers="Transfer-Encoding: chunked\r\n"))

    assert (over.status, over.closed) == (413, True)
    assert (malformed.status, malformed.closed) == (400, True)
    assert malformed.json()["error"].startswith("malformed chunk size line")


# -- time -------------------------------------------------------------------------------------------------------------

STALLS = {
    "in the request line": b"POST /api/ch",
    "in the headers": b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Le",
    "in the body": post(b'{"model": "qwen', headers="Content-Length: 100\r\n"),
}


@pytest.mark.parametrize("stall", STALLS.values(), ids=list(STALLS))
def test_a_stalled_request_gets_408_and_is_closed_while_others_are_answered(
    server: OllamaAPIServer, stall: bytes
) -> None:
    with connect(server) as stalled:
        stalled.sendall(stall)
        assert_still_answers(server)  # the stalled client holds its own thread only
        reply = read_reply(stalled)  # it never sends the rest: only the server's deadline ends this

    assert reply.status == 408
    assert reply.json() == {"error": "the request did not arrive within 0.5 s; the connection is closed"}
    assert reply.closed
    assert_still_answers(server)


def test_a_trickling_client_does_not_extend_the_deadline(server: OllamaAPIServer) -> None:
    """One byte at a time keeps each read short; the deadline is for the whole request, so it still ends."""
    stop = threading.Event()
    padding = b"X-Padding: " + b"a" * 10_000  # at one byte per 10 ms, far longer than the 0.5 s deadline

    with connect(server) as sock:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\n")

        def trickle() -> None:
            for byte in padding:
                if stop.is_set():
                    return
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    return  # the server closed the connection: what the test waits for
                time.sleep(0.01)

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            reply = read_reply(sock)
        finally:
            stop.set()
            sender.join(SAFETY_NET_S)

    assert reply.status == 408
    assert reply.closed


def test_an_idle_kept_alive_connection_is_closed_without_a_response(server: OllamaAPIServer) -> None:
    with connect(server) as sock:
        sock.sendall(post(chat_body()))
        assert read_reply(sock).status == 200  # keep-alive: the connection stays open after the answer
        assert sock.recv(1) == b""  # then the idle limit ends it, with no 408 for a request never started
    assert_still_answers(server)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeouts must be positive"):
        Limits(read_timeout_s=0)


def test_responses_are_not_held_back_by_nagles_algorithm() -> None:
    """Headers and body go out in two writes: with Nagle on, the body waits for the client's delayed ACK (40 ms)."""
    from pytest_llmtrace.modelapi.transport import RequestHandler

    assert RequestHandler.disable_nagle_algorithm is True  # socketserver then sets TCP_NODELAY on each connection


# -- Origin: a web page on another origin must not drive the front ----------------------------------------------------


@pytest.mark.parametrize(
    "origin", ["http://localhost:3000", "http://127.0.0.1:8888", "https://[::1]:5173", "http://LOCALHOST"]
)
def test_pages_served_from_loopback_are_answered(server: OllamaAPIServer, origin: str) -> None:
    reply = send(server, post(chat_body(), headers=f"Origin: {origin}\r\nContent-Length: {len(chat_body())}\r\n"))
    assert reply.status == 200


@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", "https://evil.example:443", "null", "http://localhost.evil.example", "file://", ""],
)
def test_a_request_from_a_page_on_another_origin_is_refused(server: OllamaAPIServer, origin: str) -> None:
    """The browser sends a "simple" cross-origin POST (text/plain, no preflight) with the page's Origin; the Host is
    the loopback address the page aimed at, so the Host check alone lets it through."""
    body = chat_body()
    reply = send(
        server, post(body, headers=f"Origin: {origin}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n")
    )
    assert reply.status == 403
    assert reply.json()["error"].startswith(f"Origin {origin!r} is not a loopback origin")
    assert reply.closed
    assert_still_answers(server)


def test_allowed_hosts_admit_pages_from_that_name_too() -> None:
    limits = Limits(allowed_hosts=("gateway.test",))
    with OllamaAPIServer(ScriptedBackend({QUESTION: ANSWER}, MODEL), limits=limits) as running:
        body = chat_body()
        headers = f"Origin: http://gateway.test:8080\r\nContent-Length: {len(body)}\r\n"
        assert send(running, post(body, headers=headers)).status == 200


# -- connections: a bounded number of threads -------------------------------------------------------------------------

MAX_CONNECTIONS = 128  # Limits().max_connections


def test_connections_past_the_cap_are_refused_and_hold_no_thread() -> None:
    """Each kept-alive connection holds a thread until it idles out; past the cap a connection gets one 503 from the
    accepting thread and is closed, so the threads stay bounded however many connections a client opens."""
    extra = 8
    with OllamaAPIServer(ScriptedBackend({QUESTION: ANSWER}, MODEL)) as running:
        threads_before = threading.active_count()
        sockets = []
        statuses = []
        try:
            for _ in range(MAX_CONNECTIONS + extra):
                sock = connect(running)
                sockets.append(sock)
                sock.sendall(post(chat_body()))
                reply = read_reply(sock)  # answered one by one: the first MAX_CONNECTIONS now idle, kept alive
                statuses.append((reply.status, reply.closed))
            grown = threading.active_count() - threads_before

            assert statuses[:MAX_CONNECTIONS] == [(200, False)] * MAX_CONNECTIONS
            assert statuses[MAX_CONNECTIONS:] == [(503, True)] * extra
            assert grown <= MAX_CONNECTIONS

            sockets.pop(0).close()  # one idle connection goes: its slot frees once its thread sees it closed
            deadline = time.monotonic() + SAFETY_NET_S
            while (reply := send(running, post(chat_body()))).status == 503 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert reply.status == 200
        finally:
            for sock in sockets:
                sock.close()


def test_the_refusal_says_why_and_when_to_retry() -> None:
    backend = ScriptedBackend({QUESTION: ANSWER}, MODEL)
    with OllamaAPIServer(backend, limits=Limits(max_connections=1)) as running, connect(running) as held:
        held.sendall(post(chat_body()))
        assert read_reply(held).status == 200
        reply = send(running, post(chat_body()))
    assert (reply.status, reply.headers["retry-after"]) == (503, "1")
    assert reply.json() == {
        "error": "too many connections: this Ollama-API stand-in serves at most 1 at once (kept-alive connections "
        "count until they idle out); retry, or raise Limits(max_connections=...)"
    }
