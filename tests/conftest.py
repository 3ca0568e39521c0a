"""Settings every test of this suite shares."""

from __future__ import annotations

import os
from typing import Any

# psycopg and requests are imported here, in the outer process, before any in-process inner run: pytester forgets
# the modules an inner run imported once it ends, and the next import makes a second copy of them. A ``requests``
# (with ``http.cookiejar``) first imported inside one came back as a copy whose CookieJar the first copy's sessions
# (LangSmith's cached client) refused: "You can only merge into CookieJar". psycopg's C extension (psycopg_binary) is
# loaded once per process and keeps raising the first copy's exception classes, which the second copy's ``except
# psycopg.Error`` does not catch: a refused connection came out as a traceback in whichever test ran next there.
import psycopg  # noqa: F401
import pytest
import requests  # noqa: F401


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (the README's test command) runs two workers per core, at most ``--maxprocesses``.

    Most of this suite's time is spent waiting, not computing: on Postgres, on inner pytest runs in a process of their
    own, on HTTP servers starting. On this project's 2-core machine one worker per core left the cores half idle (the
    fast tier took 182 s of wall time for 130 s of CPU); two per core keep them busy (122 s). More than two per core
    paid more for each worker's start than it saved.
    """
    return 2 * (os.cpu_count() or 1)


def pytest_configure() -> None:
    """The Pythons this suite starts (xdist's workers, inner runs in a process of their own, the CLI's tests) write
    bytecode caches (``__pycache__``, git-ignored) also where ``PYTHONDONTWRITEBYTECODE`` is set, as CI images often
    do: each of them compiled the plugin from source again, 1-1.7 s a process, which took the README's test command
    in a fresh clone to 96-127 s on this project's 2-core machine (83 s with the caches). Not with
    ``PYTHONPYCACHEPREFIX``: a prefix makes every child compile the standard library and the installed packages
    again too. This process itself is left as it was started."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


# Set in each worker when this suite runs under xdist; an inner run that inherited them would take itself for a worker
# (syrupy, for one, then leaves its report to a controller that does not exist).
XDIST_WORKER_VARIABLES = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID")


@pytest.fixture(autouse=True)
def _inner_runs_as_on_a_laptop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner pytest runs (pytester) print the same on a CI runner as on a laptop, and write no CI files.

    pytest stops shortening the short test summary when ``CI`` or ``BUILD_NUMBER`` is set, which changes what the
    tests count in an inner run's output; an inner run given ``--llmtrace-report`` would append its summary to the
    real run's ``GITHUB_STEP_SUMMARY``; and this suite runs under xdist in CI.
    """
    for name in ("CI", "BUILD_NUMBER", "GITHUB_STEP_SUMMARY", *XDIST_WORKER_VARIABLES):
        monkeypatch.delenv(name, raising=False)


# Plugins the dev environment installs that no inner run uses. arize-phoenix-client's pytest plugin imports the whole
# Phoenix server package (15 s of CPU at every pytest start, measured with -X importtime), langsmith's a client, and
# hypothesis's its engine: an inner run without them starts in a fraction of the time.
UNUSED_PLUGINS = ("phoenix", "langsmith_plugin", "hypothesispytest")


@pytest.fixture(autouse=True)
def _inner_runs_without_unused_plugins(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner runs (pytester, in a subprocess or in process) skip the plugins in ``UNUSED_PLUGINS``.

    Set after ``pytester`` is made, because making it clears ``PYTEST_ADDOPTS``.
    """
    if "pytester" not in request.fixturenames:
        return
    request.getfixturevalue("pytester")
    disabled = " ".join(f"-p no:{name}" for name in UNUSED_PLUGINS)
    monkeypatch.setenv("PYTEST_ADDOPTS", f"{os.environ.get('PYTEST_ADDOPTS', '')} {disabled}".strip())


@pytest.fixture(scope="session")
def pg_admin_url(request: pytest.FixtureRequest, llmtrace_postgres: Any) -> str:
    """The admin DSN of the server behind ``llmtrace_postgres``: inner runs of this suite are given it to create their
    own templates, clones and roles there. The plugin hands tests no superuser DSN (``llmtrace_postgres.url`` is the
    session's owner role), so this asks the service manager, as only a test of the plugin itself should."""
    from pytest_llmtrace.pytest import service_session as services

    return services.get_manager(request.config).endpoint("postgres").url


@pytest.fixture(scope="session")
def postgres_url(pg_admin_url: str) -> str:
    """The admin URL of this session's one embedded Postgres server (the project's own backend, started once by the
    plugin's ``llmtrace_postgres``), for inner runs: ``--llmtrace-postgres=URL`` makes each of them clone its
    database from the template already there instead of starting (and loading) a server of its own. Tests about the
    embedded backend itself keep ``--llmtrace-postgres=embedded``."""
    return pg_admin_url
