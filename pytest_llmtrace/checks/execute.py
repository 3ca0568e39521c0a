"""Running model-written SQL safely: one statement, read-only, bounded, always rolled back, session state reset.

The SQL is untrusted text from a language model, so safety does not depend on the role it runs as (see
``execute_readonly``), nor on any lexer's idea of where a statement ends: the text goes to Postgres over the extended
query protocol, where a text holding several statements is refused by Postgres itself (42601 "cannot insert
multiple commands into a prepared statement"). The statement and its batches go straight through libpq
(``_Session``, on the psycopg connection's ``pgconn``): ``PQexecParams`` for the ``DECLARE ... CURSOR FOR`` the
model's text goes in (or the text itself), which is always the extended protocol and never names a prepared
statement, so there is no client-side cache of them to keep in step with ``DISCARD ALL``; ``PQexec`` for our own
statements (``reader_connections.run_libpq`` says why). A connection that cannot be made is an outcome like any SQL
error (``execute_untrusted``): a case fails saying so, not with the driver's traceback.

The connections are reused, and reset before reuse (``reader_connections.READERS``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any

from pytest_llmtrace.checks.equivalence import normalize_value
from pytest_llmtrace.checks.options import DEFAULT_MAX_RESULT_BYTES, DEFAULT_MAX_ROWS, DEFAULT_SQL_TIMEOUT_MS
from pytest_llmtrace.checks.outcome import CheckResult, SqlOutcome
from pytest_llmtrace.checks.reader_connections import ConnectFailed, load_psycopg, readonly_transaction, run_libpq
from pytest_llmtrace.checks.sql_text import split_statements
from pytest_llmtrace.core.errors import first_line

if TYPE_CHECKING:
    import psycopg

# Errors that DECLARE CURSOR raises for statements that are not plain queries (DML, EXPLAIN, SHOW, data-modifying
# WITH): those are run again without a cursor, so the error reported is the statement's own (25006 for a DELETE).
_NOT_A_CURSOR_QUERY = frozenset({"42601", "0A000"})
_MULTIPLE_COMMANDS = "cannot insert multiple commands into a prepared statement"
_COPY_REFUSED = "COPY is refused: the check runs queries, not data transfers"
_CURSOR = "llmtrace_readonly"
SAVEPOINT = "llmtrace_declare"
# psycopg 3 sends a statement without parameters over the simple protocol (several statements allowed) unless its
# results are asked for in binary: then it is one unnamed statement over the extended protocol.
_EXTENDED: dict[str, Any] = {"binary": True}
_MAX_BATCH = 5000
_ROW_HEADROOM = 4  # a batch is sized for rows up to this many times the largest seen so far
_GROWTH = 16  # batches of 1, 16, 256 rows...: a result of up to 17 rows in two round trips


def execute_readonly(
    dsn: str,
    sql: str,
    *,
    timeout_ms: int = DEFAULT_SQL_TIMEOUT_MS,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    cost: bool = False,
) -> SqlOutcome:
    """Run one untrusted statement and report what happened; SQL errors are outcomes, connection errors raise.

    Safety does not depend on the role behind ``dsn``: the transaction is started READ ONLY (a write fails with
    SQLSTATE 25006), ``SET LOCAL statement_timeout`` cancels a runaway query (57014), the transaction is rolled back
    even on success (so volatile functions leave nothing either), and the session is reset (``READERS``).

    The text goes over the extended query protocol, so Postgres refuses more than one statement (42601) whatever a
    lexer thinks: inside a string of statements, ``COMMIT;`` would end the read-only transaction and let the rest
    run in a new, writable one. A single statement can still end the transaction (``COMMIT``, ``ROLLBACK``): after
    it ran, the check makes sure its own transaction is still open, read-only and without a transaction id (nothing
    written), and fails the statement otherwise. An empty answer comes back with ``sqlstate=None``.

    Queries run through a server-side cursor, fetched in batches: at most ``max_rows`` rows and ``max_bytes`` bytes
    (as Postgres sends them) ever reach this process, and a result larger than that fails (``truncated``): a cross
    join the model wrote by mistake must not fill memory. ``cursor_tuple_fraction = 1`` makes the planner choose
    the plan it would choose without a cursor, so rows come back as the application saw them. ``elapsed_ms`` covers
    executing and fetching, not connecting.

    With ``cost``, the same transaction also measures what the statement costs (``explain``): run again under
    ``EXPLAIN (ANALYZE, BUFFERS)`` after it succeeded within ``COST_RUN_MAX_MS``, or only planned when it failed or
    was slower (a second run would double the case's time for a number the plan's cost stands in for). One
    transaction for both keeps the ``cost`` check to one more round trip to the server.
    """
    psycopg = load_psycopg()
    if timeout_ms < 1 or max_rows < 0 or max_bytes < 1:  # statement_timeout = 0 would mean no timeout at all
        raise ValueError(
            f"need timeout_ms >= 1, max_rows >= 0 and max_bytes >= 1, got timeout_ms={timeout_ms}, "
            f"max_rows={max_rows}, max_bytes={max_bytes}"
        )
    if not split_statements(sql):
        return SqlOutcome(False, (), (), 0, False, "no SQL statement", None, 0.0)

    setup = ("SET LOCAL cursor_tuple_fraction = 1", f"SAVEPOINT {SAVEPOINT}")
    with readonly_transaction(dsn, timeout_ms, setup) as cur:
        session = _Session(cur.connection)
        started = time.perf_counter()
        try:
            fetched, cursor_open = _run(session, sql, max_rows, max_bytes)
        except psycopg.Error as exc:
            elapsed = (time.perf_counter() - started) * 1000
            if _lost(cur.connection):  # the server ended the session (the deadline's watchdog): no outcome of SQL
                raise
            if exc.sqlstate is None:  # refused by the driver (COPY): the session is mid-protocol, not reusable
                cur.connection.close()
                error = (
                    _COPY_REFUSED if "COPY" in str(exc) else f"the check does not run this statement: {first_line(exc)}"
                )
                return SqlOutcome(False, (), (), 0, False, error, None, elapsed)
            escaped = _escaped(session)
            if escaped is not None:
                cur.connection.close()
                return SqlOutcome(False, (), (), 0, False, escaped, None, elapsed)
            failed = SqlOutcome(False, (), (), 0, False, _message(exc, sql), exc.sqlstate, elapsed)
            if cost:
                cur.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
                plan_cost, _, _ = statement_cost(cur, sql, run=False)
                failed = dataclasses.replace(failed, plan_cost=plan_cost)
            return failed
        elapsed = (time.perf_counter() - started) * 1000
        escaped = _escaped(session, close_cursor=cursor_open)
        if escaped is not None:
            cur.connection.close()
            return SqlOutcome(False, (), (), 0, False, escaped, None, elapsed)
        columns, raw, too_big = fetched
        if too_big is not None:
            return SqlOutcome(False, columns, (), len(raw), True, too_big, None, elapsed)
        # A slow statement is not run a second time for its buffers: the plan's cost decides the cost check then.
        plan_cost, buffers, _ = statement_cost(cur, sql, run=elapsed < COST_RUN_MAX_MS) if cost else (None, None, None)
    rows = tuple(tuple(normalize_value(v) for v in row) for row in raw)
    return SqlOutcome(True, columns, rows, len(rows), False, None, None, elapsed, plan_cost, buffers)


class _Session:
    """The checked-out connection, driven through libpq (``run_libpq``); rows are loaded by psycopg's loaders, by
    each column's type, as its cursors load them."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.encoding = conn.info.encoding
        self._transformer: Any = None

    def run(self, query: str, *, extended: bool = False) -> Any:
        return run_libpq(self.conn, query, extended=extended)

    def columns(self, result: Any) -> tuple[str, ...]:
        return tuple(result.fname(i).decode(self.encoding) for i in range(result.nfields))

    def rows(self, result: Any) -> list[tuple[Any, ...]]:
        if not result.ntuples:
            return []
        if self._transformer is None:
            self._transformer = load_psycopg().adapt.Transformer(self.conn)
        self._transformer.set_pgresult(result)
        rows: list[tuple[Any, ...]] = self._transformer.load_rows(0, result.ntuples, tuple)
        return rows


