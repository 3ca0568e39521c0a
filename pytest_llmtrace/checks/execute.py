"""Running model-written SQL safely: read-only, bounded, always rolled back, session state always reset.

The SQL is untrusted text from a language model, so safety does not depend on the role it runs as (see
``execute_readonly``). A connection that cannot be made is an outcome like any SQL error (``execute_untrusted``):
a case fails saying so, not with the driver's traceback.

Connections are reused (``READERS``): opening one costs Postgres a process fork, the largest share of a fast
query's check on a busy machine, and a run re-executes one statement per case. A connection goes back to the cache
only after the transaction was rolled back and ``DISCARD ALL`` left it idle, which resets everything a statement
could leave behind in its session (settings, advisory locks, prepared statements, cursors, temporary tables,
LISTEN); anything unexpected closes it instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from pytest_llmtrace.checks.results import normalize_value
from pytest_llmtrace.checks.sql_text import split_statements
from pytest_llmtrace.errors import first_line
from pytest_llmtrace.outcome import CheckResult, SqlOutcome

__all__ = [
    "READERS",
    "SAVEPOINT",
    "ReaderConnections",
    "check_sql",
    "execute_readonly",
    "execute_untrusted",
    "explain",
    "postgres_message",
    "readonly_transaction",
    "statement_cost",
]


# Errors that DECLARE CURSOR raises for statements that are not plain queries (DML, EXPLAIN, SHOW, data-modifying
# WITH): those are run again without a cursor, so the error reported is the statement's own (25006 for a DELETE).
_NOT_A_CURSOR_QUERY = frozenset({"42601", "0A000"})
_CURSOR = "llmtrace_readonly"
SAVEPOINT = "llmtrace_declare"


class ReaderConnections:
    """Idle connections per DSN, handed out one at a time and reset before they are handed out again."""

    def __init__(self) -> None:
        self._idle: dict[str, list[Any]] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def connection(self, dsn: str, first: str | None = None) -> Iterator[Any]:
        """An autocommit connection to ``dsn``; back to the cache after a clean exit and a reset, else closed.

        ``first`` (a statement of ours) is run before the connection is handed out; a cached connection the server
        has meanwhile closed (a restart, its database dropped and recreated) fails there and is replaced by a new
        one. A failure to connect raises ``psycopg2.Error`` (see ``execute_untrusted``).
        """
        import psycopg2  # a C extension with libpq: loaded when a case first executes SQL, not when pytest starts

        with self._lock:
            idle = self._idle.get(dsn)
            conn = idle.pop() if idle else None
        if conn is not None and first is not None:
            try:
                with conn.cursor() as cur:
                    cur.execute(first)
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                conn.close()
                conn = None
            else:
                first = None
        if conn is None or conn.closed:
            conn = psycopg2.connect(dsn, connect_timeout=10, application_name="pytest-llmtrace")
            conn.autocommit = True  # transactions are spelled out by the callers: nothing depends on psycopg2's
        clean = False
        try:
            if first is not None:
                with conn.cursor() as cur:
                    cur.execute(first)
            yield conn
            clean = True
        finally:
            if clean and _reset(conn):
                with self._lock:
                    self._idle.setdefault(dsn, []).append(conn)
            else:
                conn.close()

    def close(self, dsn: str | None = None) -> None:
        """Close the idle connections to ``dsn`` (all DSNs when ``None``): before its database is dropped."""
        with self._lock:
            dsns = list(self._idle) if dsn is None else [dsn]
            closing = [conn for d in dsns for conn in self._idle.pop(d, [])]
        for conn in closing:
            conn.close()


def _reset(conn: Any) -> bool:
    """``DISCARD ALL``, then make sure the connection is idle outside any transaction; False: do not reuse it."""
    import psycopg2  # see ReaderConnections.connection
    from psycopg2.extensions import TRANSACTION_STATUS_IDLE

    try:
        with conn.cursor() as cur:
            cur.execute("DISCARD ALL")
        return bool(conn.get_transaction_status() == TRANSACTION_STATUS_IDLE)
    except psycopg2.Error:
        return False


READERS = ReaderConnections()


@contextlib.contextmanager
def readonly_transaction(dsn: str, timeout_ms: int, setup: Sequence[str] = ()) -> Iterator[Any]:
    """A cursor inside ``BEGIN TRANSACTION READ ONLY`` with ``SET LOCAL statement_timeout``, always rolled back.

    ``setup`` are more statements of ours (never model text) to run first; all go to the server in one round trip.
    """
    import psycopg2  # see ReaderConnections.connection

    if timeout_ms < 1:  # statement_timeout = 0 would mean no timeout at all
        raise ValueError(f"need timeout_ms >= 1, got {timeout_ms}")
    statements = ["BEGIN TRANSACTION READ ONLY", f"SET LOCAL statement_timeout = {int(timeout_ms)}", *setup]
    with READERS.connection(dsn, "; ".join(statements)) as conn, conn.cursor() as cur:
        try:
            yield cur
        finally:
            with contextlib.suppress(psycopg2.Error):  # a dead connection has no transaction left to end
                cur.execute("ROLLBACK")


def execute_readonly(
    dsn: str, sql: str, *, timeout_ms: int = 5000, max_rows: int = 10_000, cost: bool = False
) -> SqlOutcome:
    """Run one untrusted statement and report what happened; SQL errors are outcomes, connection errors raise.

    Safety does not depend on the role behind ``dsn``: the transaction is started READ ONLY (a write fails with
    SQLSTATE 25006), ``SET LOCAL statement_timeout`` cancels a runaway query (57014), the transaction is rolled back
    even on success (so volatile functions leave nothing either), and the session is reset (``READERS``).

    More than one statement is refused without running anything: inside a string of statements, ``COMMIT;`` or
    ``ROLLBACK;`` would end the read-only transaction and let the rest run in a new, writable one, and ``SET
    TRANSACTION READ WRITE`` before the first query would lift it. The model was asked for exactly one statement, so
    a refusal is also the honest result. Trailing semicolons and comments are fine. Refusals and an empty answer
    come back with ``sqlstate=None``: Postgres never saw them.

    Queries run through a server-side cursor so that at most ``max_rows + 1`` rows ever reach this process: a cross
    join the model wrote by mistake must not fill memory. ``cursor_tuple_fraction = 1`` makes the planner choose the
    plan it would choose without a cursor, so rows come back as the application saw them. ``elapsed_ms`` covers
    executing and fetching, not connecting.

    With ``cost``, the same transaction also measures what the statement costs (``explain``): run again under
    ``EXPLAIN (ANALYZE, BUFFERS)`` after it succeeded, or only planned when it failed. One transaction for both
    keeps the ``cost`` check to one more round trip to the server.
    """
    import psycopg2  # a C extension with libpq: loaded when a case first executes SQL, not when pytest starts

    if timeout_ms < 1 or max_rows < 0:  # statement_timeout = 0 would mean no timeout at all
        raise ValueError(f"need timeout_ms >= 1 and max_rows >= 0, got timeout_ms={timeout_ms}, max_rows={max_rows}")
    statements = split_statements(sql)
    if len(statements) != 1:
        problem = "no SQL statement" if not statements else f"{len(statements)} statements; expected exactly one"
        return SqlOutcome(False, (), (), 0, False, problem, None, 0.0)

    setup = ("SET LOCAL cursor_tuple_fraction = 1", f"SAVEPOINT {SAVEPOINT}")
    with readonly_transaction(dsn, timeout_ms, setup) as cur:
        started = time.perf_counter()
        try:
            columns, raw, truncated = _run(cur, statements[0], max_rows)
        except psycopg2.Error as exc:
            elapsed = (time.perf_counter() - started) * 1000
            failed = SqlOutcome(False, (), (), 0, False, postgres_message(exc), exc.pgcode, elapsed)
            if cost:
                cur.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
                plan_cost, _, _ = statement_cost(cur, statements[0], run=False)
                failed = dataclasses.replace(failed, plan_cost=plan_cost)
            return failed
        elapsed = (time.perf_counter() - started) * 1000
        plan_cost, buffers, _ = statement_cost(cur, statements[0], run=True) if cost else (None, None, None)
    rows = tuple(tuple(normalize_value(v) for v in row) for row in raw)
    return SqlOutcome(True, columns, rows, len(rows), truncated, None, None, elapsed, plan_cost, buffers)


def explain(cur: Any, statement: str, *, analyze: bool) -> tuple[float, int | None]:
    """(planner total cost, shared blocks hit + read) of one statement, inside the caller's read-only transaction.

    ``analyze`` runs it (``ANALYZE, BUFFERS, TIMING OFF``: the counts without the clock's overhead); otherwise the
    blocks are ``None``. The top plan node's counts include its children's; planning's own buffers are left out
    (they depend on what the session has cached). Parallel workers are off, so the plan, and with it the count,
    does not depend on how many workers happen to be free. Raises ``psycopg2.Error`` as the statement would.
    """
    options = "ANALYZE, BUFFERS, TIMING OFF, " if analyze else ""
    cur.execute(f"SET LOCAL max_parallel_workers_per_gather = 0; EXPLAIN ({options}FORMAT JSON) {statement}")
    row = cur.fetchone()
    if row is None:
        raise AssertionError("EXPLAIN always returns its plan")
    document = json.loads(row[0]) if isinstance(row[0], str) else row[0]  # psycopg2 parses json; a changed one may not
    plan = document[0]["Plan"]
    blocks = int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0)) if analyze else None
    return float(plan["Total Cost"]), blocks


def statement_cost(cur: Any, statement: str, *, run: bool) -> tuple[float | None, int | None, str | None]:
    """``explain`` that fails soft, in a transaction with the savepoint ``execute_readonly`` sets: a run that fails
    (a timeout, a write refused) falls back to the plan alone. (plan cost, blocks, why something is missing)."""
    import psycopg2  # see execute_readonly

    error = None
    if run:
        try:
            return (*explain(cur, statement, analyze=True), None)
        except psycopg2.Error as exc:
            error = postgres_message(exc)
            cur.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
    try:
        return explain(cur, statement, analyze=False)[0], None, error
    except psycopg2.Error as exc:
        cur.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
        return None, None, postgres_message(exc)


def _run(cur: Any, statement: str, max_rows: int) -> tuple[tuple[str, ...], list[tuple[Any, ...]], bool]:
    import psycopg2  # already loaded by execute_readonly; imported here for its exception type

    try:
        cur.execute(f"DECLARE {_CURSOR} NO SCROLL CURSOR FOR {statement}")
    except psycopg2.Error as exc:
        if exc.pgcode not in _NOT_A_CURSOR_QUERY:
            raise
        cur.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
        cur.execute(statement)
        rows = cur.fetchmany(max_rows + 1) if cur.description is not None else []
    else:
        cur.execute(f"FETCH FORWARD {int(max_rows) + 1} FROM {_CURSOR}")
        rows = cur.fetchall()
    columns = tuple(column.name for column in cur.description or ())
    truncated = len(rows) > max_rows
    return columns, [tuple(r) for r in rows[:max_rows]], truncated


def postgres_message(exc: Any) -> str:
    """Postgres's primary message (no ``ERROR:`` prefix, no ``LINE 1:`` context), as the application logs it."""
    primary = getattr(getattr(exc, "diag", None), "message_primary", None)
    return str(primary) if primary else first_line(exc)


def execute_untrusted(dsn: str, sql: str, timeout_ms: int, *, cost: bool = False) -> SqlOutcome:
    """``execute_readonly``, with a failure to connect reported as an outcome like any SQL error.

    The read-only role may be refused by a user's server (pg_hba, a missing grant): the case should fail saying so,
    not end in psycopg2's traceback.
    """
    import psycopg2  # see execute_readonly

    try:
        return execute_readonly(dsn, sql, timeout_ms=timeout_ms, cost=cost)
    except psycopg2.Error as exc:
        error = f"cannot connect to the session database as the read-only role: {first_line(exc)}"
        return SqlOutcome(False, (), (), 0, False, error, exc.pgcode, 0.0)


def check_sql(
    sql: str | None, result: SqlOutcome | None, *, golden_sql: str | None, against_golden: bool
) -> CheckResult:
    """The ``sql`` check: the app's SQL must execute. Without SQL now it fails only if SQL was expected: always
    for ``llmtrace_check.sql_executes``, and for a golden case when the golden trace ran SQL."""
    if sql is None or result is None:
        if not against_golden:
            return CheckResult("sql", "failed", "the trace has no SQL span and no model answer")
        if golden_sql is not None:
            return CheckResult("sql", "failed", "the app ran no SQL now (the golden trace did)")
        return CheckResult("sql", "skipped", "neither the app now nor the golden trace ran SQL")
    if not result.ok:
        state = f" (SQLSTATE {result.sqlstate})" if result.sqlstate else ""
        return CheckResult("sql", "failed", f"the SQL does not execute: {result.error}{state}")
    return CheckResult("sql", "passed")
