"""Request framing for the Ollama-API front: each request's bytes read within one deadline, its body by one valid
``Content-Length`` or ``Transfer-Encoding: chunked`` and within the size limit; anything else is an ``HTTPError``
that closes the connection, because where the next request would start is then unknown.
"""

from __future__ import annotations

import io
import re
import socket
import time
from email.message import Message
from typing import Any

from pytest_llmtrace.core.errors import LLMTraceError

MAX_LINE = 65536  # request line, header line and chunk-size line, as http.server limits its own lines
MAX_CHUNK_TRAILERS = 100


class HTTPError(LLMTraceError):
    """A request the front refuses. ``close`` ends the connection after the answer (framing errors)."""

    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


class DeadlineReader(io.RawIOBase):
    """The connection's read side, with one deadline for a whole request instead of one timeout per ``recv``."""

    def __init__(self, connection: socket.socket) -> None:
        self._connection = connection
        self.deadline = 0.0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request deadline has passed")
        self._connection.settimeout(remaining)
        return self._connection.recv_into(buffer)


def read_body(headers: Message, rfile: io.BufferedIOBase, method: str, max_body_bytes: int) -> bytes:
    """The request's body, framed by one valid Content-Length or chunked, within ``max_body_bytes``."""
    coding = headers.get_all("Transfer-Encoding")
    lengths = headers.get_all("Content-Length")
    if coding:
        if lengths:
            raise HTTPError(400, "a request may not carry both Transfer-Encoding and Content-Length", close=True)
        if [c.strip().lower() for c in coding] != ["chunked"]:
            raise HTTPError(
                400,
                f"unsupported Transfer-Encoding {', '.join(coding)!r}: send Content-Length or chunked",
                close=True,
            )
        return _read_chunked(rfile, max_body_bytes)
    if not lengths:
        if method == "POST":
            raise HTTPError(400, "a POST needs a Content-Length header (or Transfer-Encoding: chunked)", close=True)
        return b""
    values = {v.strip() for v in lengths}
    if len(values) != 1:
        raise HTTPError(400, f"conflicting Content-Length headers {sorted(values)!r}", close=True)
    raw = values.pop()
    if not re.fullmatch(r"[0-9]+", raw):
        raise HTTPError(400, f"invalid Content-Length {raw!r}: expected a number of bytes", close=True)
    length = int(raw) if len(raw) <= 20 else max_body_bytes + 1
    _check_size(length, max_body_bytes)
    data = rfile.read(length)
    if len(data) < length:
        raise HTTPError(400, f"the body ended after {len(data)} of {length} bytes", close=True)
    return data


def _read_chunked(rfile: io.BufferedIOBase, max_body_bytes: int) -> bytes:
    body = bytearray()
    while True:
        line = rfile.readline(MAX_LINE + 1)
        size_text = line.split(b";", 1)[0].strip()
        if not line.endswith(b"\n") or not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", size_text):
            raise HTTPError(400, f"malformed chunk size line {line[:40]!r}", close=True)
        size = int(size_text, 16)
        if size == 0:
            break
        _check_size(len(body) + size, max_body_bytes)
        chunk = rfile.read(size)
        if len(chunk) < size or rfile.readline(3) not in (b"\r\n", b"\n"):
            raise HTTPError(400, "a chunk ended before its declared size or without CRLF", close=True)
        body += chunk
    for _ in range(MAX_CHUNK_TRAILERS):  # trailer fields, ignored, up to the empty line
        if rfile.readline(MAX_LINE + 1) in (b"\r\n", b"\n"):
            return bytes(body)
    raise HTTPError(400, "the chunked body has no end (too many or unterminated trailer lines)", close=True)


def _check_size(length: int, limit: int) -> None:
    if length > limit:
        raise HTTPError(413, f"the request body is over the limit of {limit} bytes", close=True)
