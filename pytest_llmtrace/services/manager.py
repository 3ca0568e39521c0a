"""The run's services: which backend serves each one (looked up by name in a registry users can extend), started on
first use, shared by xdist workers, stopped at the end.

One process coordinates a run: the pytest process, or the xdist controller. Workers start shared servers (embedded
Postgres, embedded Phoenix, ``ollama serve``) under a file lock in the run's state folder, so the first worker
starts each one and the others attach; every process and temp folder goes into the coordinator's ``RunRecord``, and
the coordinator stops them all when the run ends (or the next run reaps them after a SIGKILL). In-process servers
(llama.cpp, the replay front) and Docker containers belong to the process that started them.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pytest

from pytest_llmtrace.core.errors import did_you_mean, first_line
from pytest_llmtrace.core.registry import Registry, caller_place
from pytest_llmtrace.modelapi.modelfile import ModelfileError, parse_modelfile
from pytest_llmtrace.services import ollama, pg_leftovers, pg_roles, phoenix, postgres
from pytest_llmtrace.services.base import SERVICES, Endpoint, ServiceStartError, redact_url
from pytest_llmtrace.services.choice import Choice, Probes, check_setting, choose
from pytest_llmtrace.services.docker import docker_available, gpu_request
from pytest_llmtrace.services.ollama import ReplaySwitch
from pytest_llmtrace.services.pg_guard import SessionGuard, Watchdog
from pytest_llmtrace.services.postgres import PostgresDatabase
from pytest_llmtrace.services.run_records import RunContext, RunRecord, file_lock
from pytest_llmtrace.services.service_settings import SERVICE_SETTINGS

if TYPE_CHECKING:
    from pytest_llmtrace.core.settings import Resolved, Settings
    from pytest_llmtrace.services.pg_roles import RoleLimits

__all__ = [
    "REGISTRY",
    "BackendContext",
    "BackendFactory",
    "Registration",
    "ServiceBackend",
    "ServiceManager",
    "register_backend",
]


class ServiceBackend(Protocol):
    """One way of getting a service. ``start`` returns a ready ``Endpoint`` (or raises ``ServiceStartError`` saying
    why and what to do), ``stop`` undoes whatever ``start`` did and may be called twice."""

    def start(self) -> Endpoint: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class BackendContext:
    """What a backend factory may use: the user's choice and the run the backend belongs to."""

    service: str  # postgres | ollama | phoenix
    name: str  # the backend's registered name
    url: str | None  # the server's URL when the user gave one (the ``url`` backend), else None
    settings: Settings  # every service setting, with its source
    rootdir: Path
    record: RunRecord  # add child processes and temp folders here, so a killed run is cleaned up by the next one
    shared: bool  # whether xdist workers share this server: then the run's coordinator stops it, not this process
    replay_switch: ReplaySwitch  # where golden cases plug in their recordings (the replay backend serves it)

    @property
    def model_name(self) -> str:
        return self.settings["ollama_model"]

    @property
    def modelfile_path(self) -> Path:
        return self.rootdir / self.settings["ollama_modelfile"]


BackendFactory = Callable[[BackendContext], ServiceBackend]


@dataclass(frozen=True)
class Registration:
    factory: BackendFactory
    shared: bool  # a server in its own process that xdist workers attach to, instead of one per worker


REGISTRY: dict[str, Registry[Registration]] = {service: Registry(f"{service} backend") for service in SERVICES}
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


def register_backend(
    service: str, name: str, factory: BackendFactory, *, shared: bool = False, replace: bool = False
) -> None:
    """Make ``--llmtrace-<service>=<name>`` (and ``LLMTRACE_<SERVICE>``, ini ``llmtrace_<service>``) build a backend
    with ``factory``.

    Call it at import time of a plugin or of the rootdir's ``conftest.py``: the settings are checked against the
    registry when the run is configured, so a name registered later is still a usage error. ``factory`` gets a
    ``BackendContext`` and returns an object with ``start() -> Endpoint`` and ``stop()``; a class taking the context
    is a factory. Set ``shared`` for a server in its own process that xdist workers should share (add its process and
    temp folder to ``context.record``); otherwise each process starts and stops its own. A name that is taken (a
    built-in one included) raises ``ValueError`` naming where it was registered first and again, unless
    ``replace=True``::

        from pytest_llmtrace import Endpoint, register_backend

        class TeamPostgres:
            def __init__(self, context):
                self.url = os.environ["TEAM_PG_URL"]

            def start(self):
                return Endpoint.from_url("postgres", "team", self.url, started=time.monotonic())

            def stop(self):
                pass

        register_backend("postgres", "team", TeamPostgres)  # --llmtrace-postgres=team
    """
    if service not in REGISTRY:
        hint = did_you_mean(service, REGISTRY)
        raise ValueError(f"register_backend: no service {service!r}; use one of {', '.join(SERVICES)}. {hint}".strip())
    if not _NAME.match(name) or name == "auto":
        raise ValueError(
            f"register_backend: backend name {name!r} must be lower case letters, digits, '-' or '_', start with a "
            "letter, and not be 'auto'"
        )
    REGISTRY[service].register(name, Registration(factory, shared), place=caller_place(1), replace=replace)


