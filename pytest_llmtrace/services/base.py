"""What every service backend hands to tests, the error it raises when it cannot start, and the small helpers all
backends share (a free port, an HTTP wait, a URL safe to print)."""

from __future__ import annotations

import base64
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from pytest_llmtrace.errors import LLMTraceError

__all__ = [
    "LOG_TAIL_LINES",
    "SERVICES",
    "Endpoint",
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


def redact_url(url: str) -> str:
    """The URL or DSN with its secrets hidden: URLs end up in report headers, failure messages, CI logs and junit.xml.

    Taken apart by hand, not by ``urllib``: a password typed raw (``/``, ``@``, ``?``, ``#``, ``%`` unencoded) makes
    ``urlsplit`` end the user part early and print the password as host, path or query. Here the user part runs to
    the last ``@`` that a host follows, so whatever the password holds is hidden; a user part without a password is
    kept for Postgres (a role name) and hidden for other schemes (``https://TOKEN@host``). Query parameters named
    like a secret (``password``, ``sslpassword``, ``api_key``, ``token``...) are hidden, and so are the secrets of a
    libpq keyword DSN (``host=db password=...``).
    """
    text = str(url)
    scheme = _SCHEME.match(text)
    if scheme is None:
        return _KEYWORD_SECRET.sub(r"\1***", text)
    head, rest = scheme.group(0), text[scheme.end() :]
    at = _userinfo_end(rest)
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        shown = f"{user}:***" if colon else user if scheme.group(1).lower() in _ROLE_SCHEMES else "***"
        rest = shown + rest[at:]
    return head + _redact_query(rest)


def redact_text(text: str, *urls: str) -> str:
    """``text`` (an error, a log line, a message) with every URL or DSN secret in it hidden, as ``redact_url`` does.

    Drivers echo parts of a URL they could not parse (libpq: ``invalid integer value "pa" for connection option
    "port"`` when a raw ``/`` ends the user part early), so the secrets of ``urls`` (the URLs the text may be about)
    are also hidden wherever they or a piece of them (split at URL delimiters, three characters or more) appear.
    """
    out = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), str(text))
    if "=" in out:
        out = _KEYWORD_SECRET.sub(r"\1***", out)
    for secret in sorted({piece for url in urls for piece in url_secrets(url)}, key=len, reverse=True):
        out = out.replace(secret, "***")
    return out


def url_secrets(url: str) -> list[str]:
    """The secrets a URL or DSN carries (its password, secret query values, keyword values), raw and decoded, and
    their pieces between URL delimiters: what must not appear in anything printed about it."""
    found: list[str] = []
    text = str(url)
    scheme = _SCHEME.match(text)
    if scheme is not None:
        rest = text[scheme.end() :]
        at = _userinfo_end(rest)
        if at >= 0:
            user, colon, password = rest[:at].partition(":")
            found.append(password if colon else "" if scheme.group(1).lower() in _ROLE_SCHEMES else user)
        found += [m.group(2) for m in _QUERY_SECRET.finditer(rest)]
    found += [m.group(2) for m in _KEYWORD_SECRET.finditer(text)]
    pieces: set[str] = set()
    for secret in filter(None, found):
        for form in (secret, unquote(secret), secret.strip("'")):
            pieces.add(form)
            pieces.update(p for p in _DELIMITERS.split(form) if len(p) >= 3)
    return sorted((p for p in pieces if p and p != "***"), key=len, reverse=True)


def _userinfo_end(rest: str) -> int:
    """Index of the ``@`` that ends the user part of ``rest`` (a URL after its scheme), or -1: the last ``@`` that a
    host (up to ``/``, ``?``, ``#`` or the end) follows."""
    at = rest.rfind("@")
    while at >= 0:
        if _HOST.match(rest, at + 1):
            return at
        at = rest.rfind("@", 0, at)
    return -1


def _redact_query(rest: str) -> str:
    return _QUERY_SECRET.sub(r"\1***", rest) if "=" in rest else rest


_SCHEME = re.compile(r"([a-z][a-z0-9+.-]*):(?://)?", re.IGNORECASE)
_ROLE_SCHEMES = frozenset({"postgresql", "postgres"})  # a user part alone is a role name, not a secret
_HOST = re.compile(r"[A-Za-z0-9._~\-\[\]:%]*(?=[/?#]|$)")
_SECRET_NAME = r"[A-Za-z0-9_.\-]*(?:pass|pwd|secret|token|key|auth|signature|sig|credential)[A-Za-z0-9_.\-]*"
# a query value runs to the next "&" (a raw "#" in a password must not end it early)
_QUERY_SECRET = re.compile(r"([?&;]" + _SECRET_NAME + r"=)([^&\s]*)", re.IGNORECASE)
# libpq keyword DSNs: key = value, the value bare or single-quoted with backslash escapes
_KEYWORD_SECRET = re.compile(r"((?<![\w.])(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s]*)", re.IGNORECASE)
_URL_IN_TEXT = re.compile(r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://[^\s]+")
_DELIMITERS = re.compile(r"[/?#@:&=%;]")


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
    scheme = _SCHEME.match(url)
    if scheme is not None and scheme.group(0).endswith("//"):
        rest = url[scheme.end() :]
        at = _userinfo_end(rest)
        if at >= 0:
            user, _, password = rest[:at].partition(":")
            token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode("ascii")
            return urllib.request.Request(scheme.group(0) + rest[at + 1 :], headers={"Authorization": "Basic " + token})
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
