"""Reading traces from Langfuse's and LangSmith's servers for ``llmtrace capture``.

- **Langfuse** (``--langfuse-url``): the v2 observations API (``GET /api/public/v2/observations``), cursor pages of
  at most 1,000 with every field group, in the time window; basic auth from ``LANGFUSE_PUBLIC_KEY`` /
  ``LANGFUSE_SECRET_KEY``. Langfuse's read API can lag its ingestion by minutes: a trace sent a moment ago may not
  be listed yet.
- **LangSmith** (``--langsmith-project``): the project's id from ``GET /sessions?name=``, then its runs from
  ``POST /runs/query`` (cursor pages of 100), at ``LANGSMITH_ENDPOINT`` (default https://api.smith.langchain.com)
  with ``LANGSMITH_API_KEY`` in ``x-api-key``.

Both group what they read into traces with the same readers ``llmtrace import`` uses, then the filters pick traces
as Phoenix capture's do. Credentials go only to the given origin (``http_client`` follows no redirect elsewhere);
a 429 is retried after its ``Retry-After``, a 5xx after a short backoff, a few times each.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pytest_llmtrace.core.errors import TraceFormatError
from pytest_llmtrace.sources import http_client, langfuse_format, langsmith_format
from pytest_llmtrace.sources.capture.filters import CaptureError, Filters, sampled
from pytest_llmtrace.sources.phoenix_client import public_url, unreachable_reason
from pytest_llmtrace.trace import safejson
from pytest_llmtrace.trace.genai_mirror import all_with_genai
from pytest_llmtrace.trace.jsondoc import Doc
from pytest_llmtrace.trace.model import Span, Trace
from pytest_llmtrace.trace.otlp import group_traces

LANGFUSE_PAGE = 1000
LANGSMITH_PAGE = 100
MAX_PAGES = 100_000
RETRIES = 4
MAX_RETRY_AFTER_S = 60.0
BACKOFF_S = 0.25  # the first wait after a 5xx (or a 429 without Retry-After); doubled each time
LANGFUSE_FIELDS = "core,basic,time,io,metadata,model,usage,prompt,metrics"
LANGSMITH_DEFAULT_ENDPOINT = "https://api.smith.langchain.com"
LAG_NOTE = (
    "note: Langfuse's read API can lag its ingestion by minutes; traces sent in the last few minutes may be missing"
)


class ApiClient:
    """JSON over HTTP to one origin, with the credentials only there; retries 429 and 5xx answers."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        *,
        name: str,
        key_fix: str,
        timeout: float,
        max_bytes: int,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CaptureError(f"{name} URL {public_url(url)!r}: expected an http(s) URL", usage=True)
        self.url = public_url(url)
        self.name = name
        self.key_fix = key_fix
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.sleep = sleep
        self._headers = {"Accept": "application/json", "User-Agent": "pytest-llmtrace-capture", **headers}

    def request(self, method: str, path: str, params: Sequence[tuple[str, str]] = (), body: Any = None) -> Any:
        query = urllib.parse.urlencode(list(params))
        url = f"{self.url}{path}" + (f"?{query}" if query else "")
        where = f"{method} {self.url}{path}"
        for attempt in range(RETRIES + 1):
            data = None if body is None else json.dumps(body).encode()
            headers = {**self._headers, **({"Content-Type": "application/json"} if data is not None else {})}
            req = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                payload, _ = http_client.request(req, timeout=self.timeout, max_bytes=self.max_bytes)
            except urllib.error.HTTPError as exc:
                wait = self._retry_after(exc, attempt)
                if wait is None:
                    raise self._error(exc, where) from None
                self.sleep(wait)
                continue
            except http_client.CrossOriginRedirect as exc:
                raise CaptureError(
                    f"{where} was redirected to {exc.target}, another origin; the credentials go only to "
                    f"{http_client.origin(self.url)}, so it was not followed"
                ) from None
            except http_client.ResponseTooLarge as exc:
                raise CaptureError(f"{where} answered {exc}; fix: raise --max-response-bytes") from None
            except (urllib.error.URLError, OSError) as exc:
                raise CaptureError(
                    f"cannot reach {self.name} at {self.url} ({unreachable_reason(exc, self.timeout)})"
                ) from None
            try:
                return safejson.parse(payload.decode("utf-8-sig"), where) if payload else None
            except (TraceFormatError, UnicodeDecodeError):
                raise CaptureError(f"{where} answered something that is not JSON; fix: check the URL") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _retry_after(self, exc: urllib.error.HTTPError, attempt: int) -> float | None:
        if attempt >= RETRIES or not (exc.code == 429 or 500 <= exc.code < 600):
            return None
        header = exc.headers.get("Retry-After") if exc.headers is not None else None
        try:
            wait = float(header) if header is not None else BACKOFF_S * 2**attempt
        except ValueError:
            wait = BACKOFF_S * 2**attempt
        return min(max(wait, 0.0), MAX_RETRY_AFTER_S)

    def _error(self, exc: urllib.error.HTTPError, where: str) -> CaptureError:
        if exc.code in (401, 403):
            return CaptureError(f"{self.name} at {self.url} answered {exc.code} {exc.reason}; fix: {self.key_fix}")
        tries = f" (after {RETRIES} retries)" if exc.code == 429 or exc.code >= 500 else ""
        return CaptureError(f"{where} answered {exc.code} {exc.reason}{tries}")