def _probes() -> Probes:
    cache: list[tuple[bool, str]] = []

    def docker() -> tuple[bool, str]:
        if not cache:
            cache.append(docker_available())
        return cache[0]

    return Probes(docker=docker, which=shutil.which, environ=os.environ)


class ServiceManager:
    """Chooses each service's backend once, starts it on first request, and knows how to share and stop it."""

    def __init__(self, settings: Settings, context: RunContext, *, replay: bool = False) -> None:
        self.settings = settings
        self.context = context
        self.replay = replay
        self.rootdir = settings.rootdir or Path.cwd()
        self.backend_settings = _checked(settings)
        self._probes = _probes()
        self._choices: dict[str, Choice] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._owned: list[ServiceBackend] = []  # started by this process and stopped by it
        self._guards: dict[str, SessionGuard] = {}  # per session database: its roles and watchdog
        self.lockdown_notes: list[str] = []  # what could not be locked down on the server (a URL server's login)
        self.leftover_notes: list[str] = []  # what a killed run left on the server that could not be dropped
        self._reaped: set[str] = set()  # URL servers whose killed runs' leftovers this process has dropped
        self.replay_switch = ReplaySwitch()

    # -- choices ----------------------------------------------------------------------------------------------------

    @property
    def modelfile_path(self) -> Path:
        return self.rootdir / self.settings["ollama_modelfile"]

    def choice(self, service: str) -> Choice:
        if service not in self._choices:
            gguf: str | None = None
            gguf_exists = False
            if service == "ollama":
                gguf_path = self._gguf_path()
                gguf, gguf_exists = (str(gguf_path), gguf_path.is_file()) if gguf_path else (None, False)
            self._choices[service] = choose(
                service,
                self.backend_settings[service],
                self._probes,
                use_app_env=self.settings["use_app_env"] == "yes",
                gguf=gguf,
                gguf_exists=gguf_exists,
                replay=self.replay,
            )
        return self._choices[service]

    def _gguf_path(self) -> Path | None:
        try:
            return parse_modelfile(self.modelfile_path).from_path
        except ModelfileError:
            return None

    def header_lines(self) -> list[str]:
        """One line per service: the backend and why (the option, env var or ini key it came from, or what auto saw)."""
        lines = []
        for service in SERVICES:
            try:
                choice = self.choice(service)
            except pytest.UsageError:
                decided = f"unavailable with {self.settings.values[service]} (tests that use llmtrace_{service} fail)"
            else:
                decided = str(choice)
                if choice.backend == "docker":
                    decided += self._docker_details(service)
                if service == "postgres" and choice.backend not in pg_roles.LOCKED_BACKENDS:
                    decided += f"; not locked down on a server you gave: {pg_roles.URL_NOT_LOCKED}"
            lines.append(f"llmtrace {service}: {decided}")
        return lines

    def _docker_details(self, service: str) -> str:
        """The image (and, for Ollama, the GPUs): what the user chose and where that came from."""
        image = self.settings.values[f"{service}_image"]
        details = f"; image {image.value} ({image.origin})"
        if service == "ollama":
            details += f"; GPUs: {gpu_request(self.settings['ollama_gpu'])[1]}"
        return details

    @property
    def started(self) -> tuple[str, ...]:
        """The services this process started or attached to, in that order."""
        return tuple(self._endpoints)

    # -- starting ---------------------------------------------------------------------------------------------------

    def endpoint(self, service: str) -> Endpoint:
        """The ready server for ``service``; starts it, or attaches to the one another worker started."""
        if service in self._endpoints:
            return self._endpoints[service]
        choice = self.choice(service)
        registration = REGISTRY[service][choice.backend]
        if registration.shared:
            state = self.context.run_dir / f"{service}.json"
            with file_lock(self.context.run_dir / f"{service}.lock"):
                endpoint = _load_endpoint(state)
                if endpoint is None or not _ANSWERS[service](endpoint):
                    endpoint = self._start(choice, registration)
                    state.write_text(json.dumps(asdict(endpoint)))
        else:
            endpoint = self._start(choice, registration)
        self._endpoints[service] = endpoint
        return endpoint

    def _start(self, choice: Choice, registration: Registration) -> Endpoint:
        context = BackendContext(
            service=choice.service,
            name=choice.backend,
            url=choice.url,
            settings=self.settings,
            rootdir=self.rootdir,
            record=self.context.record,
            shared=registration.shared,
            replay_switch=self.replay_switch,
        )
        backend = registration.factory(context)
        endpoint = backend.start()
        if not registration.shared:
            self._owned.append(backend)
        return endpoint

    # -- Postgres databases -----------------------------------------------------------------------------------------

    def sql_fixture_files(self) -> list[Path]:
        """The ini's files and globs, in the order given; each glob sorted. A pattern matching nothing is an error."""
        files: list[Path] = []
        for pattern in self.settings["sql_fixtures"].split():
            matches = sorted(Path(p) for p in glob.glob(str(self.rootdir / pattern), recursive=True))
            matches = [m for m in matches if m.is_file()]
            if not matches:
                raise pytest.UsageError(
                    f"llmtrace_sql_fixtures: {pattern!r} matches no file under {self.rootdir} "
                    f"(from {self.settings.source('sql_fixtures')}); list the schema and seed .sql files, relative "
                    "to the rootdir"
                )
            files.extend(m for m in matches if m not in files)
        return files

    def database(self, limits: RoleLimits | None = None, *, owner: bool = False) -> PostgresDatabase:
        """Clone this session's database from the template (built once per server, under the run's file lock and
        a server-side advisory lock), with this session's own roles (``pg_roles``) let into it and nowhere else.

        Before the first case, the reader's DSN is checked to log in as the reader, not as a superuser.
        """
        import psycopg2  # loads libpq: only when a test first uses Postgres

        endpoint = self.endpoint("postgres")
        files = self.sql_fixture_files()
        digest = hashlib.sha256(pg_roles.LOCKDOWN_VERSION.encode())
        for path in files:
            digest.update(str(path.relative_to(self.rootdir)).encode() + b"\0" + path.read_bytes())
        template = f"llmtrace_tpl_{digest.hexdigest()[:12]}"
        name = f"llmtrace_{self.context.worker_id}_{uuid.uuid4().hex[:8]}".lower()
        roles: pg_roles.SessionRoles | None = None
        try:
            # A server this run started goes with it; one it was given keeps what killed runs left: reap that once
            kept_server = endpoint.backend not in pg_roles.LOCKED_BACKENDS
            if kept_server and endpoint.url not in self._reaped:
                self._reaped.add(endpoint.url)
                _, self.leftover_notes = pg_leftovers.reap(endpoint.url)
            with (
                file_lock(self.context.run_dir / "postgres-template.lock"),
                postgres.advisory_lock(endpoint.url, template),
            ):
                if not postgres.template_ready(endpoint.url, template):
                    postgres.drop_database(endpoint.url, template)  # half-built by a run that was killed
                    postgres.create_template(endpoint.url, template, files)
                    if endpoint.backend in pg_roles.LOCKED_BACKENDS:  # each clone is closed by open_clone
                        pg_roles.lock_down_server(endpoint.url)
            url = postgres.clone_database(endpoint.url, template, name)
            roles = pg_roles.SessionRoles.create(endpoint.url, limits or pg_roles.RoleLimits(), owner=owner)
            if kept_server:
                pg_leftovers.mark(endpoint.url, name, roles.names, pg_leftovers.run_marker(self.context.record))
            pg_roles.open_clone(endpoint.url, url, name, roles)
        except psycopg2.Error as exc:  # a user's server where this login may not create databases or roles
            if roles is not None:
                with contextlib.suppress(Exception):
                    postgres.drop_database(endpoint.url, name)
                    roles.drop()
            raise ServiceStartError(
                "postgres",
                endpoint.backend,
                f"cannot set up the test databases on {redact_url(endpoint.url)}: {first_line(exc)}",
                fix="connect as a role with CREATEDB and CREATEROLE (it creates a template, a clone per session and "
                "roles of its own for each session), or use --llmtrace-postgres=embedded",
                urls=(endpoint.url,),
            ) from exc
        database = PostgresDatabase(
            endpoint=endpoint,
            url=url,
            reader_url=roles.reader.dsn(endpoint.url, name),
            database=name,
            template=template,
            reader_role=roles.reader.name,
            owner_url=roles.owner.dsn(endpoint.url, name) if roles.owner is not None else None,
            owner_role=roles.owner.name if roles.owner is not None else None,
        )
        self.lockdown_notes = roles.notes
        watchdog = Watchdog(endpoint.url, name, roles.names)
        guard = SessionGuard(roles, watchdog)
        try:
            pg_roles.verify_login(database.reader_url, roles.reader.name)
            if database.owner_url is not None and roles.owner is not None:
                pg_roles.verify_login(database.owner_url, roles.owner.name)
            watchdog.start()
        except (psycopg2.Error, pg_roles.UnsafeLogin) as exc:
            guard.close()
            postgres.drop_database(endpoint.url, name)
            raise ServiceStartError(
                "postgres",
                endpoint.backend,
                f"the session's own role cannot be used safely on {redact_url(endpoint.url)}: {first_line(exc)}",
                fix="check pg_hba.conf lets the roles llmtrace_r_* / llmtrace_o_* log in with a password",
                urls=(endpoint.url, database.reader_url, database.owner_url or ""),
            ) from exc
        self._guards[name] = guard
        return database

    def guard(self, database: PostgresDatabase) -> SessionGuard:
        """The roles and watchdog of a database this manager set up: what holds each case."""
        return self._guards[database.database]

    def drop_database(self, database: PostgresDatabase) -> None:
        """End the session's roles' backends, drop its clone, then its roles (on any backend, URL ones too)."""
        guard = self._guards.pop(database.database, None)
        if guard is not None:
            guard.watchdog.stop()
        postgres.drop_database(database.endpoint.url, database.database)
        if guard is not None:
            guard.roles.drop()

    # -- stopping ---------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop what this process owns; the coordinator then stops whatever its workers started for the run."""
        errors: list[str] = []
        for backend in reversed(self._owned):
            try:
                backend.stop()
            except Exception as exc:  # keep stopping the others; report at the end
                errors.append(f"{type(backend).__name__}: {exc}")
        self._owned.clear()
        self._endpoints.clear()
        if self.context.coordinator:
            self.context.record.cleanup()  # containers a killed worker left included (by their recorded ids)
        if errors:
            raise RuntimeError("pytest-llmtrace could not stop: " + "; ".join(errors))


