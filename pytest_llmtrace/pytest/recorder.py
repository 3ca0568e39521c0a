"""The session span recorder: every span that ends while a test runs is kept for that test, and only for it.

Why a span processor and not an exporter: a processor sees a span start as well as end, so a span the application
forgot to end (a stream never consumed, a generator never closed) can be named when the test finishes instead of
silently missing from the trace. The processor runs synchronously on the thread that ends the span, so a test
reads its spans right after the call that produced them, with no flush and no polling.

Attribution rule: a span belongs to the test that is running (setup, call or teardown) when the span *ends*, no
matter which thread ends it. Only one test runs at a time in a pytest process (xdist workers are processes), so "the
running test" is a single value shared by all threads. Spans that end between tests (collection, session start)
belong to no test and are dropped.

Which TracerProvider: OpenTelemetry allows one global provider per process, set once. If the application installs
an SDK provider before the first test (at import time, in conftest.py, via ``phoenix.otel.register``), the recorder
is added to it next to the application's own exporters. Otherwise the recorder installs a provider of its own at the
first test, as late as possible so applications that set one up during collection keep theirs. When recording cannot
work (a non-SDK global provider, or an application whose ``set_tracer_provider`` OpenTelemetry refused) the tests
that look at the recording fail and say why, rather than pass with an empty trace.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import Span as SDKSpan
from opentelemetry.sdk.trace import TracerProvider as SDKTracerProvider

from pytest_llmtrace.core.errors import RecordingError
from pytest_llmtrace.trace.model import Span, Trace
from pytest_llmtrace.trace.sdk import span_from_readable

if TYPE_CHECKING:
    from collections.abc import Iterable

    from opentelemetry.context import Context

# The exact text OpenTelemetry logs when it ignores a second set_tracer_provider(); it is the only signal there is.
_OVERRIDE_REFUSED = "Overriding of current TracerProvider is not allowed"
OTEL_TRACE_LOGGER = "opentelemetry.trace"

_SpanKey = tuple[int, int]  # (trace_id, span_id): SDK hands on_start and on_end different objects for one span


def _key(span: ReadableSpan) -> _SpanKey:
    context = span.get_span_context()
    assert context is not None, "SDK spans always carry a context"
    return (context.trace_id, context.span_id)


@dataclass
class TestWindow:
    """What one test has recorded so far. Mutated only under the recorder's lock."""

    __test__ = False  # not a test class, whatever pytest's collector thinks of the name

    nodeid: str
    finished: list[ReadableSpan] = field(default_factory=list)  # ended since the test began, or since clear()
    # Every span started during this test, and the ended ones clear() took out of ``finished``: which spans are still
    # open is worked out from these when asked (from the end times when the window ends, ``Recorder.end``; by ids when
    # the test reads its trace, ``still_open``), not kept up to date span by span. A list append per start and per end
    # is all the span callbacks do: they run for every span the app makes, and keeping two dicts current there cost
    # 10% over a bare exporter (the span_capture benchmark row).
    started: list[ReadableSpan] = field(default_factory=list)
    cleared: list[ReadableSpan] = field(default_factory=list)
    view_from: int = 0  # ``started[view_from:]``: the spans started since clear(); one started before stays out
    # Spans a service under test exported to the session's OTLP receiver, attributed to this test's case.
    received: list[Span] = field(default_factory=list)
    viewed: bool = False  # the test asked for llm_trace: only such tests are failed by the recorder
    opened_ns: int = field(default_factory=time.time_ns)  # a span an SDK sends late from an earlier test started before
    refused_override: bool = False
    # Once the window has ended: the spans nothing had ended by then (``Recorder.open_spans``).
    open_at_end: tuple[ReadableSpan, ...] | None = None

    def still_open(self, *, since_clear: bool) -> list[ReadableSpan]:
        """The spans started in this window (since clear(), or at all) that have not ended. Call with the lock held."""
        ended = {_key(span) for span in self.finished}
        ended.update(_key(span) for span in self.cleared)
        started = self.started[self.view_from :] if since_clear else self.started
        return [span for span in started if _key(span) not in ended]


