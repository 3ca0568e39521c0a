"""The Docker backends of Postgres and Phoenix, for real where a Docker daemon answers; skipped with the reason here.

(The Ollama container backend has its own tests in test_ollama_backends.py.)
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg2
import pytest

from pytest_llmtrace.services.base import ServiceStartError, http_ok
from pytest_llmtrace.services.docker import DEFAULT_SOCKET, docker_available, docker_error_fix
from pytest_llmtrace.services.phoenix import DockerPhoenix
from pytest_llmtrace.services.postgres import DockerPostgres

DOCKER, WHY_NOT = docker_available()
needs_docker = pytest.mark.skipif(not DOCKER, reason=f"needs a Docker daemon: {WHY_NOT}")


@needs_docker
def test_docker_postgres_accepts_connections() -> None:
    backend = DockerPostgres()
    endpoint = backend.start()
    try:
        assert endpoint.backend == "docker"
        with psycopg2.connect(endpoint.url) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        backend.stop()


@needs_docker
def test_docker_phoenix_answers_healthz() -> None:
    backend = DockerPhoenix()
    endpoint = backend.start()
    try:
        assert http_ok(endpoint.url + "/healthz")
    finally:
        backend.stop()


@pytest.mark.skipif(DOCKER, reason="checks the message users see when Docker is absent")
def test_without_docker_the_error_names_the_fix() -> None:
    with pytest.raises(ServiceStartError) as excinfo:
        DockerPostgres().start()
    message = str(excinfo.value)
    assert message.startswith("postgres (docker) did not start: ")
    assert message.endswith("fix: Docker is not reachable: start it or use --llmtrace-postgres=embedded")
    assert docker_error_fix("ollama") == "Docker is not reachable: start it or use --llmtrace-ollama=binary"


@pytest.mark.skipif(
    DOCKER or bool(os.environ.get("DOCKER_HOST")) or Path(DEFAULT_SOCKET).exists(),
    reason="checks the answer on a machine with no Docker socket and no DOCKER_HOST",
)
def test_without_a_socket_the_answer_comes_without_connecting() -> None:
    assert docker_available() == (False, f"no Docker daemon socket at {DEFAULT_SOCKET}, DOCKER_HOST unset")