def _checked(settings: Settings) -> dict[str, Resolved]:
    """Each service's setting checked against the registry: a misspelled backend stops the run at configure."""
    specs = {spec.name: spec for spec in SERVICE_SETTINGS}
    return {
        service: check_setting(service, settings.values[service], REGISTRY[service], specs[service].allow_url)
        for service in SERVICES
    }


def _load_endpoint(state: Path) -> Endpoint | None:
    try:
        data = json.loads(state.read_text())
    except (OSError, ValueError):
        return None
    return Endpoint(**data)


# How a worker tells a live shared server from a note a dead one left.
_ANSWERS: dict[str, Callable[[Endpoint], bool]] = {
    "postgres": postgres.answers,
    "ollama": ollama.answers,
    "phoenix": phoenix.answers,
}


# -- the built-in backends, registered the way users register theirs ------------------------------------------------


def _url(context: BackendContext) -> str:
    assert context.url is not None, "the url backend is chosen only for a URL value"
    return context.url


register_backend("postgres", "embedded", lambda c: postgres.EmbeddedPostgres(c.record, shared=c.shared), shared=True)
register_backend("postgres", "docker", lambda c: postgres.DockerPostgres(c.settings["postgres_image"], c.record))
register_backend("postgres", "url", lambda c: postgres.UrlPostgres(_url(c)))
register_backend("ollama", "embedded", lambda c: ollama.EmbeddedOllama(c.modelfile_path, c.model_name))
register_backend(
    "ollama",
    "binary",
    lambda c: ollama.BinaryOllama(c.model_name, c.modelfile_path, c.record, models=c.settings["ollama_models"]),
    shared=True,
)
register_backend(
    "ollama",
    "docker",
    lambda c: ollama.DockerOllama(
        c.model_name,
        c.modelfile_path,
        c.settings["ollama_image"],
        c.record,
        gpu=c.settings["ollama_gpu"],
        models=c.settings["ollama_models"],
    ),
)
register_backend("ollama", "url", lambda c: ollama.UrlOllama(_url(c), c.model_name))
register_backend("ollama", "replay", lambda c: ollama.ReplayOllama(c.replay_switch))
register_backend("phoenix", "embedded", lambda c: phoenix.EmbeddedPhoenix(c.record), shared=True)
register_backend("phoenix", "docker", lambda c: phoenix.DockerPhoenix(c.settings["phoenix_image"], c.record))
register_backend("phoenix", "url", lambda c: phoenix.UrlPhoenix(_url(c)))
