"""Code a case leaves in its database: found after the case from the admin side, and dropped.

A trigger, function, rule or policy runs with the rights of whoever fires it, not of whoever made it. With
``llmtrace_app_db = owner`` the app's SQL runs as the session's owner role, which owns the clone and may create such
code on a fixture table; a write by a more privileged login would then run it with that login's rights (``COPY ...
TO PROGRAM`` as a superuser is a shell). So nothing privileged writes into a clone (the DSN tests get is the owner
role's, see ``manager.database``), and, so that a case cannot leave a trap for what follows it, ``ObjectGuard``
compares the clone's catalogs before and after each case: code that appeared or changed is dropped, an owner that
changed is put back, and the case fails with ``[sandbox]`` naming each one.

What Postgres records is compared, never SQL text. The snapshot is one catalog query on a connection kept for the
session (about a millisecond per case on company_db); it runs with ``search_path = pg_catalog`` so no function or
operator a case made is ever resolved by it, and the clean-up runs with ``session_replication_role = replica`` (when
the admin is a superuser) so no trigger, rule or event trigger fires during it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from psycopg2.extensions import connection as PgConnection

# One row per object: kind, oid, name, what it is on (a relation, for triggers, rules and policies), owner, and a
# digest of what it does (its definition, as the catalogs hold it). Kinds that are code are compared by digest;
# relations, schemas and the database only by owner. System schemas (pg_catalog, information_schema, pg_toast) are
# left out: nothing but a superuser writes there. Routines, relations and rules made after initdb have an oid from
# 16384 on (FirstNormalObjectId), which lets the catalogs' oid indexes skip the thousands that come with Postgres;
# schemas are all compared (``public`` comes with initdb).
_SNAPSHOT = """
SELECT 'trigger', t.oid, t.tgname::text, t.tgrelid::regclass::text, 0::oid,
       md5(concat_ws(',', t.tgfoid, t.tgtype, t.tgenabled, t.tgattr, encode(t.tgargs, 'hex'), t.tgqual,
                     t.tgoldtable, t.tgnewtable, t.tgconstraint))
FROM pg_trigger t WHERE NOT t.tgisinternal
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' ELSE 'function' END, p.oid,
       p.oid::regprocedure::text, '', p.proowner,
       md5(concat_ws(',', p.prolang, p.prosecdef, p.proleakproof, p.provolatile, p.prorettype, p.proconfig,
                     p.prosrc, p.probin, p.prosqlbody))
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.oid >= 16384 AND n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT 'rule', r.oid, r.rulename::text, r.ev_class::regclass::text, 0::oid,
       md5(concat_ws(',', r.ev_type, r.ev_enabled, r.is_instead, r.ev_qual, r.ev_action))
FROM pg_rewrite r WHERE r.oid >= 16384 AND r.rulename <> '_RETURN'
UNION ALL
SELECT 'policy', p.oid, p.polname::text, p.polrelid::regclass::text, 0::oid,
       md5(concat_ws(',', p.polcmd, p.polpermissive, p.polroles, p.polqual, p.polwithcheck))
FROM pg_policy p
UNION ALL
SELECT 'event trigger', e.oid, e.evtname::text, '', e.evtowner,
       md5(concat_ws(',', e.evtevent, e.evtfoid, e.evtenabled, e.evttags))
FROM pg_event_trigger e
UNION ALL
SELECT 'extension', x.oid, x.extname::text, '', x.extowner, x.extversion FROM pg_extension x
UNION ALL
SELECT CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence'
                      WHEN 'f' THEN 'foreign table' ELSE 'table' END,
       c.oid, c.oid::regclass::text, '', c.relowner, NULL
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid >= 16384 AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
UNION ALL
SELECT 'schema', n.oid, quote_ident(n.nspname), '', n.nspowner, NULL FROM pg_namespace n
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg\\_temp\\_%'
  AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'
