"""The run's Phoenix project and the links into Phoenix's UI: pure rules, tested without a server.

A run's traces go to a project of their own, so a person comparing two runs in Phoenix opens two projects instead of
filtering one by time. The generated name says when and from which commit the run came, and sorts by time.
"""

from __future__ import annotations

import urllib.parse
from datetime import datetime, timezone

# Phoenix's REST API takes a project's name in the URL path only when it holds none of these (its own rule).
FORBIDDEN_IN_PROJECT = "/?#"
SHORT_REVISION = 7


def run_project_name(now: datetime, revision: str | None) -> str:
    """``llmtrace-20261201T101502Z-3c418b8``: UTC time to the second, then the short git revision when there is one."""
    stamp = now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"llmtrace-{stamp}" + (f"-{revision[:SHORT_REVISION]}" if revision else "")


def check_project_name(name: str) -> str | None:
    """Why ``name`` cannot be a Phoenix project for this run, or None when it can."""
    if not name.strip():
        return "a project name cannot be empty"
    bad = sorted({c for c in name if c in FORBIDDEN_IN_PROJECT})
    if bad:
        return f"Phoenix project names used in its REST API cannot hold {' or '.join(bad)}"
    if name != name.strip():
        return "a project name cannot start or end with spaces"
    return None


def project_url(base: str, project_id: str) -> str:
    """The project's page in Phoenix's UI (``/projects/<id>``, the id being Phoenix's GlobalID, not the name)."""
    return f"{base.rstrip('/')}/projects/{urllib.parse.quote(project_id, safe='=')}"


def trace_url(base: str, project_id: str, trace_id: str) -> str:
    """A trace's page in Phoenix's UI: ``/projects/<project id>/traces/<OpenTelemetry trace id in hex>``.

    The shape of the route in Phoenix's UI (checked in arize-phoenix 20.26: ``:traceId`` is the OTel trace id, not
    Phoenix's own Trace id; its ``/redirects/traces/<id>`` route ends on this same page).
    """
    return f"{project_url(base, project_id)}/traces/{trace_id}"
