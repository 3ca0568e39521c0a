"""The OpenAI-compatible routes Ollama also serves: ``/v1/chat/completions`` (streaming and not) and ``/v1/models``.

Apps that use the OpenAI SDK (or an OpenAI-flavoured instrumentation) point it at Ollama's ``/v1``; the request is
translated into the same ``ChatRequest`` as ``/api/chat`` (OpenAI's field names become Ollama's options), and errors
come back in OpenAI's envelope, which is what the SDK parses into ``NotFoundError``, ``BadRequestError``, ...
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

from pytest_llmtrace.modelapi.backend import ChatRequest
from pytest_llmtrace.modelapi.framing import HTTPError
from pytest_llmtrace.modelapi.ollama_routes import chat_message, find_model, split_stream_chunks
from pytest_llmtrace.modelapi.stream_log import AnswerTiming
from pytest_llmtrace.modelapi.transport import RequestHandler, Route

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

_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error"}


def openai_error(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error envelope, with the ``type`` its SDK expects for the status."""
    kind = _ERROR_TYPES.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _models(request: RequestHandler, body: dict[str, Any]) -> None:
    data = [
        {"id": m.full_name, "object": "model", "created": 1735689600, "owned_by": "library"}
        for m in request.backend.models()
    ]
    request.send_json(200, {"object": "list", "data": data})


def _chat_completions(request: RequestHandler, body: dict[str, Any]) -> None:
    find_model(request, body)
    raw_messages = body.get("messages") or []
    if not isinstance(raw_messages, list):
        raise HTTPError(400, "messages must be an array")
    messages = tuple(chat_message(m) for m in raw_messages)
    options = {key: body[src] for src, key in _OPENAI_OPTIONS.items() if body.get(src) is not None}
    name = str(body.get("model") or body.get("name"))
    route = "/v1/chat/completions"
    timing = AnswerTiming(time.time_ns())
    result = request.backend.chat(ChatRequest(name, messages, options, body.get("response_format"), route, body))
    ident = f"chatcmpl-{next(request.server.request_ids)}"
    created = int(time.time())
    finish = "length" if result.done_reason == "length" else "stop"
    usage = {
        "prompt_tokens": result.prompt_eval_count,
        "completion_tokens": result.eval_count,
        "total_tokens": result.prompt_eval_count + result.eval_count,
    }

    def head(kind: str) -> dict[str, Any]:
        return {"id": ident, "object": kind, "created": created, "model": name, "system_fingerprint": "fp_ollama"}

    if not body.get("stream"):
        timing.chunk(result.text)
        request.server.stream_log.add(timing.done(result, name, streamed=False))
        choice = {"index": 0, "message": {"role": "assistant", "content": result.text}, "finish_reason": finish}
        request.send_json(200, {**head("chat.completion"), "choices": [choice], "usage": usage})
        return
    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, Mapping) and bool(stream_options.get("include_usage"))

    def chunk(delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": reason}
        return {**head("chat.completion.chunk"), "choices": [choice]}

    def events() -> Iterator[bytes]:
        for piece in split_stream_chunks(result.text):
            yield _event(chunk({"role": "assistant", "content": piece}, None))
            timing.chunk(piece)
        request.server.stream_log.add(timing.done(result, name, streamed=True))  # before the app has it all
        yield _event(chunk({"role": "assistant", "content": ""}, finish))
        if include_usage:
            yield _event({**chunk({}, None), "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"

    request.send_stream("text/event-stream", events())


def _event(value: Any) -> bytes:
    """One server-sent event."""
    return b"data: " + json.dumps(value).encode() + b"\n\n"


ROUTES: Mapping[tuple[str, str], Route] = {
    ("GET", "/v1/models"): Route(_models, error_body=openai_error),
    ("POST", "/v1/chat/completions"): Route(_chat_completions, json_body=True, error_body=openai_error),
}
