"""The two REST calls export makes besides OTLP: make sure the run's project exists (its id builds the UI links), and
post the verdict annotations. Each failure becomes one ``ExportError`` line naming the URL and the fix (the request
itself, and its error lines, are ``sources/phoenix_client.py``'s, shared with ``llmtrace capture``).

The API key (``PHOENIX_API_KEY``) goes only into the ``Authorization`` header; no message ever holds it.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from typing import Any

from pytest_llmtrace.core.errors import LLMTraceError
from pytest_llmtrace.sources.phoenix_client import API_KEY_ENV, PhoenixRestClient, Wording, auth_headers

__all__ = ["ANNOTATIONS_PER_REQUEST", "API_KEY_ENV", "ExportError", "PhoenixRest", "auth_headers"]

ANNOTATIONS_PER_REQUEST = 500
MAX_ANSWER_BYTES = 10_000_000  # a project or an annotation receipt is a few hundred bytes


class ExportError(LLMTraceError):
    """Phoenix did not take what export sent; the message names the URL and the fix, never the API key."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status Phoenix answered, None when it did not answer


WORDING = Wording(
    error=ExportError,
    user_agent="pytest-llmtrace-export",
    url_option="--llmtrace-phoenix",
    redirect_fix="point --llmtrace-phoenix at the address Phoenix answers at",
    too_large_fix="--llmtrace-phoenix must be Phoenix's base URL",
    unreachable_fix="start Phoenix there, point --llmtrace-phoenix at a running one, or leave out "
    "--llmtrace-phoenix-export",
    forbidden_fix="create projects and annotations",
)


class PhoenixRest(PhoenixRestClient):
    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 10.0) -> None:
        super().__init__(url, WORDING, api_key=api_key, timeout=timeout, max_bytes=MAX_ANSWER_BYTES)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return self.request(method, path, body=body)

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
