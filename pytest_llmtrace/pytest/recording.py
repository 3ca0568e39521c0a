"""The recording as tests meet it: one ``Recorder`` per session, one window per test, and ``TestRecording``.

``recorder`` holds the span-recording machinery and knows nothing of pytest; this module opens and closes a test's
window from the plugin's hooks, reports spans a test left open, and gives tests ``TestRecording``, the object the
``llm_trace`` fixture returns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from opentelemetry.sdk.trace import TracerProvider as SDKTracerProvider

from pytest_llmtrace.core import settings as session_settings
from pytest_llmtrace.core.errors import RecordingError
from pytest_llmtrace.core.settings import SettingSpec, declare
from pytest_llmtrace.pytest.failing import fail, fail_on
from pytest_llmtrace.pytest.recorder import (
    OTEL_TRACE_LOGGER,
    OverrideRefusedHandler,
    Recorder,
    TestWindow,
    open_spans_message,
)

if TYPE_CHECKING:
    from pytest_llmtrace.trace.model import LLMCall, Span, SqlStatement, Trace

RECORDING_SETTINGS: tuple[SettingSpec, ...] = declare(
    SettingSpec(
        "open_spans",
        "What to do when a test that uses llm_trace ends with spans it started still open: fail (the default) or warn.",
        "fail",
        choices=("fail", "warn"),
    ),
)


class OpenSpanWarning(UserWarning):
    """A test ended with spans still open (emitted instead of a failure with ``llmtrace_open_spans = warn``)."""


class TestRecording:
    """The spans of the running test. Every property takes a fresh snapshot, so it sees spans finished a moment ago.

    A snapshot holds the spans that ended during this test plus those started in it that are still running (shown
    as open), so ``print(llm_trace)`` inside a ``with tracer.start_as_current_span(...)`` block shows the whole tree.
    A broken recording (see ``Recorder.problem``) is the environment's fault, not the test code's: it fails the test
    with its message.
    """

    __test__ = False  # a user importing this for a type hint must not get a collection warning

    def __init__(self, recorder: Recorder, window: TestWindow) -> None:
        self._recorder = recorder
        self._window = window

    def _check(self) -> None:
        problem = self._recorder.problem(self._window)
        if problem is not None:
            fail(str(problem))

    @property
    def trace(self) -> Trace:
        self._check()
        return self._recorder.trace(self._window)

    @property
    def spans(self) -> tuple[Span, ...]:
        return self.trace.spans

    @property
    def root(self) -> Span:
        return self.trace.root

    @property
    def llm_calls(self) -> tuple[LLMCall, ...]:
        return self.trace.llm_calls

    @property
    def sql_statements(self) -> tuple[SqlStatement, ...]:
        return self.trace.sql_statements

    @property
    def open_spans(self) -> tuple[Span, ...]:
        return self.trace.open_spans

    def find(self, name: str | None = None, *, kind: str | None = None) -> tuple[Span, ...]:
        return self.trace.find(name, kind=kind)

    def find_one(self, name: str | None = None, *, kind: str | None = None) -> Span:
        return self.trace.find_one(name, kind=kind)

    def clear(self) -> None:
        """Forget what was recorded so far, to look only at what comes next (spans still open are still checked)."""
        self._recorder.clear(self._window)

    def attach(self, provider: SDKTracerProvider) -> None:
        """Also record from ``provider``: for applications that do not make theirs the global provider."""
        with fail_on(RecordingError):
            self._recorder.attach(provider)

    def __len__(self) -> int:
        return len(self.spans)

    def __str__(self) -> str:
        return str(self.trace)

    def __repr__(self) -> str:
        return f"<TestRecording of {self._window.nodeid}: {len(self._recorder.spans(self._window))} spans>"


def current_recording(recorder: Recorder) -> TestRecording:
    """The running test's recording; the ``llm_trace`` fixture. Marks the window viewed, so teardown checks it.

    The window is the one the setup hook opened for the test whose fixtures are being set up: the fixture needs no
    ``request`` to find it (pytest builds a fixture definition, with a signature, for every ``request`` a fixture asks
    for: about a seventh of what recording cost a traced test on top of the test, the span_capture benchmark row)."""
    window = recorder.current
    if window is None:
        raise RuntimeError("pytest-llmtrace is not recording this test (its setup hook did not run)")
    problem = recorder.problem(window)
    if problem is not None:
        fail(str(problem))  # before `viewed` is set, so teardown does not report the same problem a second time
    window.viewed = True
    return TestRecording(recorder, window)


@dataclass
class _Session:
    recorder: Recorder
    handler: OverrideRefusedHandler
    open_spans: str  # "fail" or "warn"


_SESSION_KEY = pytest.StashKey[_Session]()
RECORDER_KEY = pytest.StashKey[Recorder]()


def configure(config: pytest.Config) -> None:
    """Create the session's recorder; providers are looked at only when tests start (see ``ensure_global``)."""
    settings = session_settings.of(config)
    recorder = Recorder()
    handler = OverrideRefusedHandler(recorder)
    logging.getLogger(OTEL_TRACE_LOGGER).addHandler(handler)
    config.stash[RECORDER_KEY] = recorder
    config.stash[_SESSION_KEY] = _Session(recorder, handler, settings["open_spans"])


def unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION_KEY, None)
    if session is None:
        return
    session.recorder.close()
    logging.getLogger(OTEL_TRACE_LOGGER).removeHandler(session.handler)
    del config.stash[_SESSION_KEY]


def get_recorder(config: pytest.Config) -> Recorder:
    try:
        return config.stash[RECORDER_KEY]
    except KeyError:
        raise RuntimeError(
            "pytest-llmtrace's recorder is not configured (plugin disabled with -p no:llmtrace?)"
        ) from None


def attach_to_provider(config: pytest.Config, provider: SDKTracerProvider) -> None:
    """Record spans from a provider the application did not install globally (``set_global_tracer_provider=False``)."""
    get_recorder(config).attach(provider)


def report_header(config: pytest.Config) -> str:
    return f"llmtrace: recording spans via {get_recorder(config).describe()}"


def start_test(item: pytest.Item, *, install_provider: bool = True) -> None:
    recorder = get_recorder(item.config)
    recorder.ensure_global(install=install_provider)
    recorder.begin(item.nodeid)


def finish_test(item: pytest.Item) -> None:
    """Close the test's window; for tests that used ``llm_trace``, report spans left open or a broken recording."""
    session = item.config.stash[_SESSION_KEY]
    recorder = session.recorder
    window = recorder.end()
    if window is None or window.nodeid != item.nodeid or not window.viewed:
        return
    problem = recorder.problem(window)
    if problem is not None:
        fail(str(problem))
    still_open = recorder.open_spans(window)
    if not still_open:
        return
    message = open_spans_message(still_open)
    if session.open_spans == "warn":
        item.warn(OpenSpanWarning(message))
    else:
        fail(message + "\n(set llmtrace_open_spans = warn, or --llmtrace-open-spans=warn, to report this as a warning)")