def _pages_guard(path: str, cursor: str, seen: set[str]) -> None:
    if cursor in seen:
        raise CaptureError(f"{path} answered the page cursor {cursor[:40]!r} a second time; stopped")
    seen.add(cursor)


def _window(filters: Filters) -> tuple[str | None, str | None]:
    since = filters.since.isoformat().replace("+00:00", "Z") if filters.since else None
    until = filters.until.isoformat().replace("+00:00", "Z") if filters.until else None
    return since, until


class LangfuseSource:
    """A Langfuse project (the keys decide which) through the v2 observations API."""

    kind = "langfuse"

    def __init__(self, client: ApiClient, filters: Filters) -> None:
        self.client = client
        self.filters = filters
        self.project = ""

    @staticmethod
    def headers(public_key: str, secret_key: str) -> dict[str, str]:
        token = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def spans(self) -> Iterator[list[Span]]:
        path = "/api/public/v2/observations"
        since, until = _window(self.filters)
        params = [("limit", str(LANGFUSE_PAGE)), ("fields", LANGFUSE_FIELDS)]
        params += [("fromStartTime", since)] if since else []
        params += [("toStartTime", until)] if until else []
        if len(self.filters.trace_ids) == 1:
            params.append(("traceId", self.filters.trace_ids[0]))
        cursor: str | None = None
        seen: set[str] = set()
        for number in range(1, MAX_PAGES + 1):
            page = self.client.request("GET", path, [*params, *([("cursor", cursor)] if cursor else [])])
            where = f"{self.client.url}{path} page {number}"
            if not langfuse_format.is_observations_page(page):
                raise CaptureError(f"GET {where} did not answer an observations page; fix: check --langfuse-url")
            spans, _, cursor = langfuse_format.spans_from_page(Doc(page, where))
            yield spans
            if not cursor:
                return
            _pages_guard(path, cursor, seen)
        raise CaptureError(f"GET {self.client.url}{path} still had a next page after {MAX_PAGES:,} pages")

    def link(self, trace: Trace) -> str:
        return f"{self.client.url}/trace/{trace.trace_ids[0]}"


class LangSmithSource:
    """One LangSmith project's runs."""

    kind = "langsmith"

    def __init__(self, client: ApiClient, project: str, filters: Filters) -> None:
        self.client = client
        self.project = project
        self.filters = filters
        self.project_id = ""

    def spans(self) -> Iterator[list[Span]]:
        sessions = self.client.request("GET", "/sessions", [("name", self.project)])
        found = [s for s in sessions or [] if isinstance(s, dict) and s.get("name") == self.project]
        if not found:
            raise CaptureError(
                f"LangSmith at {self.client.url} has no project {self.project!r}; fix: pass the name shown in "
                "LangSmith's Projects list to --langsmith-project"
            )
        self.project_id = str(found[0].get("id"))
        since, until = _window(self.filters)
        body: dict[str, Any] = {"session": [self.project_id], "limit": LANGSMITH_PAGE}
        body |= {"start_time": since} if since else {}
        body |= {"end_time": until} if until else {}
        cursor: str | None = None
        seen: set[str] = set()
        for number in range(1, MAX_PAGES + 1):
            page = self.client.request("POST", "/runs/query", body=body | ({"cursor": cursor} if cursor else {}))
            where = f"{self.client.url}/runs/query page {number}"
            runs = page.get("runs") if isinstance(page, dict) else None
            if not isinstance(runs, list):
                raise CaptureError(f"POST {where} did not answer {{'runs': [...]}}; fix: check LANGSMITH_ENDPOINT")
            if runs:
                spans, _ = langsmith_format.spans_from_export(Doc(runs, where))
                yield spans
            cursors = page.get("cursors") if isinstance(page.get("cursors"), dict) else {}
            cursor = str(cursors["next"]) if cursors.get("next") else None
            if not cursor:
                return
            _pages_guard("/runs/query", cursor, seen)
        raise CaptureError(f"POST {self.client.url}/runs/query still had a next page after {MAX_PAGES:,} pages")

    def link(self, trace: Trace) -> str:
        run_id = str(trace.root.attributes.get("langsmith.run.id", ""))
        return f"{self.client.url}/projects/p/{self.project_id}/r/{run_id}"


def traces(source: LangfuseSource | LangSmithSource) -> list[Trace]:
    """Every trace the filters keep, newest root first (``--limit`` is the caller's: it counts files)."""
    spans: list[Span] = []
    for page in source.spans():
        spans.extend(page)
    f = source.filters
    chosen = []
    for trace in group_traces(all_with_genai(spans), f"{source.client.url} ({source.kind})"):
        trace_id = trace.trace_ids[0]
        if f.trace_ids and trace_id not in f.trace_ids:
            continue
        if f.root_names and trace.root.name not in f.root_names:
            continue
        if f.errors_only and not any(s.status.value == "ERROR" for s in trace):
            continue
        if f.sample is not None and not sampled(trace_id, f.sample, f.seed):
            continue
        chosen.append(trace)
    chosen.sort(key=lambda t: t.root.start_time_unix_nano, reverse=True)
    return chosen
