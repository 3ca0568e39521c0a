"""What the model front measured of each request it answered: TTFT, chunk times, tokens, on the spans' clock.

The front is the one place that sees every model call of the app under test, whatever backend answers it (llama.cpp
in process, a recording, a scripted table), so it times them there: from the request's arrival to the first chunk
with content (a role-only chunk does not count), each chunk after it, and the end. A case reads the timings of its
own window (``since``) and puts them on the LLM spans that enclose them (``trace.stream_timing.with_front_timings``).

Each front keeps its own bounded log; ``recent`` reads every live front's, so a case need not know which server its
app talked to (one per session, but a test may start its own).
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator

from pytest_llmtrace.modelapi.backend import ChatRequest, ChatResult, ModelBackend
from pytest_llmtrace.trace.stream_timing import FrontTiming

MAX_KEPT = 10_000  # a long session's timings: the oldest go first, long after their case read them
# Sent by every front of this process (``X-Llmtrace-Front``): a timing proxy in front of one of them leaves the
# answer untimed, because ``recent`` reads the front's own timing already; a front in another process (a stand-in
# `ollama serve`, a container) has another id, and its answers are timed by the proxy, since its logs are not here.
FRONT_HEADER = "X-Llmtrace-Front"
FRONT_ID = uuid.uuid4().hex

_LOGS: weakref.WeakSet[StreamLog] = weakref.WeakSet()
_LOGS_LOCK = threading.Lock()


class StreamLog:
    """The timings one front measured, oldest first; thread-safe (the front answers in many threads)."""

    def __init__(self) -> None:
        # (when it was added, on the spans' clock; the timing): added under the lock, so the times only grow
        self._timings: collections.deque[tuple[int, FrontTiming]] = collections.deque(maxlen=MAX_KEPT)
        self._lock = threading.Lock()
        with _LOGS_LOCK:
            _LOGS.add(self)

    def add(self, timing: FrontTiming) -> None:
        with self._lock:
            self._timings.append((time.time_ns(), timing))

    def since(self, start_ns: int) -> list[FrontTiming]:
        """The timings of requests received at ``start_ns`` or later, read from the newest back: one added before
        ``start_ns`` was received before it too, so a case reads its own few, not the whole session's log."""
        found = []
        with self._lock:
            for added_ns, timing in reversed(self._timings):
                if added_ns < start_ns:
                    break
                if timing.received_ns >= start_ns:
                    found.append(timing)
        found.reverse()
        return found

    def forget_before(self, start_ns: int) -> None:
        """Drop the timings added before ``start_ns`` (``forget_before``)."""
        with self._lock:
            while self._timings and self._timings[0][0] < start_ns:
                self._timings.popleft()


class AnswerTiming:
    """One request's times as the front sends it: each content chunk's departure (``send_stream`` has written and
    flushed the chunk before the generator resumes), then the whole as a ``FrontTiming``."""

    def __init__(self, received_ns: int) -> None:
        self.received_ns = received_ns
        self.chunk_ns: list[int] = []
        self.pieces = 0

    def chunk(self, text: str) -> None:
        self.pieces += 1
        if text.strip():  # whitespace-only and role-only chunks are not a first token
            self.chunk_ns.append(time.time_ns())

    def done(self, result: ChatResult, model: str, *, streamed: bool) -> FrontTiming:
        now = time.time_ns()
        first = self.chunk_ns[0] if self.chunk_ns else now
        return FrontTiming(
            received_ns=self.received_ns,
            first_ns=first,
            done_ns=now,
            chunk_ns=tuple(self.chunk_ns),
            completion_tokens=result.eval_count,
            streamed=streamed,
            model=model,
            recorded_ttft_ns=result.recorded_ttft_ns,
            recorded_offsets_ns=result.recorded_offsets_ns,
        )


def recent(start_ns: int) -> list[FrontTiming]:
    """Every live front's timings of requests received at or after ``start_ns``."""
    with _LOGS_LOCK:
        logs = list(_LOGS)
    return sorted((t for log in logs for t in log.since(start_ns)), key=lambda t: t.received_ns)


def forget_before(start_ns: int) -> None:
    """Every live front forgets the timings added before ``start_ns``: a golden case calls it once it has read its own,
    since no later case asks for an earlier one. A replayed answer's timing holds its recorded chunk offsets and its
    chunk times, kilobytes of integers: kept to ``MAX_KEPT`` they were about a tenth of what each case of a long run
    left in memory. (A test that reads timings of its own after running golden cases in an in-process pytester run
    that shares its front would find the earlier ones gone.)"""
    with _LOGS_LOCK:
        logs = list(_LOGS)
    for log in logs:
        log.forget_before(start_ns)


def stream_answer(backend: ModelBackend, request: ChatRequest) -> Iterator[str | ChatResult]:
    """The backend's answer as content pieces while it generates them, then its ``ChatResult``.

    A backend with ``chat_stream(request, emit)`` (llama.cpp) calls ``emit`` with each piece as it is generated; it
    runs in a thread of its own so the front can send each piece the moment it exists. Any other backend answers
    whole, and its text is cut into word-sized pieces after it (a recording's recorded chunk times are then what
    its timing counts).
    """
    streamer: Callable[[ChatRequest, Callable[[str], None]], ChatResult] | None = getattr(backend, "chat_stream", None)
    if streamer is None:
        yield backend.chat(request)
        return
    queue: collections.deque[tuple[str, object]] = collections.deque()
    ready = threading.Condition()

    def put(kind: str, value: object) -> None:
        with ready:
            queue.append((kind, value))
            ready.notify()

    def run() -> None:
        try:
            put("done", streamer(request, lambda piece: put("piece", piece)))
        except BaseException as exc:  # handed to the front's thread, which answers it as the front does
            put("error", exc)

    threading.Thread(target=run, name="model-stream", daemon=True).start()
    while True:
        with ready:
            ready.wait_for(lambda: bool(queue))
            kind, value = queue.popleft()
        if kind == "piece":
            yield str(value)
        elif kind == "error":
            assert isinstance(value, BaseException)
            raise value
        else:
            assert isinstance(value, ChatResult)
            yield value
            return
