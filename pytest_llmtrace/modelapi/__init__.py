"""An Ollama-compatible HTTP API in front of stand-in models (scripted, replayed, or llama.cpp)."""

from __future__ import annotations

from pytest_llmtrace.modelapi.backend import (
    BackendError,
    ChatRequest,
    ChatResult,
    ModelBackend,
    ModelInfo,
    normalize_model_name,
)
from pytest_llmtrace.modelapi.server import OllamaAPIServer
from pytest_llmtrace.modelapi.timing_proxy import TimingProxy
from pytest_llmtrace.modelapi.transport import Limits

__all__ = [
    "BackendError",
    "ChatRequest",
    "ChatResult",
    "Limits",
    "ModelBackend",
    "ModelInfo",
    "OllamaAPIServer",
    "TimingProxy",
    "normalize_model_name",
]
