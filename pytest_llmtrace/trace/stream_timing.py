"""How fast a model call answered and what it cost, whichever convention recorded it: TTFT, tokens/s, cost.

A text-to-SQL service is judged by its time to first token and its tokens per second as much as by its total
latency, and by what its calls cost. Each tracing tool writes these facts under its own names; this module reads
them all, so checks, gates and metrics read one ``StreamTiming`` and one cost, never attribute names:

- **TTFT** (from the start of the call to the first chunk with content, never a role-only first chunk):
  ``gen_ai.server.time_to_first_token`` (seconds; the OTel GenAI name, also what the plugin writes), Langfuse's
  ``langfuse.observation.completion_start_time`` (an ISO time), LangSmith's ``first_token_time`` (attribute or
  event), the first OpenLLMetry ``llm.content.completion.chunk`` event, OpenInference's ``First Token Stream Event``,
  or a ``new_token`` / ``gen_ai.first_token`` event.
- **Tokens per second**: completion tokens over the time after the first token (``gen_ai.server.time_per_output_token``
  when recorded), and the **p95 gap** between chunks from the recorded chunk times.
- **Cost** (USD): ``gen_ai.usage.cost``, OpenInference's ``llm.cost.total``, Langfuse's ``cost_details``,
  LangSmith's ``total_cost``; a trace's own cost always wins over a price table.

The plugin records a stream's chunk times in ``llmtrace.stream.chunk_offsets_ms`` (ms from the request's start, one per
content chunk), so replay can serve the recorded stream with its timing.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from pytest_llmtrace.core.memo import memo
from pytest_llmtrace.trace import sdk_attrs
from pytest_llmtrace.trace.attr_values import loads_json
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.span import AttrValue, Span
from pytest_llmtrace.trace.views import llm_call

TTFT_S = "gen_ai.server.time_to_first_token"
TIME_PER_OUTPUT_TOKEN_S = "gen_ai.server.time_per_output_token"
CHUNK_OFFSETS_MS = "llmtrace.stream.chunk_offsets_ms"
TTFT_REPLAYED_MS = "llmtrace.stream.ttft_replayed_ms"  # the part of the TTFT the recording supplied (replay)
STREAMED = "llmtrace.stream.streamed"
LANGFUSE_COMPLETION_START = "langfuse.observation.completion_start_time"
LANGSMITH_FIRST_TOKEN = "first_token_time"
FIRST_TOKEN_EVENTS = (
    "first_token_time",  # LangSmith
    "First Token Stream Event",  # OpenInference
    "gen_ai.first_token",
    "llm.content.completion.chunk",  # OpenLLMetry: one per chunk; the first is the first token
    "new_token",  # LangSmith's streamed tokens
)
COST_USD = "gen_ai.usage.cost"
COST_ATTRIBUTES = (COST_USD, "llm.cost.total", "llm.usage.cost", "langsmith.total_cost", "total_cost")
LANGFUSE_COST_DETAILS = "langfuse.observation.cost_details"


@dataclass(frozen=True)
class StreamTiming:
    """One model call's timing: ``ttft_ms`` from its start; ``tokens_per_s`` after the first token (``None``
    without a completion count or time after the first token); ``gap_p95_ms`` between chunks (``None`` with fewer
    than two chunk times); ``replayed_ms``: the part of ``ttft_ms`` a replayed recording supplied; ``source``: the
    attribute or event it was read from."""

    ttft_ms: float
    tokens_per_s: float | None = None
    gap_p95_ms: float | None = None
    replayed_ms: float = 0.0
    source: str = TTFT_S
    chunk_offsets_ms: tuple[float, ...] = ()


def _number(value: AttrValue | None) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _time_ns(value: AttrValue | None) -> int | None:
    """An ISO time (Langfuse, LangSmith; JSON-encoded or not) or epoch seconds / ms / ns, as epoch ns."""
    if isinstance(value, str):
        text = loads_json(value, value)
        if isinstance(text, str):
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return None
            if moment.tzinfo is None:
                return None  # a local time names no instant
            return round(moment.timestamp() * 1e9)
        value = text if isinstance(text, (int, float)) else None
    number = _number(value)
    if number is None or number <= 0:
        return None
    for scale in (1e9, 1e6, 1e3, 1.0):  # seconds, ms, us, ns: whichever lands after 2001
        if number * scale > 1e18:
            return round(number * scale)
    return None


def _offsets(value: AttrValue | None) -> tuple[float, ...]:
    loaded = loads_json(value, value) if isinstance(value, str) else value
    if not isinstance(loaded, (list, tuple)):
        return ()
    numbers = [_number(v) for v in loaded]
    return tuple(n for n in numbers if n is not None and n >= 0)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank: always one of the values."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def _first_token(span: Span) -> tuple[float, str] | None:
    """TTFT in ms from the span's start and where it was read, from the first convention that records it."""
    attrs = span.attributes
    seconds = _number(attrs.get(TTFT_S))
    if seconds is not None and seconds >= 0:
        return seconds * 1000, TTFT_S
    seconds = sdk_attrs.time_to_first_token_s(span)  # Langfuse's completion start, a LangSmith import's first token
    if seconds is not None:
        return seconds * 1000, "langfuse/langsmith first token time"
    for name in (LANGFUSE_COMPLETION_START, LANGSMITH_FIRST_TOKEN):
        at = _time_ns(attrs.get(name))
        if at is not None and at >= span.start_time_unix_nano:
            return (at - span.start_time_unix_nano) / 1e6, name
    for wanted in FIRST_TOKEN_EVENTS:
        times = [e.time_unix_nano for e in span.events if e.name == wanted and e.time_unix_nano]
        if times and min(times) >= span.start_time_unix_nano:
            return (min(times) - span.start_time_unix_nano) / 1e6, f"event {wanted}"
    return None