COST_RUN_MAX_MS = 1000.0


def _lost(conn: psycopg.Connection[Any]) -> bool:
    return conn.closed or conn.info.transaction_status == load_psycopg().pq.TransactionStatus.UNKNOWN


def _escaped(session: _Session, *, close_cursor: bool = False) -> str | None:
    """Why the check's transaction is no longer its own read-only, unwritten transaction; ``None`` when it is.

    An aborted transaction (the statement failed) is still ours: the rollback discards whatever it did. With
    ``close_cursor``, the statement's cursor is closed in the same round trip, before the transaction is looked at.
    """
    psycopg = load_psycopg()
    status = session.conn.info.transaction_status
    if status == psycopg.pq.TransactionStatus.INERROR:
        return None
    if status != psycopg.pq.TransactionStatus.INTRANS:
        return f"the statement ended the check's read-only transaction (the connection is {status.name}); refused"
    close = f"CLOSE {_CURSOR}; " if close_cursor else ""  # ours, over the simple protocol: one round trip for both
    try:
        found = session.rows(
            session.run(close + "SELECT current_setting('transaction_read_only'), txid_current_if_assigned()")
        )
    except psycopg.Error as exc:  # our cursor gone, or the transaction no longer ours: nothing it did can stand
        return f"the statement interfered with the check's transaction ({postgres_message(exc)}); refused"
    row = found[0] if found else None
    if row is None or row[0] != "on":
        return "the statement made the check's transaction writable; refused"
    if row[1] is not None:
        return "the statement wrote in the check's read-only transaction (it was given a transaction id); refused"
    return None


