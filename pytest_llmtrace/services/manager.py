"""The run's services: which backend serves each one (looked up by name in a registry users can extend), started on
first use, shared by xdist workers, stopped at the end.

One process coordinates a run: the pytest process, or the xdist controller. Workers start shared servers (embedded
Postgres, embedded Phoenix, ``ollama serve``) under a file lock in the run's state folder, so the first worker
starts each one and the others attach; every process and temp folder goes into the coordinator's ``RunRecord``, and
the coordinator stops them all when the run ends (or the next run reaps them after a SIGKILL). In-process servers
(llama.cpp, the replay front) and Docker containers belong to the process that started them.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_llmtrace.modelapi.modelfile import ModelfileError, parse_modelfile
from pytest_llmtrace.services import (
    ollama,
    ollama_timing,
    pg_cluster_cache,
    pg_databases,
    pg_leftovers,
    pg_lockdown,
    pg_session,
    phoenix,
    postgres,
)
from pytest_llmtrace.services.backends import REGISTRY, BackendContext, Registration, ServiceBackend
from pytest_llmtrace.services.base import SERVICES, Endpoint
from pytest_llmtrace.services.choice import Choice, Probes, check_setting, choose
from pytest_llmtrace.services.docker import docker_available, gpu_request
from pytest_llmtrace.services.ollama import ReplaySwitch
from pytest_llmtrace.services.pg_guard import SessionGuard
from pytest_llmtrace.services.pg_suite import SuiteClones
from pytest_llmtrace.services.postgres import PostgresDatabase
from pytest_llmtrace.services.run_records import RunContext
from pytest_llmtrace.services.service_settings import SERVICE_SETTINGS
from pytest_llmtrace.services.user_folder import file_lock

if TYPE_CHECKING:
    from pytest_llmtrace.core.settings import Resolved, Settings
    from pytest_llmtrace.services.pg_roles import RoleLimits


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
        self._suites: dict[str, SuiteClones] = {}  # per session database: its semantic test suites' clones
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
        """One line per service: the backend and why (the option, env var or ini key it came from, or what auto saw);
        for Postgres also what bounds a case on that kind of server, and what does not."""
        lines = []
        for service in SERVICES:
            choice: Choice | None = None
            try:
                choice = self.choice(service)
            except pytest.UsageError:
                decided = f"unavailable with {self.settings.values[service]} (tests that use llmtrace_{service} fail)"
            else:
                decided = str(choice)
                if choice.backend == "docker":
                    decided += self._docker_details(service)
                if service == "postgres" and choice.backend not in pg_lockdown.LOCKED_BACKENDS:
                    decided += f"; not locked down on a server you gave: {pg_lockdown.URL_NOT_LOCKED}"
            lines.append(f"llmtrace {service}: {decided}")
            if service == "postgres" and choice is not None:
                lines.append(f"llmtrace postgres case limits: {postgres.server_bounds(choice.backend)}")
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
        if service == "ollama" and choice.backend in ollama_timing.TIMED_BACKENDS:
            endpoint = self._timed(endpoint)
        self._endpoints[service] = endpoint
        return endpoint

    def _timed(self, endpoint: Endpoint) -> Endpoint:
        """``endpoint`` behind this process's timing proxy, so a real Ollama's answers are timed as the front's are
        (each process its own: the timings are read where the case runs)."""
        proxy = ollama_timing.TimedOllama(endpoint)
        timed = proxy.start()
        self._owned.append(proxy)
        return timed

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
            cluster_seed=self._cluster_seed() if choice.service == "postgres" else None,
        )
        backend = registration.factory(context)
        endpoint = backend.start()
        if not registration.shared:
            self._owned.append(backend)
        return endpoint

    # -- Postgres databases -----------------------------------------------------------------------------------------

    def _cluster_seed(self) -> pg_cluster_cache.ClusterSeed | None:
        """The fixtures' template for a server's cached cluster; None when no fixture file matches (that error is
        the session's, when it asks for a database)."""
        try:
            return pg_session.cluster_seed(self.sql_fixture_files(), self.rootdir)
        except pytest.UsageError:
            return None

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

        The session always gets an owner role too: it owns the clone's schemas and tables, and its DSN is the
        database's ``url`` (and ``endpoint.url``), what tests and fixtures write test data with. The admin's DSN stays
        in the manager: code a case left in the clone (a trigger on a fixture table) runs as whoever fires it, so no
        superuser ever writes there. With ``owner`` (``llmtrace_app_db = owner``) the app gets that role's DSN too.
        """
        database, guard = pg_session.open_session(
            self.endpoint("postgres"),
            self.sql_fixture_files(),
            rootdir=self.rootdir,
            context=self.context,
            reaped=self._reaped,
            notes=self,
            limits=limits,
            owner=owner,
        )
        self._guards[database.database] = guard
        return database

    def guard(self, database: PostgresDatabase) -> SessionGuard:
        """The roles and watchdog of a database this manager set up: what holds each case."""
        return self._guards[database.database]

    def suite_clones(self, database: PostgresDatabase) -> SuiteClones:
        """Where ``result_match = suite`` makes its databases: clones of the session's template, perturbed by the
        admin (whose DSN stays here), read by the session's reader, dropped with the session's database (on a URL
        server marked with the run, so a killed run's are dropped by the next run there, as its own clone is)."""
        clones = self._suites.get(database.database)
        if clones is None:
            guard = self._guards[database.database]
            admin_url = guard.roles.admin_url
            marker = pg_leftovers.run_marker(self.context.record)

            def mark(name: str) -> None:
                pg_leftovers.mark(admin_url, name, (), marker)

            kept = self.endpoint("postgres").backend not in pg_lockdown.LOCKED_BACKENDS  # a URL server stays
            clones = SuiteClones(admin_url, database.template, guard.roles, mark=mark if kept else None)
            self._suites[database.database] = clones
        return clones

    def drop_database(self, database: PostgresDatabase) -> None:
        """End the session's roles' backends, drop its clone, then its roles (on any backend, URL ones too)."""
        suites = self._suites.pop(database.database, None)
        if suites is not None:
            suites.close()
        guard = self._guards.pop(database.database, None)
        if guard is not None:
            guard.watchdog.stop()
            if guard.objects is not None:
                guard.objects.close()
        admin_url = guard.roles.admin_url if guard is not None else self.endpoint("postgres").url
        pg_databases.drop_database(admin_url, database.database)
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
