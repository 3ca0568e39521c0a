"""An Ollama-compatible HTTP API in front of stand-in models (scripted, replayed, or llama.cpp)."""

from __future__ import annotations

from pytest_llmtrace.ollama_api.server import (
    Backend,
    BackendError,
    ChatMessage,
    ChatRequest,
    ChatResult,
    ModelInfo,
    OllamaAPIServer,
)

__all__ = ["Backend", "BackendError", "ChatMessage", "ChatRequest", "ChatResult", "ModelInfo", "OllamaAPIServer"]
