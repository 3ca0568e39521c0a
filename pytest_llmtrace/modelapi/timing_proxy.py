"""A timing front for an Ollama the plugin does not answer for itself: ``ollama serve``, the Docker image, a URL.

With llama.cpp or a recording behind it, the plugin's own Ollama-API front sees each answer and times it. A real
Ollama answers the app directly, so nothing would be timed: this proxy on loopback sits in between instead. The
session's ``OLLAMA_HOST`` points at it; it forwards every request over real HTTP (method, path, headers and body;
status and headers back), relays a streamed answer chunk by chunk as each arrives (never buffered), and watches
``/api/chat``, ``/api/generate`` and ``/v1/(chat/)completions`` answers pass (``answer_watch``) to log the same
``FrontTiming`` the llama.cpp front logs, which the checks and reports read.

It reuses the front's transport (``transport``): the loopback Host and Origin guards, one deadline per request,
body and connection limits. An Ollama that cannot be reached is a 502 naming it, at once, not a hang; an Ollama
that stops answering mid-request is a 504 after ``upstream_timeout_s``. A stream cut off mid-way ends the
connection, so the client sees a truncated answer, as it would from Ollama itself.

An upstream that is the plugin's own front in this process (its ``X-Llmtrace-Front`` header names this process's
``stream_log.FRONT_ID``) times its answers already: the proxy relays those without logging, so no call counts
twice. A front in another process (a stand-in ``ollama serve``, a container) is timed like any Ollama.
"""

from __future__ import annotations

import base64
import http.client
import time
import urllib.parse
from typing import Any

from pytest_llmtrace.core.url_secrets import redact_url
from pytest_llmtrace.modelapi.answer_watch import TIMED_PATHS, AnswerWatch
from pytest_llmtrace.modelapi.backend import BackendError, ChatRequest, ChatResult, ModelInfo
from pytest_llmtrace.modelapi.framing import HTTPError, read_body
from pytest_llmtrace.modelapi.stream_log import FRONT_HEADER, FRONT_ID
from pytest_llmtrace.modelapi.threaded_front import ThreadedFront
from pytest_llmtrace.modelapi.transport import Limits, RequestHandler, RouteServer

CONNECT_TIMEOUT_S = 10.0
UPSTREAM_TIMEOUT_S = 600.0  # between two reads from Ollama: a cold model load on a CPU can take minutes
# Per connection, never forwarded (RFC 9110 7.6.1); the proxy frames its own side
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"}
)
READ_SIZE = 65536


class _NoModel:
    """The route server wants a backend; the proxy's model is the Ollama behind it, so this one is never asked."""

    def models(self) -> list[ModelInfo]:
        return []

    def chat(self, request: ChatRequest) -> ChatResult:
        raise BackendError(500, "the timing proxy has no model of its own")


class ProxyServer(RouteServer):
    """The route server with every request forwarded to ``upstream`` instead of answered from a route table."""

    def __init__(self, address: tuple[str, int], upstream: str, limits: Limits, upstream_timeout_s: float) -> None:
        super().__init__(address, _NoModel(), {}, limits)
        self.RequestHandlerClass = ProxyHandler
        parts = urllib.parse.urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the timing proxy needs an http(s) URL for Ollama, not {redact_url(upstream)!r}")
        self.upstream = upstream.rstrip("/")
        self.scheme = parts.scheme
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or (443 if parts.scheme == "https" else 80)
        self.upstream_netloc = parts.netloc.rpartition("@")[2]  # the Host header: never the URL's credentials
        self.upstream_auth = ""  # a URL's user:password, sent as Basic auth when the client sends none of its own
        if parts.username is not None:
            userinfo = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self.upstream_auth = "Basic " + base64.b64encode(userinfo.encode()).decode()
        self.base_path = parts.path.rstrip("/")
        self.upstream_timeout_s = upstream_timeout_s


