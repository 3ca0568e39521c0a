"""What the HTTP front and the stand-in models say to each other: a request, an answer, a model, a refusal.

The front turns every route (``/api/chat``, ``/api/generate``, ``/v1/chat/completions``) into one ``ChatRequest`` and
every ``ChatResult`` back into that route's wire shape, so a backend (scripted answers, recorded traces, llama.cpp)
implements "what does the model say to these messages" once, through the ``ModelBackend`` protocol.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pytest_llmtrace.core.errors import LLMTraceError
from pytest_llmtrace.trace.views import Message


class BackendError(LLMTraceError):
    """A backend refusing a request; the front answers ``status`` with ``{"error": message}`` like Ollama does.

    The ``ollama`` client raises it as ``ollama.ResponseError`` carrying ``message`` and ``status``, so the app under
    test sees the same failure a real server would give it.
    """

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


def normalize_model_name(name: str) -> str:
    """``qwen-sql-prod`` and ``qwen-sql-prod:latest`` are the same model to Ollama."""
    name = name.strip()
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


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


@dataclass(frozen=True)
class ChatRequest:
    """One model call, whichever route it came in by: /api/generate is turned into system + user messages.

    The messages are the trace model's ``Message``, the same thing a recorded LLM span holds, so replay compares
    like with like. ``body`` keeps the original JSON, for backends that match on more than the messages (tools,
    format, images).
    """

    model: str
    messages: tuple[Message, ...]
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
    # A replayed answer's recorded stream: TTFT and each chunk's time from the request's start (ns); what the front's
    # timing counts for it instead of the instant replay (``stream_log``).
    recorded_ttft_ns: int | None = None
    recorded_offsets_ns: tuple[int, ...] = ()


class ModelBackend(Protocol):
    """What answers behind the front. Called from server threads: implementations must be thread-safe.

    ``chat`` raises ``BackendError`` to refuse a request with an HTTP status the app's client will see.
    """

    def models(self) -> Sequence[ModelInfo]: ...

    def chat(self, request: ChatRequest) -> ChatResult: ...
