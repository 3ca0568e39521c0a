"""One HTTP request to the Phoenix a user named, bounded so that the server cannot take more than the answer.

``llmtrace capture`` and the export's REST calls both send ``PHOENIX_API_KEY`` and both read what comes back, from a
server that may be misconfigured, behind a proxy, or hostile. So every request here

- keeps the key at its origin: a redirect to another scheme, host or port is refused (``CrossOriginRedirect``, naming
  the target origin) when the request carries credentials, because urllib would copy the ``Authorization`` header to
  wherever ``Location`` points; without credentials there is nothing to leak and the redirect is followed;
- has one deadline for the whole request (connect, head and body): urllib's ``timeout`` applies to each ``recv``, so a
  server trickling a byte a second never times out. A timer shuts the socket down when the deadline passes, which
  wakes a blocked read at once, TLS or not; the request then raises ``TimeoutError``;
- reads at most ``max_bytes`` of the answer, in chunks, and stops there (``ResponseTooLarge``): a huge answer is an
  error after a bounded read instead of a body, and then its parsed form, held in memory in full;
- turns ``http.client``'s own protocol errors (a body cut short, a garbled status line) into ``OSError``, which the
  callers already report as "cannot reach".

An HTTP error status still raises ``urllib.error.HTTPError``, with at most ``ERROR_BODY_BYTES`` of its body read
within the deadline, so the callers' error details cannot block or fill memory either.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import IO, Any

from pytest_llmtrace.core.errors import LLMTraceError

CHUNK = 1 << 16
ERROR_BODY_BYTES = 1 << 16  # enough for any FastAPI error detail


class CrossOriginRedirect(LLMTraceError):
    """A redirect to another origin, not followed because the request carries the API key."""

    def __init__(self, url: str, target: str) -> None:
        super().__init__(f"redirect from {origin(url)} to {target}")
        self.target = target  # the target's origin only: a Location's path or query may hold anything


class ResponseTooLarge(LLMTraceError):
    """An answer over the byte limit; ``read`` is how many bytes were read before stopping (0 when the declared
    Content-Length was already over it)."""

    def __init__(self, limit: int, read: int, declared: int | None) -> None:
        if declared is not None:
            text = f"{declared:,} bytes (its Content-Length), over the limit of {limit:,}; nothing was read"
        else:
            text = f"more than the limit of {limit:,} bytes (reading stopped after {read:,})"
        super().__init__(text)
        self.limit = limit
        self.read = read


def origin(url: str) -> str:
    """``scheme://host:port`` with the default port filled in: what a browser would call the URL's origin."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def request(req: urllib.request.Request, *, timeout: float, max_bytes: int) -> tuple[bytes, str]:
    """``(body, Content-Type)`` of one request, within ``timeout`` seconds in total and ``max_bytes`` of body."""
    with _Deadline(timeout) as deadline:
        opener = urllib.request.build_opener(_SameOriginRedirects(req.full_url), _Handler(deadline))
        try:
            with opener.open(req, timeout=timeout) as response:
                body = _read(response, max_bytes)
                content_type = str(response.headers.get("Content-Type", ""))
        except urllib.error.HTTPError as exc:
            error_body = _read_error_body(exc)
            if deadline.expired:
                raise deadline.error() from None
            raise urllib.error.HTTPError(exc.url, exc.code, exc.msg, exc.headers, io.BytesIO(error_body)) from None
        except (OSError, http.client.HTTPException) as exc:
            if deadline.expired:
                raise deadline.error() from None
            if isinstance(exc, OSError):
                raise
            raise OSError(f"{type(exc).__name__}: {exc}") from None
        if deadline.expired:  # the socket was shut down mid-body: what was read may look complete, but is not
            raise deadline.error()
    return body, content_type


def _read(response: IO[bytes], max_bytes: int) -> bytes:
    declared = _content_length(response)
    if declared is not None and declared > max_bytes:
        raise ResponseTooLarge(max_bytes, 0, declared)
    chunks: list[bytes] = []
    total = 0
    while chunk := response.read(min(CHUNK, max_bytes + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise ResponseTooLarge(max_bytes, total, None)
    return b"".join(chunks)


def _content_length(response: Any) -> int | None:
    value = str(response.headers.get("Content-Length") or "").strip()
    return int(value) if value.isdigit() and len(value) < 20 else None


def _read_error_body(exc: urllib.error.HTTPError) -> bytes:
    try:
        return exc.read(ERROR_BODY_BYTES) or b""
    except (OSError, http.client.HTTPException):
        return b""
    finally:
        with contextlib.suppress(Exception):
            exc.close()


class _Deadline:
    """Shuts down the request's sockets when its time is up; a blocked ``recv`` then returns at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self._timer.join()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def error(self) -> TimeoutError:
        return TimeoutError(f"no complete answer within {self.seconds:g} s")


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: an SSLSocket's would talk TLS first


class _Connection(http.client.HTTPConnection):
    """A connection whose socket the deadline watches once connected (over TLS: once the handshake is done)."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self._deadline.watch(self.sock)


class _TLSConnection(_Connection, http.client.HTTPSConnection):
    """``_Connection``'s ``connect`` around ``HTTPSConnection``'s, which comes next in the MRO."""


def _as_connection(cls: type[http.client.HTTPConnection]) -> Any:
    """``cls`` as ``do_open`` takes it: typeshed's protocol has no room for the extra ``deadline`` argument."""
    return cls


class _Handler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """Both schemes' handler (it stands in for urllib's two), opening connections the deadline watches."""

    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_as_connection(_Connection), req, deadline=self._deadline)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_as_connection(_TLSConnection), req, deadline=self._deadline)


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only within the first URL's origin while the request carries credentials."""

    def __init__(self, url: str) -> None:
        self._origin = origin(url)

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        carries_key = any(name.lower() in ("authorization", "api_key") for name in _header_names(req))
        target = origin(newurl)
        if carries_key and target != self._origin:
            with contextlib.suppress(Exception):
                fp.close()
            raise CrossOriginRedirect(req.full_url, target)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _header_names(req: urllib.request.Request) -> Iterator[str]:
    yield from req.headers
    yield from req.unredirected_hdrs
