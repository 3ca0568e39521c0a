"""The roles model SQL runs as: created per session, re-asserted before each case, dropped at the end.

Model SQL runs twice per case: the app runs it on the DSN the plugin hands it (with whatever driver and protocol the
app uses, so a list of statements, ``COMMIT; BEGIN READ WRITE; ...`` included, may run), then the sql check runs it
again. What bounds the app's connections is therefore the role it logs in as:

- each session gets its own reader role (and, with ``llmtrace_app_db = owner``, its own owner role) with a random
  name and password; an existing role of that name is never taken over, and the roles are dropped at the end;
- the reader may connect to its clone only and read it; no TEMP anywhere (temporary tables are not bounded by
  ``temp_file_limit``), no large objects (``lo_*`` revoked from PUBLIC in the template), no CREATE in any schema;
- its role defaults hold read-only transactions, statement, lock and idle-in-transaction timeouts, and
  ``temp_file_limit``, which only a superuser may set, so the role cannot lift it;
- a role may change its own defaults and password, so ``SessionRoles`` re-asserts them from the admin connection
  before each case and reports what a case changed after it.

What the roles may reach (the template, the server's other databases, their clone) is locked down in
``pg_lockdown.py``. The DSNs handed out are built from parts (``role_dsn``): never the base URL's user, password,
options or service.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pytest_llmtrace.core.errors import LLMTraceError

if TYPE_CHECKING:
    from psycopg2.extensions import connection as PgConnection

READER_PREFIX = "llmtrace_r_"
OWNER_PREFIX = "llmtrace_o_"
# libpq parameters a DSN handed to the app may keep from the base URL: where the server is and how to reach it
# safely. Never who to log in as (user, password, passfile, service, sslcert/sslkey/sslpassword) or what to run
# (options: ``-c default_transaction_read_only=off``).
SAFE_QUERY_KEYS = frozenset(
    {
        "host",
        "hostaddr",
        "port",
        "sslmode",
        "sslrootcert",
        "sslcrl",
        "sslcrldir",
        "sslsni",
        "sslnegotiation",
        "connect_timeout",
        "channel_binding",
        "gssencmode",
        "target_session_attrs",
        "load_balance_hosts",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
    }
)


def _psycopg2() -> Any:
    import psycopg2  # libpq: loaded when a session first sets up Postgres, not when the plugin loads

    return psycopg2


@contextlib.contextmanager
def admin_connection(url: str) -> Iterator[PgConnection]:
    """Autocommit, because CREATE/DROP DATABASE and role changes must not wait for a transaction of ours."""
    conn = _psycopg2().connect(url)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def role_dsn(base_url: str, database: str, role: str, password: str) -> str:
    """The DSN of ``database`` as ``role``, built from parts: the server's address from ``base_url`` and only the
    query parameters in ``SAFE_QUERY_KEYS`` (a socket's ``?host=``, ``sslmode``, ...)."""
    parts = urlsplit(base_url)
    address = parts.netloc.rpartition("@")[2]
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() in SAFE_QUERY_KEYS]
    netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@{address}"
    return urlunsplit((parts.scheme, netloc, "/" + quote(database, safe=""), urlencode(query, safe="/"), ""))


@dataclass(frozen=True)
class RoleLimits:
    """What a session's roles are held to, as role defaults (``ALTER ROLE ... SET``).

    The statement timeout is a default the app can lift (``SET statement_timeout = 0``, or a connection option):
    the case's deadline, enforced from the admin side, is what really ends a runaway statement.
    """

    statement_timeout_ms: int = 60_000
    lock_timeout_ms: int = 5_000
    idle_in_transaction_ms: int = 60_000
    temp_file_limit_kb: int = 1024 * 1024

    def config(self, *, read_only: bool) -> dict[str, str]:
        settings = {
            "statement_timeout": str(self.statement_timeout_ms),
            "lock_timeout": str(self.lock_timeout_ms),
            "idle_in_transaction_session_timeout": str(self.idle_in_transaction_ms),
            "temp_file_limit": str(self.temp_file_limit_kb),
        }
        if read_only:
            settings = {"default_transaction_read_only": "on", **settings}
        return settings


