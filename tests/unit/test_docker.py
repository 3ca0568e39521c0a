"""The Docker backends' decisions that need no engine: which containers a run may remove, where ports go, GPUs, error
fixes.

The engine-backed half is in tests/docker/test_docker_services.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import docker.errors
import psutil
import pytest

from pytest_llmtrace.services.base import ServiceStartError
from pytest_llmtrace.services.docker import (
    HOST_LABEL,
    IMAGES,
    LABEL_PREFIX,
    TOKEN_LABEL,
    ContainerOwner,
    DockerService,
    gpu_request,
    publish_on_loopback,
    scrub,
    start_fix,
)
from pytest_llmtrace.services.docker_sweep import DeadRun, provably_owned, sweep
from pytest_llmtrace.services.ollama_models import place_blob
from pytest_llmtrace.services.run_records import RunRecord, reap_orphans


def test_a_container_names_its_run_owner_and_host_and_carries_only_the_hash_of_its_runs_token(tmp_path: Path) -> None:
    record = RunRecord(tmp_path)
    labels = ContainerOwner.of(record).labels("postgres")

    assert labels[f"{LABEL_PREFIX}.pid"] == str(os.getpid())
    assert float(labels[f"{LABEL_PREFIX}.pid-started"]) == psutil.Process().create_time()
    assert labels[HOST_LABEL] == socket.gethostname()
    assert labels[f"{LABEL_PREFIX}.service"] == "postgres"
    assert labels[f"{LABEL_PREFIX}.run"] == record.path.stem
    assert labels[TOKEN_LABEL] == hashlib.sha256(record.token.encode()).hexdigest()
    assert record.token not in json.dumps(labels)
    assert TOKEN_LABEL not in ContainerOwner.of(None).labels("postgres")  # no record: nothing can prove it later


def test_a_run_records_owner_owns_the_containers_of_the_run(tmp_path: Path) -> None:
    """xdist workers write into the controller's record: their containers name the controller, which outlives them,
    and carry the controller's token, which a worker reads from the record."""
    record = RunRecord(tmp_path)
    record.add_path(tmp_path / "x")  # the record is on disk once it lists something
    worker = RunRecord(owner_pid=record.owner_pid, owner_create_time=record.owner_create_time, path=record.path)
    owner = ContainerOwner.of(worker)

    assert (owner.run, owner.pid, owner.pid_started) == (record.path.stem, record.owner_pid, record.owner_create_time)
    assert owner.token == record.token


# -- which containers a later run may remove: the proof --------------------------------------------------------------

HOST = "ci-runner-7"
TOKEN = "0f" * 16
ID = "a1" * 32  # the container the dead run created and recorded
COPY_ID = "c0" * 32  # a container made from `docker commit` of it: the same labels, another id
RUN = DeadRun(TOKEN, HOST, frozenset({ID}))


def _labels(token: str | None = TOKEN, host: str = HOST) -> dict[str, str]:
    owner = ContainerOwner("123-abcd", 123, 1.0, host, token)
    return owner.labels("postgres")


def test_a_recorded_container_with_its_runs_token_hash_on_this_host_is_the_runs_own() -> None:
    assert provably_owned(ID, _labels(), [RUN], HOST)


@pytest.mark.parametrize(
    ("container_id", "labels", "runs", "why"),
    [
        (COPY_ID, _labels(), [RUN], "a committed copy: every label inherited, but not the recorded id"),
        (ID, {HOST_LABEL: HOST}, [RUN], "only the host label, as the finding's container had"),
        (ID, _labels(token=None), [RUN], "no token label"),
        (ID, _labels(token="1e" * 16), [RUN], "another run's token"),
        (ID, _labels(host="other-host"), [RUN], "labelled for another host"),
        (ID, _labels(), [DeadRun(TOKEN, "other-host", frozenset({ID}))], "a record from another host"),
        (ID, _labels(), [DeadRun("1e" * 16, HOST, frozenset({ID}))], "recorded by a run with another token"),
        (ID, _labels(), [DeadRun(TOKEN, HOST, frozenset({COPY_ID}))], "a run that recorded another id"),
        (ID, _labels(), [], "no dead run at all"),
    ],
)
def test_anything_short_of_the_full_proof_is_left_alone(
    container_id: str, labels: dict[str, str], runs: list[DeadRun], why: str
) -> None:
    assert not provably_owned(container_id, labels, runs, HOST), why


