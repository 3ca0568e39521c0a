"""What a session locks down on its Postgres server, in the template and in its clone.

The roles a session's app and model SQL log in as are in ``pg_roles.py``; what those roles may reach is set here:

- in the template (so in every clone): no CREATE on the public schema, no large objects (``lo_*`` revoked from
  PUBLIC);
- on servers the plugin starts, every database is closed to PUBLIC (``lock_down_server``); on a server given by URL,
  only what the plugin created is changed, and ``URL_NOT_LOCKED`` says what is left as the user set it;
- each clone lets in the session's roles only (``open_clone``): the reader reads, the owner owns, neither gets TEMP.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from pytest_llmtrace.services.pg_roles import admin_connection

if TYPE_CHECKING:
    from pytest_llmtrace.services.pg_roles import SessionRoles

# Part of the template's name: a template built before this lockdown (or a later one) is built again, not reused.
LOCKDOWN_VERSION = "lockdown-2"  # 2: built from template0
# Backends whose server the plugin started: all of it may be locked down. Anything else belongs to the user.
LOCKED_BACKENDS = frozenset({"embedded", "docker"})
URL_NOT_LOCKED = "CONNECT/TEMP on your other databases"
# Server-side large-object functions: any role could create, write and export large objects with them (they live
# in pg_largeobject, outside any table the role may touch). Revoked from PUBLIC in the template, so every clone has it.
_LARGE_OBJECT_FUNCTIONS = """
SELECT p.oid::regprocedure::text FROM pg_proc p
WHERE p.pronamespace = 'pg_catalog'::regnamespace AND (p.proname LIKE 'lo\\_%' OR p.proname IN ('loread', 'lowrite'))
"""


def lock_down_template(template_url: str) -> None:
    """In the template (so in every clone): no CREATE on the public schema, no large-object functions for PUBLIC.

    The template is the plugin's own database on any server, so this is done on URL servers too; a login that does
    not own the functions cannot revoke them, and ``open_clone`` then says so.
    """
    from psycopg2 import errors

    with admin_connection(template_url) as conn, conn.cursor() as cur:
        cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        cur.execute(_LARGE_OBJECT_FUNCTIONS)
        functions = [row[0] for row in cur.fetchall()]
        with contextlib.suppress(errors.InsufficientPrivilege):
            cur.execute("REVOKE EXECUTE ON FUNCTION " + ", ".join(functions) + " FROM PUBLIC")


def lock_down_server(admin_url: str) -> None:
    """Every database of a server the plugin started is closed to PUBLIC (CONNECT, TEMP); each session's roles get
    CONNECT on their own clone only (``open_clone``). Idempotent, so each session may run it."""
    from psycopg2 import errors, sql

    with admin_connection(admin_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database")
        for (name,) in cur.fetchall():
            with contextlib.suppress(errors.InvalidCatalogName):  # another worker's clone, dropped meanwhile
                cur.execute(
                    sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name))
                )


def open_clone(admin_url: str, clone_url: str, clone: str, roles: SessionRoles) -> None:
    """Let the session's roles into their clone, and nobody else (on any server: the clone is the plugin's own).

    The reader gets CONNECT and SELECT on every table and sequence of the fixture's schemas; the owner (if any)
    gets CONNECT and the ownership of the database, its schemas, tables, views and sequences. Neither gets TEMP.
    What the reader can still do that it should not is added to ``roles.notes`` (large objects, on a server whose
    login does not own the lo_* functions).
    """
    from psycopg2 import sql

    database = sql.Identifier(clone)
    names = [sql.Identifier(name) for name in roles.names]
    reader = sql.Identifier(roles.reader.name)
    with admin_connection(admin_url) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(database))
        cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, sql.SQL(", ").join(names)))
        if roles.owner is not None:
            owner = sql.Identifier(roles.owner.name)
            cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(database, owner))
            cur.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM {}").format(database, owner))
    with admin_connection(clone_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'"
        )
        schemas = sql.SQL(", ").join(sql.Identifier(row[0]) for row in cur.fetchall())
        cur.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schemas, reader))
        cur.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(schemas, reader))
        cur.execute(sql.SQL("GRANT SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(schemas, reader))
        cur.execute("SELECT has_function_privilege(%s, 'lo_create(oid)', 'EXECUTE')", (roles.reader.name,))
        row = cur.fetchone()
        if row and row[0]:
            roles.notes.append("large objects (your login does not own the lo_* functions)")
        if roles.owner is not None:
            cur.execute(sql.SQL(_GIVE_AWAY).format(owner=sql.Literal(roles.owner.name)))


# Ownership of the fixture's schemas and relations, one by one: REASSIGN OWNED cannot move what the bootstrap
# superuser owns. A sequence owned by a column follows its table.
_GIVE_AWAY = """
DO $$DECLARE r record; BEGIN
FOR r IN SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' LOOP
  EXECUTE format('ALTER SCHEMA %I OWNER TO %I', r.nspname, {owner});
END LOOP;
FOR r IN SELECT c.oid::regclass AS rel, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
    AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
    AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                    AND d.deptype IN ('a', 'i') AND c.relkind = 'S') LOOP
  EXECUTE format('ALTER TABLE %s OWNER TO %I', r.rel, {owner});
END LOOP;
END$$
"""