class ProxyHandler(RequestHandler):
    """One client connection: each request framed and guarded as the front does, then forwarded."""

    server: ProxyServer
    server_version = "llmtrace-timing-proxy"
    timed_here = False  # the upstream's front header (when it has one) passes through instead

    def _answer(self) -> None:
        try:
            self._check_host()
            self._check_origin()
            raw = read_body(self.headers, self.rfile, self.command, self.server.limits.max_body_bytes)
        except HTTPError as exc:
            self._refuse(exc, _error)
            return
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        received = time.time_ns()
        upstream = self._connection()
        try:
            try:
                upstream.connect()
                if upstream.sock is not None:  # connected: a read now waits for the model, not the network
                    upstream.sock.settimeout(self.server.upstream_timeout_s)
                upstream.request(
                    self.command, self.server.base_path + self.path, body=raw, headers=self._forwarded(raw)
                )
                response = upstream.getresponse()
                streamed = response.getheader("Content-Length") is None and _has_body(self.command, response.status)
                whole = None if streamed else response.read()  # before answering: a failure is still a 502
                read_ns = time.time_ns()
            except TimeoutError:
                self._refuse(HTTPError(504, self._unreachable("did not answer in time")), _error)
                return
            except OSError as exc:
                self._refuse(HTTPError(502, self._unreachable(f"could not be reached ({exc})")), _error)
                return
            except http.client.HTTPException as exc:  # a broken status line, a body cut short
                self._refuse(HTTPError(502, self._unreachable(f"sent no valid answer ({exc!r})")), _error)
                return
            timed = self.command == "POST" and path in TIMED_PATHS and 200 <= response.status < 300
            timed = timed and response.getheader(FRONT_HEADER) != FRONT_ID  # a front of ours here timed it
            self._relay(response, whole, read_ns, received if timed else None)
        except (OSError, http.client.HTTPException):  # the client left, or Ollama broke off mid-stream
            self.close_connection = True
        finally:
            upstream.close()

    def _connection(self) -> http.client.HTTPConnection:
        server = self.server
        cls = http.client.HTTPSConnection if server.scheme == "https" else http.client.HTTPConnection
        return cls(server.upstream_host, server.upstream_port, timeout=CONNECT_TIMEOUT_S)

    def _unreachable(self, what: str) -> str:
        return (
            f"pytest-llmtrace timing proxy: the Ollama at {redact_url(self.server.upstream)} {what}; check that it "
            "is running "
            "(the binary's log, the container, or the URL you gave)"
        )

    def _forwarded(self, raw: bytes) -> dict[str, str]:
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"
        }
        headers["Host"] = self.server.upstream_netloc
        if self.server.upstream_auth and not any(k.lower() == "authorization" for k in headers):
            headers["Authorization"] = self.server.upstream_auth
        if raw or self.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(raw))
        return headers

    def _relay(
        self, response: http.client.HTTPResponse, whole: bytes | None, read_ns: int, received_ns: int | None
    ) -> None:
        """Ollama's status and headers, then its body: ``whole`` (read at ``read_ns``) when it came with a length,
        else each piece as it arrives, chunked. The timing is logged before the answer's last bytes leave, so a
        client that has the whole answer finds its timing logged."""
        content_type = response.getheader("Content-Type", "")
        watch = None
        if received_ns is not None:
            watch = AnswerWatch(received_ns, streamed=whole is None, sse="text/event-stream" in content_type)
        self._start_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP and name.lower() not in ("content-length", "server", "date"):
                self.send_header(name, value)
        if whole is not None:
            if watch is not None:
                watch.feed(whole, read_ns)
                self.server.stream_log.add(watch.timing(read_ns))
            length = response.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(whole)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(whole)
            self.wfile.flush()
        else:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            while data := response.read1(READ_SIZE):
                if watch is not None:
                    watch.feed(data)
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            if watch is not None:
                self.server.stream_log.add(watch.timing())
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()


def _has_body(method: str, status: int) -> bool:
    return method != "HEAD" and status not in (204, 304) and not 100 <= status < 200


def _error(status: int, message: str) -> dict[str, Any]:
    return {"error": message}  # Ollama's shape; the ``ollama`` client raises ``ResponseError(message, status)``


class TimingProxy(ThreadedFront["TimingProxy"]):
    """The proxy in a daemon thread on a free loopback port; ``url`` is what ``OLLAMA_HOST`` should be set to."""

    what = "the timing proxy"
    thread_name = "ollama-timing"

    def __init__(
        self,
        upstream: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        limits: Limits | None = None,
        upstream_timeout_s: float = UPSTREAM_TIMEOUT_S,
    ) -> None:
        super().__init__(host, port)
        self.upstream = upstream if "://" in upstream else "http://" + upstream  # OLLAMA_HOST is often host:port
        self.limits = limits or Limits()
        self.upstream_timeout_s = upstream_timeout_s

    def _make_server(self) -> ProxyServer:
        return ProxyServer(self._address, self.upstream, self.limits, self.upstream_timeout_s)
