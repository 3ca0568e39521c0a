"""Which backend serves each service: one pure decision, so it can be tested everywhere and printed in the header.

``auto`` prefers what the user pointed at, then Docker (closest to production), then what runs in-process. The app's
own variables (DB_URI, OLLAMA_HOST, PHOENIX_COLLECTOR_ENDPOINT) usually point at production, so ``auto`` uses them
only when the user opts in with ``llmtrace_use_app_env = yes``. Any other value names a backend (a built-in one or
one registered with ``register_backend``) or is the URL of a server the user runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import pytest

from pytest_llmtrace.core.errors import did_you_mean
from pytest_llmtrace.core.url_secrets import redact_url

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from pytest_llmtrace.core.settings import Resolved

# The variable each service's application reads; the session sets it, and ``use_app_env`` may read it.
APP_ENV = {"postgres": "DB_URI", "ollama": "OLLAMA_HOST", "phoenix": "PHOENIX_COLLECTOR_ENDPOINT"}
# Backends chosen by what the user gives rather than by name: a URL value means ``url``, replay mode means ``replay``.
IMPLICIT_BACKENDS = frozenset({"url", "replay"})


@dataclass(frozen=True)
class Choice:
    service: str
    backend: str  # docker | embedded | binary | url | replay, or a name registered with register_backend
    url: str | None
    why: str  # for the report header: "auto: Docker did not answer (...)", "--llmtrace-postgres", ...

    def __str__(self) -> str:
        where = f" {redact_url(self.url)}" if self.url else ""
        return f"{self.backend}{where} ({self.why})"


@dataclass(frozen=True)
class Probes:
    """What the machine offers, asked lazily: pinging Docker costs up to a second, so it is only asked when needed."""

    docker: Callable[[], tuple[bool, str]]
    which: Callable[[str], str | None]
    environ: Mapping[str, str]


def choose(
    service: str,
    setting: Resolved,
    probes: Probes,
    *,
    use_app_env: bool = False,
    gguf: str | None = None,
    gguf_exists: bool = False,
    replay: bool = False,
) -> Choice:
    value = setting.value
    if "://" in value:
        return Choice(service, "url", value, f"from {setting.origin}")
    if value != "auto":
        return Choice(service, value, None, f"from {setting.origin}")
    if service == "ollama" and replay:
        return Choice(service, "replay", None, "auto: replay mode answers from the golden traces")
    app_var = APP_ENV[service]
    if use_app_env and probes.environ.get(app_var):
        url = probes.environ[app_var]
        if service == "ollama" and "://" not in url:
            url = "http://" + url  # OLLAMA_HOST is often host:port
        return Choice(service, "url", url, f"auto: {app_var} (llmtrace_use_app_env = yes)")
    docker_ok, docker_why = probes.docker()
    if docker_ok:
        return Choice(service, "docker", None, "auto: Docker answered a ping")
    no_docker = f"auto: no Docker ({docker_why})"
    if service != "ollama":
        return Choice(service, "embedded", None, no_docker)
    binary = probes.which("ollama")
    if binary:
        return Choice(service, "binary", None, f"{no_docker}; ollama found at {binary}")
    if gguf_exists:
        return Choice(service, "embedded", None, f"{no_docker}, no ollama on PATH; llama.cpp serves {gguf}")
    raise pytest.UsageError(
        "no Ollama backend is available for the live model:\n"
        f"  - Docker: not reachable ({docker_why})\n"
        "  - an `ollama` executable: not on PATH\n"
        f"  - embedded llama.cpp: the Modelfile's GGUF {gguf or '(no FROM path)'} does not exist\n"
        "fix one of: start Docker; install Ollama; put the GGUF file where the Modelfile's FROM line says; "
        "point at a server with --llmtrace-ollama=http://host:11434; or replay recorded answers with "
        "--llmtrace-mode=replay"
    )


def check_setting(service: str, setting: Resolved, names: Iterable[str], url_schemes: Iterable[str]) -> Resolved:
    """``setting`` with a backend name lower-cased, once it is known to be ``auto``, a backend in ``names`` or a URL
    of one of ``url_schemes``; anything else is a ``pytest.UsageError`` naming where it came from and the near miss.

    Checked once when the run is configured, so a typo stops the run before the first test, not at the first test
    that needs the service. Names come from the backend registry, so a registered backend is accepted like a
    built-in one.
    """
    value = setting.value.strip()
    schemes = tuple(url_schemes)
    selectable = ["auto", *sorted(set(names) - IMPLICIT_BACKENDS)]
    if "://" in value:
        if value.split("://", 1)[0].lower() in schemes:
            return replace(setting, value=value)
    elif value.lower() in selectable:
        return replace(setting, value=value.lower())
    options = ", ".join(selectable) + ", or a URL (" + ", ".join(f"{scheme}://..." for scheme in schemes) + ")"
    hint = did_you_mean(value.lower(), selectable) if "://" not in value else ""
    if "=" in value and "://" not in value:  # a libpq keyword DSN ("host=db password=..."): say how to write it
        hint = f"write a DSN as a URL ({schemes[0]}://USER:PASSWORD@HOST:PORT/DB, special characters percent-encoded)"
    raise pytest.UsageError(
        f"{setting.origin}: {redact_url(value)!r} is not a valid {service} setting; use {options}"
        + (f"; {hint}" if hint else "")
    )
