"""One Ollama-compatible HTTP front for every stand-in model: scripted answers, recorded traces, llama.cpp.

An app under test talks to Ollama over HTTP with whatever client it ships (the ``ollama`` package, LangChain's
``ChatOllama``, plain ``httpx``, an OpenAI SDK pointed at ``/v1``). Replacing the model at the HTTP level instead of
mocking a client keeps the app's own code path, its instrumentation and its error handling under test. The wire
format is therefore copied from real Ollama (key names, key order, NDJSON streaming, ns durations, ``{"error": ...}``
bodies); backends only answer "what does the model say to these messages" through the small ``Backend`` protocol.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Protocol

from pytest_llmtrace.errors import LLMTraceError
from pytest_llmtrace.trace.model import Message

__all__ = [
    "Backend",
    "BackendError",
    "ChatMessage",
    "ChatRequest",
    "ChatResult",
    "ModelInfo",
    "OllamaAPIServer",
    "normalize_model_name",
]

# What /api/version reports: a recent release, so clients that gate features on the version enable them.
OLLAMA_VERSION = "0.12.6"


class BackendError(LLMTraceError):
    """A backend refusing a request; the front answers ``status`` with ``{"error": message}`` like Ollama does.

    The ``ollama`` client raises it as ``ollama.ResponseError`` carrying ``message`` and ``status``, so the app under
    test sees the same failure a real server would give it.
    """

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


@dataclass(frozen=True)
class ModelInfo:
    """A model as /api/tags and /api/show describe it. Only ``name`` matters for routing; the rest is for display."""

    name: str
    family: str = ""
    parameter_size: str = ""
    quantization_level: str = ""
    format: str = "gguf"
    size: int = 0
    modelfile: str = ""
    template: str = ""
    parameters: str = ""
    system: str = ""
    context_length: int | None = None
    modified_at: str = "2025-01-01T00:00:00Z"  # fixed, so listings are deterministic

    @property
    def full_name(self) -> str:
        return normalize_model_name(self.name)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.full_name.encode()).hexdigest()

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": self.format,
            "family": self.family,
            "families": [self.family] if self.family else None,
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


# A request's messages are the same thing a recorded LLM span holds, so replay compares like with like.
ChatMessage = Message


@dataclass(frozen=True)
class ChatRequest:
    """One model call, whichever route it came in by: /api/generate is turned into system + user messages.

    ``body`` keeps the original JSON, for backends that match on more than the messages (tools, format, images).
    """

    model: str
    messages: tuple[ChatMessage, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    format: Any = None
    route: str = "/api/chat"
    body: Mapping[str, Any] = field(default_factory=dict)

    @property
    def last_user_message(self) -> str:
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")


@dataclass(frozen=True)
class ChatResult:
    """The model's answer with the counters Ollama reports; durations are nanoseconds, as on the wire."""

    text: str
    prompt_eval_count: int
    eval_count: int
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_duration: int = 0
    eval_duration: int = 0
    done_reason: str = "stop"


class Backend(Protocol):
    """What answers behind the front. Called from server threads: implementations must be thread-safe."""

    def models(self) -> Sequence[ModelInfo]: ...

    def chat(self, request: ChatRequest) -> ChatResult: ...


def normalize_model_name(name: str) -> str:
    """``qwen-sql-prod`` and ``qwen-sql-prod:latest`` are the same model to Ollama."""
    name = name.strip()
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def split_stream_chunks(text: str) -> list[str]:
    """Word-sized pieces (each with the whitespace before it) that join back to ``text`` exactly.

    Real Ollama streams one token per message; words are close enough for clients that reassemble the text.
    """
    return re.findall(r"\s*\S+|\s+$", text)


