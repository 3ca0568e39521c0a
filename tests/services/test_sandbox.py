"""The session's database roles and the case deadline, against the session's own embedded Postgres.

Each test reads what Postgres itself says (catalogs, ``has_*_privilege``, SQLSTATEs), so a lockdown that silently
did nothing fails here. No server of its own: everything runs on the server behind ``llmtrace_postgres``.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg2
import pytest
from support import rows as _rows

from pytest_llmtrace.checks.execute import execute_readonly, execute_untrusted
from pytest_llmtrace.checks.reader_connections import READERS
from pytest_llmtrace.modelapi.backend import BackendError, ChatRequest
from pytest_llmtrace.modelapi.replay import ReplayBackend, ReplayDurationWarning
from pytest_llmtrace.pytest import service_session as services
from pytest_llmtrace.services.pg_databases import advisory_lock, clone_database, database_url, drop_database
from pytest_llmtrace.services.pg_deadline import Deadline
from pytest_llmtrace.services.pg_guard import SessionGuard
from pytest_llmtrace.services.pg_lockdown import open_clone
from pytest_llmtrace.services.pg_roles import RoleLimits, SessionRoles, UnsafeLogin, verify_login
from pytest_llmtrace.services.postgres import PostgresDatabase
from pytest_llmtrace.trace.model import Span, Trace


def _error(url: str, sql: str) -> str | None:
    """The SQLSTATE ``sql`` fails with as the login of ``url`` (``None``: it ran)."""
    try:
        _rows(url, sql)
    except psycopg2.Error as exc:
        return str(exc.pgcode)
    return None


@pytest.fixture(scope="module")
def server(pg_admin_url: str) -> str:
    return pg_admin_url


@pytest.fixture(scope="module")
def guard(request: pytest.FixtureRequest, llmtrace_postgres: PostgresDatabase) -> SessionGuard:
    return services.get_manager(request.config).guard(llmtrace_postgres)


@pytest.fixture(scope="module")
def other(server: str, llmtrace_postgres: PostgresDatabase) -> Iterator[tuple[SessionRoles, str]]:
    """A second session's roles on the same clone (as another xdist worker's would be), with a 1 MB temp_file_limit."""
    roles = SessionRoles.create(server, RoleLimits(temp_file_limit_kb=1024))
    open_clone(server, database_url(server, llmtrace_postgres.database), llmtrace_postgres.database, roles)
    dsn = roles.reader.dsn(server, llmtrace_postgres.database)
    yield roles, dsn
    READERS.close(dsn)
    roles.drop()
    assert _rows(server, "SELECT 1 FROM pg_roles WHERE rolname = %s", (roles.reader.name,)) == []


def test_the_session_reader_is_its_own_role_locked_into_its_clone(llmtrace_postgres: PostgresDatabase) -> None:
    db, reader = llmtrace_postgres, llmtrace_postgres.reader_role
    assert re.fullmatch(r"llmtrace_r_[0-9a-f]{8}", reader)
    assert db.reader_url.split("@")[0].split("//")[1].split(":")[0] == reader
    ((superuser, createrole, createdb),) = _rows(
        db.url, "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = %s", (reader,)
    )
    assert (superuser, createrole, createdb) == (False, False, False)
    privileges = _rows(
        db.url,
        "SELECT datname, has_database_privilege(%s, datname, 'CONNECT'), has_database_privilege(%s, datname, 'TEMP') "
        "FROM pg_database WHERE datallowconn",
        (reader, reader),
    )
    assert {name: (connect, temp) for name, connect, temp in privileges}[db.database] == (True, False)
    assert [name for name, connect, _ in privileges if connect] == [db.database]  # embedded: closed to PUBLIC
    lo = "SELECT has_function_privilege(%s, f, 'EXECUTE') FROM unnest(ARRAY['lo_create(oid)', 'lowrite(int, bytea)']) f"
    assert _rows(db.url, lo, (reader,)) == [(False,), (False,)]
    assert _rows(db.reader_url, "SELECT current_user, current_setting('temp_file_limit')") == [(reader, "1GB")]
    assert _rows(db.reader_url, "SHOW default_transaction_read_only") == [("on",)]
    assert _error(db.reader_url, "SET temp_file_limit = -1") == "42501"  # only a superuser may lift it
    assert _error(db.reader_url, "CREATE TEMP TABLE t (x int)") in ("25006", "42501")


def test_a_clone_is_closed_to_public_from_its_first_moment_and_open_clone_lets_only_its_roles_in(
    server: str, other: tuple[SessionRoles, str]
) -> None:
    """A new database lets PUBLIC connect until that is revoked: another session's reader got into a fresh clone in
    that moment (the fast tier once saw another run's clone among the databases its reader could connect to)."""
    roles = SessionRoles.create(server, RoleLimits())
    name = f"llmtrace_closed_{uuid.uuid4().hex[:8]}"
    url = clone_database(server, "template0", name)
    try:
        ((acl,),) = _rows(server, "SELECT datacl::text[] FROM pg_database WHERE datname = %s", (name,))
        assert acl is not None, "the default ACL lets PUBLIC connect"
        assert [entry for entry in acl if entry.startswith("=")] == []  # no entry for PUBLIC
        with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
            psycopg2.connect(roles.reader.dsn(server, name)).close()  # not even its own roles yet
        open_clone(server, url, name, roles)
        assert _rows(roles.reader.dsn(server, name), "SELECT current_user") == [(roles.reader.name,)]
        with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
            psycopg2.connect(other[0].reader.dsn(server, name)).close()  # another session's reader
    finally:
        drop_database(server, name)
        roles.drop()


def test_a_login_that_is_not_the_role_or_is_a_superuser_is_refused(
    server: str, llmtrace_postgres: PostgresDatabase
) -> None:
    admin = database_url(server, llmtrace_postgres.database)
    with pytest.raises(UnsafeLogin, match=r"logs in as 'postgres', not as the session's role 'llmtrace_r_x'"):
        verify_login(admin, "llmtrace_r_x")
    with pytest.raises(UnsafeLogin, match=r"the session's role 'postgres' is a superuser"):
        verify_login(admin, "postgres")
    verify_login(llmtrace_postgres.reader_url, llmtrace_postgres.reader_role)


def test_a_role_that_changes_its_own_defaults_or_password_is_caught_and_restored(
    llmtrace_postgres: PostgresDatabase, guard: SessionGuard
) -> None:
    before = guard.roles.config_snapshot()
    assert guard.roles.changes() == []
    assert guard.roles.changes() == []  # the same rows as the last clean check: nothing compared again
    conn = psycopg2.connect(llmtrace_postgres.reader_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:  # what a list of statements run by the app can do: a writable transaction first
            cur.execute("BEGIN READ WRITE")
            cur.execute("ALTER ROLE CURRENT_USER SET statement_timeout = 0")
            cur.execute(f"ALTER ROLE CURRENT_USER IN DATABASE {llmtrace_postgres.database} SET work_mem = '64MB'")
            cur.execute("ALTER ROLE CURRENT_USER PASSWORD 'owned'")
            cur.execute("COMMIT")
    finally:
        conn.close()
    reader = llmtrace_postgres.reader_role
    changes = guard.roles.changes()
    assert changes == [
        f"role {reader}: settings for database {llmtrace_postgres.database}: work_mem=64MB",
        f"role {reader}: statement_timeout: 60000 -> 0",
        f"role {reader}: password changed",
    ]
    assert guard.roles.changes() == []  # restored
    assert guard.roles.config_snapshot() == before


def test_a_role_name_that_exists_is_never_taken_over(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = f"llmtrace_r_{uuid.uuid4().hex[:8]}"
    _rows(server, f"CREATE ROLE {taken} NOLOGIN")  # another run's, or a user's
    names = iter([taken.removeprefix("llmtrace_r_"), "0123abcd"])
    monkeypatch.setattr("pytest_llmtrace.services.pg_roles.secrets.token_hex", lambda _: next(names))
    roles = SessionRoles.create(server, RoleLimits())
    try:
        assert roles.reader.name == "llmtrace_r_0123abcd"
        assert _rows(server, "SELECT rolcanlogin, rolconfig FROM pg_roles WHERE rolname = %s", (taken,)) == [
            (False, None)
        ]
    finally:
        roles.drop()
        _rows(server, f"DROP ROLE {taken}")


def test_roles_of_two_sessions_cannot_end_each_others_backends(
    llmtrace_postgres: PostgresDatabase, other: tuple[SessionRoles, str]
) -> None:
    """xdist workers each have their own session, so their own roles: a statement of one cannot end the other's
    check connections (a role may signal its own backends only)."""
    _, other_dsn = other
    other_pid = execute_readonly(other_dsn, "SELECT pg_backend_pid()").rows[0][0]  # stays open, cached
    for function in ("pg_terminate_backend", "pg_cancel_backend"):
        outcome = execute_readonly(llmtrace_postgres.reader_url, f"SELECT {function}({other_pid})")
        assert (outcome.ok, outcome.sqlstate) == (False, "42501"), outcome.error
    assert execute_readonly(other_dsn, "SELECT pg_backend_pid()").rows[0][0] == other_pid  # the same session


def test_a_big_sort_fails_with_53400_under_the_roles_temp_file_limit(other: tuple[SessionRoles, str]) -> None:
    _, dsn = other
    outcome = execute_readonly(dsn, "SELECT g FROM generate_series(1, 2000000) g ORDER BY g DESC")
    assert (outcome.ok, outcome.sqlstate) == (False, "53400")
    assert re.fullmatch(r'temporary file size exceeds "?temp_file_limit"? \(1024kB\)', outcome.error or "")
    assert _error(dsn, "SET temp_file_limit = -1") == "42501"


def test_the_owner_role_writes_its_clone_but_cannot_reach_the_server(
    server: str, llmtrace_postgres: PostgresDatabase
) -> None:
    name = f"owner_{uuid.uuid4().hex[:10]}"
    url = clone_database(server, llmtrace_postgres.template, name)
    roles = SessionRoles.create(server, RoleLimits(), owner=True)
    try:
        open_clone(server, url, name, roles)
        assert roles.owner is not None
        owner = roles.owner.dsn(server, name)
        verify_login(owner, roles.owner.name)
        assert _error(owner, "UPDATE products SET active = false WHERE id = 1") is None  # it owns the tables
        assert _error(owner, "CREATE TABLE scratch (x int)") is None
        for escape in (
            "COPY (SELECT 1) TO PROGRAM 'true'",
            "SELECT pg_read_file('/etc/hostname')",
            "ALTER SYSTEM SET work_mem = '1MB'",
            "CREATE TEMP TABLE t (x int)",
            "SELECT lo_create(0)",
        ):
            assert _error(owner, escape) == "42501", escape
        assert _error(roles.reader.dsn(server, name), "SELECT count(*) FROM scratch") == "42501"  # not granted
    finally:
        drop_database(server, name)
        roles.drop()


def test_the_watchdog_ends_a_runaway_statement_past_the_deadline_and_the_session_goes_on(
    llmtrace_postgres: PostgresDatabase, guard: SessionGuard
) -> None:
    cancelled = threading.Event()
    deadline = Deadline(1.0, "test", cancel=(cancelled.set,), checking="SELECT pg_sleep(600)")
    started = time.monotonic()
    with guard.case(deadline) as held:
        # 60 s statement timeout: only a hang guard; pg_sleep(600) cannot end before the 1 s deadline
        outcome = execute_untrusted(llmtrace_postgres.reader_url, "SELECT pg_sleep(600)", 60_000)
    assert time.monotonic() - started < 60
    assert deadline.fired
    assert cancelled.is_set()
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith("the connection to the session database was lost during the check: ")
    (finding,) = held.findings()
    assert finding.name == "timeout"
    assert finding.reason == (
        "the case ran past its deadline of 1 s (test); 1 of its 1 database session ended (1 by pg_terminate_backend)"
    )
    assert len(finding.details) == 1
    assert re.fullmatch(r"the sql check was running: SELECT pg_sleep\(600\) \(for \d+\.\d s\)", finding.details[0])
    left = "SELECT pid FROM pg_stat_activity WHERE usename = %s"
    assert _rows(llmtrace_postgres.url, left, (llmtrace_postgres.reader_role,)) == []
    assert execute_readonly(llmtrace_postgres.reader_url, "SELECT 1").rows == ((1,),)  # may log in again


def test_a_cancelled_replay_ends_its_wait_at_once_and_refuses_what_follows() -> None:
    trace = Trace(
        [
            Span(
                "t" * 32,
                "l" * 16,
                None,
                "llm",
                0,
                10**18,  # a recording that says 10^9 s
                {
                    "openinference.span.kind": "LLM",
                    "llm.model_name": "m",
                    "llm.input_messages.0.message.role": "user",
                    "llm.input_messages.0.message.content": "q",
                    "llm.output_messages.0.message.content": "SELECT 1",
                },
            )
        ]
    )
    with pytest.warns(ReplayDurationWarning, match=r"lasted 1e\+09 s; replay counts it as 30 s \(the case deadline\)"):
        backend = ReplayBackend(trace, speed="recorded", max_recorded_s=30)
    errors: list[BackendError] = []

    def ask() -> None:
        try:
            backend.chat(ChatRequest("m", trace.llm_calls[0].input_messages))
        except BackendError as exc:
            errors.append(exc)

    thread = threading.Thread(target=ask)
    thread.start()
    backend.cancel()
    thread.join(25)  # a hang guard: the wait is 30 s unless cancelled
    assert not thread.is_alive()
    with pytest.raises(BackendError, match="replay cancelled: the case ran past its deadline"):
        backend.chat(ChatRequest("m", trace.llm_calls[0].input_messages))
    assert [(e.status, e.message) for e in errors] == [(503, "replay cancelled: the case ran past its deadline")]


def test_two_sessions_build_a_template_one_after_the_other(server: str) -> None:
    """The second waits on the server-side lock the first holds (seen in pg_locks), and gets it once released."""
    name = f"tpl_{uuid.uuid4().hex[:8]}"
    order: list[str] = []
    first_holds, first_may_go = threading.Event(), threading.Event()

    def first() -> None:
        with advisory_lock(server, name):
            order.append("first")
            first_holds.set()
            first_may_go.wait(30)
            order.append("first done")  # still holding the lock: the second cannot have run

    def second() -> None:
        with advisory_lock(server, name):
            order.append("second")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert first_holds.wait(30)
    threads[1].start()
    waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    for _ in range(600):  # until the second session is seen waiting on the lock (not a time race: it must wait)
        if _rows(database_url(server, "postgres"), waiting) == [(1,)]:
            break
        time.sleep(0.05)
    assert order == ["first"]
    first_may_go.set()
    for thread in threads:
        thread.join(30)
    assert order == ["first", "first done", "second"]
