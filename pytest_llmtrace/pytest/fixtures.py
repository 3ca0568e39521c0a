"""The fixtures users meet. Spans are recorded for every test anyway; these fixtures are views on the recording."""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmtrace.checks.check_settings import options_for
from pytest_llmtrace.checks.reader_connections import READERS
from pytest_llmtrace.core.errors import LLMTraceError, did_you_mean
from pytest_llmtrace.core.url_secrets import redact_url
from pytest_llmtrace.pytest import app_session, recording
from pytest_llmtrace.pytest import service_session as services
from pytest_llmtrace.pytest.checker import Checker
from pytest_llmtrace.pytest.failing import fail, fail_on
from pytest_llmtrace.pytest.recording import TestRecording
from pytest_llmtrace.pytest.replay_config import get_config
from pytest_llmtrace.services.pg_roles import RoleLimits

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from opentelemetry.sdk.trace import TracerProvider

    from pytest_llmtrace.pytest.recorder import Recorder
    from pytest_llmtrace.services.base import Endpoint
    from pytest_llmtrace.services.postgres import PostgresDatabase


@pytest.fixture(scope="session")
def _llmtrace_recorder(pytestconfig: pytest.Config) -> Recorder:
    """The session's recorder, looked up once (``llm_trace`` runs for every traced test)."""
    return recording.get_recorder(pytestconfig)


@pytest.fixture
def llm_trace(_llmtrace_recorder: Recorder) -> TestRecording:
    """The spans recorded during this test: ``llm_trace.trace``, ``.llm_calls``, ``.sql_statements``, ``print()``."""
    return recording.current_recording(_llmtrace_recorder)


@pytest.fixture(scope="session")
def llmtrace_tracer_provider(request: pytest.FixtureRequest) -> TracerProvider:
    """The SDK TracerProvider spans are recorded from: give it to instrumentors that take ``tracer_provider=``."""
    recorder = recording.get_recorder(request.config)
    recorder.ensure_global()
    if recorder.provider is None:
        window = recorder.current
        problem = recorder.problem(window) if window is not None else None
        fail(str(problem) if problem is not None else "pytest-llmtrace has no TracerProvider to record from")
    return recorder.provider


# The role default statement_timeout is a backstop behind the case deadline, never shorter than the longest
# automatic deadline: a case given a longer deadline by its marker is not cut short by it.
ROLE_STATEMENT_TIMEOUT_S = 60.0

# -- services ---------------------------------------------------------------------------------------------------------
# Session-scoped and lazy: a service starts the first time a test asks for it, so a run that never touches Phoenix
# never pays its 15 s start. Each fixture also sets the variable the application reads, and puts it back afterwards.


def _start(request: pytest.FixtureRequest, service: str) -> Endpoint:
    manager = services.get_manager(request.config)
    with fail_on(LLMTraceError):  # ServiceStartError: backend, log tail and fix are in the message
        return manager.endpoint(service)


@pytest.fixture(scope="session")
def llmtrace_postgres(request: pytest.FixtureRequest) -> Iterator[PostgresDatabase]:
    """This session's own database (cloned from the SQL fixtures' template); ``DB_URI`` is its read-only DSN, as
    this session's own read-only role.

    ``.url`` (and ``.endpoint.url``) log in as this session's owner role, never as a superuser: it owns the clone's
    schemas and tables, so a fixture or test writes test data, or creates a table, with it. Code a case's SQL left
    in the clone (a trigger on a table) runs as whoever fires it; a write through ``.url`` runs it with the owner's
    rights, no more than the case had (and the guard drops such code after each case). The admin's DSN is kept
    inside the plugin: a test that must create databases or roles needs its own server (``--llmtrace-postgres=URL``).
    """
    manager = services.get_manager(request.config)
    config = get_config(request.config)
    server = _start(request, "postgres")
    limits = RoleLimits(
        statement_timeout_ms=int(max(ROLE_STATEMENT_TIMEOUT_S, config.options.case_deadline_s) * 1000),
        temp_file_limit_kb=config.temp_file_limit_mb * 1024,
    )
    # a SQL fixture that does not load names its file, a pattern that matches none says so; an unsafe login says why
    with fail_on(LLMTraceError, pytest.UsageError):
        database = manager.database(limits, owner=config.app_db == "owner")
    for note in manager.lockdown_notes:
        warnings.warn(f"llmtrace postgres: not locked down on {redact_url(server.url)}: {note}", stacklevel=1)
    for note in manager.leftover_notes:  # a killed run's clone or role: the next run that can drop it will
        warnings.warn(f"llmtrace postgres: on {redact_url(server.url)}: {note}", stacklevel=1)
    try:
        with services.app_environment(DB_URI=database.reader_url):
            yield database
    finally:
        READERS.close(database.reader_url)  # the checks' reused connections, before their database goes
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


