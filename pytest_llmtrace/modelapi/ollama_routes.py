"""Ollama's own routes: ``/api/chat``, ``/api/generate`` (streaming and not), ``/api/tags``, ``/api/show``, the rest.

The wire format is copied from real Ollama (key names, key order, NDJSON streaming, ns durations, ``{"error": ...}``
bodies), because apps parse it with whatever client they ship and a shape their client cannot read would fail the
app, not the test. Both chat routes become one ``ChatRequest`` for the backend.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

from pytest_llmtrace.modelapi.backend import ChatRequest, ChatResult, ModelInfo, normalize_model_name
from pytest_llmtrace.modelapi.framing import HTTPError
from pytest_llmtrace.modelapi.stream_log import AnswerTiming, stream_answer
from pytest_llmtrace.modelapi.transport import RequestHandler, Route
from pytest_llmtrace.trace.views import Message

# What /api/version reports: a recent release, so clients that gate features on the version enable them.
OLLAMA_VERSION = "0.12.6"


def split_stream_chunks(text: str) -> list[str]:
    """Word-sized pieces (each with the whitespace before it) that join back to ``text`` exactly.

    Real Ollama streams one token per message; words are close enough for clients that reassemble the text.
    """
    return re.findall(r"\s*\S+|\s+$", text)


def chat_message(value: Any) -> Message:
    """A chat message from a request; OpenAI-style content part lists are joined into their text."""
    if not isinstance(value, dict):
        raise HTTPError(400, "each message must be an object with role and content")
    content = value.get("content") or ""
    if isinstance(content, list):
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return Message(role=str(value.get("role", "")), content=str(content))


def find_model(request: RequestHandler, body: Mapping[str, Any]) -> ModelInfo:
    """The backend's model the body names (``model``, or ``name`` as older clients send), with Ollama's 404."""
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        raise HTTPError(400, "model is required")
    wanted = normalize_model_name(name)
    for info in request.backend.models():
        if info.full_name == wanted:
            return info
    raise HTTPError(404, f'model "{name}" not found, try pulling it first')


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _root(request: RequestHandler, body: dict[str, Any]) -> None:
    request.send_text(200, "Ollama is running")


def _version(request: RequestHandler, body: dict[str, Any]) -> None:
    request.send_json(200, {"version": OLLAMA_VERSION})


def _tags(request: RequestHandler, body: dict[str, Any]) -> None:
    models = [
        {
            "name": m.full_name,
            "model": m.full_name,
            "modified_at": m.modified_at,
            "size": m.size,
            "digest": m.digest,
            "details": m.details(),
        }
        for m in request.backend.models()
    ]
    request.send_json(200, {"models": models})


def _ps(request: RequestHandler, body: dict[str, Any]) -> None:
    request.send_json(200, {"models": []})


def _show(request: RequestHandler, body: dict[str, Any]) -> None:
    m = find_model(request, body)
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
    request.send_json(200, shown)


def _chat(request: RequestHandler, body: dict[str, Any]) -> None:
    find_model(request, body)
    raw_messages = body.get("messages") or []
    if not isinstance(raw_messages, list):
        raise HTTPError(400, "messages must be an array")
    _answer(request, body, tuple(chat_message(m) for m in raw_messages), "/api/chat")


def _generate(request: RequestHandler, body: dict[str, Any]) -> None:
    find_model(request, body)
    messages: list[Message] = []
    if isinstance(body.get("system"), str) and body["system"]:
        messages.append(Message("system", body["system"]))
    if isinstance(body.get("prompt"), str) and body["prompt"]:
        messages.append(Message("user", body["prompt"]))
    if not messages or messages[-1].role != "user":
        messages = []  # no prompt: Ollama just loads the model
    _answer(request, body, tuple(messages), "/api/generate")


def _answer(request: RequestHandler, body: Mapping[str, Any], messages: tuple[Message, ...], route: str) -> None:
    name = str(body["model"] if body.get("model") else body.get("name"))
    is_chat = route == "/api/chat"

    def part(text: str) -> dict[str, Any]:
        head: dict[str, Any] = {"model": name, "created_at": _now()}
        head.update({"message": {"role": "assistant", "content": text}} if is_chat else {"response": text})
        return head

    if not messages:
        request.send_json(200, {**part(""), "done_reason": "load", "done": True})
        return
    options = body.get("options") if isinstance(body.get("options"), dict) else {}
    chat_request = ChatRequest(name, messages, options or {}, body.get("format"), route, body)
    received = time.time_ns()
    timing = AnswerTiming(received)

    def final(result: ChatResult) -> dict[str, Any]:
        return {
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
        result = request.backend.chat(chat_request)
        timing.chunk(result.text)
        # noted before the answer leaves: the app may read its spans the moment it has the answer
        request.server.stream_log.add(timing.done(result, name, streamed=False))
        request.send_json(200, {**part(result.text), **final(result)})
        return

    answer = stream_answer(request.backend, chat_request)
    head = next(answer)  # before the 200 goes out: a refusal (a replay miss) is still an error response

    def lines() -> Iterator[bytes]:
        for item in itertools.chain([head], answer):
            if isinstance(item, ChatResult):
                if not timing.pieces:  # a whole answer: cut into word-sized chunks, as a stream looks
                    for piece in split_stream_chunks(item.text):
                        yield _json_line({**part(piece), "done": False})
                        timing.chunk(piece)
                request.server.stream_log.add(timing.done(item, name, streamed=True))  # before the app has it all
                yield _json_line({**part(""), **final(item)})
                return
            yield _json_line({**part(item), "done": False})
            timing.chunk(item)

    request.send_stream("application/x-ndjson", lines())


def _json_line(value: Any) -> bytes:
    """One NDJSON line."""
    return json.dumps(value).encode() + b"\n"


ROUTES: Mapping[tuple[str, str], Route] = {
    ("GET", "/"): Route(_root),
    ("HEAD", "/"): Route(_root),
    ("GET", "/api/tags"): Route(_tags),
    ("GET", "/api/version"): Route(_version),
    ("GET", "/api/ps"): Route(_ps),
    ("POST", "/api/show"): Route(_show, json_body=True),
    ("POST", "/api/chat"): Route(_chat, json_body=True),
    ("POST", "/api/generate"): Route(_generate, json_body=True),
}
