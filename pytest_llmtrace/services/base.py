"""What every service backend hands to tests, the error it raises when it cannot start, what it needs of its run's
record, and the small helpers all backends share (a free port, an HTTP wait, a URL safe to print)."""

from __future__ import annotations

import base64
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlsplit

from pytest_llmtrace.core.errors import LLMTraceError
from pytest_llmtrace.core.url_secrets import redact_text, redact_url, split_userinfo, url_secrets

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "LOG_TAIL_LINES",
    "SERVICES",
    "Endpoint",
    "RunLedger",
    "ServiceStartError",
    "free_port",
    "http_ok",
    "redact_text",
    "redact_url",
    "url_secrets",
    "wait_until",
]

# The services a session can start; each has a fixture ``llmtrace_<service>`` and a setting ``--llmtrace-<service>``.
SERVICES = ("postgres", "ollama", "phoenix")
LOG_TAIL_LINES = 50


@dataclass(frozen=True, repr=False)
class Endpoint:
    """A ready server. ``url`` is the DSN for Postgres and the HTTP base URL for Ollama and Phoenix."""

    service: str
    backend: str
    url: str
    host: str
    port: int | None
    ready_s: float
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_url(cls, service: str, backend: str, url: str, *, started: float, **extra: str) -> Endpoint:
        """The endpoint of a server that answered at ``url``; ``started`` is the ``time.monotonic()`` of the start."""
        parts = urlsplit(url)
        return cls(
            service=service,
            backend=backend,
            url=url.rstrip("/"),
            host=parts.hostname or "",  # empty for a Postgres unix socket (``?host=/dir`` in the query)
            port=parts.port,
            ready_s=time.monotonic() - started,
            extra=extra,
        )

    def __str__(self) -> str:
        return f"{self.service} ({self.backend}) at {redact_url(self.url)}, ready in {self.ready_s:.1f} s"

    def __repr__(self) -> str:
        # Printed by pytest in failure reports (fixture values, locals): a user's DSN may carry a password.
        return (
            f"Endpoint(service={self.service!r}, backend={self.backend!r}, url={redact_url(self.url)!r}, "
            f"host={self.host!r}, port={self.port!r}, ready_s={self.ready_s:.2f})"
        )


class ServiceStartError(LLMTraceError):
    """A service did not become ready: says which backend, shows the end of its log, and names the fix."""

    def __init__(
        self,
        service: str,
        backend: str,
        reason: str,
        *,
        log: Sequence[str] = (),
        fix: str = "",
        urls: Sequence[str] = (),
    ) -> None:
        # Every part may quote a URL (the user's, or one a driver echoes): secrets are hidden here, once for all
        # backends; ``urls`` are the URLs the error is about, whose secrets a driver may echo in pieces.
        reason, fix = redact_text(reason, *urls), redact_text(fix, *urls)
        self.service, self.backend, self.reason, self.fix = service, backend, reason, fix
        self.log_tail = [redact_text(line, *urls) for line in list(log)[-LOG_TAIL_LINES:]]
        lines = [f"{service} ({backend}) did not start: {reason}"]
        if self.log_tail:
            lines.append(f"last {len(self.log_tail)} lines of its log:")
            lines.extend("    " + line.rstrip("\n") for line in self.log_tail)
        if fix:
            lines.append(f"fix: {fix}")
        super().__init__("\n".join(lines))


class RunLedger(Protocol):
    """What the Docker backends need of a run's record (``services.run_records.RunRecord``): who the run is, and
    where each container's id is written the moment Docker makes it. A protocol, so that the Docker backends do not
    import the run records: those import the Docker sweep."""

    @property
    def path(self) -> Path: ...

    @property
    def owner_pid(self) -> int: ...

    @property
    def owner_create_time(self) -> float: ...

    @property
    def token(self) -> str: ...

    def add_container(self, container_id: str, service: str) -> None: ...

    def remove_container(self, container_id: str) -> None: ...


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now. There is a small race until the server binds it; servers that accept port 0 avoid it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(_request(url), timeout=timeout) as response:
            return bool(200 <= response.status < 300)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _request(url: str) -> urllib.request.Request:
    """urllib takes no user part in a URL (``http://user:pw@host`` is a "nonnumeric port"): it goes as basic auth."""
    bare, userinfo = split_userinfo(url)
    if userinfo is not None:
        user, _, password = userinfo.partition(":")
        token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode("ascii")
        return urllib.request.Request(bare, headers={"Authorization": "Basic " + token})
    return urllib.request.Request(url)


def wait_until(
    ready: Callable[[], bool], *, timeout: float, interval: float = 0.2, alive: Callable[[], bool] | None = None
) -> bool:
    """Poll ``ready`` until it is true, the deadline passes, or ``alive`` says the process already died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if alive is not None and not alive():
            return ready()
        time.sleep(interval)
    return ready()
