"""The fixtures users meet. Spans are recorded for every test anyway; these fixtures are views on the recording."""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from pytest_llmtrace import recording
from pytest_llmtrace.errors import LLMTraceError, RecordingError
from pytest_llmtrace.services import session as services

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from opentelemetry.sdk.trace import TracerProvider

    from pytest_llmtrace.assertions import Checker
    from pytest_llmtrace.services.base import Endpoint
    from pytest_llmtrace.services.postgres import PostgresDatabase
    from pytest_llmtrace.trace.model import LLMCall, Span, SqlStatement, Trace

__all__ = [
    "TestRecording",
    "llm_trace",
    "llmtrace_app",
    "llmtrace_check",
    "llmtrace_ollama",
    "llmtrace_phoenix",
    "llmtrace_postgres",
    "llmtrace_tracer_provider",
]


def _fail(problem: RecordingError) -> NoReturn:
    # A broken recording is the environment's fault, not the test code's: show the message, not our traceback.
    pytest.fail(str(problem), pytrace=False)


class TestRecording:
    """The spans of the running test. Every property takes a fresh snapshot, so it sees spans finished a moment ago.

    A snapshot holds the spans that ended during this test plus those started in it that are still running (shown
    as open), so ``print(llm_trace)`` inside a ``with tracer.start_as_current_span(...)`` block shows the whole tree.
    """

    __test__ = False  # a user importing this for a type hint must not get a collection warning

    def __init__(self, recorder: recording.Recorder, window: recording.TestWindow) -> None:
        self._recorder = recorder
        self._window = window

    def _check(self) -> None:
        problem = self._recorder.problem(self._window)
        if problem is not None:
            _fail(problem)

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

    def attach(self, provider: TracerProvider) -> None:
        """Also record from ``provider``: for applications that do not make theirs the global provider."""
        try:
            self._recorder.attach(provider)
        except RecordingError as problem:
            _fail(problem)

    def __len__(self) -> int:
        return len(self.spans)

    def __str__(self) -> str:
        return str(self.trace)

    def __repr__(self) -> str:
        return f"<TestRecording of {self._window.nodeid}: {len(self._recorder.spans(self._window))} spans>"


@pytest.fixture
def llm_trace(request: pytest.FixtureRequest) -> TestRecording:
    """The spans recorded during this test: ``llm_trace.trace``, ``.llm_calls``, ``.sql_statements``, ``print()``."""
    recorder = recording.get_recorder(request.config)
    window = recorder.current
    if window is None or window.nodeid != request.node.nodeid:
        raise RuntimeError(f"pytest-llmtrace is not recording {request.node.nodeid} (its setup hook did not run)")
    problem = recorder.problem(window)
    if problem is not None:
        _fail(problem)  # before `viewed` is set, so teardown does not report the same problem a second time
    window.viewed = True
    return TestRecording(recorder, window)


@pytest.fixture(scope="session")
def llmtrace_tracer_provider(request: pytest.FixtureRequest) -> TracerProvider:
    """The SDK TracerProvider spans are recorded from: give it to instrumentors that take ``tracer_provider=``."""
    recorder = recording.get_recorder(request.config)
    recorder.ensure_global()
    if recorder.provider is None:
        window = recorder.current
        problem = recorder.problem(window) if window is not None else None
        _fail(problem or RecordingError("pytest-llmtrace has no TracerProvider to record from"))
    return recorder.provider


# -- services ---------------------------------------------------------------------------------------------------------
# Session-scoped and lazy: a service starts the first time a test asks for it, so a run that never touches Phoenix
# never pays its 15 s start. Each fixture also sets the variable the application reads, and puts it back afterwards.


def _start(request: pytest.FixtureRequest, service: str) -> Endpoint:
    manager = services.get_manager(request.config)
    try:
        return manager.endpoint(service)
    except LLMTraceError as exc:  # ServiceStartError: backend, log tail and fix are in the message
        message = str(exc)
    pytest.fail(message, pytrace=False)  # outside the except block: no "direct cause" chain in the report


@pytest.fixture(scope="session")
def llmtrace_postgres(request: pytest.FixtureRequest) -> Iterator[PostgresDatabase]:
    """This session's own database (cloned from the SQL fixtures' template); ``DB_URI`` is its read-only DSN."""
    manager = services.get_manager(request.config)
    _start(request, "postgres")
    try:
        database = manager.database()
    except LLMTraceError as exc:  # a SQL fixture that does not load names its file
        message = str(exc)
    else:
        message = ""
    if message:
        pytest.fail(message, pytrace=False)
    try:
        with services.app_environment(DB_URI=database.reader_url):
            yield database
    finally:
        manager.drop_database(database)


@pytest.fixture(scope="session")
def llmtrace_ollama(request: pytest.FixtureRequest) -> Iterator[Endpoint]:
    """A ready Ollama API serving the configured model; ``OLLAMA_HOST`` points at it."""
    endpoint = _start(request, "ollama")
    with services.app_environment(OLLAMA_HOST=endpoint.url):
        yield endpoint


@pytest.fixture(scope="session")
def llmtrace_phoenix(request: pytest.FixtureRequest) -> Iterator[Endpoint]:
    """A ready Phoenix; ``PHOENIX_COLLECTOR_ENDPOINT`` points at it, so ``phoenix.otel.register()`` exports there."""
    endpoint = _start(request, "phoenix")
    with services.app_environment(PHOENIX_COLLECTOR_ENDPOINT=endpoint.url):
        yield endpoint


@pytest.fixture
def llmtrace_app(
    request: pytest.FixtureRequest,
    llmtrace_postgres: PostgresDatabase,
    llmtrace_ollama: Endpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[str], Any]:
    """The app a golden case replays through: ``llmtrace_target`` from the ini, imported only now.

    Imported after the services are up and DB_URI / OLLAMA_HOST are set, because apps often read them (and set up
    their TracerProvider) at import time. Override this fixture for full control over how a question is asked.
    """
    from pytest_llmtrace import cases

    config = cases.get_config(request.config)
    if config.app_db == "owner":
        monkeypatch.setenv("DB_URI", llmtrace_postgres.url)
    return _load_target(config.target, config.settings.source("target"))


def _load_target(target: str, source: str) -> Callable[[str], Any]:
    if not target:
        pytest.fail(
            'no app to replay the golden traces against: set llmtrace_target = "package.module:function" in the '
            "pytest ini (the function is called with the user question), or override the llmtrace_app fixture",
            pytrace=False,
        )
    module_name, sep, attribute = target.partition(":")
    where = f"llmtrace_target {target!r} (from {source})"
    if not sep or not module_name or not attribute:
        pytest.fail(f"{where}: expected 'package.module:function'", pytrace=False)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        message = f"{where}: cannot import {module_name!r}: {exc} (is its folder on pythonpath?)"
    else:
        app = getattr(module, attribute, None)
        if callable(app):
            return app  # type: ignore[no-any-return]
        near = difflib.get_close_matches(attribute, [n for n in dir(module) if not n.startswith("_")], n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        message = f"{where}: module {module_name!r} has no function {attribute!r}{hint}"
    pytest.fail(message, pytrace=False)


@pytest.fixture
def llmtrace_check(request: pytest.FixtureRequest, llm_trace: TestRecording) -> Checker:
    """Golden-case checks for hand-written tests: ``sql_executes()``, ``within_budget()``, ``matches_snapshot()``."""
    from pytest_llmtrace.assertions import Checker

    return Checker(request, llm_trace)
