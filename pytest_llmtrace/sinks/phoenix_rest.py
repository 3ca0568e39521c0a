"""The two REST calls export makes besides OTLP: make sure the run's project exists (its id builds the UI links), and
post the verdict annotations. Each failure becomes one ``ExportError`` line naming the URL and the fix.

The API key (``PHOENIX_API_KEY``) goes only into the ``Authorization`` header; no message ever holds it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from pytest_llmtrace.core.errors import LLMTraceError
from pytest_llmtrace.sources.capture import http_client
from pytest_llmtrace.sources.capture.phoenix_api import (
    API_KEY_ENV,
    http_error_detail,
    public_url,
    redirect_refused,
    unreachable_reason,
)
from pytest_llmtrace.trace import safejson

__all__ = ["ANNOTATIONS_PER_REQUEST", "API_KEY_ENV", "ExportError", "PhoenixRest", "auth_headers"]

ANNOTATIONS_PER_REQUEST = 500
MAX_ANSWER_BYTES = 10_000_000  # a project or an annotation receipt is a few hundred bytes


class ExportError(LLMTraceError):
    """Phoenix did not take what export sent; the message names the URL and the fix, never the API key."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status Phoenix answered, None when it did not answer


def auth_headers(api_key: str | None) -> dict[str, str]:
    """What the OTLP exporter and the REST calls both send: a bearer token, when there is a key."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class PhoenixRest:
    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 10.0) -> None:
        self.url = public_url(url)
        self.timeout = timeout
        self._headers = {"Accept": "application/json", "User-Agent": "pytest-llmtrace-export", **auth_headers(api_key)}

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            payload, _ = http_client.request(request, timeout=self.timeout, max_bytes=MAX_ANSWER_BYTES)
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc, method, path) from None
        except http_client.CrossOriginRedirect as exc:
            raise ExportError(
                f"{method} {self.url}{path} {redirect_refused(exc, self.url)}; fix: point --llmtrace-phoenix at the "
                "address Phoenix answers at"
            ) from None
        except http_client.ResponseTooLarge as exc:
            raise ExportError(
                f"{method} {self.url}{path} answered {exc}; fix: --llmtrace-phoenix must be Phoenix's base URL"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            why = unreachable_reason(exc, self.timeout)
            raise ExportError(
                f"cannot reach Phoenix at {self.url} ({why}); fix: start Phoenix there, point --llmtrace-phoenix at "
                "a running one, or leave out --llmtrace-phoenix-export"
            ) from None
        try:
            return safejson.parse(payload.decode("utf-8-sig"), f"{method} {self.url}{path}") if payload else None
        except ValueError:  # not UTF-8, not JSON, or JSON past safejson's limits: not what Phoenix answers
            raise ExportError(
                f"{method} {self.url}{path} did not answer JSON; fix: --llmtrace-phoenix must be Phoenix's base URL "
                "(the address of its UI, like http://127.0.0.1:6006)"
            ) from None

    def _http_error(self, exc: urllib.error.HTTPError, method: str, path: str) -> ExportError:
        if exc.code == 401:
            fix = (
                f"{API_KEY_ENV} is set but this Phoenix refused it; set it to a valid key (Settings > API Keys)"
                if "Authorization" in self._headers
                else f"this Phoenix requires authentication; set {API_KEY_ENV} to an API key (Settings > API Keys)"
            )
            return ExportError(f"Phoenix at {self.url} answered 401 Unauthorized; fix: {fix}", 401)
        if exc.code == 403:
            return ExportError(
                f"Phoenix at {self.url} answered 403 Forbidden for {method} {path}; fix: use the API key of a user who "
                "may create projects and annotations",
                403,
            )
        fix = ""
        if exc.code in (404, 405):
            fix = "; fix: --llmtrace-phoenix must be Phoenix's base URL (Phoenix 12 or newer: it has this REST API)"
        return ExportError(f"{method} {self.url}{path} answered {exc.code} {exc.reason}{_detail(exc)}{fix}", exc.code)

    def project_id(self, name: str) -> str:
        """The id (Phoenix's GlobalID) of project ``name``, created empty if it does not exist yet.

        Created before any span arrives, so the UI links of the cases are known while the run goes on: Phoenix files
        spans into an existing project by name. Under xdist the workers race to create it; the loser reads it back.
        """
        path = "/v1/projects/" + urllib.parse.quote(name, safe="")
        try:
            return _project_id(self.call("GET", path), self.url)
        except ExportError as exc:
            if exc.status != 404:
                raise
        try:
            created = self.call(
                "POST", "/v1/projects", {"name": name, "description": "Test run traces sent by pytest-llmtrace"}
            )
        except ExportError as exc:
            if exc.status is None or exc.status in (401, 403, 404, 405):
                raise
            return _project_id(self.call("GET", path), self.url)  # another worker created it first
        return _project_id(created, self.url)

    def annotate(self, items: Sequence[dict[str, Any]]) -> None:
        """Queue the annotations in Phoenix (not ``sync``: Phoenix holds an annotation whose span it has not stored
        yet and retries, so this need not wait for the spans sent just before)."""
        for start in range(0, len(items), ANNOTATIONS_PER_REQUEST):
            self.call("POST", "/v1/span_annotations", {"data": list(items[start : start + ANNOTATIONS_PER_REQUEST])})


def _project_id(answer: Any, url: str) -> str:
    data = answer.get("data") if isinstance(answer, dict) else None
    project_id = data.get("id") if isinstance(data, dict) else None
    if not isinstance(project_id, str) or not project_id:
        raise ExportError(f"Phoenix at {url} answered a project without an id; fix: use Phoenix 12 or newer")
    return project_id


def _detail(exc: urllib.error.HTTPError) -> str:
    detail = http_error_detail(exc)
    return f": {detail[:200]}" if detail else ""
