"""A backend that answers from a fixed question -> answer table: a model stand-in for recording reference traces.

There is no language model on CI machines, yet the golden traces should carry everything a real call carries
(messages, token counts, durations). The scripted backend gives fixed answers with counters derived from the text by
a documented rule, so re-recording produces the same numbers on any machine.

Counting rule (a rough stand-in for a tokenizer, about four characters per token as for English text and SQL):

- ``prompt_eval_count`` = sum over the request's messages of ``4 + ceil(len(content) / 4)`` (4 for the chat
  template's role markers);
- ``eval_count`` = ``max(1, ceil(len(answer) / 4))``.

Durations (ns) model a 1.5B model on a fast machine: load 5 ms, prompt 0.5 ms per token, generation 8 ms per token,
total the sum. With ``realtime=True`` the backend also takes that long to answer, streaming its pieces as a model
generates them (the first after the load and prompt time), so a recorded LLM span lasts what its reported durations
say and a recorded stream has a model's timing (how the golden traces are recorded); by default it answers at once,
for fast tests.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence

from pytest_llmtrace.core.errors import near_misses
from pytest_llmtrace.modelapi.backend import BackendError, ChatRequest, ChatResult, ModelInfo
from pytest_llmtrace.trace.views import Message

LOAD_NS = 5_000_000
PROMPT_NS_PER_TOKEN = 500_000
EVAL_NS_PER_TOKEN = 8_000_000


def normalize_question(text: str) -> str:
    """Case, surrounding whitespace, runs of spaces and trailing ``?.!`` do not change which answer is meant."""
    return re.sub(r"\s+", " ", text).strip().rstrip("?.! ").casefold()


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def prompt_tokens(messages: Sequence[Message]) -> int:
    return sum(4 + estimate_tokens(m.content) for m in messages)


class ScriptedBackend:
    """Answers the last user message of each request from ``answers`` (question -> answer text).

    An unknown question is a 404 naming the question and the closest scripted ones, because the usual cause is a
    question edited in one place and not the other.
    """

    def __init__(
        self, answers: Mapping[str, str], models: Sequence[ModelInfo] | str = "qwen-sql-prod", *, realtime: bool = False
    ) -> None:
        self.realtime = realtime
        self._answers = {normalize_question(q): a for q, a in answers.items()}
        self._questions = {normalize_question(q): q for q in answers}
        self._models = (ModelInfo(models),) if isinstance(models, str) else tuple(models)

    def models(self) -> Sequence[ModelInfo]:
        return self._models

    def chat(self, request: ChatRequest) -> ChatResult:
        return self.chat_stream(request, None)

    def chat_stream(self, request: ChatRequest, emit: Callable[[str], None] | None) -> ChatResult:
        """Answer as a model streams: with ``realtime``, the first piece after the load and prompt time, each next
        one after ``EVAL_NS_PER_TOKEN`` per token it holds; without it, all at once. ``emit`` gets each piece."""
        question = request.last_user_message
        key = normalize_question(question)
        if key not in self._answers:
            near = near_misses(key, self._answers, n=3, cutoff=0.5)
            hint = "; nearest scripted: " + ", ".join(repr(self._questions[k]) for k in near) if near else ""
            raise BackendError(404, f"no scripted answer for question {question!r}{hint}")
        text = self._answers[key]
        prompt = prompt_tokens(request.messages)
        completion = max(1, estimate_tokens(text))
        prompt_ns = prompt * PROMPT_NS_PER_TOKEN
        eval_ns = completion * EVAL_NS_PER_TOKEN
        if self.realtime:
            time.sleep((LOAD_NS + prompt_ns) / 1e9)
        pieces = split_pieces(text)
        spent = 0
        for i, piece in enumerate(pieces):
            # the generation time spread over the pieces by their length, the last one ending at eval_ns
            due = eval_ns * sum(len(p) for p in pieces[: i + 1]) // max(1, len(text))
            if self.realtime and due > spent:
                time.sleep((due - spent) / 1e9)
                spent = due
            if emit is not None:
                emit(piece)
        if self.realtime and eval_ns > spent:
            time.sleep((eval_ns - spent) / 1e9)
        return ChatResult(
            text=text,
            prompt_eval_count=prompt,
            eval_count=completion,
            total_duration=LOAD_NS + prompt_ns + eval_ns,
            load_duration=LOAD_NS,
            prompt_eval_duration=prompt_ns,
            eval_duration=eval_ns,
        )


def split_pieces(text: str) -> list[str]:
    """Word-sized pieces that join back to ``text`` (as the front's ``split_stream_chunks``)."""
    return re.findall(r"\s*\S+|\s+$", text) or [text]
