"""The backend registry: a new backend is one class and one ``register_backend`` call, and the manager builds, starts
and stops it like a built-in one. No pytest-in-pytest here; tests/plugin/test_services_setup.py registers one in a
conftest."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from pytest_llmtrace import BackendContext, Endpoint, register_backend
from pytest_llmtrace.core.settings import Resolved, Settings
from pytest_llmtrace.services.backends import REGISTRY
from pytest_llmtrace.services.manager import ServiceManager
from pytest_llmtrace.services.run_records import RunContext, RunRecord
from pytest_llmtrace.services.service_settings import SERVICE_SETTINGS


@pytest.fixture(autouse=True)
def registry() -> Iterator[None]:
    """Each test's registrations are undone afterwards: the registry lives as long as the process."""
    saved = {service: names.copy() for service, names in REGISTRY.items()}
    yield
    for service, names in saved.items():
        REGISTRY[service].restore(names)


class TeamPhoenix:
    """A Phoenix a team runs somewhere fixed: the smallest backend there is."""

    instances: ClassVar[list[TeamPhoenix]] = []

    def __init__(self, context: BackendContext) -> None:
        self.context = context
        self.events: list[str] = []
        TeamPhoenix.instances.append(self)

    def start(self) -> Endpoint:
        self.events.append("start")
        return Endpoint.from_url("phoenix", "team", "http://phoenix.team.example:6006/", started=time.monotonic())

    def stop(self) -> None:
        self.events.append("stop")


def manager(tmp_path: Path, **values: str) -> ServiceManager:
    resolved = {spec.name: Resolved(spec.default, "default") for spec in SERVICE_SETTINGS}
    resolved.update({name: Resolved(value, "command line", f"--llmtrace-{name}") for name, value in values.items()})
    context = RunContext("run", tmp_path, RunRecord(tmp_path), coordinator=True, worker_id="main")
    return ServiceManager(Settings(resolved, rootdir=tmp_path), context)


def test_a_registered_backend_is_chosen_by_name_started_on_demand_and_stopped_with_the_run(tmp_path: Path) -> None:
    register_backend("phoenix", "team", TeamPhoenix)
    services = manager(tmp_path, phoenix="Team")
    assert "llmtrace phoenix: team (from --llmtrace-phoenix)" in services.header_lines()
    endpoint = services.endpoint("phoenix")
    assert endpoint.url == "http://phoenix.team.example:6006"
    assert services.endpoint("phoenix") is endpoint  # started once
    (backend,) = TeamPhoenix.instances[-1:]
    assert (backend.context.service, backend.context.name, backend.context.shared) == ("phoenix", "team", False)
    assert backend.context.model_name == "qwen-sql-prod"  # every setting is at hand, with its default
    services.close()
    assert backend.events == ["start", "stop"]


def test_registering_a_taken_name_is_an_error_naming_both_places_unless_replacing(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"phoenix backend 'docker' is registered twice: first at .*backends\.py:\d+, "
        r"again at .*test_backend_registry\.py:\d+; choose another name or pass replace=True",
    ):
        register_backend("phoenix", "docker", TeamPhoenix)
    assert REGISTRY["phoenix"]["docker"].factory is not TeamPhoenix  # the built-in one is still there
    register_backend("phoenix", "docker", TeamPhoenix, replace=True)
    endpoint = manager(tmp_path, phoenix="docker").endpoint("phoenix")
    assert endpoint.backend == "team"


def test_a_name_nobody_registered_is_a_usage_error_with_the_near_miss(tmp_path: Path) -> None:
    register_backend("phoenix", "team", TeamPhoenix)
    with pytest.raises(pytest.UsageError) as caught:
        manager(tmp_path, phoenix="tema")
    assert str(caught.value) == (
        "--llmtrace-phoenix: 'tema' is not a valid phoenix setting; use auto, docker, embedded, team, or a URL "
        "(http://..., https://...); did you mean 'team'?"
    )


def test_register_backend_refuses_an_unknown_service_and_a_name_that_cannot_be_typed() -> None:
    with pytest.raises(ValueError, match=r"no service 'postgress'; use one of postgres, ollama, phoenix\. did you "):
        register_backend("postgress", "team", TeamPhoenix)
    for name in ("auto", "Team", "my backend", ""):
        with pytest.raises(ValueError, match="must be lower case letters"):
            register_backend("phoenix", name, TeamPhoenix)
    assert "team" not in REGISTRY["phoenix"]


def test_the_built_in_backends_are_registered_like_any_other() -> None:
    assert {service: sorted(names) for service, names in REGISTRY.items()} == {
        "postgres": ["docker", "embedded", "url"],
        "ollama": ["binary", "docker", "embedded", "replay", "url"],
        "phoenix": ["docker", "embedded", "url"],
    }
    shared = sorted(f"{service}:{name}" for service, names in REGISTRY.items() for name, r in names.items() if r.shared)
    assert shared == ["ollama:binary", "phoenix:embedded", "postgres:embedded"]