@dataclass
class SessionRole:
    """One role of a session: its name, password (never printed) and the defaults it must keep."""

    name: str
    password: str = field(repr=False)
    config: dict[str, str]
    verifier: str = field(default="", repr=False)  # the stored SCRAM verifier of ``password``, set when created

    def dsn(self, base_url: str, database: str) -> str:
        return role_dsn(base_url, database, self.name, self.password)


class SessionRoles:
    """The reader (and owner) of one session: created with random names, re-asserted before each case, compared
    after it, dropped at the end. Holds one admin connection for the session, used from one thread."""

    def __init__(self, admin_url: str, reader: SessionRole, owner: SessionRole | None, notes: Sequence[str]) -> None:
        self.admin_url = admin_url
        self.reader = reader
        self.owner = owner
        self.notes = list(notes)  # what could not be locked down (a login that may not set temp_file_limit)
        self._conn: PgConnection | None = None
        self._superuser: bool | None = None  # whether the admin login may read password verifiers
        self._prepared_on: PgConnection | None = None  # the connection _STATE_AND_VERIFIERS is prepared on
        self._unchanged: list[tuple[Any, ...]] | None = None  # its rows when ``changes`` last found nothing

    @property
    def roles(self) -> tuple[SessionRole, ...]:
        return (self.reader,) if self.owner is None else (self.reader, self.owner)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(role.name for role in self.roles)

    @classmethod
    def create(cls, admin_url: str, limits: RoleLimits, *, owner: bool = False) -> SessionRoles:
        """New roles with fresh random names; a name that exists already is never reused, another is drawn."""
        notes: list[str] = []
        with admin_connection(admin_url) as conn:
            reader = _create_role(conn, READER_PREFIX, limits.config(read_only=True), notes)
            app_owner = _create_role(conn, OWNER_PREFIX, limits.config(read_only=False), notes) if owner else None
        return cls(admin_url, reader, app_owner, notes)

    def _admin(self) -> PgConnection:
        if self._conn is None or self._conn.closed:
            self._conn = _psycopg2().connect(self.admin_url)
            self._conn.autocommit = True
        return self._conn

    def reconnect(self) -> None:
        """Drop the admin connection; the next call opens a new one (after a server reset ended every session)."""
        conn, self._conn = self._conn, None
        with contextlib.suppress(Exception):
            if conn is not None:
                conn.close()

    def transactions(self) -> str:
        """The server's transaction snapshot now, ``xmin:xmax:in-progress`` (``SessionGuard`` compares two of them).

        Every change to roles or catalogs is a transaction that takes an id; while the snapshot stays the same, and
        lists no transaction in progress, no transaction has ended anywhere on the server since it was taken.
        """
        conn = self._admin()
        function = "pg_current_snapshot" if conn.server_version >= 130000 else "txid_current_snapshot"
        with conn.cursor() as cur:
            cur.execute(f"SELECT {function}()::text")
            row = cur.fetchone()
        return str(row[0]) if row else ""

    def assert_settings(self) -> None:
        """Log-in, password and defaults as created, settings per database removed: one round trip."""
        from psycopg2 import sql

        statements = []
        for role in self.roles:
            statements.extend(_assert_statements(role))
        with self._admin().cursor() as cur:
            cur.execute(sql.SQL("; ").join(statements))

    def changes(self) -> list[str]:
        """What differs from what was set, one line per role and change; restores the roles when anything does."""
        found: list[str] = []
        rows: list[tuple[Any, ...]] | None = None  # read by the prepared statement (a superuser admin)
        with self._admin().cursor() as cur:
            if self._superuser:  # twice a case: the state and the verifiers in one round trip, planned once
                cur.execute(self._prepared_state(cur), (list(self.names),))
                rows = cur.fetchall()
                if rows == self._unchanged:  # what the last check that found nothing read
                    return []
                state = {name: (login, settings) for name, login, settings, _ in rows}
                verifiers: dict[str, str] | None = {name: password or "" for name, _, _, password in rows}
            else:
                cur.execute(_STATE, (list(self.names),))
                state = {name: (login, settings) for name, login, settings in cur.fetchall()}
                if self._superuser is None:
                    cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                    row = cur.fetchone()
                    self._superuser = bool(row and row[0])
                verifiers = _verifiers(cur, self.names) if self._superuser else None
        for role in self.roles:
            if role.name not in state:
                found.append(f"role {role.name}: dropped")
                continue
            login, settings = state[role.name]
            if not login:
                found.append(f"role {role.name}: may no longer log in")
            found.extend(f"role {role.name}: {change}" for change in _setting_changes(role.config, settings or []))
            if verifiers is not None and verifiers.get(role.name) != role.verifier:
                found.append(f"role {role.name}: password changed")
        if found:
            self.assert_settings()
        elif rows is not None:
            self._unchanged = rows
        return found

    def _prepared_state(self, cur: Any) -> str:
        """``_STATE_AND_VERIFIERS`` prepared on the admin connection (once per connection: a reconnect after a
        server reset prepares it again); planning it was half of each call's time."""
        if self._prepared_on is not cur.connection:
            cur.execute(f"PREPARE {_STATE_STATEMENT}(name[]) AS " + _STATE_AND_VERIFIERS.replace("%s", "$1"))
            self._prepared_on = cur.connection
        return f"EXECUTE {_STATE_STATEMENT}(%s)"

    @property
    def sees_everything(self) -> bool:
        """Whether ``changes`` compares the passwords too (an admin that may read ``pg_authid``): then a role that
        ``changes`` finds unchanged is as created, and needs no re-asserting."""
        return bool(self._superuser)

    def config_snapshot(self) -> dict[str, list[tuple[str, list[str]]]]:
        """Every ``pg_db_role_setting`` row of the roles, (database or '', settings), for tests and reports."""
        with self._admin().cursor() as cur:
            cur.execute(_STATE, (list(self.names),))
            return {name: sorted((db, sorted(cfg)) for db, cfg in settings or []) for name, _, settings in cur}

    def drop(self) -> None:
        """End the roles' sessions, drop what they own, then the roles (``drop_roles``); twice is fine."""
        with contextlib.suppress(Exception):
            if self._conn is not None:
                self._conn.close()
        self._conn = None
        drop_roles(self.admin_url, self.names)


