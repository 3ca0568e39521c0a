"""The backend decision for each service, on every kind of machine, without needing any of them here."""

from __future__ import annotations

import pytest

from pytest_llmtrace.services.select import Choice, Probes, choose
from pytest_llmtrace.settings import Resolved

AUTO = Resolved("auto", "default")


def probes(*, docker: bool = False, ollama: str | None = None, env: dict[str, str] | None = None) -> Probes:
    return Probes(
        docker=lambda: (docker, "" if docker else "no Docker daemon socket"),
        which=lambda name: ollama if name == "ollama" else None,
        environ=env or {},
    )


@pytest.mark.parametrize("service", ["postgres", "phoenix"])
def test_auto_prefers_docker_then_embedded(service: str) -> None:
    assert choose(service, AUTO, probes(docker=True)).backend == "docker"
    chosen = choose(service, AUTO, probes(docker=False))
    assert chosen == Choice(service, "embedded", None, "auto: no Docker (no Docker daemon socket)")


def test_a_url_setting_means_use_that_server_and_says_where_it_came_from() -> None:
    chosen = choose(
        "postgres", Resolved("postgresql://u:pw@db:5432/x", "environment", "LLMTRACE_POSTGRES"), probes(docker=True)
    )
    assert chosen.backend == "url"
    assert chosen.url == "postgresql://u:pw@db:5432/x"
    assert str(chosen) == "url postgresql://u:***@db:5432/x (from LLMTRACE_POSTGRES)"


def test_an_explicit_backend_wins_over_what_the_machine_has() -> None:
    chosen = choose("postgres", Resolved("embedded", "ini", "ini llmtrace_postgres"), probes(docker=True))
    assert str(chosen) == "embedded (from ini llmtrace_postgres)"


def test_app_variables_are_ignored_unless_the_user_opts_in() -> None:
    env = {"DB_URI": "postgresql://prod/db", "OLLAMA_HOST": "gpu-box:11434"}
    assert choose("postgres", AUTO, probes(env=env)).backend == "embedded"
    opted = choose("postgres", AUTO, probes(env=env), use_app_env=True)
    assert (opted.backend, opted.url) == ("url", "postgresql://prod/db")
    ollama = choose("ollama", AUTO, probes(env=env), use_app_env=True)
    assert ollama.url == "http://gpu-box:11434"


def test_ollama_auto_order_docker_binary_gguf() -> None:
    assert choose("ollama", AUTO, probes(docker=True, ollama="/usr/bin/ollama")).backend == "docker"
    assert choose("ollama", AUTO, probes(ollama="/usr/bin/ollama")).backend == "binary"
    assert choose("ollama", AUTO, probes(), gguf="/m/q.gguf", gguf_exists=True).backend == "embedded"


def test_ollama_in_replay_mode_needs_no_model_server() -> None:
    assert choose("ollama", AUTO, probes(), replay=True).backend == "replay"


def test_ollama_with_nothing_available_lists_every_way_out() -> None:
    with pytest.raises(pytest.UsageError) as excinfo:
        choose("ollama", AUTO, probes(), gguf="/m/q.gguf", gguf_exists=False)
    message = str(excinfo.value)
    assert "Docker: not reachable (no Docker daemon socket)" in message
    assert "an `ollama` executable: not on PATH" in message
    assert "the Modelfile's GGUF /m/q.gguf does not exist" in message
    assert "--llmtrace-ollama=http://host:11434" in message
