"""A backend that answers from a recorded trace: the app under test replays a golden trace without any model.

A golden trace holds every LLM call the app made: the messages it sent, the answer, the token counts and how long
the call took. Serving those answers over the Ollama API lets the app run its real code (client, parsing, SQL,
instrumentation) deterministically and offline; what the regression test then learns is whether the app still asks
the model the same things.

Matching: each request is answered by the first recorded call, in recording order, that is not used yet and that
agrees with the request under every configured matcher. A recording answers once: an app that now asks twice what
it asked once gets a miss the second time, and a call it no longer makes shows up in ``unused()``. The built-in
matchers (``model``, ``messages``, ``last_user_message``, ``system``) compare text after collapsing whitespace runs
and stripping, so re-indenting a prompt is not a change; more are added with ``register_matcher`` (see there).

A request that matches nothing is refused with HTTP 400, not 404: some apps treat a 404 from Ollama as "model not
pulled" and start a pull. The refusal is remembered in ``misses`` with a diff against the nearest recording, because
"prompt changed" is only actionable when the test report shows what changed.

Counters: ``prompt_eval_count`` and ``eval_count`` are the recorded token counts (0 when the recording has none);
``total_duration`` is the recorded LLM span's duration, which is what the app observed; ``load_duration`` is 0.
``total_duration`` is split between ``prompt_eval_duration`` and ``eval_duration`` in proportion to the token counts
with each generated token weighted ``EVAL_TOKEN_WEIGHT`` times a prompt token: generating a token costs a forward
pass of its own while prompt tokens are evaluated in batches (about 3x on a small CPU model, 20x and more on a GPU).
The split is an estimate; the total is the recording.

Streams: a recorded call that records its stream (a TTFT and chunk times, ``trace.stream_timing``) hands them to
the front with its answer, so the TTFT a replayed case is judged by is the recording's model time plus the app's own
path, measured now.

Time: with ``speed="virtual"`` (the default) an answer comes at once and the recorded duration is what the call
*counts*: every answer is noted in ``answers`` (when it was asked, when it was answered, what it stands for), and
``pytest_llmtrace.trace.virtual.virtualize`` puts the recorded time in place of the measured one in the trace the
checks read. ``speed="recorded"`` also holds each answer until the recorded duration has passed, for apps whose
behaviour depends on real waiting (their own timeouts, a spinner).
A recorded duration longer than ``max_recorded_s`` (the case deadline) counts as ``max_recorded_s``, with a
``ReplayDurationWarning``: a recording that says 10^9 s must neither hang the run nor hide behind a huge budget.
``cancel()`` (the case's deadline passed) ends any wait at once and refuses every later request with HTTP 503.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Literal

from pytest_llmtrace.core.errors import did_you_mean
from pytest_llmtrace.modelapi.backend import BackendError, ChatRequest, ChatResult, ModelInfo, normalize_model_name
from pytest_llmtrace.modelapi.replay_matchers import MATCHERS, Matcher, agrees, register_matcher
from pytest_llmtrace.modelapi.replay_misses import (
    MAX_CANDIDATES,
    Candidate,
    Miss,
    format_prompt_diff,
    prompt_text,
    rank_prompts,
)
from pytest_llmtrace.modelapi.server import OllamaAPIServer
from pytest_llmtrace.modelapi.transport import Limits
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.stream_timing import stream_timing
from pytest_llmtrace.trace.views import LLMCall
from pytest_llmtrace.trace.virtual import ReplayedAnswer

__all__ = [
    "DEFAULT_MAX_RECORDED_S",
    "EVAL_TOKEN_WEIGHT",
    "MATCHERS",
    "MISS_STATUS",
    "Matcher",
    "ReplayBackend",
    "ReplayDurationWarning",
    "ReplayServer",
    "Speed",
    "register_matcher",
    "replay_server",
]

EVAL_TOKEN_WEIGHT = 10
MISS_STATUS = 400

Speed = Literal["virtual", "recorded"]
SPEEDS: tuple[str, ...] = ("virtual", "recorded")
# The longest a recorded model call may count (and, at recorded speed, wait): golden cases pass their deadline
# (llmtrace_case_timeout_s); one minute elsewhere, longer than any budget a text-to-SQL request is held to.
DEFAULT_MAX_RECORDED_S = 60.0


class ReplayDurationWarning(UserWarning):
    """A recorded model call lasted longer than the case deadline; replay counts (and waits) only the deadline."""


class ReplayBackend:
    """Answers each request with a recorded LLM call's answer; see the module docstring for the rules.

    ``model`` overrides the recorded model names, for replaying against an app configured with another model name
    (and for recordings whose spans lack ``llm.model_name``). ``match`` names the registered matchers (see
    ``register_matcher``) a request must pass; an empty ``match`` replays the calls in recorded order whatever is
    asked. ``speed`` is ``virtual`` (answer at once; the recorded duration is counted, see ``answers``),
    or ``recorded`` (also wait that long). ``max_recorded_s`` caps what a
    recorded duration counts and waits (see the module docstring).
    """

    def __init__(
        self,
        recorded: Sequence[LLMCall] | Trace,
        *,
        model: str | None = None,
        match: Sequence[str] = ("model", "messages"),
        speed: Speed = "virtual",
        max_recorded_s: float = DEFAULT_MAX_RECORDED_S,
    ) -> None:
        for wanted in match:
            if wanted not in MATCHERS:
                hint = did_you_mean(wanted, MATCHERS)
                raise ValueError(
                    f"unknown replay matcher {wanted!r}{'; ' + hint if hint else ''}; valid matchers: "
                    f"{', '.join(sorted(MATCHERS))} (add one with pytest_llmtrace.modelapi.replay.register_matcher)"
                )
        if speed not in SPEEDS:
            hint = did_you_mean(str(speed), SPEEDS)
            raise ValueError(
                f"unknown replay speed {speed!r}{'; ' + hint if hint else ''}; valid speeds: {', '.join(SPEEDS)}"
            )
        if not max_recorded_s > 0:
            raise ValueError(f"max_recorded_s must be a positive number of seconds, got {max_recorded_s!r}")
        calls = recorded.llm_calls if isinstance(recorded, Trace) else tuple(recorded)
        names: list[str] = []
        for i, call in enumerate(calls):
            name = model or call.model
            if not name:
                raise ValueError(
                    f"recorded LLM call #{i} {call.span.name!r} has no model name (llm.model_name, "
                    "gen_ai.request.model); pass model= to name it"
                )
            names.append(normalize_model_name(name))
        self.calls: tuple[LLMCall, ...] = calls
        self.match: tuple[str, ...] = tuple(dict.fromkeys(match))
        self.speed: Speed = speed
        self.max_recorded_ns = int(max_recorded_s * 1e9)
        self._durations = tuple(
            self._capped(i, call, source=getattr(recorded, "source", None)) for i, call in enumerate(calls)
        )
        self._streams = tuple(stream_timing(call.span, call.completion_tokens) for call in calls)
        self._recorded = tuple(  # each call as the request it answered, for the matchers
            ChatRequest(name, call.input_messages, call.invocation_parameters, route="")
            for name, call in zip(names, calls, strict=True)
        )
        self._models = tuple(ModelInfo(name) for name in dict.fromkeys(names))
        self._prompts = tuple(prompt_text(call.input_messages) for call in calls)
        self._used = [False] * len(calls)
        self._misses: list[Miss] = []
        self._answers: list[ReplayedAnswer] = []
        self._lock = threading.Lock()
        self._cancelled = threading.Event()

    def _capped(self, index: int, call: LLMCall, source: str | None) -> int:
        """The call's recorded duration in ns, at most ``max_recorded_ns`` (with a warning when it was more)."""
        duration = call.span.duration_ns
        if duration <= self.max_recorded_ns:
            return duration
        where = f"{source}: " if source else ""
        warnings.warn(
            f"{where}recorded LLM call #{index} {call.span.name!r} lasted {duration / 1e9:g} s; replay counts it as "
            f"{self.max_recorded_ns / 1e9:g} s (the case deadline)",
            ReplayDurationWarning,
            stacklevel=3,
        )
        return self.max_recorded_ns

    @property
    def answers(self) -> list[ReplayedAnswer]:
        """Every request answered from the recording, in the order answered (a copy): the input of ``virtualize``."""
        with self._lock:
            return list(self._answers)

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

    def cancel(self) -> None:
        """End every wait now and refuse what comes after: the case ran past its deadline (any thread may call)."""
        self._cancelled.set()

    def chat(self, request: ChatRequest) -> ChatResult:
        received = time.time_ns()  # the clock OpenTelemetry stamps spans with: the app's span encloses this window
        if self._cancelled.is_set():
            raise BackendError(503, "replay cancelled: the case ran past its deadline")
        index = self._claim(request)
        if index is None:
            with self._lock:
                used = tuple(self._used)
            miss = self._miss(request, used)  # outside the lock: ranking is slow and other calls must go on
            with self._lock:
                self._misses.append(miss)
            hint = f"; nearest: {miss.candidates[0].describe()}" if miss.candidates else "; the recording has none"
            raise BackendError(MISS_STATUS, f"no recorded LLM call matches this request (prompt changed?){hint}")
        duration = self._durations[index]
        result = self._result(self.calls[index], duration)
        # The recorded stream's timing counts for the front's instant one (stream_log); a call recorded without one
        # had its first token when it had its answer, as far as anyone can tell: its whole recorded duration.
        stream = self._streams[index]
        result = dataclasses.replace(
            result,
            recorded_ttft_ns=duration if stream is None else min(duration, round(stream.ttft_ms * 1e6)),
            recorded_offsets_ns=()
            if stream is None
            else tuple(min(duration, round(o * 1e6)) for o in stream.chunk_offsets_ms),
        )
        if self.speed == "recorded":
            remaining = duration - (time.time_ns() - received)
            # outside the lock: concurrent calls overlap as they did when recorded; cancel() ends the wait
            if remaining > 0 and self._cancelled.wait(remaining / 1e9):
                raise BackendError(503, "replay cancelled: the case ran past its deadline")
        answer = ReplayedAnswer(received, time.time_ns(), duration, index, tuple(request.messages))
        with self._lock:
            self._answers.append(answer)
        return result

    def _claim(self, request: ChatRequest) -> int | None:
        """The first unused recorded call that every matcher accepts, marked used; ``None`` if there is none.

        Matchers run outside the lock (a user's matcher may be slow); only marking a call used is locked, and a call
        another thread took meanwhile is passed over. Calls never become unused again, so the first one found that
        is still free is the first free match.
        """
        with self._lock:
            used = tuple(self._used)
        for i, recorded in enumerate(self._recorded):
            if used[i] or not all(agrees(name, request, recorded) for name in self.match):
                continue
            with self._lock:
                if not self._used[i]:
                    self._used[i] = True
                    return i
        return None

    def _miss(self, request: ChatRequest, used: Sequence[bool]) -> Miss:
        similarity = rank_prompts(self._prompts, prompt_text(request.messages))
        nearest = sorted(
            (i for i in range(len(self.calls)) if self._prompts[i] in similarity),
            # most similar first; on a tie an unused call, which is what the request would have wanted
            key=lambda i: (-similarity[self._prompts[i]], used[i], i),
        )[:MAX_CANDIDATES]
        ranked = [
            Candidate(
                index=i,
                call=self.calls[i],
                similarity=similarity[self._prompts[i]],
                used=used[i],
                differs_in=tuple(m for m in self.match if not agrees(m, request, self._recorded[i])),
            )
            for i in nearest
        ]
        diff = format_prompt_diff(ranked[0].call.input_messages, request.messages) if ranked else ""
        return Miss(request.model, request.messages, request.route, tuple(ranked), diff)

    @staticmethod
    def _result(call: LLMCall, total: int) -> ChatResult:
        prompt = call.prompt_tokens or 0
        completion = call.completion_tokens or 0
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

    def __init__(
        self, backend: ReplayBackend, host: str = "127.0.0.1", port: int = 0, *, limits: Limits | None = None
    ) -> None:
        super().__init__(backend, host, port, limits=limits)

    def __enter__(self) -> ReplayServer:
        self.start()
        return self


def replay_server(
    recorded: Sequence[LLMCall] | Trace,
    *,
    model: str | None = None,
    match: Sequence[str] = ("model", "messages"),
    speed: Speed = "virtual",
    max_recorded_s: float = DEFAULT_MAX_RECORDED_S,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: Limits | None = None,
) -> ReplayServer:
    """An unstarted server replaying ``recorded``: ``with replay_server(trace) as server:`` starts and stops it.

    Its ``backend`` is the ``ReplayBackend``, for reading ``misses``, ``unused()`` and ``answers`` after the app ran.
    """
    backend = ReplayBackend(recorded, model=model, match=match, speed=speed, max_recorded_s=max_recorded_s)
    return ReplayServer(backend, host=host, port=port, limits=limits)
