"""A backend that answers from a recorded trace: the app under test replays a golden trace without any model.

A golden trace holds every LLM call the app made: the messages it sent, the answer, the token counts and how long
the call took. Serving those answers over the Ollama API lets the app run its real code (client, parsing, SQL,
instrumentation) deterministically and offline; what the regression test then learns is whether the app still asks
the model the same things.

Matching: each request is answered by the first recorded call, in recording order, that is not used yet and that
agrees with the request under every configured matcher (``MATCHERS``). A recording answers once: an app that now
asks twice what it asked once gets a miss the second time, and a call it no longer makes shows up in ``unused()``.
Text is compared after collapsing whitespace runs and stripping, so re-indenting a prompt is not a change.

A request that matches nothing is refused with HTTP 400, not 404: some apps treat a 404 from Ollama as "model not
pulled" and start a pull. The refusal is remembered in ``misses`` with a diff against the nearest recording, because
"prompt changed" is only actionable when the test report shows what changed.

Counters: ``prompt_eval_count`` and ``eval_count`` are the recorded token counts (0 when the recording has none);
``total_duration`` is the recorded LLM span's duration, which is what the app observed; ``load_duration`` is 0.
``total_duration`` is split between ``prompt_eval_duration`` and ``eval_duration`` in proportion to the token counts
with each generated token weighted ``EVAL_TOKEN_WEIGHT`` times a prompt token: generating a token costs a forward
pass of its own while prompt tokens are evaluated in batches (about 3x on a small CPU model, 20x and more on a GPU).
The split is an estimate; the total is the recording.
"""

from __future__ import annotations

import difflib
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pytest_llmtrace.ollama_api.server import (
    BackendError,
    ChatMessage,
    ChatRequest,
    ChatResult,
    ModelInfo,
    OllamaAPIServer,
    normalize_model_name,
)
from pytest_llmtrace.trace.model import LLMCall, Message, Trace

__all__ = [
    "EVAL_TOKEN_WEIGHT",
    "MATCHERS",
    "MISS_STATUS",
    "Candidate",
    "Miss",
    "ReplayBackend",
    "ReplayServer",
    "format_prompt_diff",
    "replay_server",
]

EVAL_TOKEN_WEIGHT = 10
MISS_STATUS = 400
MAX_CANDIDATES = 3
SHORTLIST = 10  # distinct recorded prompts that get the exact (slow) similarity on a miss

Speed = Literal["recorded", "instant"]


def _text(value: str) -> str:
    return re.sub(r"\s+", " ", value).strip()


def _messages_key(messages: Sequence[Message]) -> tuple[tuple[str, str], ...]:
    return tuple((m.role.strip().lower(), _text(m.content)) for m in messages)


def _last_user_key(messages: Sequence[Message]) -> str:
    return next((_text(m.content) for m in reversed(messages) if m.role.strip().lower() == "user"), "")


def _system_key(messages: Sequence[Message]) -> tuple[str, ...]:
    return tuple(_text(m.content) for m in messages if m.role.strip().lower() == "system")


# Matcher name -> (key of a request, key of a recorded call under its served model name). Equal keys match.
_Key = Callable[[str, Sequence[Message]], object]
MATCHERS: Mapping[str, _Key] = {
    "model": lambda model, messages: normalize_model_name(model),
    "messages": lambda model, messages: _messages_key(messages),
    "last_user_message": lambda model, messages: _last_user_key(messages),
    "system": lambda model, messages: _system_key(messages),
}


def _render_prompt(messages: Sequence[Message]) -> list[str]:
    """One block per message: a ``[role]`` header line, then the content's lines, blocks separated by a blank line."""
    lines: list[str] = []
    for i, message in enumerate(messages):
        if i:
            lines.append("")
        lines.append(f"[{message.role}]")
        lines.extend(message.content.split("\n"))
    return lines


def _prompt_text(messages: Sequence[Message]) -> str:
    return "\n".join(_render_prompt(messages))


def format_prompt_diff(recorded: Sequence[Message], new: Sequence[Message]) -> str:
    """A unified diff from the recorded prompt to the new one; empty when they are the same text.

    Lines are kept whole however long: a changed schema line is only recognisable in full.
    """
    diff = difflib.unified_diff(
        _render_prompt(recorded), _render_prompt(new), "recorded prompt", "new prompt", lineterm=""
    )
    return "\n".join(diff)


