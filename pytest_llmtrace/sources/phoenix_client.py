"""The one client for Phoenix's REST API: ``llmtrace capture`` reads spans with it, the export creates its project and
posts annotations with it. One request path, so the key's origin rule, the byte and time bounds, the JSON reading and
the error lines cannot drift apart between the two.

What differs is only who is speaking: the option a fix names (``--phoenix-url`` or ``--llmtrace-phoenix``) and the
error class the caller catches. ``Wording`` carries those.

The API key (``PHOENIX_API_KEY``) goes only into the ``Authorization`` header: no message, file or attribute holds it.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_llmtrace.core.errors import LLMTraceError, TraceFormatError, first_line
from pytest_llmtrace.core.url_secrets import without_userinfo
from pytest_llmtrace.sources import http_client
from pytest_llmtrace.trace import safejson

API_KEY_ENV = "PHOENIX_API_KEY"
DETAIL_CHARS = 200  # of a FastAPI error's detail in a message


@dataclass(frozen=True)
class Wording:
    """The caller's part of each error line: its error class and the fixes, which name its own options."""

    error: Callable[[str, int | None], LLMTraceError]  # (message, HTTP status or None when Phoenix did not answer)
    user_agent: str
    url_option: str  # the option that names Phoenix's URL
    redirect_fix: str
    too_large_fix: str
    unreachable_fix: str
    forbidden_fix: str  # what the key's user must be allowed to do


def public_url(url: str) -> str:
    """The URL without user, password, query or fragment: what may be printed or written into a committed file."""
    # the user part goes first, found as redact_url finds it: urlsplit ends it at a raw "/" in the password and
    # would print the rest of the password as the path
    parts = urllib.parse.urlsplit(without_userinfo(url))
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host + (f":{port}" if port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def auth_headers(api_key: str | None) -> dict[str, str]:
    """What the OTLP exporter and the REST calls both send: a bearer token, when there is a key."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class PhoenixRestClient:
    """Requests to Phoenix's REST API; each failure becomes one ``wording.error`` line that names the fix."""

    def __init__(
        self, url: str, wording: Wording, *, api_key: str | None = None, timeout: float, max_bytes: int
    ) -> None:
        self.url = public_url(url)
        self.wording = wording
        self.timeout = timeout  # for each request as a whole, not for each read
        self.max_bytes = max_bytes
        self._headers = {"Accept": "application/json", "User-Agent": wording.user_agent, **auth_headers(api_key)}

    def request(self, method: str, path: str, params: Sequence[tuple[str, str]] = (), body: Any = None) -> Any:
        """Phoenix's answer as JSON (None for an empty one)."""
        query = urllib.parse.urlencode(list(params))
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(
            f"{self.url}{path}" + (f"?{query}" if query else ""), data=data, headers=headers, method=method
        )
        w = self.wording
        where = f"{method} {self.url}{path}"
        try:
            payload, content_type = http_client.request(req, timeout=self.timeout, max_bytes=self.max_bytes)
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc, method, path) from None
        except http_client.CrossOriginRedirect as exc:
            raise w.error(f"{where} {redirect_refused(exc, self.url)}; fix: {w.redirect_fix}", None) from None
        except http_client.ResponseTooLarge as exc:
            raise w.error(f"{where} answered {exc}; fix: {w.too_large_fix}", None) from None
        except (urllib.error.URLError, OSError) as exc:
            why = unreachable_reason(exc, self.timeout)
            raise w.error(f"cannot reach Phoenix at {self.url} ({why}); fix: {w.unreachable_fix}", None) from None
        if not payload:
            return None
        not_json = w.error(
            f"{where} answered {content_type or 'a body'} that is not JSON; fix: {w.url_option} "
            "must be Phoenix's base URL (the address of its UI, like http://127.0.0.1:6006)",
            None,
        )
        try:
            text = payload.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise not_json from None
        try:
            return safejson.parse(text, where)
        except TraceFormatError as exc:  # JSON past safejson's limits (depth, digits, ...) is no Phoenix answer
            if safejson.is_syntax_error(exc):
                raise not_json from None
            raise w.error(f"{exc}; fix: check that {w.url_option} is a Phoenix server", None) from None

    def _http_error(self, exc: urllib.error.HTTPError, method: str, path: str) -> LLMTraceError:
        w = self.wording
        if exc.code == 401:
            fix = (
                f"{API_KEY_ENV} is set but this Phoenix refused it; set it to a valid key (Settings > API Keys)"
                if "Authorization" in self._headers
                else f"this Phoenix requires authentication; set {API_KEY_ENV} to an API key (Settings > API Keys)"
            )
            return w.error(f"Phoenix at {self.url} answered 401 Unauthorized; fix: {fix}", 401)
        if exc.code == 403:
            return w.error(
                f"Phoenix at {self.url} answered 403 Forbidden for {method} {path}; fix: use the API key of a user who "
                f"may {w.forbidden_fix}",
                403,
            )
        detail = http_error_detail(exc)
        fix = ""
        if exc.code in (404, 405):
            fix = f"; fix: {w.url_option} must be Phoenix's base URL (Phoenix 12 or newer: it has this REST API)"
        detail = f": {detail[:DETAIL_CHARS]}" if detail else ""
        return w.error(f"{method} {self.url}{path} answered {exc.code} {exc.reason}{detail}{fix}", exc.code)


def unreachable_reason(exc: OSError, timeout: float) -> str:
    """Why a request to Phoenix got no (whole) answer, in a few words (a timeout, a refused connection, ...)."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"no complete answer within {timeout:g} s"
    return first_line(reason) if isinstance(reason, BaseException) else str(reason)


def redirect_refused(exc: http_client.CrossOriginRedirect, url: str) -> str:
    """The middle of the message for a redirect not followed: where it went, and why the key stopped there."""
    return (
        f"was redirected to {exc.target}, another origin; the API key ({API_KEY_ENV}) goes only to "
        f"{http_client.origin(url)}, so the redirect was not followed"
    )


def http_error_detail(exc: urllib.error.HTTPError) -> str:
    """The first line of the ``detail`` of a Phoenix (FastAPI) error answer, or '' when it has none."""
    try:
        body = safejson.parse((exc.read(http_client.ERROR_BODY_BYTES) or b"null").decode("utf-8-sig"), None)
    except (ValueError, OSError):  # TraceFormatError and UnicodeDecodeError are ValueErrors
        return ""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):  # FastAPI's validation errors
        detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    return first_line(Exception(detail)) if detail else ""
