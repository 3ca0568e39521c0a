"""The HTTP plumbing under the Ollama-API front: threads, request framing, limits, and the route table.

The front listens on loopback while the app under test (and anything else on the machine, including a web page in a
browser) can reach it, and it runs in every CI pipeline: a client must not be able to hold a thread forever, fill
memory, or reach it through a rebound DNS name. So every request is bounded here, before any route sees it:

- **Host**: the ``Host`` header must name the loopback interface (``localhost``, an address in ``127.0.0.0/8`` or
  ``[::1]``, with or without a port) or one of ``Limits.allowed_hosts``; anything else is refused with 403, as real
  Ollama refuses it, because a page on ``http://attacker.example`` whose name now resolves to 127.0.0.1 (DNS
  rebinding) still sends its own name. A request without ``Host`` is a 400 (HTTP/1.1 requires one).
- **Origin**: a browser adds the page's ``Origin`` to a cross-origin request, and a "simple" POST (``text/plain``)
  goes out without a CORS preflight, addressed to the loopback Host itself: so a request whose ``Origin`` is not
  ``http(s)://`` a loopback name (or one of ``Limits.allowed_hosts``) is refused with 403. Apps' own HTTP clients send
  no ``Origin``; a request without one is answered.
- **Connections**: at most ``Limits.max_connections`` at once, each on its own thread; a connection past the cap
  gets a 503 (``Retry-After: 1``) from the accepting thread and is closed, so a client opening connections without
  end costs no thread. A kept-alive connection counts until it idles out.
- **Time**: once the first byte of a request has arrived, its head and body must arrive within
  ``Limits.read_timeout_s`` in total, or the client gets 408 and the connection is closed; a trickle of bytes does
  not extend the deadline. A kept-alive connection may sit idle for ``Limits.idle_timeout_s`` between requests.
- **Size**: a body over ``Limits.max_body_bytes`` is refused with 413 before it is read.
- **Framing**: a POST needs a valid ``Content-Length`` (digits only) or ``Transfer-Encoding: chunked``; a missing,
  negative, non-numeric or repeated-and-different length, a length and a transfer coding together, another coding,
  a malformed chunk, or a body that ends early is a 400. Every framing error closes the connection, because where
  the next request would start is then unknown.

Error bodies are JSON (``{"error": "..."}``, or the OpenAI envelope on ``/v1`` routes), as the clients expect.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pytest_llmtrace.modelapi.backend import BackendError, ModelBackend
from pytest_llmtrace.modelapi.framing import MAX_LINE, DeadlineReader, HTTPError, read_body
from pytest_llmtrace.modelapi.loopback import is_loopback_host, is_loopback_origin
from pytest_llmtrace.modelapi.stream_log import FRONT_HEADER, FRONT_ID, StreamLog

LINGER_S = 1.0  # after a refusal, how long to read (and drop) what the client is still sending
LINGER_BYTES = 1 << 20


@dataclass(frozen=True)
class Limits:
    """How much the front accepts from one client. The defaults fit any prompt a text-to-SQL app sends."""

    read_timeout_s: float = 5.0  # the whole request, head and body, once its first byte has arrived
    idle_timeout_s: float = 60.0  # a kept-alive connection between requests (clients' pools keep 5-15 s)
    max_body_bytes: int = 16 * 1024 * 1024
    allowed_hosts: tuple[str, ...] = ()  # further Host (and Origin) names to accept, e.g. bound to another interface
    max_connections: int = 128  # threads; an app's HTTP pool keeps 10 to 100 connections

    def __post_init__(self) -> None:
        if self.read_timeout_s <= 0 or self.idle_timeout_s <= 0:
            raise ValueError("the read and idle timeouts must be positive numbers of seconds")
        if self.max_body_bytes < 0:
            raise ValueError("max_body_bytes must be 0 or more")
        if self.max_connections < 1:
            raise ValueError("max_connections must be 1 or more")


def ollama_error(status: int, message: str) -> dict[str, Any]:
    """Ollama's error body; the ``ollama`` client raises ``ResponseError(message, status)`` from it."""
    return {"error": message}


RouteHandler = Callable[["RequestHandler", dict[str, Any]], None]
ErrorBody = Callable[[int, str], dict[str, Any]]


@dataclass(frozen=True)
class Route:
    """One route: ``handle(request, body)`` writes the response; errors it raises are shaped by ``error_body``.

    ``json_body`` routes get the request body parsed as a JSON object (a 400 if it is not one); the others get ``{}``.
    """

    handle: RouteHandler
    json_body: bool = False
    error_body: ErrorBody = ollama_error