class _Container:
    def __init__(self, daemon: _Daemon, container_id: str, name: str, labels: dict[str, str]) -> None:
        self.daemon, self.id, self.name, self.labels = daemon, container_id, name, labels

    def remove(self, force: bool = False, v: bool = False) -> None:
        if self.daemon.failing:
            raise docker.errors.APIError("500 Server Error: device or resource busy")
        self.daemon.running.remove(self)


class _Daemon:
    """What the sweep asks of docker-py's client (list with a label filter, remove), over containers in memory."""

    def __init__(self) -> None:
        self.running: list[_Container] = []
        self.containers = self
        self.failing = False

    def add(self, container_id: str, name: str, labels: dict[str, str]) -> None:
        self.running.append(_Container(self, container_id, name, labels))

    def list(self, all: bool, filters: dict[str, str]) -> list[_Container]:
        key, _, value = filters["label"].partition("=")
        return [c for c in self.running if c.labels.get(key) == value]


def test_the_sweep_removes_the_dead_runs_container_and_leaves_the_two_it_never_started() -> None:
    """The finding: a container with only the host label, and one made by `docker commit` of a test container."""
    daemon = _Daemon()
    daemon.add(ID, "llmtrace-pg", _labels())
    daemon.add("b2" * 32, "someones-db", {HOST_LABEL: HOST})
    daemon.add(COPY_ID, "debug-copy", _labels())

    done, left = sweep([RUN], daemon, HOST)

    assert [c.name for c in daemon.running] == ["someones-db", "debug-copy"]
    assert done == [f"removed container llmtrace-pg ({ID[:12]})"]
    assert left == set()