@pytest.fixture(scope="session")
def llmtrace_service(
    request: pytest.FixtureRequest, llmtrace_postgres: PostgresDatabase, llmtrace_ollama: Endpoint
) -> Iterator[app_session.AppSession]:
    """The service under test (``llmtrace_app_command`` or ``llmtrace_app_url``), started once per session after
    Postgres and the Ollama API, with DB_URI (the session's sandboxed reader, or its owner with
    ``llmtrace_app_db = owner``), OLLAMA_HOST and the OTLP variables pointed at them; stopped before they are."""
    session = app_session.get(request.config)
    if session is None:
        fail("no service under test: set llmtrace_app_command (or llmtrace_app_url) in the pytest ini")
    owner = session.app_db_owner and llmtrace_postgres.owner_url is not None
    db_url = llmtrace_postgres.owner_url if owner and llmtrace_postgres.owner_url else llmtrace_postgres.reader_url
    try:
        app_session.start_for(session, db_url, llmtrace_ollama.url)
        yield session
    finally:
        session.service.stop()


@pytest.fixture
def llmtrace_app(
    request: pytest.FixtureRequest,
    llmtrace_postgres: PostgresDatabase,
    llmtrace_ollama: Endpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Any]:
    """The app a golden case replays through: ``llmtrace_target`` from the ini, imported only now.

    Imported after the services are up and DB_URI / OLLAMA_HOST are set, because apps often read them (and set up
    their TracerProvider) at import time. Each case calls it with the question (``llmtrace_question`` says where
    the golden trace has it) and, when it has a parameter named ``trace``, with ``trace=`` the golden ``Trace``,
    so an app with several inputs (user id, session, locale) is driven exactly as recorded. Override this fixture
    for full control: the callable it returns is called the same way.
    """
    config = get_config(request.config)
    if app_session.get(request.config) is not None:  # a service: asked over HTTP, its spans back over OTLP
        session: app_session.AppSession = request.getfixturevalue("llmtrace_service")
        recorder = recording.get_recorder(request.config)
        timeout_s = options_for(request.node, config.options).case_deadline_s
        return app_session.ServiceCaller(session, recorder, recorder.current, timeout_s)
    if config.app_db == "owner" and llmtrace_postgres.owner_url is not None:
        monkeypatch.setenv("DB_URI", llmtrace_postgres.owner_url)
    return _load_target(config.target, config.settings.source("target"))


def _load_target(target: str, source: str) -> Callable[..., Any]:
    if not target:
        fail(
            'no app to replay the golden traces against: set llmtrace_target = "package.module:function" in the '
            "pytest ini (the function is called with the user question, and trace= the golden Trace if it has a "
            "parameter named trace), or override the llmtrace_app fixture"
        )
    module_name, sep, attribute = target.partition(":")
    where = f"llmtrace_target {target!r} (from {source})"
    if not sep or not module_name or not attribute:
        fail(f"{where}: expected 'package.module:function'")
    with fail_on(
        ImportError, prefix=f"{where}: cannot import {module_name!r}: ", suffix=" (is its folder on pythonpath?)"
    ):
        module = importlib.import_module(module_name)
    app = getattr(module, attribute, None)
    if callable(app):
        return app  # type: ignore[no-any-return]
    hint = did_you_mean(attribute, [n for n in dir(module) if not n.startswith("_")])
    fail(f"{where}: module {module_name!r} has no function {attribute!r}{'; ' + hint if hint else ''}")


@pytest.fixture
def llmtrace_check(request: pytest.FixtureRequest, llm_trace: TestRecording) -> Checker:
    """Golden-case checks for hand-written tests: ``sql_executes()``, ``within_budget()``, ``matches_snapshot()``."""
    return Checker(request, llm_trace)
