"""The backend decision for each service, on every kind of machine, without needing any of them here."""

from __future__ import annotations

import pytest

from pytest_llmtrace.core.settings import Resolved
from pytest_llmtrace.services.choice import Choice, Probes, check_setting, choose

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


NAMES = ("docker", "embedded", "url", "team")
PG_SCHEMES = ("postgresql", "postgres")


@pytest.mark.parametrize(
    ("given", "kept"),
    [("auto", "auto"), ("Embedded", "embedded"), ("team", "team"), ("postgresql://db/x", "postgresql://db/x")],
)
def test_auto_a_registered_name_or_a_url_of_the_service_pass_the_check(given: str, kept: str) -> None:
    setting = Resolved(given, "command line", "--llmtrace-postgres")
    assert check_setting("postgres", setting, NAMES, PG_SCHEMES) == Resolved(
        kept, "command line", "--llmtrace-postgres"
    )


def test_a_misspelled_backend_names_where_it_came_from_every_valid_name_and_the_near_miss() -> None:
    with pytest.raises(pytest.UsageError) as caught:
        check_setting("postgres", Resolved("tema", "ini", "ini llmtrace_postgres"), NAMES, PG_SCHEMES)
    assert str(caught.value) == (
        "ini llmtrace_postgres: 'tema' is not a valid postgres setting; use auto, docker, embedded, team, or a URL "
        "(postgresql://..., postgres://...); did you mean 'team'?"
    )


@pytest.mark.parametrize("given", ["url", "replay"])
def test_url_and_replay_are_chosen_by_a_url_and_by_replay_mode_not_by_name(given: str) -> None:
    with pytest.raises(pytest.UsageError, match="is not a valid ollama setting"):
        check_setting("ollama", Resolved(given, "environment", "LLMTRACE_OLLAMA"), ("url", "replay", "docker"), ())


def test_a_url_of_another_kind_is_refused_without_printing_its_password() -> None:
    with pytest.raises(pytest.UsageError) as caught:
        check_setting(
            "postgres", Resolved("mysql://me:hunter2@db/x", "environment", "LLMTRACE_POSTGRES"), NAMES, PG_SCHEMES
        )
    assert "'mysql://me:***@db/x' is not a valid postgres setting" in str(caught.value)
    assert "hunter2" not in str(caught.value)