# OpenAI request fields -> the Ollama option a backend sees, so backends handle one vocabulary.
_OPENAI_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "max_tokens": "num_predict",
    "stop": "stop",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 resets connections when an app fires parallel model calls
    block_on_close = False

    def __init__(self, address: tuple[str, int], backend: Backend) -> None:
        self.backend = backend
        self.completion_ids = itertools.count(1)
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    """Routes and wire shapes. HTTP/1.1 keep-alive, so every response has Content-Length or chunked encoding."""

    protocol_version = "HTTP/1.1"
    server_version = "ollama-api-stand-in"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the app's spans are the record of what happened."""

    # -- plumbing ---------------------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        routes = {"/": self._root, "/api/tags": self._tags, "/api/version": self._version, "/api/ps": self._ps}
        self._dispatch({**routes, "/v1/models": self._openai_models})

    def do_HEAD(self) -> None:
        self._dispatch({"/": self._root})

    def do_POST(self) -> None:
        routes = {"/api/chat": self._chat, "/api/generate": self._generate, "/api/show": self._show}
        self._dispatch({**routes, "/v1/chat/completions": self._openai_chat})

    def _dispatch(self, routes: Mapping[str, Any]) -> None:
        path = self.path.split("?", 1)[0]
        handler = routes.get(path.rstrip("/") or "/")
        try:
            body = self._read_body(parse=handler is not None)
            if handler is None:
                self._send_text(404, "404 page not found")
                return
            handler(body)
        except BackendError as exc:
            self._send_json(exc.status, {"error": exc.message})
        except _HTTPError as exc:
            self._send_json(exc.status, {"error": exc.message})
        except Exception as exc:
            self._send_json(500, {"error": f"{type(exc).__name__}: {exc}"})

    def _read_body(self, parse: bool = True) -> dict[str, Any]:
        """The JSON body; an unknown route's body is only drained, so it gets Ollama's 404 and not a JSON error."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                raw += self.rfile.read(size)
                self.rfile.readline()
        else:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.command != "POST" or not parse:
            return {}
        if not raw.strip():
            raise _HTTPError(400, "EOF")
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise _HTTPError(400, f"invalid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise _HTTPError(400, "the request body must be a JSON object")
        return value

    def _send_bytes(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_json(self, status: int, value: Any) -> None:
        self._send_bytes(status, "application/json; charset=utf-8", json.dumps(value).encode())

    def _send_text(self, status: int, text: str) -> None:
        self._send_bytes(status, "text/plain; charset=utf-8", text.encode())

    def _send_stream(self, content_type: str, pieces: Iterator[bytes]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece in pieces:
            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # -- model lookup -----------------------------------------------------------------------------------------------

    def _model(self, body: Mapping[str, Any]) -> ModelInfo:
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            raise _HTTPError(400, "model is required")
        wanted = normalize_model_name(name)
        for info in self.server.backend.models():
            if info.full_name == wanted:
                return info
        raise _HTTPError(404, f'model "{name}" not found, try pulling it first')

    # -- Ollama routes ----------------------------------------------------------------------------------------------

    def _root(self, body: Mapping[str, Any]) -> None:
        self._send_text(200, "Ollama is running")

    def _version(self, body: Mapping[str, Any]) -> None:
        self._send_json(200, {"version": OLLAMA_VERSION})

    def _tags(self, body: Mapping[str, Any]) -> None:
        models = [
            {
                "name": m.full_name,
                "model": m.full_name,
                "modified_at": m.modified_at,
                "size": m.size,
                "digest": m.digest,
                "details": m.details(),
            }
            for m in self.server.backend.models()
        ]
        self._send_json(200, {"models": models})

    def _ps(self, body: Mapping[str, Any]) -> None:
        self._send_json(200, {"models": []})

    def _show(self, body: Mapping[str, Any]) -> None:
        m = self._model(body)
        model_info: dict[str, Any] = {"general.architecture": m.family} if m.family else {}
        if m.context_length is not None and m.family:
            model_info[f"{m.family}.context_length"] = m.context_length
        shown: dict[str, Any] = {
            "modelfile": m.modelfile,
            "parameters": m.parameters,
            "template": m.template,
            "details": m.details(),
            "model_info": model_info,
            "capabilities": ["completion"],
            "modified_at": m.modified_at,
        }
        if m.system:
            shown["system"] = m.system
        self._send_json(200, shown)

    def _chat(self, body: Mapping[str, Any]) -> None:
        model = self._model(body)
        raw_messages = body.get("messages") or []
        if not isinstance(raw_messages, list):
            raise _HTTPError(400, "messages must be an array")
        messages = tuple(_message(m) for m in raw_messages)
        self._answer(body, model, messages, "/api/chat")

    def _generate(self, body: Mapping[str, Any]) -> None:
        model = self._model(body)
        messages: list[ChatMessage] = []
        if isinstance(body.get("system"), str) and body["system"]:
            messages.append(ChatMessage("system", body["system"]))
        if isinstance(body.get("prompt"), str) and body["prompt"]:
            messages.append(ChatMessage("user", body["prompt"]))
        if not messages or messages[-1].role != "user":
            messages = []  # no prompt: Ollama just loads the model
        self._answer(body, model, tuple(messages), "/api/generate")

    def _answer(self, body: Mapping[str, Any], model: ModelInfo, messages: tuple[ChatMessage, ...], route: str) -> None:
        name = str(body["model"])
        is_chat = route == "/api/chat"
        if not messages:
            loaded: dict[str, Any] = {"model": name, "created_at": _now()}
            loaded.update({"message": {"role": "assistant", "content": ""}} if is_chat else {"response": ""})
            self._send_json(200, {**loaded, "done_reason": "load", "done": True})
            return
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        request = ChatRequest(name, messages, options or {}, body.get("format"), route, body)
        result = self.server.backend.chat(request)

        def part(text: str) -> dict[str, Any]:
            head: dict[str, Any] = {"model": name, "created_at": _now()}
            head.update({"message": {"role": "assistant", "content": text}} if is_chat else {"response": text})
            return head

        final = {
            "done_reason": result.done_reason,
            "done": True,
            "total_duration": result.total_duration,
            "load_duration": result.load_duration,
            "prompt_eval_count": result.prompt_eval_count,
            "prompt_eval_duration": result.prompt_eval_duration,
            "eval_count": result.eval_count,
            "eval_duration": result.eval_duration,
        }
        if body.get("stream", True) is False:
            self._send_json(200, {**part(result.text), **final})
            return

        def lines() -> Iterator[bytes]:
            for piece in split_stream_chunks(result.text):
                yield json.dumps({**part(piece), "done": False}).encode() + b"\n"
            yield json.dumps({**part(""), **final}).encode() + b"\n"

        self._send_stream("application/x-ndjson", lines())

    # -- OpenAI-compatible routes -----------------------------------------------------------------------------------

    def _openai_models(self, body: Mapping[str, Any]) -> None:
        data = [
            {"id": m.full_name, "object": "model", "created": 1735689600, "owned_by": "library"}
            for m in self.server.backend.models()
        ]
        self._send_json(200, {"object": "list", "data": data})

    def _openai_chat(self, body: Mapping[str, Any]) -> None:
        try:
            self._model(body)
        except _HTTPError as exc:  # OpenAI clients expect the OpenAI error envelope
            kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
            self._send_json(exc.status, {"error": {"message": exc.message, "type": kind, "param": None, "code": None}})
            return
        messages = tuple(_message(m) for m in body.get("messages") or [])
        options = {key: body[src] for src, key in _OPENAI_OPTIONS.items() if body.get(src) is not None}
        route = "/v1/chat/completions"
        request = ChatRequest(str(body["model"]), messages, options, body.get("response_format"), route, body)
        try:
            result = self.server.backend.chat(request)
        except BackendError as exc:
            error = {"message": exc.message, "type": "api_error", "param": None, "code": None}
            self._send_json(exc.status, {"error": error})
            return
        ident = f"chatcmpl-{next(self.server.completion_ids)}"
        created = int(time.time())
        finish = "length" if result.done_reason == "length" else "stop"
        usage = {
            "prompt_tokens": result.prompt_eval_count,
            "completion_tokens": result.eval_count,
            "total_tokens": result.prompt_eval_count + result.eval_count,
        }
        name = str(body["model"])
        if not body.get("stream"):
            self._send_json(
                200,
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": name,
                    "system_fingerprint": "fp_ollama",
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": result.text}, "finish_reason": finish}
                    ],
                    "usage": usage,
                },
            )
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": name,
                "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            }

        def events() -> Iterator[bytes]:
            for piece in split_stream_chunks(result.text):
                yield b"data: " + json.dumps(chunk({"role": "assistant", "content": piece}, None)).encode() + b"\n\n"
            yield b"data: " + json.dumps(chunk({"role": "assistant", "content": ""}, finish)).encode() + b"\n\n"
            if include_usage:
                tail = {**chunk({}, None), "choices": [], "usage": usage}
                yield b"data: " + json.dumps(tail).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        self._send_stream("text/event-stream", events())


def _message(value: Any) -> ChatMessage:
    """A chat message; OpenAI-style content part lists are joined into their text."""
    if not isinstance(value, dict):
        raise _HTTPError(400, "each message must be an object with role and content")
    content = value.get("content") or ""
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ChatMessage(role=str(value.get("role", "")), content=str(content))


class OllamaAPIServer:
    """The front running in a daemon thread; ``url`` is what ``OLLAMA_HOST`` should be set to.

    Port 0 (the default) picks a free port, so parallel test workers never collide.
    """

    def __init__(self, backend: Backend, host: str = "127.0.0.1", port: int = 0) -> None:
        self.backend = backend
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the Ollama API server is not running; call start() or use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> OllamaAPIServer:
        if self._server is None:
            self._server = _Server(self._address, self.backend)
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="ollama-api", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(5)

    def __enter__(self) -> OllamaAPIServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
