"""The session's services: chosen once, started on first use, shared by xdist workers, stopped at the end.

One process coordinates a run: the pytest process, or the xdist controller. Workers start shared servers (embedded
Postgres, embedded Phoenix, ``ollama serve``) under a file lock in a state directory keyed by the run id, so the
first worker starts each one and the others attach; every process and temp dir goes into the coordinator's
``RunRecord``, and the coordinator stops them all when the run ends (or the next run reaps them after a SIGKILL).
In-process servers (llama.cpp) and Docker containers belong to the process that started them.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from pytest_llmtrace.services.base import Endpoint, ServiceStartError, http_ok, redact_url
from pytest_llmtrace.services.process import RunRecord, reap_orphans, registry_dir
from pytest_llmtrace.services.select import APP_ENV, Choice, Probes, choose

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pytest_llmtrace.settings import Settings

SERVICES = ("postgres", "ollama", "phoenix")


class Backend(Protocol):
    def start(self) -> Endpoint: ...
    def stop(self) -> None: ...


@dataclass(frozen=True)
class PostgresDatabase:
    """The session's own database on the Postgres service, cloned from the template holding the SQL fixtures."""

    endpoint: Endpoint  # the server
    url: str  # this session's database, as the fixture owner (can write: for fixtures and setup code)
    reader_url: str  # the same database as the read-only role: what the app and model-written SQL get
    database: str
    template: str

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


@dataclass(frozen=True)
class RunContext:
    run_id: str
    run_dir: Path  # state files and locks shared by the coordinator and its workers
    record: RunRecord
    coordinator: bool
    worker_id: str  # "main" without xdist, else gw0, gw1, ...


def run_context(config: pytest.Config) -> RunContext:
    """Who coordinates this run; the controller gives xdist a run id it knows, so its workers find the state dir."""
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None:
        run_id = str(workerinput["testrunuid"])
        run_dir = registry_dir().parent / f"run-{run_id}"
        owner = json.loads((run_dir / "owner.json").read_text())
        record = RunRecord(
            owner_pid=int(owner["pid"]), owner_create_time=float(owner["create_time"]), path=Path(owner["record"])
        )
        return RunContext(run_id, run_dir, record, coordinator=False, worker_id=str(workerinput["workerid"]))
    reap_orphans()
    run_id = uuid.uuid4().hex
    if getattr(config.option, "dist", "no") != "no" and hasattr(config.option, "testrunuid"):
        if config.option.testrunuid is None:
            config.option.testrunuid = run_id
        run_id = str(config.option.testrunuid)
    run_dir = registry_dir().parent / f"run-{run_id}"
    run_dir.mkdir(parents=True, exist_ok=True)
    record = RunRecord()
    record.add_path(run_dir)
    owner = {"pid": record.owner_pid, "create_time": record.owner_create_time, "record": str(record.path)}
    (run_dir / "owner.json").write_text(json.dumps(owner))
    return RunContext(run_id, run_dir, record, coordinator=True, worker_id="main")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _probes() -> Probes:
    from pytest_llmtrace.services.docker import docker_available

    cache: list[tuple[bool, str]] = []

    def docker() -> tuple[bool, str]:
        if not cache:
            cache.append(docker_available())
        return cache[0]

    return Probes(docker=docker, which=shutil.which, environ=os.environ)


class ReplaySwitch:
    """The backend behind the session's one replay server: each golden case plugs in its own recording.

    One server for the whole run, because apps often build their Ollama client at import time from OLLAMA_HOST and
    keep it; a new port per case would leave them talking to the first case's server.
    """

    def __init__(self) -> None:
        self._current: Any = None

    def use(self, backend: Any) -> None:
        self._current = backend

    def models(self) -> Any:
        return self._current.models() if self._current is not None else []

    def chat(self, request: Any) -> Any:
        from pytest_llmtrace.ollama_api.server import BackendError

        if self._current is None:
            raise BackendError(
                503,
                "pytest-llmtrace replay server: no golden case is being replayed now (use --llmtrace-mode=live "
                "for a real model outside golden cases)",
            )
        return self._current.chat(request)


