"""What every service backend hands to tests, and the error it raises when it cannot start."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from pytest_llmtrace.errors import LLMTraceError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

LOG_TAIL_LINES = 50


@dataclass(frozen=True)
class Endpoint:
    """A ready server. ``url`` is the DSN for Postgres and the HTTP base URL for Ollama and Phoenix."""

    service: str
    backend: str
    url: str
    host: str
    port: int | None
    ready_s: float
    extra: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.service} ({self.backend}) at {self.url}, ready in {self.ready_s:.1f} s"


class ServiceStartError(LLMTraceError):
    """A service did not become ready: says which backend, shows the end of its log, and names the fix."""

    def __init__(self, service: str, backend: str, reason: str, *, log: Sequence[str] = (), fix: str = "") -> None:
        self.service, self.backend, self.reason, self.fix = service, backend, reason, fix
        self.log_tail = list(log)[-LOG_TAIL_LINES:]
        lines = [f"{service} ({backend}) did not start: {reason}"]
        if self.log_tail:
            lines.append(f"last {len(self.log_tail)} lines of its log:")
            lines.extend("    " + line.rstrip("\n") for line in self.log_tail)
        if fix:
            lines.append(f"fix: {fix}")
        super().__init__("\n".join(lines))


def redact_url(url: str) -> str:
    """The URL with its password hidden: URLs end up in report headers and CI logs."""
    parts = urlsplit(url)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(":" + parts.password + "@", ":***@")))
    return url


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now. There is a small race until the server binds it; servers that accept port 0 avoid it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(200 <= response.status < 300)
    except (urllib.error.URLError, OSError, ValueError):
        return False


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
