"""Reading one Phoenix project over its REST API: which traces the filters select, and all of their spans.

Two phases, so every filter sees whole traces:

1. list the root spans (``parent_id=null``), newest first, with the time window and root names filtered by Phoenix;
   ``--trace-id`` too. ``--errors-only`` keeps traces with an ERROR span anywhere (in text-to-SQL apps the root
   often stays OK when only the SQL failed); ``--sample`` then decides per trace id;
2. fetch every span of the chosen traces (``trace_id=...``, 100 traces a request, pages of up to 1,000 spans) and
   group them into traces with the same REST span reader ``llmtrace import`` uses.

The time window applies to the root span's start, so a trace is never cut in half by ``--since``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pytest_llmtrace.core.errors import TraceFormatError, did_you_mean, near_misses
from pytest_llmtrace.core.url_secrets import without_userinfo
from pytest_llmtrace.sources.capture.filters import CaptureError, Filters, sampled
from pytest_llmtrace.sources.phoenix_client import PhoenixRestClient, Wording, public_url
from pytest_llmtrace.sources.phoenix_format import span_from_rest
from pytest_llmtrace.trace.jsondoc import Doc
from pytest_llmtrace.trace.model import Span, Trace
from pytest_llmtrace.trace.otlp import group_traces

PAGE_LIMIT = 1000  # the most Phoenix's REST API gives in one page
MAX_PAGES = 1_000_000  # pages of one listing before it is taken for a server that never ends
# One answer's bytes: a page of 1,000 spans with long prompts is tens of MB; parsing takes about three times the size.
MAX_RESPONSE_BYTES = 200_000_000
TRACES_PER_REQUEST = 100  # trace ids in one query string: ~4 KB, well under any server's URL limit

Counter = Callable[..., None]

WORDING = Wording(
    error=lambda message, status: CaptureError(message),
    user_agent="pytest-llmtrace-capture",
    url_option="--phoenix-url",
    redirect_fix="set --phoenix-url to the address Phoenix answers at",
    too_large_fix="if this is Phoenix, raise --max-response-bytes",
    unreachable_fix="start Phoenix there or correct --phoenix-url",
    forbidden_fix="read this project",
)


class PhoenixClient(PhoenixRestClient):
    """GET requests to Phoenix's REST API, in capture's words; ``pages`` follows a paginated list."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        parts = urllib.parse.urlsplit(without_userinfo(url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CaptureError(
                f"--phoenix-url {public_url(url)!r}: expected an http(s) URL like http://127.0.0.1:6006", usage=True
            )
        super().__init__(
            public_url(url).removesuffix("/v1/traces"), WORDING, api_key=api_key, timeout=timeout, max_bytes=max_bytes
        )

    def get(self, path: str, params: Sequence[tuple[str, str]] = ()) -> Any:
        return self.request("GET", path, params)

    def pages(self, path: str, params: Sequence[tuple[str, str]]) -> Iterator[list[Any]]:
        """Every page of a paginated list, following ``next_cursor``.

        A cursor answered twice would loop forever, and a server that always has a next page would never end: both
        stop with an error, the second after ``MAX_PAGES`` pages (a billion spans at Phoenix's page size).
        """
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            page = self.get(path, [*params, *([("cursor", cursor)] if cursor else [])])
            data = page.get("data") if isinstance(page, dict) else None
            if not isinstance(data, list):
                raise CaptureError(
                    f"GET {self.url}{path} did not answer a page ({{'data': [...]}}); fix: check that --phoenix-url "
                    "is a Phoenix server"
                )
            yield data
            next_cursor = page.get("next_cursor")
            if not next_cursor:
                return
            cursor = str(next_cursor)
            if cursor in seen:
                raise CaptureError(
                    f"GET {self.url}{path} answered the page cursor {cursor[:40]!r} a second time, which would "
                    f"list the same pages forever; fix: check that --phoenix-url is a Phoenix server"
                )
            seen.add(cursor)
        raise CaptureError(
            f"GET {self.url}{path} still had a next page after {MAX_PAGES:,} pages; stopped there; fix: check "
            "that --phoenix-url is a Phoenix server, or narrow the capture with --since/--until"
        )

    def projects(self) -> list[str]:
        names: list[str] = []
        for page in self.pages("/v1/projects", [("limit", "100")]):
            names.extend(str(p.get("name")) for p in page if isinstance(p, dict))
        return names


def _trace_id(item: Any) -> str:
    context = item.get("context") if isinstance(item, dict) else None
    return str(context.get("trace_id", "")).lower() if isinstance(context, dict) else ""