def stream_timing(span: Span, completion_tokens: int | None = None) -> StreamTiming | None:
    """The call's timing, or ``None`` when no convention recorded a first token for it."""
    found = _first_token(span)
    if found is None:
        return None
    ttft_ms, source = found
    attrs = span.attributes
    offsets = _offsets(attrs.get(CHUNK_OFFSETS_MS))
    if not offsets:  # OpenLLMetry's chunk events give the chunk times too
        times = sorted(e.time_unix_nano for e in span.events if e.name == "llm.content.completion.chunk")
        offsets = tuple((t - span.start_time_unix_nano) / 1e6 for t in times)
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    tpot = _number(attrs.get(TIME_PER_OUTPUT_TOKEN_S))
    tokens_per_s: float | None = None
    if tpot is not None and tpot > 0:
        tokens_per_s = 1 / tpot
    elif completion_tokens:
        end_ms = offsets[-1] if len(offsets) > 1 else span.duration_ms
        after = end_ms - ttft_ms
        # one token after the first needs no time to count: a rate over 0 ms would be infinite, so none
        tokens_per_s = max(completion_tokens - 1, 1) / (after / 1000) if after > 0 else None
    replayed = _number(attrs.get(TTFT_REPLAYED_MS)) or 0.0
    return StreamTiming(
        ttft_ms=ttft_ms,
        tokens_per_s=tokens_per_s,
        gap_p95_ms=percentile(gaps, 95) if gaps else None,
        replayed_ms=min(replayed, ttft_ms),
        source=source,
        chunk_offsets_ms=offsets,
    )


def recorded_cost(span: Span) -> float | None:
    """The call's cost in USD as the trace records it, or ``None`` (then a price table may say)."""
    known = sdk_attrs.cost_usd(span)  # Langfuse's cost_details, gen_ai.usage.cost
    if known is not None and known >= 0:
        return known
    attrs = span.attributes
    for name in COST_ATTRIBUTES:
        value = _number(attrs.get(name))
        if value is not None and value >= 0:
            return value
    details = attrs.get(LANGFUSE_COST_DETAILS)
    loaded = loads_json(details, details) if isinstance(details, str) else details
    if isinstance(loaded, Mapping):
        total = _number(loaded.get("total"))
        if total is not None:
            return total
        parts = [_number(v) for v in loaded.values()]
        if parts and all(p is not None for p in parts):
            return float(sum(p for p in parts if p is not None))
    return None