def _message(exc: Any, sql: str) -> str:
    """Postgres's message; for a refused list of statements, how many the text holds as well."""
    message = postgres_message(exc)
    if exc.sqlstate == "42601" and message == _MULTIPLE_COMMANDS:
        count = len(split_statements(sql))
        many = f"{count} statements" if count > 1 else "more than one statement"
        return f"{many}; expected exactly one (Postgres: {message})"
    return message


def explain(cur: psycopg.Cursor[Any], statement: str, *, analyze: bool) -> tuple[float, int | None]:
    """(planner total cost, shared blocks hit + read) of one statement, inside the caller's read-only transaction.

    ``analyze`` runs it (``ANALYZE, BUFFERS, TIMING OFF``: the counts without the clock's overhead); otherwise the
    blocks are ``None``. The top plan node's counts include its children's; planning's own buffers are left out
    (they depend on what the session has cached). Parallel workers are off, so the plan, and with it the count,
    does not depend on how many workers happen to be free. The statement goes over the extended protocol, like the
    execution's. Raises ``psycopg.Error`` as the statement would.
    """
    options = "ANALYZE, BUFFERS, TIMING OFF, " if analyze else ""
    conn = cur.connection
    with conn.pipeline():  # the SET and the EXPLAIN in one round trip; an error raises as the block ends
        conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        cur.execute(f"EXPLAIN ({options}FORMAT JSON) {statement}", **_EXTENDED)
    row = cur.fetchone()
    if row is None:
        raise AssertionError("EXPLAIN always returns its plan")
    document = json.loads(row[0]) if isinstance(row[0], str) else row[0]  # psycopg parses json; a changed one may not
    plan = document[0]["Plan"]
    blocks = int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0)) if analyze else None
    return float(plan["Total Cost"]), blocks


def statement_cost(
    cur: psycopg.Cursor[Any], statement: str, *, run: bool
) -> tuple[float | None, int | None, str | None]:
    """``explain`` that fails soft, in a transaction with the savepoint ``execute_readonly`` sets: a run that fails
    (a timeout, a write refused) falls back to the plan alone. (plan cost, blocks, why something is missing)."""
    psycopg = load_psycopg()
    error = None
    if run:
        try:
            return (*explain(cur, statement, analyze=True), None)
        except psycopg.Error as exc:
            error = postgres_message(exc)
            cur.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
    try:
        return explain(cur, statement, analyze=False)[0], None, error
    except psycopg.Error as exc:
        cur.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
        return None, None, postgres_message(exc)


Fetched = tuple[tuple[str, ...], list[tuple[Any, ...]], str | None]