class _Processor(SpanProcessor):
    """The object added to TracerProviders; all state lives in the recorder so one processor serves many providers."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        # The recorder's callbacks themselves, not methods calling them: two calls per span, on every span the app
        # makes, are most of what recording costs over a bare exporter (the span_capture benchmark row)
        self.on_start = recorder._on_start  # type: ignore[method-assign]
        self.on_end = recorder._on_end  # type: ignore[method-assign]

    def on_start(self, span: SDKSpan, parent_context: Context | None = None) -> None:
        self._recorder._on_start(span)

    def on_end(self, span: ReadableSpan) -> None:
        self._recorder._on_end(span)

    def shutdown(self) -> None:
        """Ignored: an application shutting its provider down must not stop recording from the others."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class OverrideRefusedHandler(logging.Handler):
    """Notices OpenTelemetry refusing an application's ``set_tracer_provider`` while tests run."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(level=logging.WARNING)
        self._recorder = recorder

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(_OVERRIDE_REFUSED):
            self._recorder._note_refused_override()


def describe_provider(provider: object, *, own: bool = False) -> str:
    """How the report header and error messages name a provider: by the class users wrote in their code."""
    if own:
        return "pytest-llmtrace's own SDK TracerProvider"
    cls = type(provider)
    if cls.__module__.startswith("phoenix.otel"):
        return "the application's phoenix.otel TracerProvider"
    return f"the application's {cls.__module__}.{cls.__qualname__}"


def _non_sdk_error(provider: object) -> RecordingError:
    cls = type(provider)
    return RecordingError(
        f"pytest-llmtrace cannot record spans: the global OpenTelemetry TracerProvider is "
        f"{cls.__module__}.{cls.__qualname__}, not an OpenTelemetry SDK TracerProvider "
        "(opentelemetry.sdk.trace.TracerProvider or a subclass such as phoenix.otel's), so there is nowhere to "
        "attach a span processor. Install an SDK TracerProvider instead, or attach the recorder to the SDK provider "
        "your application really uses with llm_trace.attach(provider)."
    )


_REFUSED_ERROR = (
    "pytest-llmtrace cannot record this test's spans: the application called "
    "opentelemetry.trace.set_tracer_provider() after a global TracerProvider was already installed, and "
    "OpenTelemetry ignored it (only one global provider per process). Spans sent to the application's provider are "
    "not recorded. Install the application's provider before the first test starts (at import time or in "
    "conftest.py), or attach the recorder to it with llm_trace.attach(provider)."
)


class Recorder:
    """Per-test span windows over any number of SDK TracerProviders.

    Usable without pytest: ``attach(provider)``, then ``begin(name)`` / ``end()`` around the code to record, which
    is how the unit tests drive it with private providers instead of the process-global one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processor = _Processor(self)
        self._attached: weakref.WeakSet[SDKTracerProvider] = weakref.WeakSet()
        self._current: TestWindow | None = None
        self._closed = False
        self._pending_refusal = False
        self._installing = False
        self._seen_global: object | None = None
        self._global_problem: RecordingError | None = None
        self._explicit = False
        self.own_provider: SDKTracerProvider | None = None
        self.provider: SDKTracerProvider | None = None  # the global SDK provider recorded from, once known

    # -- providers --------------------------------------------------------------------------------------------------

    def attach(self, provider: SDKTracerProvider, *, explicit: bool = True) -> None:
        """Add the recorder to ``provider``, keeping every processor the application already added.

        The SDK base method is called on purpose: subclasses may give ``add_span_processor`` side effects, and
        ``phoenix.otel.TracerProvider`` does (it shuts down its default Phoenix exporter unless told
        ``replace_default_processor=False``). Appending to the processor chain is all the recorder needs.
        """
        if not isinstance(provider, SDKTracerProvider):
            raise _non_sdk_error(provider)
        with self._lock:
            if explicit:
                self._explicit = True
                self._pending_refusal = False
                if self._current is not None:
                    self._current.refused_override = False
            if provider in self._attached:
                return
            self._attached.add(provider)
        SDKTracerProvider.add_span_processor(provider, self._processor)

    def is_attached(self, provider: object) -> bool:
        return isinstance(provider, SDKTracerProvider) and provider in self._attached

    def ensure_global(self, *, install: bool = True) -> None:
        """Record from the global provider, installing one if the application has not; cheap when nothing changed.

        Called at the start of every test because applications often install their provider late (on first import,
        in a fixture of an earlier test). ``install=False`` leaves an empty slot empty: a golden case imports the app
        during the test, and an app that calls ``set_tracer_provider`` at import must find the slot free.
        """
        current = trace_api.get_tracer_provider()
        if current is self._seen_global:
            return
        if not install and type(current) is trace_api.ProxyTracerProvider:
            return
        for _ in range(2):  # a second pass only if another thread won the race to install a provider
            if isinstance(current, SDKTracerProvider):
                self.attach(current, explicit=False)
                self.provider, self._global_problem = current, None
            elif type(current) is trace_api.ProxyTracerProvider:  # nothing installed yet: the API's placeholder
                own = SDKTracerProvider()
                self.attach(own, explicit=False)  # before it is global, so no span can slip past
                self._installing = True
                try:
                    trace_api.set_tracer_provider(own)
                finally:
                    self._installing = False
                new = trace_api.get_tracer_provider()
                if new is not own:
                    current = new
                    continue
                self.own_provider = self.provider = own
                self._global_problem = None
                current = own
            else:
                self.provider, self._global_problem = None, _non_sdk_error(current)
            break
        self._seen_global = current

    def describe(self) -> str:
        """The report header's words for what is (or will be) recorded, without installing anything."""
        if self.provider is not None:
            return describe_provider(self.provider, own=self.provider is self.own_provider)
        current = trace_api.get_tracer_provider()
        if isinstance(current, SDKTracerProvider):
            return describe_provider(current)
        if type(current) is trace_api.ProxyTracerProvider:
            return "pytest-llmtrace's own SDK TracerProvider (installed at the first test unless the app sets one)"
        cls = type(current)
        return f"nothing: the global TracerProvider is {cls.__module__}.{cls.__qualname__}, not an SDK provider"

    # -- test windows -----------------------------------------------------------------------------------------------

    def begin(self, nodeid: str) -> TestWindow:
        window = TestWindow(nodeid)
        with self._lock:
            window.refused_override, self._pending_refusal = self._pending_refusal, False
            self._current = window
        return window

    def end(self) -> TestWindow | None:
        with self._lock:
            window, self._current = self._current, None
            if window is not None:  # a span that ends later ends in another window, or none: here it stays open
                window.open_at_end = tuple(span for span in window.started if span.end_time is None)
        return window

    @property
    def current(self) -> TestWindow | None:
        return self._current

    def close(self) -> None:
        """Stop recording for good; the processor stays in the providers (OTel cannot remove it) but does nothing."""
        with self._lock:
            self._closed = True
            self._current = None

    def problem(self, window: TestWindow) -> RecordingError | None:
        """Why this window cannot be trusted to hold the test's spans, if it cannot."""
        if window.refused_override:
            return RecordingError(_REFUSED_ERROR)
        if self._global_problem is not None and not self._explicit:
            return self._global_problem
        return None

    def spans(self, window: TestWindow) -> tuple[Span, ...]:
        """Finished spans plus the spans started in this test that are still running (marked open)."""
        flush_sdk_queues()
        with self._lock:
            finished = list(window.finished)
            received = tuple(window.received)
            still_open = window.still_open(since_clear=True)
        return (
            tuple(span_from_readable(s) for s in finished)
            + received
            + tuple(span_from_readable(s, open_end=True) for s in still_open)
        )

    def receive(self, window: TestWindow, spans: Iterable[Span]) -> None:
        """Spans that arrived over OTLP from a service, for the test they were attributed to: the same recording
        as in-process spans, so ``llm_trace`` shows them and the checks judge them."""
        with self._lock:
            if not self._closed:
                window.received.extend(spans)

    def receive_current(self, spans: Iterable[Span]) -> None:
        """Spans a tracing SDK in this process sent over HTTP (``pytest.sdk_endpoints``), into the test running now;
        those the session's provider recorded already (Langfuse on the global provider exports its spans as well)
        are left out, so each span is there once, and so are spans started before the test (an SDK's late export of
        an earlier test's spans)."""
        with self._lock:
            window = self._taking_spans()
            if window is None:
                return
            recorded = {f"{t:032x}{s:016x}" for t, s in map(_key, window.finished)}
            recorded.update(span.trace_id + span.span_id for span in window.received)
            window.received.extend(
                span
                for span in spans
                if span.trace_id + span.span_id not in recorded and span.start_time_unix_nano >= window.opened_ns
            )

    def trace(self, window: TestWindow) -> Trace:
        # Parents outside the window (a session fixture's span, a span of an earlier test) are normal here: no warning.
        return Trace(self.spans(window), source=window.nodeid, warn_missing_parents=False)

    def clear(self, window: TestWindow) -> None:
        with self._lock:
            window.cleared.extend(window.finished)
            window.finished.clear()
            window.received.clear()
            window.view_from = len(window.started)

    def open_spans(self, window: TestWindow) -> tuple[ReadableSpan, ...]:
        """The spans started in ``window`` that nothing had ended when it ended (or has yet, while it is open): the
        check when a test that used ``llm_trace`` ends.

        Each is the span object ``on_start`` was given, which the SDK gives its end time when ``end()`` is called,
        before it calls ``on_end``: one without an end time is open. That costs no matching of ids (a third of what
        recording cost a traced test over a bare exporter, the span_capture benchmark row). Reading the trace
        matches ids instead (``TestWindow.still_open``): a span another thread is ending at that moment, its end time
        set and its ``on_end`` still to come, is shown there as open rather than left out."""
        with self._lock:
            if window.open_at_end is not None:
                return window.open_at_end
            return tuple(span for span in window.started if span.end_time is None)

    # -- processor callbacks (any thread) ---------------------------------------------------------------------------

    def _taking_spans(self) -> TestWindow | None:
        """The window the span callbacks write into: none between tests, nor once closed. Call with the lock held."""
        return None if self._closed else self._current

    def _on_start(self, span: ReadableSpan, parent_context: Context | None = None) -> None:
        with self._lock:
            if (window := self._current) is not None and not self._closed:  # ``_taking_spans``, inlined
                window.started.append(span)

    def _on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            if (window := self._current) is not None and not self._closed:
                window.finished.append(span)

    def _note_refused_override(self) -> None:
        if self._installing:
            return
        with self._lock:
            if self._current is not None:
                self._current.refused_override = True
            else:
                self._pending_refusal = True