def drop_roles(admin_url: str, names: Sequence[str]) -> None:
    """End the roles' sessions (``pg_terminate_backend``), drop what they own in every database, then the roles.

    A role that no longer exists is skipped, so dropping twice, or racing another run's clean-up, is fine.
    """
    from psycopg2 import sql

    with admin_connection(admin_url) as conn, conn.cursor() as cur:
        cur.execute(_TERMINATE_ALL, (list(names),))
        for name in names:
            cur.execute(_DEPENDENT_DATABASES, (name,))
            rows = cur.fetchall()
            if not rows:
                continue  # no such role (dropped already)
            ident = sql.Identifier(name)
            for (database,) in rows:  # grants and objects in databases still there (a clone not dropped)
                if database is not None:
                    with admin_connection(_with_database(admin_url, database)) as other:
                        other.cursor().execute(sql.SQL("DROP OWNED BY {}").format(ident))
            cur.execute(sql.SQL("DROP OWNED BY {}").format(ident))  # what it has in this database, if anything
            cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(database, safe="")))


_SETTINGS_OF = """(SELECT json_agg(json_build_array(coalesce(d.datname, ''), s.setconfig))
        FROM pg_db_role_setting s LEFT JOIN pg_database d ON d.oid = s.setdatabase WHERE s.setrole = {role}.oid)"""
_STATE = f"""
SELECT r.rolname, r.rolcanlogin, {_SETTINGS_OF.format(role="r")}
FROM pg_roles r WHERE r.rolname = ANY(%s)
"""
# _STATE with each role's stored password verifier, as ``_verifiers`` reads it, straight from pg_authid (a superuser
# admin only): the pg_roles view over it was a third of the query's time.
_STATE_AND_VERIFIERS = f"""
SELECT a.rolname, a.rolcanlogin, {_SETTINGS_OF.format(role="a")}, a.rolpassword
FROM pg_authid a WHERE a.rolname = ANY(%s)
"""
_STATE_STATEMENT = "llmtrace_role_state"
_TERMINATE_ALL = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)"
# One row per database other than this one where the role has grants or objects, and a NULL row: none if no role.
_DEPENDENT_DATABASES = """
SELECT d.datname FROM pg_roles r
LEFT JOIN pg_shdepend s
  ON s.refobjid = r.oid AND s.dbid <> (SELECT oid FROM pg_database WHERE datname = current_database())
LEFT JOIN pg_database d ON d.oid = s.dbid
WHERE r.rolname = %s GROUP BY d.datname
"""