def _run(session: _Session, statement: str, max_rows: int, max_bytes: int) -> tuple[Fetched, bool]:
    """(columns, rows, why the result is too large or ``None``), and whether the statement's cursor is still open:
    through a cursor declared for the statement when it is a query (closed by ``_escaped``, in its round trip), else
    run as it is (its result, if any, is small: SHOW, EXPLAIN)."""
    psycopg = load_psycopg()
    try:
        # one statement over the extended protocol: Postgres refuses a text holding several (42601)
        session.run(f"DECLARE {_CURSOR} NO SCROLL CURSOR FOR {statement}", extended=True)
    except psycopg.Error as exc:
        if exc.sqlstate not in _NOT_A_CURSOR_QUERY or _MULTIPLE_COMMANDS in str(exc):
            raise
        session.run(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
        result = session.run(statement, extended=True)
        rows = session.rows(result)
        too_big = _too_big(len(rows), _result_bytes(result), max_rows, max_bytes)
        return (session.columns(result), rows[:max_rows], too_big), False
    return _fetch(session, max_rows, max_bytes), True


def _fetch(session: _Session, max_rows: int, max_bytes: int) -> Fetched:
    """Batches from the declared cursor until it is done or a limit is passed, counted as they arrive.

    The first batch is one row; a batch then grows (x16, up to ``_MAX_BATCH``) only while ``_ROW_HEADROOM`` times
    the largest row seen so far fits in what is left of ``max_bytes``: a result of rows of tens of MB comes one row
    at a time and stops at the first past the cap, rather than after a whole batch of them reached this process.
    Each ``FETCH`` (ours, simple protocol, text) brings the result's columns with its rows: no describe round trip.
    """
    columns: tuple[str, ...] = ()
    rows: list[tuple[Any, ...]] = []
    size = 0
    largest = 0
    batch = 1
    while True:
        wanted = min(batch, max_rows + 1 - len(rows))  # >= 1: FETCH 0 would fetch the current row again
        result = session.run(f"FETCH FORWARD {wanted} FROM {_CURSOR}")
        columns = session.columns(result)
        batch_bytes, batch_largest = _batch_bytes(result)
        size += batch_bytes
        largest = max(largest, batch_largest)
        got = session.rows(result)
        rows.extend(got)
        too_big = _too_big(len(rows), size, max_rows, max_bytes)
        if too_big is not None:
            return columns, rows[:max_rows], too_big
        if len(got) < wanted:
            return columns, rows, None
        batch = max(1, min(_MAX_BATCH, batch * _GROWTH, (max_bytes - size) // max(_ROW_HEADROOM * largest, 1)))


def _too_big(rows: int, size: int, max_rows: int, max_bytes: int) -> str | None:
    if rows > max_rows:
        return f"the result has more than {max_rows} rows (llmtrace_max_rows); fetching stopped there"
    if size > max_bytes:
        return f"the result is larger than {max_bytes} bytes (llmtrace_max_result_bytes); fetching stopped there"
    return None


def _result_bytes(result: Any) -> int:
    """The bytes of the values in a fetched batch, as Postgres sent them (text format)."""
    return _batch_bytes(result)[0]


def _batch_bytes(result: Any) -> tuple[int, int]:
    """(bytes of the values in a fetched batch, bytes of its largest row), as Postgres sent them (text format)."""
    if result is None:
        return 0, 0
    total = 0
    largest = 0
    for row in range(result.ntuples):
        row_bytes = 0
        for column in range(result.nfields):
            value = result.get_value(row, column)
            row_bytes += len(value) if value is not None else 0
        total += row_bytes
        largest = max(largest, row_bytes)
    return total, largest


def postgres_message(exc: Any) -> str:
    """Postgres's primary message (no ``ERROR:`` prefix, no ``LINE 1:`` context), as the application logs it."""
    primary = getattr(getattr(exc, "diag", None), "message_primary", None)
    return str(primary) if primary else first_line(exc)


def execute_untrusted(
    dsn: str,
    sql: str,
    timeout_ms: int,
    *,
    cost: bool = False,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_bytes: int = DEFAULT_MAX_RESULT_BYTES,
) -> SqlOutcome:
    """``execute_readonly``, with a failure to connect (or a connection lost midway) reported as an outcome.

    The read-only role may be refused by a user's server (pg_hba, a missing grant): the case should fail saying so,
    not end in the driver's traceback.
    """
    psycopg = load_psycopg()
    try:
        return execute_readonly(dsn, sql, timeout_ms=timeout_ms, cost=cost, max_rows=max_rows, max_bytes=max_bytes)
    except ConnectFailed as exc:
        error = f"cannot connect to the session database as the read-only role: {exc}"
        return SqlOutcome(False, (), (), 0, False, error, exc.sqlstate, 0.0)
    except psycopg.Error as exc:
        error = f"the connection to the session database was lost during the check: {first_line(exc)}"
        return SqlOutcome(False, (), (), 0, False, error, exc.sqlstate, 0.0)


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
    if result.truncated:
        return CheckResult("sql", "failed", f"the SQL's result is too large: {result.error}")
    if not result.ok:
        state = f" (SQLSTATE {result.sqlstate})" if result.sqlstate else ""
        return CheckResult("sql", "failed", f"the SQL does not execute: {result.error}{state}")
    return CheckResult("sql", "passed")