def open_spans_message(spans: tuple[ReadableSpan, ...]) -> str:
    lines = [
        f"pytest-llmtrace: {len(spans)} span(s) started during this test were still open when it ended "
        "(a span that never ends is never exported; end it, or consume/close the stream that owns it):"
    ]
    for span in spans:
        context = span.get_span_context()
        span_id = f"{context.span_id:016x}" if context is not None else "?"
        lines.append(f"  - {span.name!r} (span {span_id})")
    return "\n".join(lines)


def flush_sdk_queues(timeout: float = 10.0) -> None:
    """Hand over the spans a tracing SDK still holds in a queue of its own, so they land in this test's window.

    LangSmith (in its OpenTelemetry mode and its default one alike) sends runs from its background thread: without
    this, an app traced only by LangSmith would finish its request with its runs still queued. Only an SDK the app
    has already imported is asked; Langfuse needs nothing (its spans are OpenTelemetry's from the start).
    """
    if "langsmith.run_trees" not in sys.modules:
        return
    try:
        run_trees = sys.modules["langsmith.run_trees"]
        # The cached client only if it exists: asking for it would make one. In its default mode its runs go to the
        # session's local endpoint (pytest.sdk_endpoints), which hands them to this test's window as they arrive.
        client = getattr(run_trees, "_CLIENT", None)
        if client is not None:
            client.flush(timeout=timeout)
    except Exception:  # the app's tracing must never fail a test's recording
        return
