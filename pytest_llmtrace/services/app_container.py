"""``llmtrace_app_image``: the service under test from the container image CI would deploy, through testcontainers.

The container runs on the host's network: the session's Postgres, Ollama API and OTLP receiver all listen on
loopback only, and a container on Docker's bridge could not reach them without opening them to it. On the host's
network nothing is published at all; the service listens where its image binds it (an image for this should bind
127.0.0.1). It is told its port in ``PORT`` (``llmtrace_app_port``, or a free one), and gets the plugin's variables
only (``DB_URI``, ``OLLAMA_HOST``, the OTLP ones), not the test run's environment. A Postgres reached by a unix socket
(the embedded server) has its socket's folder mounted at the same path. The container carries the Docker backends'
labels and is written into the run record when it is created, so cleanup follows their rules (``services.docker``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import parse_qs, urlsplit

from pytest_llmtrace.core.errors import first_line
from pytest_llmtrace.services.app_service import AppService
from pytest_llmtrace.services.base import ServiceStartError, free_port, wait_until
from pytest_llmtrace.services.docker import ContainerOwner, log_tail, prepare_container, remove, scrub
from pytest_llmtrace.services.otlp_receiver import SDK_ENDPOINT_VARIABLES

if TYPE_CHECKING:
    from pathlib import Path

    from pytest_llmtrace.services.run_records import RunRecord

SERVICE = "app"
# The variables the container gets; the rest of the test run's environment stays outside.
PASSED = (
    "DB_URI",
    "OLLAMA_HOST",
    "PHOENIX_COLLECTOR_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_BSP_SCHEDULE_DELAY",
    *SDK_ENDPOINT_VARIABLES,
)


class AppContainer(AppService):
    """The service as a container: the same readiness, requests, restarts and messages as a started command."""

    def __init__(
        self,
        *,
        image: str,
        port: int | None,
        ready_path: str | None,
        cwd: Path,
        start_timeout_s: float,
        record: RunRecord | None = None,
    ) -> None:
        super().__init__(
            argv=None, url=None, ready_path=ready_path, cwd=cwd, start_timeout_s=start_timeout_s, record=record
        )
        self.image = image
        self.container_port = port
        self._container: Any = None

    @property
    def started(self) -> bool:
        return self._container is not None

    def start(self, env: Mapping[str, str]) -> None:
        from testcontainers.core.container import DockerContainer

        self._env = dict(env)
        port = self.container_port or free_port()
        passed = {key: env[key] for key in PASSED if key in env}
        container = DockerContainer(self.image).with_env("PORT", str(port))
        for key, value in passed.items():
            container = container.with_env(key, value)
        for folder in _socket_folders(passed.get("DB_URI", "")):
            container = container.with_volume_mapping(folder, folder, "rw")
        owner = ContainerOwner.of(self.record)
        prepare_container(container, service=SERVICE, ports=[], owner=owner)
        container.with_kwargs(labels=owner.labels(SERVICE), network_mode="host")
        secrets = [value for key, value in passed.items() if key == "DB_URI"]
        fix = (
            f"run the image yourself (docker run --network host -e PORT={port} {self.image}) and check that it "
            "serves on 127.0.0.1:$PORT; llmtrace_app_port if it listens on a fixed port"
        )
        self._container = container
        self._url = f"http://127.0.0.1:{port}"
        self.starts += 1
        try:
            container.start()
        except Exception as exc:  # docker's errors have many types; all mean "could not start"
            self._fail(f"{self.image}: {first_line(exc)}", fix, secrets)
        if wait_until(self._ready, timeout=self.start_timeout_s, alive=self._running, interval=0.1):
            return
        if not self._running():
            reason = f"the container of {self.image} exited with code {self._exit_code()} before it was ready"
        else:
            reason = self._not_ready(port)
        self._fail(reason, fix, secrets)

    def _fail(self, reason: str, fix: str, secrets: list[str]) -> NoReturn:
        log = [scrub(line, secrets) for line in log_tail(self._container)]
        self.stop()
        raise ServiceStartError(SERVICE, "image", scrub(reason, secrets), log=log, fix=fix)

    def _running(self) -> bool:
        if self._container is None:
            return False
        try:
            wrapped = self._container.get_wrapped_container()
            wrapped.reload()
        except Exception:  # gone
            return False
        return bool(wrapped.status in ("created", "running"))

    def _exit_code(self) -> object:
        try:
            return self._container.get_wrapped_container().attrs["State"]["ExitCode"]
        except Exception:
            return "?"

    def ensure_running(self) -> str | None:
        if self._container is None or self._running():
            return None
        code = self._exit_code()
        self.stop()
        self.start(self._env)
        return f"the container had exited with code {code}; started again"

    def died(self) -> str | None:
        if self._container is None or self._running():
            return None
        tail = "\n".join("    " + line for line in log_tail(self._container, 30))
        return f"the container exited with code {self._exit_code()}; last lines of its log:\n{tail}"

    def log_tail(self, lines: int = 30) -> list[str]:
        return log_tail(self._container, lines)

    @property
    def pid(self) -> int | None:
        return None

    def stop(self) -> None:
        container, self._container = self._container, None
        remove(container, self.record)

    def describe(self) -> str:
        port = self.container_port or "a free port"
        return f"image {self.image} on the host's network, PORT={port}"


def _socket_folders(dsn: str) -> list[str]:
    """The unix-socket folders a libpq DSN connects through (``?host=/dir``), to mount into the container."""
    if not dsn:
        return []
    parts = urlsplit(dsn)
    hosts = parse_qs(parts.query).get("host", [])
    return [host for host in hosts if host.startswith("/")]