class ReplayServer:
    """The replay mode's Ollama service: our Ollama-API front over the ReplaySwitch, on a free loopback port."""

    backend = "replay"

    def __init__(self, switch: ReplaySwitch) -> None:
        self.switch = switch
        self._server: Any = None

    def start(self) -> Endpoint:
        import time

        from pytest_llmtrace.ollama_api.server import OllamaAPIServer

        started = time.monotonic()
        self._server = OllamaAPIServer(self.switch).start()
        url = self._server.url
        port = int(url.rsplit(":", 1)[1])
        return Endpoint("ollama", "replay", url, "127.0.0.1", port, time.monotonic() - started)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


class ServiceManager:
    """Chooses each service's backend once, starts it on first request, and knows how to share and stop it."""

    def __init__(self, settings: Settings, context: RunContext, *, replay: bool = False) -> None:
        self.settings = settings
        self.context = context
        self.replay = replay
        self.rootdir = settings.rootdir or Path.cwd()
        self._probes = _probes()
        self._choices: dict[str, Choice] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._owned: list[Backend] = []  # started by this process and stopped by it
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
                self.settings.values[service],
                self._probes,
                use_app_env=self.settings["use_app_env"] == "yes",
                gguf=gguf,
                gguf_exists=gguf_exists,
                replay=self.replay,
            )
        return self._choices[service]

    def _gguf_path(self) -> Path | None:
        from pytest_llmtrace.ollama_api.modelfile import ModelfileError, parse_modelfile

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
            lines.append(f"llmtrace {service}: {decided}")
        return lines

    def _docker_details(self, service: str) -> str:
        """The image (and, for Ollama, the GPUs): what the user chose and where that came from."""
        from pytest_llmtrace.services.docker import gpu_request

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
        if self._shared(choice):
            state = self.context.run_dir / f"{service}.json"
            with _locked(self.context.run_dir / f"{service}.lock"):
                endpoint = _load_endpoint(state)
                if endpoint is None or not _alive(endpoint):
                    endpoint = self._start(choice, shared=True)
                    state.write_text(json.dumps(asdict(endpoint)))
        else:
            endpoint = self._start(choice, shared=False)
        self._endpoints[service] = endpoint
        return endpoint

    @staticmethod
    def _shared(choice: Choice) -> bool:
        """Subprocess servers are shared by xdist workers; in-process ones and containers are per process."""
        return (choice.service, choice.backend) in {
            ("postgres", "embedded"),
            ("phoenix", "embedded"),
            ("ollama", "binary"),
        }

    def _start(self, choice: Choice, *, shared: bool) -> Endpoint:
        backend = self._backend(choice, shared=shared)
        endpoint = backend.start()
        if not shared:
            self._owned.append(backend)
        return endpoint

    def _backend(self, choice: Choice, *, shared: bool) -> Backend:
        record = self.context.record
        model = self.settings["ollama_model"]
        if choice.service == "postgres":
            from pytest_llmtrace.services import postgres

            if choice.backend == "url":
                assert choice.url is not None
                return postgres.UrlPostgres(choice.url)
            if choice.backend == "docker":
                return postgres.DockerPostgres(self.settings["postgres_image"], record)
            return postgres.EmbeddedPostgres(record, shared=shared)
        if choice.service == "phoenix":
            from pytest_llmtrace.services import phoenix

            if choice.backend == "url":
                assert choice.url is not None
                return phoenix.UrlPhoenix(choice.url)
            if choice.backend == "docker":
                return phoenix.DockerPhoenix(self.settings["phoenix_image"], record)
            return phoenix.EmbeddedPhoenix(record)
        from pytest_llmtrace.services import ollama

        if choice.backend == "replay":
            return ReplayServer(self.replay_switch)
        if choice.backend == "url":
            assert choice.url is not None
            return ollama.UrlOllama(choice.url, model)
        if choice.backend == "docker":
            image, gpu = self.settings["ollama_image"], self.settings["ollama_gpu"]
            return ollama.DockerOllama(model, self.modelfile_path, image, record, gpu=gpu)
        if choice.backend == "binary":
            return ollama.BinaryOllama(model, self.modelfile_path, record)
        return ollama.EmbeddedOllama(self.modelfile_path, model)

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

    def database(self) -> PostgresDatabase:
        """Clone this session's database from the template (built once per server, under the lock)."""
        import psycopg2

        from pytest_llmtrace.services import postgres

        endpoint = self.endpoint("postgres")
        files = self.sql_fixture_files()
        digest = hashlib.sha256()
        for path in files:
            digest.update(str(path.relative_to(self.rootdir)).encode() + b"\0" + path.read_bytes())
        template = f"llmtrace_tpl_{digest.hexdigest()[:12]}"
        name = f"llmtrace_{self.context.worker_id}_{uuid.uuid4().hex[:8]}".lower()
        try:
            with _locked(self.context.run_dir / "postgres-template.lock"):
                if not postgres.database_exists(endpoint.url, template):
                    postgres.create_template(endpoint.url, template, files)
                    postgres.grant_read_only(endpoint.url, template)
            url = postgres.clone_database(endpoint.url, template, name)
        except psycopg2.Error as exc:  # a user's server where this login may not create databases
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ServiceStartError(
                "postgres",
                endpoint.backend,
                f"cannot set up the test databases on {redact_url(endpoint.url)}: {reason}",
                fix="connect as a role with CREATEDB and CREATEROLE (it creates a template, a clone per session and "
                "the read-only role llmtrace_reader), or use --llmtrace-postgres=embedded",
            ) from exc
        return PostgresDatabase(
            endpoint=endpoint, url=url, reader_url=postgres.reader_url(url), database=name, template=template
        )

    def drop_database(self, database: PostgresDatabase) -> None:
        from pytest_llmtrace.services import postgres

        postgres.drop_database(database.endpoint.url, database.database)

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
            self.context.record.cleanup()
            if any(choice.backend == "docker" for choice in self._choices.values()):
                self._remove_run_containers()
        if errors:
            raise RuntimeError("pytest-llmtrace could not stop: " + "; ".join(errors))

    def _remove_run_containers(self) -> None:
        """Containers of this run that no backend stopped (an xdist worker's, when the worker was killed). Best
        effort: when Docker does not answer now, the next run's sweep removes them."""
        from pytest_llmtrace.services.docker import ContainerOwner, remove_run_containers

        if not self._probes.docker()[0]:
            return
        with contextlib.suppress(Exception):
            remove_run_containers(ContainerOwner.of(self.context.record).run)