class Source:
    """One Phoenix project seen through the filters. ``count`` is called with ``roots=`` and ``spans=`` as pages
    arrive (the progress line)."""

    def __init__(self, client: PhoenixClient, project: str, filters: Filters, count: Counter) -> None:
        self.client = client
        self.project = project
        self.filters = filters
        self.count = count
        self.spans_path = f"/v1/projects/{urllib.parse.quote(project, safe='')}/spans"
        self.roots_listed = 0
        self.root_names: dict[str, None] = {}  # names of the listed roots, for a --root-name near miss

    def check_project(self) -> None:
        """A 404 for a project's spans means the name is wrong: list the names there are, nearest first."""
        try:
            self.client.get(self.spans_path, [("limit", "1")])
        except CaptureError as exc:
            if " answered 404 " not in str(exc):
                raise
            names = self.client.projects()
            near = near_misses(self.project, names, n=3, cutoff=0.5)
            hint = did_you_mean(self.project, names, cutoff=0.5)
            hint = f"{hint} " if hint else ""
            shown = ", ".join(near + [n for n in names if n not in near][: max(0, 10 - len(near))])
            more = f" and {len(names) - 10} more" if len(names) > 10 else ""
            raise CaptureError(
                f"Phoenix at {self.client.url} has no project {self.project!r}; {hint}projects there: "
                f"{shown or 'none'}{more}; fix: pass one of them to --project"
            ) from None

    def error_trace_ids(self) -> set[str]:
        """Traces with an ERROR span. No upper time bound: a child may start after ``--until`` when its root did not."""
        params = [("limit", str(PAGE_LIMIT)), ("status_code", "ERROR")]
        if self.filters.since is not None:
            params.append(("start_time", self.filters.since.isoformat()))
        ids: set[str] = set()
        for page in self.client.pages(self.spans_path, params):
            ids.update(_trace_id(item) for item in page)
        return ids

    def chosen(self) -> Iterator[str]:
        """Trace ids that pass every filter, newest root first (``--limit`` is the caller's: it counts files)."""
        f = self.filters
        errors = self.error_trace_ids() if f.errors_only else None
        page_size = PAGE_LIMIT
        if f.limit is not None and f.sample is None and not f.errors_only:
            page_size = min(PAGE_LIMIT, f.limit)  # --limit 5 needs five roots, not a page of a thousand
        params = [("limit", str(page_size)), ("parent_id", "null"), ("sort", "start_time"), ("order", "desc")]
        if f.since is not None:
            params.append(("start_time", f.since.isoformat()))
        if f.until is not None:
            params.append(("end_time", f.until.isoformat()))
        params += [("name", n) for n in f.root_names] + [("trace_id", t) for t in f.trace_ids]
        seen: set[str] = set()
        for page in self.client.pages(self.spans_path, params):
            self.count(roots=len(page))
            for item in page:
                if not isinstance(item, dict) or item.get("parent_id") is not None:
                    continue  # a Phoenix that ignores parent_id=null lists child spans too
                trace_id = _trace_id(item)
                if trace_id in seen:
                    continue
                seen.add(trace_id)
                self.roots_listed += 1
                self.root_names.setdefault(str(item.get("name")), None)
                if errors is not None and trace_id not in errors:
                    continue
                if f.sample is not None and not sampled(trace_id, f.sample, f.seed):
                    continue
                yield trace_id

    def root_names_in_window(self) -> list[str]:
        """Root span names of the newest 1,000 traces in the window, ignoring ``--root-name``: for its near miss."""
        params = [("limit", str(PAGE_LIMIT)), ("parent_id", "null")]
        if self.filters.since is not None:
            params.append(("start_time", self.filters.since.isoformat()))
        if self.filters.until is not None:
            params.append(("end_time", self.filters.until.isoformat()))
        page = next(self.client.pages(self.spans_path, params), [])
        return list(dict.fromkeys(str(item.get("name")) for item in page if isinstance(item, dict)))

    def fetch(self, trace_ids: Sequence[str]) -> list[list[Any]]:
        """Every span of these traces, as Phoenix's pages. Only HTTP and JSON, so it can run in a worker thread while
        the previous batch is converted and written: Phoenix is then never idle waiting for the next request."""
        params = [("limit", str(PAGE_LIMIT)), *(("trace_id", t) for t in trace_ids)]
        return list(self.client.pages(self.spans_path, params))

    def traces(self, trace_ids: Sequence[str], pages: Sequence[list[Any]]) -> tuple[list[Trace], list[str]]:
        """The traces with these ids, in that order, plus one error line per trace skipped because Phoenix returned
        a span the REST reader cannot read."""
        source = f"{self.client.url}{self.spans_path}"
        spans: list[Span] = []
        paths: dict[str, str] = {}
        bad: dict[str, str] = {}
        for number, page in enumerate(pages, start=1):
            for index, item in enumerate(page):
                where = f"page {number}: $.data[{index}]"
                try:
                    span = span_from_rest(Doc(item, source, where))
                except TraceFormatError as exc:
                    bad.setdefault(_trace_id(item), str(exc))
                    continue
                spans.append(span)
                paths.setdefault(span.span_id, where)
            self.count(spans=len(page))
        kept = (s for s in spans if s.trace_id not in bad)
        grouped = {t.trace_ids[0]: t for t in group_traces(kept, source, paths)}
        errors = [f"trace {trace_id} skipped: {message}" for trace_id, message in bad.items()]
        return [grouped[t] for t in trace_ids if t in grouped], errors