def _create_role(conn: PgConnection, prefix: str, config: Mapping[str, str], notes: list[str]) -> SessionRole:
    from psycopg2 import errors, extensions, sql

    password = secrets.token_urlsafe(24)
    for _ in range(8):
        name = prefix + secrets.token_hex(4)
        verifier = extensions.encrypt_password(password, name, conn, "scram-sha-256")
        try:
            with conn.cursor() as cur:
                cur.execute(
                    sql.SQL(
                        "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOINHERIT PASSWORD %s"
                    ).format(sql.Identifier(name)),
                    (verifier,),  # a verifier, so no log of this statement ever holds the password itself
                )
        except errors.DuplicateObject:
            continue  # a role of this name exists (another run's, or a user's): never take it over
        break
    else:  # pragma: no cover - eight 32-bit collisions in a row
        raise RuntimeError(f"no free role name starting with {prefix}")
    role = SessionRole(name, password, dict(config), verifier)
    with conn.cursor() as cur:
        for key in list(role.config):
            try:
                cur.execute(_set_statement(name, key, role.config[key]))
            except errors.InsufficientPrivilege:  # temp_file_limit needs a superuser: a user's login may not be one
                del role.config[key]
                notes.append(f"{key} (your login may not set it)")
    return role


def _set_statement(role: str, key: str, value: str) -> Any:
    from psycopg2 import sql

    return sql.SQL("ALTER ROLE {} SET {} = {}").format(sql.Identifier(role), sql.Identifier(key), sql.Literal(value))


def _assert_statements(role: SessionRole) -> list[Any]:
    from psycopg2 import sql

    ident = sql.Identifier(role.name)
    statements: list[Any] = [
        sql.SQL("ALTER ROLE {} WITH LOGIN CONNECTION LIMIT -1 VALID UNTIL 'infinity' PASSWORD {}").format(
            ident, sql.Literal(role.verifier)
        ),
        sql.SQL("ALTER ROLE {} RESET ALL").format(ident),
        # settings the role gave itself in one database (ALTER ROLE CURRENT_USER IN DATABASE ... SET)
        sql.SQL(
            "DO $$DECLARE d text; BEGIN FOR d IN SELECT datname FROM pg_db_role_setting s JOIN pg_database db "
            "ON db.oid = s.setdatabase WHERE s.setrole = {}::regrole LOOP "
            "EXECUTE format('ALTER ROLE %I IN DATABASE %I RESET ALL', {}, d); END LOOP; END$$"
        ).format(sql.Literal(role.name), sql.Literal(role.name)),
    ]
    statements.extend(_set_statement(role.name, key, value) for key, value in role.config.items())
    return statements


def _setting_changes(expected: Mapping[str, str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """``pg_db_role_setting`` rows (database or '', ["k=v", ...]) against the defaults the role must have."""
    changes = []
    for database, settings in rows:
        if database:
            changes.append(f"settings for database {database}: {', '.join(settings)}")
    now = dict(item.split("=", 1) for database, settings in rows if not database for item in settings)
    for key in sorted(set(expected) | set(now)):
        before, after = expected.get(key), now.get(key)
        if before != after:
            changes.append(f"{key}: {before if before is not None else '(unset)'} -> {after or '(unset)'}")
    return changes


def _verifiers(cur: Any, names: Sequence[str]) -> dict[str, str] | None:
    """The stored password verifiers, when this login may read them; else ``None``."""
    from psycopg2 import errors

    try:
        cur.execute("SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(%s)", (list(names),))
    except errors.InsufficientPrivilege:
        return None
    return {name: password or "" for name, password in cur.fetchall()}


class UnsafeLogin(LLMTraceError):
    """A DSN handed to the app does not log in as the session's own role, or that role is a superuser."""


def verify_login(dsn: str, role: str) -> None:
    """Log in with ``dsn`` and make sure it is ``role`` and not a superuser (a PGOPTIONS, a pg_ident map or a
    service file must not turn the app's login into another one)."""
    with admin_connection(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
        row = cur.fetchone()
    user, superuser = row if row else (None, None)
    if user != role:
        raise UnsafeLogin(f"its DSN logs in as {user!r}, not as the session's role {role!r}")
    if superuser:
        raise UnsafeLogin(f"the session's role {role!r} is a superuser")
