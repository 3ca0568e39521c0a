"""The template database holding the fixtures and the per-session clones made from it, on any Postgres server.

Golden traces replay SQL that may fail or even delete rows, so every session gets its own database cloned from a
template (``CREATE DATABASE x TEMPLATE tpl`` copies files, far faster than reloading the seed). Getting a server
differs by backend (``postgres.py``), but the template and clone operations only need a DSN, so they are plain
functions over any backend's ``Endpoint.url``.

psycopg2 (which loads libpq) is imported inside the functions that use it: loading the plugin does not pay for it.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pytest_llmtrace.core.errors import LLMTraceError
from pytest_llmtrace.services.pg_lockdown import lock_down_template
from pytest_llmtrace.services.pg_roles import admin_connection

_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class SqlFileError(LLMTraceError):
    """A fixture SQL file failed to load; names the file so the fix starts in the right place."""


def _check_name(name: str) -> str:
    if not _DB_NAME.match(name):
        raise ValueError(f"database name {name!r} must match {_DB_NAME.pattern} (lower case, no quoting needed)")
    return name


def database_url(url: str, name: str) -> str:
    """``url`` with its database replaced by ``name`` (query parameters such as ``host=`` for sockets are kept)."""
    return urlunsplit(urlsplit(url)._replace(path="/" + _check_name(name)))


_admin = admin_connection


@contextlib.contextmanager
def advisory_lock(url: str, name: str) -> Iterator[None]:
    """A server-wide lock named ``name`` (a session advisory lock on its own connection): two pytest runs on one
    server build a template one after the other, never both at once. Released when the block ends or the
    connection drops (a killed run)."""
    with _admin(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", ("pytest-llmtrace:" + name,))
        try:
            yield
        finally:
            cur.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", ("pytest-llmtrace:" + name,))


def template_ready(url: str, name: str) -> bool:
    """Whether template ``name`` exists and is complete (marked a template last, after loading and lockdown)."""
    with _admin(url) as admin, admin.cursor() as cur:
        cur.execute("SELECT datistemplate FROM pg_database WHERE datname = %s", (name,))
        row = cur.fetchone()
        return bool(row and row[0])


def create_template(url: str, name: str, sql_files: Iterable[str | Path]) -> str:
    """Create database ``name`` from ``sql_files`` (in the order given) and mark it a template; returns its DSN.

    ``url`` is any DSN of the server with rights to create databases. Each file runs in one transaction, so a failing
    file leaves nothing half-loaded behind it, and the error names that file. It is made from ``template0``, which
    no role can connect to, not from ``template1``: a function a role planted there would be in the template, where
    the fixture SQL (run as the admin) might call it. The template is locked down
    (``pg_lockdown.lock_down_template``) before it is marked a template: a marked template is a complete one.
    """
    import psycopg2  # libpq: loaded when a session first builds a template, not when the plugin loads
    from psycopg2 import sql

    ident = sql.Identifier(_check_name(name))
    with _admin(url) as admin, admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(ident))
    template_url = database_url(url, name)
    conn = psycopg2.connect(template_url)
    try:
        for path in map(Path, sql_files):
            try:
                with conn, conn.cursor() as cur:
                    cur.execute(path.read_text(encoding="utf-8"))
            except psycopg2.Error as exc:
                conn.close()
                drop_database(url, name)  # so that fixing the file and running again does not hit "already exists"
                raise SqlFileError(f"{path}: loading into database {name!r} failed: {str(exc).strip()}") from exc
    finally:
        conn.close()
    lock_down_template(template_url)
    with _admin(url) as admin, admin.cursor() as cur:
        cur.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true").format(ident))
    return template_url


def clone_database(url: str, template: str, name: str | None = None) -> str:
    """A fresh copy of ``template``, closed to PUBLIC from its first moment; returns its DSN. The default name is
    unique, so parallel clones never clash.

    A new database lets PUBLIC connect until that is revoked, and another session's role got into a fresh clone in
    between: the clone is created taking no connections, and takes them only once PUBLIC may not (the admin, its
    owner, still may; ``pg_lockdown.open_clone`` lets the session's roles in).
    """
    from psycopg2 import sql

    name = _check_name(name or f"{template[:40]}_{uuid.uuid4().hex[:12]}")
    ident = sql.Identifier(name)
    with _admin(url) as admin, admin.cursor() as cur:
        cur.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} ALLOW_CONNECTIONS false").format(ident, sql.Identifier(template))
        )
        cur.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(ident))
        cur.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(ident))
    return database_url(url, name)


def database_exists(url: str, name: str) -> bool:
    with _admin(url) as admin, admin.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        return cur.fetchone() is not None


def drop_database(url: str, name: str) -> None:
    """Drop a clone or a template, even with sessions still connected (an app under test may leak one)."""
    from psycopg2 import sql

    ident = sql.Identifier(_check_name(name))
    with _admin(url) as admin, admin.cursor() as cur:
        cur.execute("SELECT datistemplate FROM pg_database WHERE datname = %s", (name,))
        row = cur.fetchone()
        if row is None:
            return
        if row[0]:
            cur.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(ident))
        cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(ident))
