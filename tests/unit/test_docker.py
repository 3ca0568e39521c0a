"""The Docker backends' decisions that need no engine: who owns a container, where ports go, GPUs, error fixes.

The engine-backed half is in tests/docker/test_docker_services.py.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
from pathlib import Path

import docker.errors
import psutil
import pytest

from pytest_llmtrace.services.docker import (
    IMAGES,
    LABEL_PREFIX,
    ContainerOwner,
    gpu_request,
    owner_alive,
    publish_on_loopback,
    scrub,
    start_fix,
)
from pytest_llmtrace.services.ollama import place_blob
from pytest_llmtrace.services.runs import RunRecord


def test_a_container_names_its_run_owner_and_host() -> None:
    owner = ContainerOwner.of(None)
    labels = owner.labels("postgres")

    assert labels[f"{LABEL_PREFIX}.pid"] == str(os.getpid())
    assert float(labels[f"{LABEL_PREFIX}.pid-started"]) == psutil.Process().create_time()
    assert labels[f"{LABEL_PREFIX}.host"] == socket.gethostname()
    assert labels[f"{LABEL_PREFIX}.service"] == "postgres"
    assert labels[f"{LABEL_PREFIX}.run"].startswith(f"{os.getpid()}-")
    assert owner_alive(labels)


def test_a_run_records_owner_owns_the_containers_of_the_run(tmp_path: Path) -> None:
    """xdist workers write into the controller's record: their containers name the controller, which outlives them."""
    record = RunRecord(tmp_path)
    owner = ContainerOwner.of(record)

    assert (owner.run, owner.pid, owner.pid_started) == (record.path.stem, record.owner_pid, record.owner_create_time)


def test_a_reused_pid_or_missing_labels_are_not_a_live_owner() -> None:
    labels = ContainerOwner.of(None).labels("phoenix")

    assert not owner_alive({**labels, f"{LABEL_PREFIX}.pid-started": "1.0"})
    assert not owner_alive({k: v for k, v in labels.items() if not k.endswith(".pid")})
    assert not owner_alive({**labels, f"{LABEL_PREFIX}.pid": "not-a-pid"})
    assert not owner_alive({**labels, f"{LABEL_PREFIX}.pid": "-1"})  # psutil refuses it with a ValueError


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