def test_a_container_docker_would_not_remove_stays_to_try_again() -> None:
    daemon = _Daemon()
    daemon.add(ID, "llmtrace-pg", _labels())
    daemon.failing = True
    done, left = sweep([RUN], daemon, HOST)
    assert left == {ID}
    assert done == ["could not remove container llmtrace-pg: 500 Server Error: device or resource busy"]


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_a_dead_runs_recorded_containers_wait_in_its_record_while_docker_does_not_answer(
    temp_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{temp_root}/no-docker.sock")
    dead = RunRecord(owner_pid=os.getpid(), owner_create_time=1.0)  # this pid, another start time: a dead run
    dead.add_path(temp_root / "llmtrace-gone")
    dead.add_container(ID, "postgres")

    done = reap_orphans()

    assert len(done) == 1
    assert done[0].startswith("kept 1 recorded container(s) for later: ")
    kept = json.loads(dead.path.read_text())
    assert (kept["token"], kept["host"], kept["paths"]) == (dead.token, socket.gethostname(), [])
    assert kept["containers"] == [{"id": ID, "service": "postgres"}]

    dead.remove_container(ID)  # gone by other means: nothing left to keep the record for
    assert not dead.path.exists()


def test_ports_leave_loopback_only_for_a_daemon_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the cases that need no daemon: a remote DOCKER_HOST, and a host override (the engine tests do the rest)."""
    monkeypatch.delenv("TESTCONTAINERS_HOST_OVERRIDE", raising=False)
    monkeypatch.delenv("TC_HOST", raising=False)
    monkeypatch.setenv("DOCKER_HOST", "tcp://build-box.internal:2375")
    assert publish_on_loopback(None) is False

    monkeypatch.setenv("DOCKER_HOST", "unix:///run/docker.sock")
    monkeypatch.setenv("TESTCONTAINERS_HOST_OVERRIDE", "10.0.0.5")
    assert publish_on_loopback(None) is False


def test_gpus_follow_the_setting_and_auto_looks_for_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert gpu_request("all") == (True, "all GPUs (llmtrace_ollama_gpu = all)")
    assert gpu_request("none") == (False, "none (llmtrace_ollama_gpu = none)")

    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_request("auto") == (False, "none (auto: no nvidia-smi on PATH)")
    tool = tmp_path / "nvidia-smi"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    assert gpu_request("auto") == (True, f"all GPUs (auto: {tool})")


def test_secrets_are_scrubbed_from_docker_messages() -> None:
    text = "psql: PGPASSWORD='s3cr3t-Xy' psql --username llmtrace; password s3cr3t-Xy"
    assert scrub(text, ["s3cr3t-Xy", ""]) == "psql: PGPASSWORD='***' psql --username llmtrace; password ***"


@pytest.mark.parametrize(
    ("error", "fix"),
    [
        (
            docker.errors.ImageNotFound("No such image: pgvector/pgvector:pg17"),
            "the image pgvector/pgvector:pg17 is not on the Docker host and could not be pulled: check the name, run "
            "`docker pull pgvector/pgvector:pg17` (or build it), or choose another with --llmtrace-postgres-image",
        ),
        (
            docker.errors.APIError('500 Server Error: ("pull access denied for pgvector/pgvector")'),
            "the image pgvector/pgvector:pg17 is not on the Docker host and could not be pulled: check the name, run "
            "`docker pull pgvector/pgvector:pg17` (or build it), or choose another with --llmtrace-postgres-image",
        ),
        (
            docker.errors.DockerException("Error while fetching server API version: Connection refused"),
            "Docker is not reachable: start it or use --llmtrace-postgres=embedded",
        ),
        (
            TimeoutError("GET http://127.0.0.1:1/healthz did not answer within 90 s"),
            "read the container's log above; or use --llmtrace-postgres=embedded",
        ),
    ],
)
def test_a_failed_start_names_the_fix_for_its_cause(error: BaseException, fix: str) -> None:
    assert start_fix("postgres", "pgvector/pgvector:pg17", error) == fix


def test_no_gpu_runtime_points_at_the_gpu_setting() -> None:
    error = docker.errors.APIError('500 Server Error: ("could not select device driver "" with capabilities: [[gpu]]")')
    assert start_fix("ollama", IMAGES["ollama"], error) == (
        "the Docker host cannot pass GPUs through (no NVIDIA Container Toolkit there): install it, or use "
        "--llmtrace-ollama-gpu=none"
    )


def test_the_gguf_enters_the_blob_store_as_a_link_named_by_its_digest(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    models = tmp_path / "models"
    expected = hashlib.sha256(gguf.read_bytes()).hexdigest()

    digest = place_blob(models, gguf)
    assert digest == f"sha256:{expected}"
    blob = models / "blobs" / f"sha256-{expected}"
    assert blob.read_bytes() == gguf.read_bytes()
    assert blob.stat().st_ino == gguf.stat().st_ino  # one filesystem: a link, no copy
    assert place_blob(models, gguf) == digest  # a second run finds it
    assert sorted(p.name for p in (models / "blobs").iterdir()) == [blob.name]


class _Unstartable(DockerService):
    """A backend whose container cannot even be configured, as when the image's client refuses the request."""

    service = "postgres"

    def secrets(self) -> Sequence[str]:
        return ("s3cret-pw",)

    def configure(self) -> Any:
        raise RuntimeError("create refused: POSTGRES_PASSWORD=s3cret-pw")


def test_a_backend_that_cannot_start_says_why_hides_its_secrets_and_keeps_nothing() -> None:
    backend = _Unstartable("postgres:17.6-alpine")
    with pytest.raises(ServiceStartError) as info:
        backend.start_container()
    assert str(info.value).splitlines()[0] == (
        "postgres (docker) did not start: postgres:17.6-alpine: create refused: POSTGRES_PASSWORD=***"
    )
    assert "s3cret-pw" not in str(info.value)
    assert info.value.fix.startswith("read the container's log above; or use --llmtrace-postgres=embedded")
    assert backend._container is None
