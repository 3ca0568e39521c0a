"""Arize Phoenix for the session: ``phoenix serve`` as a subprocess, the official image, or a user's server.

Phoenix is large (hundreds of MB) and slow to start (15-20 s), so it lives in the ``[phoenix]`` extra, is imported
only by the backend that runs it, and starts only when a test asks for it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmtrace.services.base import Endpoint, ServiceStartError, free_port, http_ok, wait_until
from pytest_llmtrace.services.docker import PHOENIX_IMAGE, DockerService, container_host, http_container, wait_http
from pytest_llmtrace.services.process import ServerProcess

if TYPE_CHECKING:
    from pytest_llmtrace.services.run_records import RunRecord

START_TIMEOUT_S = 90.0
INSTALL_HINT = "pip install 'pytest-llmtrace[phoenix]'"


def _endpoint(backend: str, url: str, started: float, grpc_port: int | None = None) -> Endpoint:
    """Phoenix's endpoint also names where OTLP goes: what ``phoenix.otel`` and a plain OTLP exporter each want."""
    base = url.rstrip("/")
    extra = {"collector_endpoint": base, "traces_endpoint": base + "/v1/traces"}
    if grpc_port is not None:
        extra["grpc_port"] = str(grpc_port)
    return Endpoint.from_url("phoenix", backend, base, started=started, **extra)


def answers(endpoint: Endpoint) -> bool:
    """Whether the Phoenix at ``endpoint`` is up: how an xdist worker tells a live shared server from a stale note."""
    return http_ok(endpoint.url + "/healthz")


class EmbeddedPhoenix:
    """``phoenix serve`` with a throwaway working dir, free ports, loopback only and telemetry off."""

    backend = "embedded"

    def __init__(self, record: RunRecord | None = None, timeout: float = START_TIMEOUT_S) -> None:
        self.timeout = timeout
        self._server = ServerProcess("phoenix", self.backend, prefix="llmtrace-phoenix-", record=record)

    def start(self) -> Endpoint:
        if not server_installed():
            raise ServiceStartError(
                "phoenix",
                self.backend,
                "arize-phoenix is not installed",
                fix=f"{INSTALL_HINT}, or use --llmtrace-phoenix=http://host:6006 for a running Phoenix",
            )
        started = time.monotonic()
        port, grpc_port = free_port(), free_port()
        env = {
            **_clean_environ(),
            "PHOENIX_WORKING_DIR": str(self._server.workdir),
            # Phoenix writes a pid file into $TMPDIR/.arize-phoenix/pids and removes it only at a clean exit: in the
            # working dir, which the stop removes, none outlives the server (nor tells Phoenix tools it still runs)
            "TMPDIR": str(self._server.workdir),
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(port),
            "PHOENIX_GRPC_PORT": str(grpc_port),
            "PHOENIX_TELEMETRY_ENABLED": "false",
        }
        url = f"http://127.0.0.1:{port}"
        self._server.start(
            [sys.executable, "-m", "phoenix.server.main", "serve"],
            env=env,
            health_url=url + "/healthz",
            timeout=self.timeout,
            fix="check the log above; or point at a running Phoenix with --llmtrace-phoenix=http://host:6006",
        )
        return _endpoint(self.backend, url, started, grpc_port)

    def stop(self) -> None:
        self._server.stop()


class DockerPhoenix(DockerService):
    """The official image (or the one chosen with --llmtrace-phoenix-image), labelled and published on loopback.

    The official image is distroless (no shell), so readiness is an HTTP wait on ``/healthz``.
    """

    service = "phoenix"

    def __init__(
        self, image: str = PHOENIX_IMAGE, record: RunRecord | None = None, timeout: float = START_TIMEOUT_S
    ) -> None:
        super().__init__(image, record)
        self.timeout = timeout

    def configure(self) -> Any:
        env = {"PHOENIX_TELEMETRY_ENABLED": "false"}
        return http_container(self.image, service=self.service, port=6006, owner=self.owner, env=env)

    def wait(self, container: Any) -> str:
        url = f"http://{container_host(container)}:{container.get_exposed_port(6006)}"
        wait_http(container, url + "/healthz", timeout=self.timeout)
        return url

    def start(self) -> Endpoint:
        started = time.monotonic()
        return _endpoint(self.backend, self.start_container(), started)


class UrlPhoenix:
    """A Phoenix the user already runs: only checked, never started or stopped."""

    backend = "url"

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def start(self) -> Endpoint:
        started = time.monotonic()
        if not wait_until(lambda: http_ok(self.url + "/healthz"), timeout=self.timeout):
            raise ServiceStartError(
                "phoenix",
                self.backend,
                f"GET {self.url}/healthz did not answer within {self.timeout:.0f} s",
                fix="start Phoenix there, fix the URL, or use --llmtrace-phoenix=embedded",
                urls=(self.url,),
            )
        return _endpoint(self.backend, self.url, started)

    def stop(self) -> None:
        """Nothing to stop: the server belongs to the user."""


def server_installed() -> bool:
    """Whether arize-phoenix (not only its client, which also lives under ``phoenix``) is installed.

    Asked without importing it: ``find_spec("phoenix.server")`` would import the ``phoenix`` package into the pytest
    process first, which takes seconds and hundreds of MB for a server that runs in a process of its own.
    """
    spec = importlib.util.find_spec("phoenix")
    locations = spec.submodule_search_locations if spec is not None else None
    return any((Path(location) / "server" / "main.py").is_file() for location in locations or ())


def _clean_environ() -> dict[str, str]:
    """The parent's environment minus Phoenix settings a developer may have exported for their own Phoenix."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PHOENIX_")}