def _load_endpoint(state: Path) -> Endpoint | None:
    try:
        data = json.loads(state.read_text())
    except (OSError, ValueError):
        return None
    return Endpoint(**data)


def _alive(endpoint: Endpoint) -> bool:
    if endpoint.service == "postgres":
        from pytest_llmtrace.services.postgres import can_connect

        return can_connect(endpoint.url)
    path = "/api/version" if endpoint.service == "ollama" else "/healthz"
    return http_ok(endpoint.url + path)


@contextlib.contextmanager
def app_environment(**values: str) -> Iterator[None]:
    """Set the app's variables for the session and put back what was there before."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


_MANAGER_KEY = pytest.StashKey[ServiceManager]()


def configure(config: pytest.Config, *, replay: bool) -> None:
    """Resolve the service settings (a bad value is a UsageError now, not at the first test) and set up the run."""
    from pytest_llmtrace.settings import SERVICE_SETTINGS, resolve

    settings = resolve(config, SERVICE_SETTINGS)
    config.stash[_MANAGER_KEY] = ServiceManager(settings, run_context(config), replay=replay)


def get_manager(config: pytest.Config) -> ServiceManager:
    return config.stash[_MANAGER_KEY]


def unconfigure(config: pytest.Config) -> None:
    manager = config.stash.get(_MANAGER_KEY, None)
    if manager is not None:
        del config.stash[_MANAGER_KEY]
        manager.close()


def report_header(config: pytest.Config) -> list[str]:
    return get_manager(config).header_lines()


__all__ = [
    "APP_ENV",
    "SERVICES",
    "PostgresDatabase",
    "RunContext",
    "ServiceManager",
    "app_environment",
    "configure",
    "get_manager",
    "report_header",
    "run_context",
    "unconfigure",
]