UNION ALL
SELECT 'database', d.oid, quote_ident(d.datname), '', d.datdba, NULL FROM pg_database d
WHERE d.datname = current_database()
"""
# Code: what a case must not leave behind. The rest is compared by owner only (a case may create tables).
CODE = ("trigger", "function", "procedure", "aggregate", "rule", "policy", "event trigger", "extension")
# The order clean-up drops in: an extension takes its functions with it; triggers, rules and policies go before
# the functions they call (CASCADE takes any that are left).
_DROP_ORDER = ("extension", "event trigger", "trigger", "rule", "policy", "function", "procedure", "aggregate")
_ALTER = {
    "schema": "SCHEMA",
    "database": "DATABASE",
    "function": "ROUTINE",
    "procedure": "ROUTINE",
    "aggregate": "ROUTINE",
    "event trigger": "EVENT TRIGGER",
    "extension": "",  # an extension's owner cannot be changed with ALTER
}


@dataclass(frozen=True)
class CatalogObject:
    kind: str
    oid: int
    name: str  # as Postgres quotes it: schema-qualified, with argument types for routines
    on: str  # the relation a trigger, rule or policy is on, else ''
    owner: int  # 0 for what has no owner of its own
    digest: str | None  # what the code does; None for objects compared by owner only

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}" + (f" on {self.on}" if self.on else "")


Snapshot = Mapping[tuple[str, int], CatalogObject]


class ObjectGuard:
    """The catalogs of one session database, snapshot before a case and compared after it, over one admin
    connection to that database kept for the session; used from one thread."""

    def __init__(self, admin_clone_url: str) -> None:
        self.url = admin_clone_url
        self._conn: PgConnection | None = None
        # The last snapshot and the rows it was made of: the same rows again (a case that left nothing) give the same
        # snapshot, not a new one to compare object by object.
        self._last: tuple[list[tuple[Any, ...]], Snapshot] | None = None

    def _connection(self) -> PgConnection:
        if self._conn is None or self._conn.closed:
            import psycopg2  # libpq; Postgres is up by now

            conn = psycopg2.connect(self.url, application_name="pytest-llmtrace-objects")
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SET search_path = pg_catalog, pg_temp")  # nothing a case made is ever resolved
                cur.execute("SELECT current_setting('server_version_num')::int >= 140000")
                row = cur.fetchone()
                # prosqlbody (SQL-standard bodies) is new in Postgres 14
                query = _SNAPSHOT if row and row[0] else _SNAPSHOT.replace("p.prosqlbody", "NULL")
                cur.execute("PREPARE llmtrace_objects AS " + query)  # planned once: half its cost otherwise
                with contextlib.suppress(psycopg2.errors.InsufficientPrivilege):  # a URL server's non-superuser
                    cur.execute("SET session_replication_role = replica")  # no trigger fires while we clean up
            self._conn = conn
        return self._conn

    def snapshot(self) -> Snapshot:
        """Every trigger, routine, rule, policy, event trigger and extension, and the owner of every relation,
        schema and the database: one query."""
        with self._connection().cursor() as cur:
            cur.execute("EXECUTE llmtrace_objects")
            rows = cur.fetchall()
        if self._last is not None and self._last[0] == rows:
            return self._last[1]
        snapshot = {
            (kind, oid): CatalogObject(kind, oid, name, on, owner, digest)
            for kind, oid, name, on, owner, digest in rows
        }
        self._last = (rows, snapshot)
        return snapshot

    @property
    def last(self) -> Snapshot | None:
        """The snapshot the last ``snapshot`` read (``changes`` reads one too)."""
        return self._last[1] if self._last is not None else None

    def changes(self, before: Snapshot) -> list[str]:
        """What the case left, one line each, sorted; dropped (code) or given back (owners) before this returns."""
        after = self.snapshot()
        if after is before:  # the same rows
            return []
        left = [obj for key, obj in after.items() if obj.kind in CODE and key not in before]
        changed = [
            obj for key, obj in after.items() if obj.kind in CODE and key in before and before[key].digest != obj.digest
        ]
        owners = [(before[key], obj) for key, obj in after.items() if key in before and before[key].owner != obj.owner]
        if not (left or changed or owners):
            return []
        names = self._role_names({o.owner for pair in owners for o in pair})
        found: dict[str, str] = {}
        for obj, what in sorted(
            [(o, "left behind") for o in left] + [(o, "changed") for o in changed],
            key=lambda pair: _DROP_ORDER.index(pair[0].kind),
        ):
            found[obj.label] = f"{what} ({self._drop(obj)})"
        for old, new in owners:
            if old.kind in CODE and (new in left or new in changed):
                continue  # dropped already
            restored = self._give_back(old) if _ALTER.get(old.kind, "TABLE") else "not restored"
            found[new.label] = (
                f"owner {names.get(old.owner, old.owner)} -> {names.get(new.owner, new.owner)} ({restored})"
            )
        return [f"{label}: {what}" for label, what in sorted(found.items())]

    def _role_names(self, oids: set[int]) -> dict[int, str]:
        if not oids:
            return {}
        with self._connection().cursor() as cur:
            cur.execute("SELECT oid, rolname FROM pg_roles WHERE oid = ANY(%s)", (sorted(oids),))
            return {oid: name for oid, name in cur.fetchall()}

    def _drop(self, obj: CatalogObject) -> str:
        from psycopg2 import sql

        name = sql.Identifier(obj.name)
        statement: Any
        if obj.kind == "extension":
            statement = sql.SQL("DROP EXTENSION IF EXISTS {} CASCADE").format(name)
        elif obj.kind == "event trigger":
            statement = sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(name)
        elif obj.kind in ("trigger", "rule", "policy"):
            statement = sql.SQL("DROP {} IF EXISTS {} ON {}").format(sql.SQL(obj.kind.upper()), name, sql.SQL(obj.on))
        else:  # a routine: its regprocedure text is quoted already; CASCADE takes triggers and views that call it
            statement = sql.SQL("DROP ROUTINE IF EXISTS {} CASCADE").format(sql.SQL(obj.name))
        return self._run(statement, "dropped")

    def _give_back(self, old: CatalogObject) -> str:
        from psycopg2 import sql

        keyword = _ALTER.get(old.kind, "TABLE")  # ALTER TABLE serves views, sequences and foreign tables too
        statement = sql.SQL("ALTER {} {} OWNER TO {}").format(
            sql.SQL(keyword), sql.SQL(old.name), sql.Identifier(self._role_names({old.owner}).get(old.owner, ""))
        )
        return self._run(statement, "restored")

    def _run(self, statement: Any, done: str) -> str:
        import psycopg2

        try:
            with self._connection().cursor() as cur:
                cur.execute(statement)
        except psycopg2.Error as exc:
            return f"could not be {done}: {(exc.diag.message_primary or str(exc)).strip()}"
        return done

    def close(self) -> None:
        conn, self._conn = self._conn, None
        with contextlib.suppress(Exception):
            if conn is not None:
                conn.close()
