"""The little the Docker backends share: is a daemon there, and start one pinned image with an HTTP wait.

testcontainers is imported here and only here, lazily: without Docker, constructing a container raises at once, so
``auto`` asks ``docker_available()`` first and never pays for the import on a machine without a daemon.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmtrace.errors import first_line

if TYPE_CHECKING:
    from collections.abc import Mapping


def docker_available(timeout: float = 2.0) -> tuple[bool, str]:
    """(True, "") when a daemon answers a ping; else (False, why) for the report header and error messages.

    Asked once per session for the header: with no DOCKER_HOST and no local socket the answer is known without
    importing the docker SDK (about 60 ms) or connecting anywhere.
    """
    if not os.environ.get("DOCKER_HOST") and not Path(DEFAULT_SOCKET).exists():
        return False, f"no Docker daemon socket at {DEFAULT_SOCKET}, DOCKER_HOST unset"
    try:
        import docker
    except ImportError:
        return False, "the docker package is not installed (pip install testcontainers)"
    try:
        client = docker.from_env(timeout=int(max(timeout, 1)))
    except Exception as exc:  # DockerException and connection errors: all mean "no daemon here"
        return False, _first_line(exc)
    try:
        client.ping()
    except Exception as exc:
        return False, _first_line(exc)
    finally:
        with contextlib.suppress(Exception):
            client.close()
    return True, ""


DEFAULT_SOCKET = "/var/run/docker.sock"


def _first_line(exc: BaseException) -> str:
    """The reason for the header; docker-py's missing-socket error is a long nested repr, so it is said plainly."""
    text = str(exc)
    if "FileNotFoundError" in text or "No such file or directory" in text:
        return "no Docker daemon socket, DOCKER_HOST " + os.environ.get("DOCKER_HOST", "unset")
    return first_line(exc)


def docker_error_fix(service: str) -> str:
    embedded = "binary" if service == "ollama" else "embedded"
    return f"Docker is not reachable: start it or use --llmtrace-{service}={embedded}"


def start_container(
    image: str,
    *,
    port: int,
    env: Mapping[str, str] | None = None,
    health_path: str,
    timeout: float,
    volumes: Mapping[str, str] | None = None,
) -> tuple[Any, str, int]:
    """Start ``image`` exposing ``port``, wait for ``GET health_path``; returns (container, host, port)."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import HttpWaitStrategy

    container = DockerContainer(image).with_exposed_ports(port)
    for key, value in (env or {}).items():
        container = container.with_env(key, value)
    for host_path, container_path in (volumes or {}).items():
        container = container.with_volume_mapping(host_path, container_path, "rw")
    container = container.waiting_for(HttpWaitStrategy(port, health_path).with_startup_timeout(int(timeout)))
    container.start()
    return container, container.get_container_host_ip(), int(container.get_exposed_port(port))
