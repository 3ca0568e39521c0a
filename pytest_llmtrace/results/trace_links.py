"""Links from a report to a case's trace in Phoenix, only ever to a Phoenix the user configured.

A golden file is reviewed as data, not as a list of links: the Phoenix it names (``llmtrace capture`` provenance) is
linked to only when it is one of the configured origins, and the link is built on the configured URL (without its
user part, query or fragment), so a hostile file cannot send a reader of report.html elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import quote, urlsplit

from pytest_llmtrace.results.case_record import CaseRecord

__all__ = ["phoenix_link"]


def _origin(url: str) -> tuple[str, str, int] | None:
    """scheme, host and port of an http(s) URL (the port made explicit), or None."""
    try:
        parts = urlsplit(url.strip())
        scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    except ValueError:
        return None
    if scheme not in ("http", "https") or not host:
        return None
    return scheme, host, port or (443 if scheme == "https" else 80)


def _base(url: str) -> str:
    """The configured Phoenix URL without its user part, query or fragment: what a link may carry."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"


def phoenix_link(case: CaseRecord, phoenix: Sequence[str] = ()) -> str | None:
    """Phoenix's own redirect to a trace by its OTel id, for a golden trace captured from the Phoenix the user
    configured (``phoenix``: its URLs, from --llmtrace-phoenix or the server the run used).

    A golden file is reviewed as data, not as a list of links: the Phoenix it names is linked to only when it is one
    of those origins, and the link is built on the configured URL, so a file cannot send a reader elsewhere.
    """
    found = case.get("phoenix")
    if not isinstance(found, Mapping):
        return None
    url, trace_id = str(found.get("url") or ""), str(found.get("trace_id") or "")
    origin = _origin(url)
    if origin is None or not trace_id:
        return None
    for configured in phoenix:
        if _origin(configured) == origin:
            return f"{_base(configured)}/redirects/traces/{quote(trace_id, safe='')}"
    return None
