"""The connections the checks run model SQL on: reused, reset before reuse, each use a read-only transaction.

Connections are reused (``READERS``): opening one costs Postgres a process fork, the largest share of a fast
query's check on a busy machine, and a run re-executes one statement per case. A connection goes back to the cache
only after the transaction was rolled back and ``DISCARD ALL`` left it idle, which resets everything a statement
could leave behind in its session (settings, advisory locks, prepared statements, cursors, temporary tables,
LISTEN); anything unexpected closes it instead. What runs on them is ``execute.py``'s.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pytest_llmtrace.core.errors import LLMTraceError, first_line
from pytest_llmtrace.services.pg_deadline import APPLICATION_NAME

if TYPE_CHECKING:
    import psycopg


class ConnectFailed(LLMTraceError):
    """The checks' connection to the session database could not be made (the psycopg error is its ``__cause__``)."""

    def __init__(self, exc: Exception) -> None:
        self.sqlstate: str | None = getattr(exc, "sqlstate", None)
        super().__init__(first_line(exc))


def load_psycopg() -> Any:
    """psycopg 3 loads libpq: imported when a case first executes SQL, not when pytest starts."""
    import psycopg

    return psycopg


# Idle connections kept, over every DSN: the least recently used go first. A replay uses one DSN; a semantic suite
# uses a clone per database and keeps several suites, and uncapped their idle connections, with every worker's and
# inner run's, took 83 of a shared server's 100 slots in the slow tier (once all of them: "remaining connection
# slots are reserved for roles with the SUPERUSER attribute").
MAX_IDLE = 8


class ReaderConnections:
    """Idle connections per DSN, handed out one at a time and reset before they are handed out again; at most
    ``MAX_IDLE`` of them in all."""

    def __init__(self) -> None:
        self._idle: dict[str, list[psycopg.Connection[Any]]] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def connection(
        self, dsn: str, first: str | None = None, *, rollback: bool = False
    ) -> Iterator[psycopg.Connection[Any]]:
        """An autocommit connection to ``dsn``; back to the cache after a clean exit and a reset, else closed.

        ``first`` (statements of ours, never model text: they go in one round trip over the simple protocol) is run
        before the connection is handed out; a cached connection the server has meanwhile closed (a restart, its
        database dropped and recreated, the deadline's watchdog) fails there and is replaced by a new one. A failure
        to connect raises ``ConnectFailed``. With ``rollback``, the transaction the block leaves open is rolled back in
        the reset's round trip (a connection that is not reused is closed, which ends it as well).
        """
        psycopg = load_psycopg()
        with self._lock:
            idle = self._idle.get(dsn)
            conn = idle.pop() if idle else None
            if idle is not None and not idle:
                del self._idle[dsn]
        if conn is not None and first is not None:
            try:
                run_libpq(conn, first)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                conn.close()
                conn = None
            else:
                first = None
        if conn is None or conn.closed:
            try:
                conn = psycopg.connect(dsn, connect_timeout=10, application_name=APPLICATION_NAME, autocommit=True)
            except psycopg.Error as exc:
                raise ConnectFailed(exc) from exc
            conn.prepare_threshold = None  # no named statements: nothing of psycopg's cache to keep in step
        clean = False
        try:
            if first is not None:
                run_libpq(conn, first)
            yield conn
            clean = True
        finally:
            if clean and _reset(conn, rollback):
                with self._lock:
                    kept = self._idle.pop(dsn, [])  # to the end: the DSN used last
                    kept.append(conn)
                    self._idle[dsn] = kept
                    evicted = self._over_the_cap()
                for old in evicted:
                    old.close()
            else:
                conn.close()

    def _over_the_cap(self) -> list[psycopg.Connection[Any]]:
        """Take the idle connections past ``MAX_IDLE`` out, the least recently used DSN's oldest first (the dict
        keeps the DSNs in the order of their last use). Call with the lock held; close what it returns outside."""
        evicted = []
        count = sum(len(conns) for conns in self._idle.values())
        while count > MAX_IDLE:
            oldest = next(iter(self._idle))
            conns = self._idle[oldest]
            evicted.append(conns.pop(0))
            if not conns:
                del self._idle[oldest]
            count -= 1
        return evicted

    def idle_count(self) -> int:
        with self._lock:
            return sum(len(conns) for conns in self._idle.values())

    def close(self, dsn: str | None = None) -> None:
        """Close the idle connections to ``dsn`` (all DSNs when ``None``): before its database is dropped."""
        with self._lock:
            dsns = list(self._idle) if dsn is None else [dsn]
            closing = [conn for d in dsns for conn in self._idle.pop(d, [])]
        for conn in closing:
            conn.close()


