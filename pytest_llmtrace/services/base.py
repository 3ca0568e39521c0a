"""What every service backend hands to tests, the error it raises when it cannot start, and the small helpers all
backends share (a free port, an HTTP wait, a URL safe to print)."""

from __future__ import annotations

import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pytest_llmtrace.errors import LLMTraceError

__all__ = [
    "LOG_TAIL_LINES",
    "SERVICES",
    "Endpoint",
    "ServiceStartError",
    "free_port",
    "http_ok",
    "redact_url",
    "wait_until",
]

# The services a session can start; each has a fixture ``llmtrace_<service>`` and a setting ``--llmtrace-<service>``.
SERVICES = ("postgres", "ollama", "phoenix")
LOG_TAIL_LINES = 50
# Query parameters libpq reads a secret from: a DSN may carry the password there instead of in its user part.
SECRET_QUERY_KEYS = frozenset({"password", "sslpassword"})


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
    """The URL with its secrets hidden (the password in its user part or query): URLs end up in report headers,
    failure messages and CI logs."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL we can take apart (a bad port, say): show only its scheme
        return url.split("://", 1)[0] + "://***" if "://" in url else "***"
    if password:
        user_info, _, host = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=user_info.split(":", 1)[0] + ":***@" + host)
    if parts.query:
        query = parse_qsl(parts.query, keep_blank_values=True)
        if any(key.lower() in SECRET_QUERY_KEYS for key, _ in query):
            hidden = [(key, "***" if key.lower() in SECRET_QUERY_KEYS else value) for key, value in query]
            parts = parts._replace(query=urlencode(hidden, safe="/*"))
    # a URL missing its "//" ("postgresql:user:pw@host") is not taken apart above, but still holds a password
    return _USER_PASSWORD.sub(r"\1***@", urlunsplit(parts))


_USER_PASSWORD = re.compile(r"^([a-z][a-z0-9+.-]*:(?:/{0,2})[^:@/?#]*:)(?!\*\*\*@)[^@/?#]+@", re.IGNORECASE)


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
