"""A real HTTP Ollama-API server whose answers take known times: the upstream the timing proxy is tested against.

Every answer is ``TOKENS`` tokens. A streamed one opens with a role-only chunk at once (which must not count as the
first token), waits ``FIRST_S`` before the first token and ``GAP_S`` before each next one, then a ``done`` chunk with
Ollama's counts (``/api``) or ``usage`` (``/v1``). A whole answer waits ``FIRST_S + (TOKENS - 1) * GAP_S`` and says in
Ollama's durations that the model load and prompt took ``SERVER_TTFT_NS``. The sleeps are lower bounds on every
time the proxy can measure, so tests assert those bounds, never an upper wall time.

Its ``Server`` header is not the plugin's stand-in, so the proxy times it as it would a real Ollama.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "timed:latest"
TOKENS = 4
FIRST_S = 0.2
GAP_S = 0.05
SERVER_TTFT_NS = 30_000_000  # what a whole answer's load_duration + prompt_eval_duration add up to
WORDS = ["SELECT", " 1", " AS", " x"]
RUNNING: dict[str, TimedOllama] = {}  # by URL: how an inner pytest run (in process) reaches the server to stop it


class TimedOllama:
    """The server on a free loopback port, in a daemon thread.

    ``lockstep`` (when set) makes a stream wait, after each token but the last, until the client has read that token
    (``ack``) before its next ``GAP_S``: a token then reached the client before the next existed (no buffering), and
    each token arrives anywhere at least ``GAP_S`` after the one before, however late the machine ran the proxy.
    ``break_after_first`` ends a stream after its first token."""

    def __init__(self) -> None:
        self.lockstep: threading.Semaphore | None = None
        self.headers: dict[str, str] = {}  # the last request's, as it arrived
        self.break_after_first = False  # end a stream's connection after its first token, as a crashing Ollama
        self.held_too_long = False
        handler = type("Handler", (_Handler,), {"owner": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def ack(self) -> None:
        """The client has read a token (``lockstep``)."""
        if self.lockstep is not None:
            self.lockstep.release()

    def __enter__(self) -> TimedOllama:
        self._thread.start()
        RUNNING[self.url] = self
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        RUNNING.pop(self.url, None)
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    owner: TimedOllama
    protocol_version = "HTTP/1.1"
    server_version = "timed-ollama"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.owner.headers = dict(self.headers)
        if self.path == "/api/version":
            self._json(200, {"version": "0.0.0-timed"})
        elif self.path == "/api/tags":
            self._json(200, {"models": [{"name": MODEL, "model": MODEL, "digest": "0" * 64, "size": 1}]})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        self.owner.headers = dict(self.headers)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        if body.get("model") not in (MODEL, MODEL.split(":")[0]):
            self._json(404, {"error": f"model {body.get('model')!r} not found"})
            return
        kind = {"/api/chat": "chat", "/api/generate": "generate", "/v1/chat/completions": "openai"}.get(self.path)
        if kind is None:
            self._json(404, {"error": "not found"})
            return
        streamed = body.get("stream", kind != "openai")  # Ollama streams unless told not to; OpenAI the reverse
        if streamed:
            self._stream(kind)
        else:
            time.sleep(FIRST_S + (TOKENS - 1) * GAP_S)
            self._json(200, _whole(kind))

    def _stream(self, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream" if kind == "openai" else "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Timed-Ollama", "streamed")
        self.end_headers()
        for index, line in enumerate(_lines(kind)):
            if index == 1:
                time.sleep(FIRST_S)
            elif index > 1 and index <= TOKENS:
                time.sleep(GAP_S)
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            self.wfile.flush()
            if index == 1 and self.owner.break_after_first:
                self.close_connection = True
                return
            lockstep = self.owner.lockstep
            if 1 <= index < TOKENS and lockstep is not None and not lockstep.acquire(timeout=10):
                self.owner.held_too_long = True
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _json(self, status: int, value: Any) -> None:
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Timed-Ollama", "whole")
        self.end_headers()
        self.wfile.write(data)


def _lines(kind: str) -> Iterator[bytes]:
    """A role-only (empty) chunk, one chunk per token, then the end with the counts."""
    if kind == "openai":
        yield _sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        for word in WORDS:
            yield _sse({"choices": [{"index": 0, "delta": {"content": word}}]})
        yield _sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        yield _sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": TOKENS}})
        yield b"data: [DONE]\n\n"
        return
    for word in ["", *WORDS]:
        yield _ndjson(kind, word, done=False)
    yield _ndjson(kind, "", done=True)


def _piece(kind: str, text: str) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": text}} if kind == "chat" else {"response": text}


def _ndjson(kind: str, text: str, *, done: bool) -> bytes:
    value: dict[str, Any] = {"model": MODEL, **_piece(kind, text), "done": done}
    if done:
        value.update(eval_count=TOKENS, load_duration=10_000_000, prompt_eval_duration=20_000_000)
    return json.dumps(value).encode() + b"\n"


def _sse(value: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps({"model": MODEL, **value}).encode() + b"\n\n"


def _whole(kind: str) -> dict[str, Any]:
    text = "".join(WORDS)
    if kind == "openai":
        return {
            "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": TOKENS},
        }
    return {
        "model": MODEL,
        **_piece(kind, text),
        "done": True,
        "eval_count": TOKENS,
        "load_duration": 10_000_000,
        "prompt_eval_duration": SERVER_TTFT_NS - 10_000_000,
    }