def _rank(recorded: Sequence[str], new: str) -> dict[str, float]:
    """Similarity (difflib ratio, 0..1) of ``new`` to the most similar distinct ``recorded`` prompts.

    The exact character-level ratio costs about 10 ms for two 1.3 kB prompts, too much to run against every call of
    a long trace on every miss; a line-level ratio and ``quick_ratio`` (both well under a millisecond) shortlist the
    prompts that get it. Junk detection is off for the exact ratio: on text over 200 characters it leaves every
    character making up more than 1% of the text (all the common letters) out of the matching.
    """
    distinct = list(dict.fromkeys(recorded))
    by_lines = difflib.SequenceMatcher(None, [], new.split("\n"), autojunk=False)
    by_chars = difflib.SequenceMatcher(None, "", new, autojunk=False)

    def cheap(text: str) -> tuple[float, float]:
        by_lines.set_seq1(text.split("\n"))
        by_chars.set_seq1(text)
        return by_lines.ratio(), by_chars.quick_ratio()

    shortlist = sorted(distinct, key=cheap, reverse=True)[:SHORTLIST]
    exact: dict[str, float] = {}
    for text in shortlist:
        by_chars.set_seq1(text)
        exact[text] = by_chars.ratio()
    return exact


@dataclass(frozen=True)
class Candidate:
    """A recorded call that came close to a request that matched nothing."""

    index: int  # position among the recorded calls, from 0
    call: LLMCall
    similarity: float  # difflib ratio of the rendered prompts, 0..1
    used: bool  # already answered an earlier request
    differs_in: tuple[str, ...]  # the configured matchers this call fails

    def describe(self) -> str:
        why = f"differs in {', '.join(self.differs_in)}" if self.differs_in else "already used"
        if self.used and self.differs_in:
            why += ", already used"
        return f"recorded call #{self.index} {self.call.span.name!r} (similarity {self.similarity:.2f}, {why})"


@dataclass(frozen=True)
class Miss:
    """A request no recorded call answered, with what the test report needs to show why."""

    model: str
    messages: tuple[ChatMessage, ...]
    route: str
    candidates: tuple[Candidate, ...]  # the nearest recorded calls, most similar first (at most 3)
    diff: str  # format_prompt_diff(nearest recorded prompt, this request's prompt); "" if there is no recording

    @property
    def nearest(self) -> LLMCall | None:
        return self.candidates[0].call if self.candidates else None

    def explain(self) -> str:
        """Several lines for a test failure: the request, the nearest recordings and the prompt diff."""
        lines = [f"no recorded LLM call matches the request to {self.model!r} on {self.route}"]
        if self.candidates:
            lines.append("nearest recordings:")
            lines.extend("  " + c.describe() for c in self.candidates)
        else:
            lines.append("the recording has no LLM calls")
        if self.diff:
            lines.extend(["prompt diff (recorded -> new):", self.diff])
        elif self.candidates:
            lines.append("the prompt is the same as the nearest recording's")
        return "\n".join(lines)