@dataclass(frozen=True)
class FrontTiming:
    """What the model front saw of one request, on the wall clock spans are stamped with (``time.time_ns``).

    ``first_ns``: when the first chunk with content left (for an answer that is not streamed, the whole answer);
    ``chunk_ns``: when each content chunk left; ``recorded_ttft_ns`` / ``recorded_offsets_ns``: for a replayed
    answer, the recorded stream's TTFT and chunk times (from the request's start), which count in place of the
    instant replay."""

    received_ns: int
    first_ns: int
    done_ns: int
    chunk_ns: tuple[int, ...] = ()
    completion_tokens: int = 0
    streamed: bool = True
    model: str = ""
    recorded_ttft_ns: int | None = None
    recorded_offsets_ns: tuple[int, ...] = ()


def with_front_timing(span: Span, front: FrontTiming) -> Span:
    """``span`` (the app's LLM span around ``front``'s request) with its TTFT and chunk times as attributes.

    TTFT runs from the request's start (when the front received it) to the first chunk with content; when the app
    recorded its own first token (any convention above), the time from the front's first chunk to the app's is the
    app's own path and counts too, measured. Live, the front's measurement is the model's part. In replay the
    recorded TTFT replaces the front's instant answer and is kept as ``llmtrace.stream.ttft_replayed_ms``. Chunk
    times are from the request's start too.
    """
    own = _first_token(span)
    front_ms = (front.first_ns - front.received_ns) / 1e6
    before_ms = max(0.0, (front.received_ns - span.start_time_unix_nano) / 1e6)  # the app's path to its request
    app_path_ms = max(0.0, own[0] - before_ms - front_ms) if own is not None else 0.0  # chunk to app's first token
    if front.recorded_ttft_ns is not None:
        model_ms, replayed_ms = front.recorded_ttft_ns / 1e6, front.recorded_ttft_ns / 1e6
        offsets = [ns / 1e6 for ns in front.recorded_offsets_ns]
    else:
        model_ms, replayed_ms = front_ms, 0.0
        offsets = [(ns - front.received_ns) / 1e6 for ns in front.chunk_ns]
    attributes = dict(span.attributes)
    attributes[TTFT_S] = (model_ms + app_path_ms) / 1000
    attributes[STREAMED] = front.streamed
    if offsets:
        attributes[CHUNK_OFFSETS_MS] = tuple(round(o, 3) for o in offsets)
    if replayed_ms:
        attributes[TTFT_REPLAYED_MS] = replayed_ms
    return dataclasses.replace(span, attributes=attributes)


def with_front_timings(trace: Trace, fronts: Sequence[FrontTiming]) -> Trace:
    """``trace`` with each front timing on the innermost LLM span that encloses its request (the span the app made
    around the HTTP call, as ``trace.virtual`` links replayed answers). An app whose model call no convention reads
    as an LLM span gets it on the innermost span of any kind around the request (``trace_streams`` reads it there);
    timings no span encloses are dropped."""
    closed = [s for s in trace if s.end_time_unix_nano is not None]
    llm_spans = [s for s in closed if llm_call(s) is not None]
    changed: dict[str, Span] = {}
    for front in sorted(fronts, key=lambda f: f.received_ns):
        for candidates in (llm_spans, closed):
            around = [
                s
                for s in candidates
                if s.span_id not in changed
                and s.start_time_unix_nano <= front.received_ns
                and front.done_ns <= (s.end_time_unix_nano or 0)
            ]
            if around:
                span = min(around, key=lambda s: s.duration_ns)
                changed[span.span_id] = with_front_timing(span, front)
                break
    if not changed:
        return trace
    return Trace([changed.get(s.span_id, s) for s in trace], source=trace.source, warn_missing_parents=False)


def trace_streams(trace: Trace | None) -> list[StreamTiming]:
    """Every model call's timing in ``trace``: its LLM calls', and any other span's that records a TTFT by attribute
    (a model call no convention reads as an LLM span: an uninstrumented client, a tool's own span type)."""
    if not trace:
        return []
    return list(memo(trace, "_streams", _read_streams))  # read once per trace: the checks ask for it many times


def _read_streams(trace: Trace) -> tuple[StreamTiming, ...]:
    found = []
    for span in trace:
        call = llm_call(span)
        marks = (TTFT_S, LANGFUSE_COMPLETION_START, sdk_attrs.LANGSMITH_FIRST_TOKEN_TIME)
        if call is None and not any(name in span.attributes for name in marks):
            continue
        timing = stream_timing(span, None if call is None else call.completion_tokens)
        if timing is not None:
            found.append(timing)
    return tuple(found)
