"""Reading a real Ollama's answers as they pass: which chunk carries the first token, and the counts at the end.

The timing proxy (``timing_proxy``) relays a real Ollama's bytes untouched and only watches them: Ollama streams
NDJSON on ``/api/*`` (one JSON object a line) and SSE on ``/v1/*`` (``data: {...}`` lines, ``data: [DONE]`` last).
A chunk counts as a token only when it carries content, reasoning or a tool call; the role-only first chunk an
OpenAI-style stream opens with, and Ollama's empty ``done`` chunk, do not, so TTFT is not flattered by them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from pytest_llmtrace.trace.stream_timing import FrontTiming

TIMED_PATHS = frozenset({"/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions"})
MAX_LINE_BYTES = 16 * 1024 * 1024  # a line longer than this is not parsed (still relayed): a broken stream, not ours


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def carries_token(payload: Any) -> bool:
    """Whether one streamed object (or a whole answer) holds model output: content, reasoning or a tool call."""
    if not isinstance(payload, dict):
        return False
    message = payload.get("message")
    if isinstance(message, dict) and _carries_message(message):  # /api/chat
        return True
    if _text(payload.get("response")) or _text(payload.get("thinking")):  # /api/generate
        return True
    choices = payload.get("choices")
    if isinstance(choices, list):  # /v1: a delta when streamed, a message when not; text on /v1/completions
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            for key in ("delta", "message"):
                part = choice.get(key)
                if isinstance(part, dict) and _carries_message(part):
                    return True
            if _text(choice.get("text")):
                return True
    return False


def _carries_message(message: dict[str, Any]) -> bool:
    return any(_text(message.get(k)) for k in ("content", "thinking", "reasoning", "reasoning_content")) or bool(
        message.get("tool_calls")
    )


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass
class AnswerWatch:
    """One proxied answer: when each token-carrying chunk arrived from Ollama, and what its last object says.

    ``feed`` takes the bytes as they arrive (lines may span reads); ``timing`` makes the ``FrontTiming`` the checks
    read for the llama.cpp front too.
    """

    received_ns: int
    streamed: bool
    sse: bool
    chunk_ns: list[int] = field(default_factory=list)
    model: str = ""
    eval_count: int | None = None
    server_ttft_ns: int | None = None  # Ollama's load_duration + prompt_eval_duration
    _pending: bytes = b""

    def feed(self, data: bytes, at_ns: int | None = None) -> None:
        """Lines completed by ``data``, read at ``at_ns`` (now by default)."""
        at = time.time_ns() if at_ns is None else at_ns
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > MAX_LINE_BYTES:
            self._pending = b""
        for line in lines:
            self._line(line, at)

    def _line(self, raw: bytes, at_ns: int) -> None:
        line = raw.strip()
        if self.sse:
            if not line.startswith(b"data:"):
                return
            line = line[5:].strip()
            if line == b"[DONE]":
                return
        if not line:
            return
        try:
            payload = json.loads(line)
        except (ValueError, RecursionError):
            return
        self.observe(payload, at_ns)

    def observe(self, payload: Any, at_ns: int) -> None:
        """One object of the answer: a token's arrival when it carries one; the counts when it has them."""
        if not isinstance(payload, dict):
            return
        if carries_token(payload):
            self.chunk_ns.append(at_ns)
        if isinstance(payload.get("model"), str):
            self.model = payload["model"]
        usage = payload.get("usage")
        tokens = _count(payload.get("eval_count"))
        if tokens is None and isinstance(usage, dict):
            tokens = _count(usage.get("completion_tokens"))
        if tokens is not None:
            self.eval_count = tokens
        load, prompt = _count(payload.get("load_duration")), _count(payload.get("prompt_eval_duration"))
        if load is not None or prompt is not None:
            self.server_ttft_ns = (load or 0) + (prompt or 0)

    def timing(self, done_ns: int | None = None) -> FrontTiming:
        """The answer's ``FrontTiming``. Streamed: TTFT to the first token-carrying chunk. Whole: TTFT is the time
        to the full answer, unless Ollama's own durations (model load and prompt evaluation) say it came sooner."""
        self.feed(b"\n", done_ns)  # a last line without its newline
        done = time.time_ns() if done_ns is None else done_ns
        if self.streamed:
            first = self.chunk_ns[0] if self.chunk_ns else done
            chunks = tuple(self.chunk_ns)
        else:
            first = done
            if self.server_ttft_ns is not None and 0 < self.server_ttft_ns < done - self.received_ns:
                first = self.received_ns + self.server_ttft_ns
            chunks = ()
        tokens = self.eval_count if self.eval_count is not None else len(self.chunk_ns)
        return FrontTiming(
            received_ns=self.received_ns,
            first_ns=first,
            done_ns=done,
            chunk_ns=chunks,
            completion_tokens=tokens,
            streamed=self.streamed,
            model=self.model,
        )
