"""One pytest session's Postgres database: its template built once per server, its clone, its own roles, and the
guard that holds each of its cases.

The manager only knows that a session asks for a database; how a Postgres server is made safe to hand to a case is
this module's: the template is built under the run's file lock and a server-side advisory lock, a server the run was
given is reaped of what killed runs left first, the clone is opened to the session's roles and nobody else, and the
roles' logins are checked before the first case, so a reader that logs in as a superuser stops the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pytest_llmtrace.core.errors import first_line
from pytest_llmtrace.services import case_bounds, pg_databases, pg_leftovers, pg_lockdown, pg_roles
from pytest_llmtrace.services.base import Endpoint, ServiceStartError, redact_url
from pytest_llmtrace.services.pg_cluster_cache import ClusterSeed
from pytest_llmtrace.services.pg_deadline import Watchdog
from pytest_llmtrace.services.pg_guard import SessionGuard
from pytest_llmtrace.services.pg_objects import ObjectGuard
from pytest_llmtrace.services.postgres import PostgresDatabase
from pytest_llmtrace.services.run_records import RunContext
from pytest_llmtrace.services.user_folder import file_lock

if TYPE_CHECKING:
    from pytest_llmtrace.services.pg_roles import RoleLimits


class SessionNotes(Protocol):
    """Where the notes for the session's header go (the manager): what could not be locked down on a server, and
    what a killed run left that could not be dropped."""

    lockdown_notes: list[str]
    leftover_notes: list[str]


def template_name(files: list[Path], rootdir: Path) -> str:
    """The fixtures' template, named by their digest: changed files make a new template, never a stale one reused."""
    digest = hashlib.sha256(pg_lockdown.LOCKDOWN_VERSION.encode())
    for path in files:
        digest.update(str(path.relative_to(rootdir)).encode() + b"\0" + path.read_bytes())
    return f"llmtrace_tpl_{digest.hexdigest()[:12]}"


def cluster_seed(files: list[Path], rootdir: Path) -> ClusterSeed:
    """What a server the plugin starts holds before its first session, so its cached cluster can hold it too: the
    fixtures' template, built and locked down as ``open_session`` would build it on a fresh server."""
    template = template_name(files, rootdir)

    def build(admin_url: str) -> None:
        pg_databases.create_template(admin_url, template, files)
        pg_lockdown.lock_down_server(admin_url)

    return ClusterSeed(template, build)


def open_session(
    endpoint: Endpoint,
    files: list[Path],
    *,
    rootdir: Path,
    context: RunContext,
    reaped: set[str],
    notes: SessionNotes,
    limits: RoleLimits | None = None,
    owner: bool = False,
) -> tuple[PostgresDatabase, SessionGuard]:
    """The session's clone of the template of ``files`` on ``endpoint`` and the guard of its cases.

    ``reaped``: the URL servers whose killed runs' leftovers this process has dropped already (reaped once each).
    ``owner``: the app gets the owner role's DSN too (``llmtrace_app_db = owner``). A server where this login may
    not create databases or roles, or where a session role cannot log in safely, is a ``ServiceStartError``.
    """
    import psycopg2  # loads libpq: only when a test first uses Postgres

    template = template_name(files, rootdir)
    name = f"llmtrace_{context.worker_id}_{uuid.uuid4().hex[:8]}".lower()
    roles: pg_roles.SessionRoles | None = None
    try:
        # A server this run started goes with it; one it was given keeps what killed runs left: reap that once
        kept_server = endpoint.backend not in pg_lockdown.LOCKED_BACKENDS
        if kept_server and endpoint.url not in reaped:
            reaped.add(endpoint.url)
            _, notes.leftover_notes = pg_leftovers.reap(endpoint.url)
        with (
            file_lock(context.run_dir / "postgres-template.lock"),
            pg_databases.advisory_lock(endpoint.url, template),
        ):
            if not pg_databases.template_ready(endpoint.url, template):
                pg_databases.drop_database(endpoint.url, template)  # half-built by a run that was killed
                pg_databases.create_template(endpoint.url, template, files)
                if endpoint.backend in pg_lockdown.LOCKED_BACKENDS:  # each clone is closed by open_clone
                    pg_lockdown.lock_down_server(endpoint.url)
        url = pg_databases.clone_database(endpoint.url, template, name)
        roles = pg_roles.SessionRoles.create(endpoint.url, limits or pg_roles.RoleLimits(), owner=True)
        if kept_server:
            pg_leftovers.mark(endpoint.url, name, roles.names, pg_leftovers.run_marker(context.record))
        pg_lockdown.open_clone(endpoint.url, url, name, roles)
    except psycopg2.Error as exc:  # a user's server where this login may not create databases or roles
        if roles is not None:
            with contextlib.suppress(Exception):
                pg_databases.drop_database(endpoint.url, name)
                roles.drop()
        raise ServiceStartError(
            "postgres",
            endpoint.backend,
            f"cannot set up the test databases on {redact_url(endpoint.url)}: {first_line(exc)}",
            fix="connect as a role with CREATEDB and CREATEROLE (it creates a template, a clone per session and "
            "roles of its own for each session), or use --llmtrace-postgres=embedded",
            urls=(endpoint.url,),
        ) from exc
    assert roles.owner is not None, "created with owner=True"
    owner_url = roles.owner.dsn(endpoint.url, name)
    database = PostgresDatabase(
        endpoint=replace(endpoint, url=owner_url),  # no superuser DSN leaves the manager
        url=owner_url,
        reader_url=roles.reader.dsn(endpoint.url, name),
        database=name,
        template=template,
        reader_role=roles.reader.name,
        owner_url=owner_url if owner else None,
        owner_role=roles.owner.name if owner else None,
    )
    notes.lockdown_notes = roles.notes
    # The watchdog ends the app's backends at a deadline: the owner's only when the app logs in as the owner
    roles_watched = roles.names if owner else (roles.reader.name,)
    watchdog = Watchdog(endpoint.url, name, roles_watched, case_bounds.backend_killer(endpoint))
    objects = ObjectGuard(url)  # ``url``: the clone as the admin, for the catalogs only
    guard = SessionGuard(roles, watchdog, objects)
    try:
        pg_roles.verify_login(database.reader_url, roles.reader.name)
        pg_roles.verify_login(owner_url, roles.owner.name)
        watchdog.start()
        objects.snapshot()  # connects now, before a case could hold every connection slot
    except (psycopg2.Error, pg_roles.UnsafeLogin) as exc:
        guard.close()
        pg_databases.drop_database(endpoint.url, name)
        raise ServiceStartError(
            "postgres",
            endpoint.backend,
            f"the session's own role cannot be used safely on {redact_url(endpoint.url)}: {first_line(exc)}",
            fix="check pg_hba.conf lets the roles llmtrace_r_* / llmtrace_o_* log in with a password",
            urls=(endpoint.url, database.reader_url, database.owner_url or ""),
        ) from exc
    return database, guard