class RouteServer(ThreadingHTTPServer):
    """A threading HTTP server that answers from a route table with one ``ModelBackend`` behind it."""

    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 resets connections when an app fires parallel model calls
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        backend: ModelBackend,
        routes: Mapping[tuple[str, str], Route],
        limits: Limits,
    ) -> None:
        self.backend = backend
        self.routes = dict(routes)
        self.limits = limits
        self.request_ids = itertools.count(1)  # for ids the wire formats want unique per server (chatcmpl-N)
        self.stream_log = StreamLog()  # each answer's TTFT and chunk times, as the front sent them
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        super().__init__(address, RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread for the connection if one of ``max_connections`` is free, else a 503 from this thread."""
        if not self._slots.acquire(blocking=False):
            self._refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: its slot is free again
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse_busy(self, request: socket.socket) -> None:
        """Answer 503 and close, without reading the request: a few hundred bytes fit any socket buffer, so this
        cannot stall the accepting thread. What the client already sent is drained without waiting, so the close
        does not reset the connection before the client reads the answer."""
        body = json.dumps(
            ollama_error(
                503,
                f"too many connections: this Ollama-API stand-in serves at most {self.limits.max_connections} at "
                "once (kept-alive connections count until they idle out); retry, or raise "
                "Limits(max_connections=...)",
            )
        ).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            request.settimeout(1.0)
            request.sendall(head.encode() + body)
            request.shutdown(socket.SHUT_WR)
            request.setblocking(False)
            for _ in range(16):  # what has arrived already, at most 1 MiB
                if not request.recv(65536):
                    break
        self.shutdown_request(request)


class RequestHandler(BaseHTTPRequestHandler):
    """One connection: frames each request within the limits, then hands it to its route.

    HTTP/1.1 keep-alive, so every response has a Content-Length or is chunked.
    """

    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle's algorithm the body then waits for the client's delayed ACK
    # of the headers: 40 ms on Linux, on every request, which made a replayed model call cost more than its SQL.
    disable_nagle_algorithm = True
    default_request_version = "HTTP/1.0"  # not 0.9, which has no status line: refusals of garbage stay readable
    server_version = "ollama-api-stand-in"
    sys_version = ""
    server: RouteServer
    timed_here = True  # this process's ``stream_log`` holds the answers' timings (a proxy's answers: the upstream's)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the app's spans are the record of what happened."""

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the buffered reader over a plain socket file; reads go through the deadline instead
        self._reader = DeadlineReader(self.connection)
        self._buffered = io.BufferedReader(self._reader)
        self.rfile = self._buffered
        self._started = False
        self._linger = False

    @property
    def backend(self) -> ModelBackend:
        return self.server.backend

    # -- one request ------------------------------------------------------------------------------------------------

    def handle_one_request(self) -> None:
        limits = self.server.limits
        self._reader.deadline = time.monotonic() + limits.idle_timeout_s
        try:
            if not self._buffered.peek(1):
                self.close_connection = True  # the client closed a kept-alive connection
                return
        except OSError:  # TimeoutError included: idle for too long, or the connection broke
            self.close_connection = True
            return
        self._reader.deadline = time.monotonic() + limits.read_timeout_s
        self._started = False
        self.command, self.path, self.requestline, self.request_version = "", "", "", self.default_request_version
        try:
            self.raw_requestline = self.rfile.readline(MAX_LINE + 1)
            if len(self.raw_requestline) > MAX_LINE:
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG, "the request line is too long")
                return
            if not self.parse_request():  # a malformed request line or header: answered through send_error
                return
            self._answer()
        except TimeoutError:
            self.close_connection = True
            if not self._started:  # the request itself was late, not our answer to it
                seconds = f"{limits.read_timeout_s:g}"
                late = HTTPError(
                    408, f"the request did not arrive within {seconds} s; the connection is closed", close=True
                )
                self._refuse_quietly(late)
        except OSError:  # the client went away mid-request or mid-response
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """``http.server``'s own refusals (bad request line, too many headers) as JSON, closing the connection."""
        self._refuse(HTTPError(code, message or HTTPStatus(code).phrase, close=True), ollama_error)

    def _answer(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        route = self.server.routes.get((self.command, path))
        error_body = route.error_body if route is not None else ollama_error
        try:
            self._check_host()
            self._check_origin()
            raw = read_body(self.headers, self.rfile, self.command, self.server.limits.max_body_bytes)
        except HTTPError as exc:
            self._refuse(exc, error_body)
            return
        if route is None:
            self.send_bytes(404, "text/plain; charset=utf-8", b"404 page not found")  # as Ollama (gin) says it
            return
        try:
            route.handle(self, _json_object(raw) if route.json_body else {})
        except HTTPError as exc:
            self._refuse(exc, error_body)
        except BackendError as exc:
            self._refuse(HTTPError(exc.status, exc.message), error_body)
        except Exception as exc:  # a bug in a backend (a 500 with the reason), or a write to a client that left
            self._refuse(HTTPError(500, f"{type(exc).__name__}: {exc}"), error_body)

    def _refuse(self, error: HTTPError, error_body: ErrorBody) -> None:
        if error.close:
            self.close_connection = True
            self._linger = True
        if self._started:  # a stream already under way cannot become an error response: end the connection
            self.close_connection = True
            return
        self.send_json(error.status, error_body(error.status, error.message))

    def _refuse_quietly(self, error: HTTPError) -> None:
        with contextlib.suppress(OSError):  # the client is gone; the connection is closed either way
            self._refuse(error, ollama_error)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._linger:
                self._drain()

    def _drain(self) -> None:
        """Read and drop what a refused client is still sending, for a moment, before the connection is closed.

        Closing a socket with unread input makes the kernel reset the connection, and a reset can discard the refusal
        from the client's buffer before the client reads it: the client would see "connection reset" instead of 413.
        Half-closing first tells the client the answer is complete; the time and byte caps keep a client that never
        stops sending from holding the thread.
        """
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            deadline, left = time.monotonic() + LINGER_S, LINGER_BYTES
            while left > 0 and (remaining := deadline - time.monotonic()) > 0:
                self.connection.settimeout(remaining)
                data = self.connection.recv(min(65536, left))
                if not data:
                    break
                left -= len(data)

    def _check_host(self) -> None:
        host = self.headers.get_all("Host") or []
        if len(host) != 1:
            raise HTTPError(400, "the request needs exactly one Host header", close=True)
        if not is_loopback_host(host[0], self.server.limits.allowed_hosts):
            raise HTTPError(
                403,
                f"Host {host[0]!r} is not a loopback name: this Ollama-API stand-in answers requests addressed to "
                "localhost, 127.0.0.0/8 or [::1] only (a guard against DNS rebinding); to accept another name, "
                "pass it in Limits(allowed_hosts=...)",
                close=True,
            )

    def _check_origin(self) -> None:
        origins = self.headers.get_all("Origin") or []
        if origins and (len(origins) > 1 or not is_loopback_origin(origins[0], self.server.limits.allowed_hosts)):
            raise HTTPError(
                403,
                f"Origin {origins[0]!r} is not a loopback origin: this Ollama-API stand-in answers pages served from "
                "localhost, 127.0.0.0/8 or [::1] only (a web page elsewhere must not drive it); to accept another "
                "name, pass it in Limits(allowed_hosts=...)",
                close=True,
            )

    # -- responses --------------------------------------------------------------------------------------------------

    def _start_response(self, status: int) -> None:
        """From here on the request is answered: a failure can only end the connection, not send an error."""
        self._started = True
        self.connection.settimeout(self.server.limits.idle_timeout_s)  # for writes: a client that stops reading
        self.send_response(status)
        if self.timed_here:
            self.send_header(FRONT_HEADER, FRONT_ID)

    def send_bytes(self, status: int, content_type: str, data: bytes) -> None:
        self._start_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_json(self, status: int, value: Any) -> None:
        self.send_bytes(status, "application/json; charset=utf-8", json.dumps(value).encode())

    def send_text(self, status: int, text: str) -> None:
        self.send_bytes(status, "text/plain; charset=utf-8", text.encode())

    def send_stream(self, content_type: str, pieces: Iterator[bytes]) -> None:
        """A 200 whose body is sent piece by piece (chunked), as Ollama streams NDJSON and OpenAI streams SSE."""
        self._start_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece in pieces:
            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object; Ollama answers an empty body with "EOF", so the front does too."""
    if not raw.strip():
        raise HTTPError(400, "EOF")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep
        raise HTTPError(400, f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise HTTPError(400, "the request body must be a JSON object")
    return value