class ReplayBackend:
    """Answers each request with a recorded LLM call's answer; see the module docstring for the rules.

    ``model`` overrides the recorded model names, for replaying against an app configured with another model name
    (and for recordings whose spans lack ``llm.model_name``). ``match`` names the ``MATCHERS`` a request must pass;
    an empty ``match`` replays the calls in recorded order whatever is asked. ``speed="recorded"`` holds each answer
    until the recorded duration has passed, so timeouts and latency checks see production-like timing;
    ``"instant"`` answers at once.
    """

    def __init__(
        self,
        recorded: Sequence[LLMCall] | Trace,
        *,
        model: str | None = None,
        match: Sequence[str] = ("model", "messages"),
        speed: Speed = "recorded",
    ) -> None:
        unknown = [name for name in match if name not in MATCHERS]
        if unknown:
            raise ValueError(
                f"unknown replay matcher {', '.join(map(repr, unknown))}; valid matchers: {', '.join(sorted(MATCHERS))}"
            )
        if speed not in ("recorded", "instant"):
            raise ValueError(f"unknown replay speed {speed!r}; valid speeds: 'instant', 'recorded'")
        calls = recorded.llm_calls if isinstance(recorded, Trace) else tuple(recorded)
        names: list[str] = []
        for i, call in enumerate(calls):
            name = model or call.model
            if not name:
                raise ValueError(
                    f"recorded LLM call #{i} {call.span.name!r} has no llm.model_name; pass model= to name it"
                )
            names.append(normalize_model_name(name))
        self.calls: tuple[LLMCall, ...] = calls
        self.match: tuple[str, ...] = tuple(dict.fromkeys(match))
        self.speed: Speed = speed
        self._names = tuple(names)
        self._keys = tuple(
            {m: MATCHERS[m](name, call.input_messages) for m in self.match}
            for name, call in zip(names, calls, strict=True)
        )
        self._models = tuple(ModelInfo(name) for name in dict.fromkeys(names))
        self._prompts = tuple(_prompt_text(call.input_messages) for call in calls)
        self._used = [False] * len(calls)
        self._misses: list[Miss] = []
        self._lock = threading.Lock()

    @property
    def misses(self) -> list[Miss]:
        """The requests that matched no recording, in the order they were refused (a copy: the server may add more)."""
        with self._lock:
            return list(self._misses)

    def unused(self) -> list[LLMCall]:
        """The recorded calls no request has used, in recorded order: calls the app no longer makes."""
        with self._lock:
            return [call for call, used in zip(self.calls, self._used, strict=True) if not used]

    def models(self) -> Sequence[ModelInfo]:
        return self._models

    def chat(self, request: ChatRequest) -> ChatResult:
        started = time.monotonic()
        keys = {m: MATCHERS[m](request.model, request.messages) for m in self.match}
        with self._lock:
            index = next((i for i, used in enumerate(self._used) if not used and self._keys[i] == keys), None)
            if index is not None:
                self._used[index] = True
            used = tuple(self._used)
        if index is None:
            miss = self._miss(request, keys, used)  # outside the lock: ranking is slow and other calls must go on
            with self._lock:
                self._misses.append(miss)
            hint = f"; nearest: {miss.candidates[0].describe()}" if miss.candidates else "; the recording has none"
            raise BackendError(MISS_STATUS, f"no recorded LLM call matches this request (prompt changed?){hint}")
        result = self._result(self.calls[index])
        if self.speed == "recorded":
            remaining = result.total_duration / 1e9 - (time.monotonic() - started)
            if remaining > 0:
                time.sleep(remaining)  # outside the lock: concurrent calls overlap as they did when recorded
        return result

    def _miss(self, request: ChatRequest, keys: Mapping[str, object], used: Sequence[bool]) -> Miss:
        similarity = _rank(self._prompts, _prompt_text(request.messages))
        ranked = sorted(
            (
                Candidate(
                    index=i,
                    call=call,
                    similarity=similarity[self._prompts[i]],
                    used=used[i],
                    differs_in=tuple(m for m in self.match if self._keys[i][m] != keys[m]),
                )
                for i, call in enumerate(self.calls)
                if self._prompts[i] in similarity
            ),
            # most similar first; on a tie an unused call, which is what the request would have wanted
            key=lambda c: (-c.similarity, c.used, c.index),
        )[:MAX_CANDIDATES]
        diff = format_prompt_diff(ranked[0].call.input_messages, request.messages) if ranked else ""
        return Miss(request.model, request.messages, request.route, tuple(ranked), diff)

    @staticmethod
    def _result(call: LLMCall) -> ChatResult:
        prompt = call.prompt_tokens or 0
        completion = call.completion_tokens or 0
        total = call.span.duration_ns
        weight = prompt + EVAL_TOKEN_WEIGHT * completion
        prompt_ns = total * prompt // weight if weight else 0
        return ChatResult(
            text=call.output_text,
            prompt_eval_count=prompt,
            eval_count=completion,
            total_duration=total,
            load_duration=0,
            prompt_eval_duration=prompt_ns,
            eval_duration=total - prompt_ns,
        )


class ReplayServer(OllamaAPIServer):
    """A server whose backend is known to be a ``ReplayBackend``, so ``server.backend.misses`` type-checks."""

    backend: ReplayBackend

    def __init__(self, backend: ReplayBackend, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(backend, host, port)

    def __enter__(self) -> ReplayServer:
        self.start()
        return self


def replay_server(
    recorded: Sequence[LLMCall] | Trace,
    *,
    model: str | None = None,
    match: Sequence[str] = ("model", "messages"),
    speed: Speed = "recorded",
    host: str = "127.0.0.1",
    port: int = 0,
) -> ReplayServer:
    """An unstarted server replaying ``recorded``: ``with replay_server(trace) as server:`` starts and stops it.

    Its ``backend`` is the ``ReplayBackend``, for reading ``misses`` and ``unused()`` after the app ran.
    """
    return ReplayServer(ReplayBackend(recorded, model=model, match=match, speed=speed), host=host, port=port)
