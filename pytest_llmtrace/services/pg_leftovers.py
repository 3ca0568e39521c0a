"""What a run killed with SIGKILL leaves on a Postgres server it did not start, dropped by the next run there.

A server the plugin started goes away with the run's records (``runs.reap_orphans``). A server given by URL stays,
and a killed run's clone database and session roles would stay on it for good. So each of them carries a comment
naming its run: the host, the boot, and the pid and start time of the process whose end means the run is over (the
pytest process, or the xdist controller). The next run that sets up a database on that server drops the ones whose
run is over: same host and boot, and no process with that pid and start time.

What it never touches: objects without the marker (a template, anything of the user's), objects of runs on other
machines (CI shards sharing one server) or another boot, and objects of a run that is still alive. The window
between creating an object and commenting on it is one statement; a run killed exactly there leaves that object.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from pytest_llmtrace.core.errors import first_line
from pytest_llmtrace.services import pg_databases
from pytest_llmtrace.services.pg_roles import OWNER_PREFIX, READER_PREFIX, admin_connection, drop_roles
from pytest_llmtrace.services.run_records import RunRecord, running

MARKER = "pytest-llmtrace run "
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_FIND = r"""
SELECT 'database', datname, shobj_description(oid, 'pg_database') FROM pg_database
WHERE datname LIKE 'llmtrace\_%%' AND NOT datistemplate
UNION ALL
SELECT 'role', rolname, shobj_description(oid, 'pg_authid') FROM pg_roles
WHERE rolname LIKE %s OR rolname LIKE %s
"""


@cache
def _machine() -> tuple[str, str]:
    try:
        boot = _BOOT_ID.read_text().strip()
    except OSError:  # not Linux: the pid's start time still tells a reused pid apart
        boot = ""
    return socket.gethostname(), boot


def run_marker(record: RunRecord) -> str:
    host, boot = _machine()
    owner = {"host": host, "boot": boot, "pid": record.owner_pid, "started": record.owner_create_time}
    return MARKER + json.dumps(owner, sort_keys=True)


def mark(admin_url: str, database: str | None, roles: Sequence[str], marker: str) -> None:
    """Comment the run's clone and roles with ``marker`` (``run_marker``), right after creating them."""
    from psycopg2 import sql

    with admin_connection(admin_url) as conn, conn.cursor() as cur:
        if database is not None:
            cur.execute(sql.SQL("COMMENT ON DATABASE {} IS %s").format(sql.Identifier(database)), (marker,))
        for role in roles:
            cur.execute(sql.SQL("COMMENT ON ROLE {} IS %s").format(sql.Identifier(role)), (marker,))


def _over(comment: object) -> bool:
    """Whether ``comment`` is a marker of a run on this machine and boot that is no longer running."""
    if not isinstance(comment, str) or not comment.startswith(MARKER):
        return False
    try:
        owner: Any = json.loads(comment[len(MARKER) :])
    except ValueError:
        return False
    if not isinstance(owner, dict) or (owner.get("host"), owner.get("boot")) != _machine():
        return False
    return running(owner.get("pid"), owner.get("started")) is None


def reap(admin_url: str) -> tuple[list[str], list[str]]:
    """Drop the clones, then the roles, of this machine's runs that are over: what was dropped, and what could not
    be (one line each, saying why)."""
    import psycopg2

    dropped: list[str] = []
    refused: list[str] = []
    # one reaper at a time per server (xdist workers, CI shards): the second finds nothing left to drop
    with pg_databases.advisory_lock(admin_url, "reap"):
        with admin_connection(admin_url) as conn, conn.cursor() as cur:
            cur.execute(_FIND, (READER_PREFIX.replace("_", r"\_") + "%", OWNER_PREFIX.replace("_", r"\_") + "%"))
            found = [(kind, name) for kind, name, comment in cur.fetchall() if _over(comment)]
        for kind, name in sorted(found):  # "database" sorts first: a clone goes before the roles let into it
            try:
                if kind == "database":
                    pg_databases.drop_database(admin_url, name)
                else:
                    drop_roles(admin_url, [name])
            except psycopg2.Error as exc:  # a login that may not drop it: say so, go on
                refused.append(f"could not drop the {kind} {name} of a run that is over: {first_line(exc)}")
            else:
                dropped.append(f"the {kind} {name}")
    return dropped, refused