def run_libpq(conn: psycopg.Connection[Any], query: str, *, extended: bool = False) -> Any:
    """The result of ``query`` on ``conn``, sent through libpq directly: one round trip, waiting in libpq with the
    GIL released, bounded by the server (``statement_timeout``, the deadline's watchdog ending the backend).

    ``extended``: one statement over the extended protocol (``PQexecParams``: unnamed, text results), which Postgres
    refuses to run when the text holds several (42601); else the simple protocol (statements of ours, the last one's
    result). A refused statement raises psycopg's own exception for its SQLSTATE; a lost connection raises
    ``OperationalError``; text the connection's encoding cannot carry raises ``DataError``; COPY, which would leave
    the session mid-protocol, raises ``ProgrammingError``.

    The checks' statements go this way because psycopg's cursors cost more for the same round trips: measured on 300
    replayed statements, a check took 0.97 ms of CPU and 2.4 ms of wall time through them, 0.66 ms and 1.7 ms here.
    """
    psycopg = load_psycopg()
    status = psycopg.pq.ExecStatus
    encoding = conn.info.encoding
    pgconn = conn.pgconn
    try:
        data = query.encode(encoding)
    except UnicodeEncodeError as exc:  # a lone surrogate (a trace's JSON may write "\\ud800"): unsendable
        raise psycopg.DataError(
            f"the statement holds text the connection's encoding ({encoding}) cannot carry: {exc.reason}"
        ) from None
    result = pgconn.exec_params(data, []) if extended else pgconn.exec_(data)
    if result.status in (status.TUPLES_OK, status.COMMAND_OK, status.EMPTY_QUERY):
        return result
    if pgconn.status == psycopg.pq.ConnStatus.BAD:
        raise psycopg.OperationalError(pgconn.get_error_message(encoding).strip() or "the connection was lost")
    if result.status == status.FATAL_ERROR:
        raise psycopg.errors.error_from_result(result, encoding=encoding)
    if result.status in (status.COPY_IN, status.COPY_OUT, status.COPY_BOTH):
        raise psycopg.ProgrammingError("COPY cannot be run here")
    raise psycopg.ProgrammingError(f"unexpected result status {status(result.status).name}")


def _reset(conn: psycopg.Connection[Any], rollback: bool = False) -> bool:
    """``DISCARD ALL`` (after ``ROLLBACK`` with ``rollback``), then make sure the connection is idle outside any
    transaction; False: do not reuse it."""
    psycopg = load_psycopg()
    if conn.closed:
        return False
    try:
        # Two round trips (DISCARD ALL refuses to run in the implicit transaction of a list of statements): through
        # libpq, 0.34 ms of wall and 0.13 ms of CPU, where psycopg's pipeline took 0.47 and 0.27 ms for one.
        if rollback:
            run_libpq(conn, "ROLLBACK")
        run_libpq(conn, "DISCARD ALL")
        return bool(conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE)
    except psycopg.Error:
        return False


READERS = ReaderConnections()


@contextlib.contextmanager
def readonly_transaction(dsn: str, timeout_ms: int, setup: Sequence[str] = ()) -> Iterator[psycopg.Cursor[Any]]:
    """A cursor inside ``BEGIN TRANSACTION READ ONLY`` with ``SET LOCAL statement_timeout``, always rolled back.

    ``setup`` are more statements of ours (never model text) to run first; all go to the server in one round trip.
    """
    if timeout_ms < 1:  # statement_timeout = 0 would mean no timeout at all
        raise ValueError(f"need timeout_ms >= 1, got {timeout_ms}")
    statements = ["BEGIN TRANSACTION READ ONLY", f"SET LOCAL statement_timeout = {int(timeout_ms)}", *setup]
    # rolled back with the reset, or ended by closing the connection when the block failed
    with READERS.connection(dsn, "; ".join(statements), rollback=True) as conn, conn.cursor() as cur:
        yield cur
