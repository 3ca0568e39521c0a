"""The backend registry: which backend serves each service, looked up by name, extended by users with
``register_backend`` (the built-in backends are registered here the same way).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pytest_llmtrace.core.errors import did_you_mean
from pytest_llmtrace.core.registry import Registry, caller_place
from pytest_llmtrace.services import ollama, phoenix, postgres
from pytest_llmtrace.services.base import SERVICES, Endpoint
from pytest_llmtrace.services.ollama import ReplaySwitch
from pytest_llmtrace.services.pg_cluster_cache import ClusterSeed, cache_root
from pytest_llmtrace.services.run_records import RunRecord

if TYPE_CHECKING:
    from pytest_llmtrace.core.settings import Settings


class ServiceBackend(Protocol):
    """One way of getting a service. ``start`` returns a ready ``Endpoint`` (or raises ``ServiceStartError`` saying
    why and what to do), ``stop`` undoes whatever ``start`` did and may be called twice."""

    def start(self) -> Endpoint: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class BackendContext:
    """What a backend factory may use: the user's choice and the run the backend belongs to."""

    service: str  # postgres | ollama | phoenix
    name: str  # the backend's registered name
    url: str | None  # the server's URL when the user gave one (the ``url`` backend), else None
    settings: Settings  # every service setting, with its source
    rootdir: Path
    record: RunRecord  # add child processes and temp folders here, so a killed run is cleaned up by the next one
    shared: bool  # whether xdist workers share this server: then the run's coordinator stops it, not this process
    replay_switch: ReplaySwitch  # where golden cases plug in their recordings (the replay backend serves it)
    # What a Postgres server the plugin starts holds before the first session (the fixtures' template), so a cached
    # cluster can hold it too; None when the fixtures are not known (no file matches)
    cluster_seed: ClusterSeed | None = None

    @property
    def model_name(self) -> str:
        return self.settings["ollama_model"]

    @property
    def modelfile_path(self) -> Path:
        return self.rootdir / self.settings["ollama_modelfile"]


BackendFactory = Callable[[BackendContext], ServiceBackend]


@dataclass(frozen=True)
class Registration:
    factory: BackendFactory
    shared: bool  # a server in its own process that xdist workers attach to, instead of one per worker


REGISTRY: dict[str, Registry[Registration]] = {service: Registry(f"{service} backend") for service in SERVICES}
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


def register_backend(
    service: str, name: str, factory: BackendFactory, *, shared: bool = False, replace: bool = False
) -> None:
    """Make ``--llmtrace-<service>=<name>`` (and ``LLMTRACE_<SERVICE>``, ini ``llmtrace_<service>``) build a backend
    with ``factory``.

    Call it at import time of a plugin or of the rootdir's ``conftest.py``: the settings are checked against the
    registry when the run is configured, so a name registered later is still a usage error. ``factory`` gets a
    ``BackendContext`` and returns an object with ``start() -> Endpoint`` and ``stop()``; a class taking the context
    is a factory. Set ``shared`` for a server in its own process that xdist workers should share (add its process and
    temp folder to ``context.record``); otherwise each process starts and stops its own. A name that is taken (a
    built-in one included) raises ``ValueError`` naming where it was registered first and again, unless
    ``replace=True``::

        from pytest_llmtrace import Endpoint, register_backend

        class TeamPostgres:
            def __init__(self, context):
                self.url = os.environ["TEAM_PG_URL"]

            def start(self):
                return Endpoint.from_url("postgres", "team", self.url, started=time.monotonic())

            def stop(self):
                pass

        register_backend("postgres", "team", TeamPostgres)  # --llmtrace-postgres=team
    """
    if service not in REGISTRY:
        hint = did_you_mean(service, REGISTRY)
        raise ValueError(f"register_backend: no service {service!r}; use one of {', '.join(SERVICES)}. {hint}".strip())
    if not _NAME.match(name) or name == "auto":
        raise ValueError(
            f"register_backend: backend name {name!r} must be lower case letters, digits, '-' or '_', start with a "
            "letter, and not be 'auto'"
        )
    REGISTRY[service].register(name, Registration(factory, shared), place=caller_place(1), replace=replace)


# -- the built-in backends, registered the way users register theirs ------------------------------------------------


def _url(context: BackendContext) -> str:
    assert context.url is not None, "the url backend is chosen only for a URL value"
    return context.url


register_backend(
    "postgres",
    "embedded",
    lambda c: postgres.EmbeddedPostgres(
        c.record, shared=c.shared, cache=cache_root(c.settings["postgres_cache"]), seed=c.cluster_seed
    ),
    shared=True,
)
register_backend("postgres", "docker", lambda c: postgres.DockerPostgres(c.settings["postgres_image"], c.record))
register_backend("postgres", "url", lambda c: postgres.UrlPostgres(_url(c)))
register_backend("ollama", "embedded", lambda c: ollama.EmbeddedOllama(c.modelfile_path, c.model_name))
register_backend(
    "ollama",
    "binary",
    lambda c: ollama.BinaryOllama(c.model_name, c.modelfile_path, c.record, models=c.settings["ollama_models"]),
    shared=True,
)
register_backend(
    "ollama",
    "docker",
    lambda c: ollama.DockerOllama(
        c.model_name,
        c.modelfile_path,
        c.settings["ollama_image"],
        c.record,
        gpu=c.settings["ollama_gpu"],
        models=c.settings["ollama_models"],
    ),
)
register_backend("ollama", "url", lambda c: ollama.UrlOllama(_url(c), c.model_name))
register_backend("ollama", "replay", lambda c: ollama.ReplayOllama(c.replay_switch))
register_backend("phoenix", "embedded", lambda c: phoenix.EmbeddedPhoenix(c.record), shared=True)
register_backend("phoenix", "docker", lambda c: phoenix.DockerPhoenix(c.settings["phoenix_image"], c.record))
register_backend("phoenix", "url", lambda c: phoenix.UrlPhoenix(_url(c)))
