"""A case's deadline, and the watchdog that holds a session database's cases to it from the admin side.

A golden case (or an ``llmtrace_check`` call) runs the app's code and model-written SQL; neither can be trusted to
end. ``Watchdog`` is one thread per session database with its own admin connection: when a case runs past its
deadline, it notes the statements the session's roles are running (``pg_stat_activity.query``), bars the roles from
logging in again, ends their backends in any database (``pg_terminate_backend``, then, for a backend that ignores
it, ``case_bounds``' escalation) and calls the case's cancel callbacks (the replay backend's wait). The case then
fails with ``[timeout]`` naming those statements and counting what still runs, and the session goes on: when the
case ends the roles may log in again. The same thread acts on a case that passed ``llmtrace_max_case_memory_mb``
(``trip``: ``[memory]``). No clock race decides anything here: a case's deadline passes or it does not, and what the
watchdog did is recorded on the case's ``Deadline``. ``pg_guard.SessionGuard`` arms it for each case.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from pytest_llmtrace.core.errors import number_text
from pytest_llmtrace.services.case_bounds import (
    Abandoned,
    BackendKiller,
    Ended,
    call_within,
    end_backends,
    prepare_strays,
)
from pytest_llmtrace.services.memory_watch import MemoryWatch
from pytest_llmtrace.services.untraced import untraced

if TYPE_CHECKING:
    from psycopg2.extensions import connection as PgConnection

# What the checks' connections call themselves in pg_stat_activity (checks.execute): the watchdog tells them from the
# app's by it.
APPLICATION_NAME = "pytest-llmtrace"

T = TypeVar("T")
_QUERY_CHARS = 300
# The case's backends: its roles', in its database. What was running is kept before anything is ended.
_ACTIVITY = """
SELECT pid, state, query, extract(epoch FROM clock_timestamp() - query_start), application_name
FROM pg_stat_activity WHERE usename = ANY(%s) AND datname = %s AND pid <> pg_backend_pid()
"""
# The same in any database: a reader's dblink connection into another database is the case's too, and so are the
# semantic check's queries in its suite's clones (``result_match = suite``: services/pg_suite.py).
_ACTIVITY_ANYWHERE = """
SELECT pid, state, query, extract(epoch FROM clock_timestamp() - query_start), application_name, datname
FROM pg_stat_activity WHERE usename = ANY(%s) AND pid <> pg_backend_pid()
"""


class DeadlineOptions(Protocol):
    """What a deadline is made of (``options.CheckOptions``): its seconds and where they came from."""

    @property
    def case_deadline_s(self) -> float: ...
    @property
    def case_deadline_source(self) -> str: ...
    @property
    def max_case_memory_mb(self) -> int: ...


class Finding(NamedTuple):
    """A failure the guard found, as plain data: the caller makes it a failed check of this name."""

    name: str
    reason: str
    details: tuple[str, ...]


@dataclass
class Deadline:
    """One case's deadline and, once it passed, what the watchdog found and did."""

    seconds: float
    source: str = ""  # where the number came from, for the message ("ini llmtrace_case_timeout_s", "auto: ...")
    phase: str = ""  # what was running when it passed, for the message: set by ``Watchdog.extend``
    checking: str | None = None  # the SQL the checks are re-executing (their backend shows only FETCH from a cursor)
    cancel: Sequence[Callable[[], None]] = ()
    fired: bool = False
    running: list[str] = field(default_factory=list)  # "<who> was running: <query> (for N s)", each active backend
    terminated: int = 0  # backends ended
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    done: threading.Event = field(default_factory=threading.Event, repr=False)  # set when the watchdog has acted
    # -- bounds past the deadline (services.case_bounds) --
    max_memory_mb: float | None = None  # llmtrace_max_case_memory_mb: growth of this process's RSS during the case
    memory: str = ""  # set when the case passed max_memory_mb: the [memory] finding's reason
    fired_at: float | None = None  # time.monotonic() when the watchdog fired
    backends: Ended | None = None  # what became of the case's backends
    abandoned: str = ""  # what the case stopped waiting for ("the app's request", "the checks")

    @classmethod
    def of(cls, options: DeadlineOptions) -> Deadline:
        """The deadline of a case checked with ``options`` (``llmtrace_case_timeout_s``, or derived from the total
        latency budget); it starts when the watchdog is armed with it."""
        deadline = cls(options.case_deadline_s, options.case_deadline_source)
        deadline.max_memory_mb = options.max_case_memory_mb
        return deadline

    def fired_time(self) -> float | None:
        """When the watchdog fired (``None`` before): what ``case_bounds.call_within`` waits on."""
        return self.fired_at if self.fired else None

    def call(self, fn: Callable[[], T], what: str) -> T:
        """``fn()`` in a thread the case walks away from: ``Abandoned`` (noted here as ``what``) when it still runs
        after the deadline's work; a statement the server cannot interrupt, or an app busy in its own code, must not
        hold the case."""
        try:
            return call_within(fn, self.fired_time, self.done)
        except Abandoned:
            self.abandoned = what
            raise

    @property
    def at(self) -> float:
        return self.started + self.seconds

    def finding(self) -> Finding:
        """The ``[timeout]`` failure (or ``[memory]``): the limit, what was running and what was done about it."""
        source = f" ({self.source})" if self.source else ""
        phase = f" in {self.phase}" if self.phase else ""
        if self.backends is not None:
            sessions = self.backends.text()
        else:  # the watchdog could not say (its connection failed twice)
            sessions = f"{self.terminated} database session{'s' if self.terminated != 1 else ''} ended"
        if self.abandoned:
            sessions += f"; {self.abandoned} did not return and was abandoned (it runs on in a background thread)"
        details = self.running or [
            "no statement was running: the app was busy elsewhere (a replayed answer's wait, its own code)"
        ]
        if self.memory:
            return Finding("memory", f"{self.memory}{phase}; {sessions}", tuple(details))
        reason = f"the case ran past its deadline of {number_text(round(self.seconds, 1))} s{source}{phase}; {sessions}"
        return Finding("timeout", reason, tuple(details))


# With no deadline armed the watchdog waits at least this long: a deadline of milliseconds must not make it spin.
_IDLE_MIN_S = 1.0


class Watchdog:
    """One daemon thread per session database, watching the ``Deadline`` a case holds it ``armed`` with."""

    def __init__(
        self, admin_url: str, database: str, roles: Sequence[str], killer: BackendKiller | None = None
    ) -> None:
        self.admin_url = admin_url
        self.database = database
        self.roles = list(roles)
        self.killer = killer  # SIGKILL of a backend on a server the plugin started (case_bounds.backend_killer)
        self._cond = threading.Condition()
        self._conn_lock = threading.Lock()
        self._conn: PgConnection | None = None
        self._armed: Deadline | None = None
        # When the watchdog's wait ends by itself (``None``: it waits to be woken). Arming a deadline that falls
        # after it, extending one, or disarming needs no wake-up: the watchdog looks again then (``_loop``).
        self._wakes_at: float | None = None
        self._idle_s: float | None = None  # the last armed deadline's seconds: how long it waits with none armed
        self.wakeups = 0  # times its wait ended (for tests: a quiet case wakes it only when its deadline is sooner)
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._wait_arg: bool | None = None  # pg_terminate_backend(pid, timeout) exists (Postgres 14+)

    def start(self) -> None:
        self._connection()  # now, not when a case needs it: a runaway app may hold every connection slot by then
        self._thread = threading.Thread(target=self._loop, name=f"llmtrace-watchdog-{self.database}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(10)
        with self._conn_lock:
            self._drop_connection()

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        with contextlib.suppress(Exception):
            if conn is not None:
                conn.close()

    @contextlib.contextmanager
    def armed(self, deadline: Deadline) -> Iterator[Deadline]:
        with self._cond:
            deadline.started = time.monotonic()
            self._armed = deadline
            self._idle_s = deadline.seconds
            if self._wakes_at is None or self._wakes_at > deadline.at:
                self._cond.notify_all()
        try:
            with self._memory_watch(deadline):
                yield deadline
        finally:
            with self._cond:
                self._armed = None  # the watchdog, waking when this deadline would have come, finds it gone
            deadline.ended = time.monotonic()
            if deadline.fired:
                deadline.done.wait(60)  # the watchdog's work first, or it could bar the roles after this lets them in
                self._after_fired()
            else:
                self._end_strays()

    def extend(self, deadline: Deadline, seconds: float, why: str, phase: str) -> None:
        """Give the armed ``deadline`` ``seconds`` more, for the next ``phase`` of the case (``why``: the reason)."""
        with self._cond:
            if deadline.fired or deadline.memory:
                return
            deadline.seconds += seconds
            deadline.source += f" + {number_text(round(seconds, 1))} s {why}"
            deadline.phase = phase
            if seconds < 0:  # sooner: the watchdog must wait less (later, it looks again when the old time comes)
                self._cond.notify_all()

    def _loop(self) -> None:
        """Wait for the armed deadline, or to be woken. A case arms, extends and disarms its deadline without waking
        this thread unless the deadline comes sooner than the wait ends (otherwise each of the three notified it, and
        a wake-up takes the GIL from the case): it wakes when a deadline it waited for would have come, and looks
        again. With none armed it waits as long as the last deadline lasted, so the next case's, armed later and as
        long, comes after that wait ends and need not wake it either."""
        while True:
            with self._cond:
                while not self._stopped and not self._due():
                    armed = self._armed
                    if armed is not None and not armed.fired:
                        self._wakes_at = armed.at
                    else:
                        idle = None if self._idle_s is None else max(self._idle_s, _IDLE_MIN_S)
                        self._wakes_at = None if idle is None else time.monotonic() + idle
                    self._cond.wait(None if self._wakes_at is None else self._wakes_at - time.monotonic())
                    self.wakeups += 1
                self._wakes_at = None
                if self._stopped:
                    return
                deadline = self._armed
                assert deadline is not None, "due means armed"
                deadline.fired = True
                deadline.fired_at = time.monotonic()
            try:
                for _ in range(2):  # a second time on a new connection: the first may have died with the server's
                    try:
                        self._fire(deadline)
                        break
                    except Exception:  # a watchdog that dies would leave the next case unguarded
                        self._drop_connection()
            finally:
                deadline.done.set()

    def _due(self) -> bool:
        armed = self._armed
        return armed is not None and not armed.fired and time.monotonic() >= armed.at

    def _fire(self, deadline: Deadline) -> None:
        with self._conn_lock:
            self._allow_login(False)
            cur = self._connection().cursor()
            cur.execute(_ACTIVITY_ANYWHERE, (self.roles,))
            for _, state, query, seconds, application, database in cur.fetchall():
                if state == "active" and query:
                    check = application == APPLICATION_NAME
                    suite = check and database != self.database  # a suite clone: the query is the check's own
                    shown = deadline.checking if check and not suite and deadline.checking else query
                    text = " ".join(str(shown).split())
                    text = text if len(text) <= _QUERY_CHARS else text[: _QUERY_CHARS - 3] + "..."
                    who = f"the semantic check (in {database})" if suite else "the sql check" if check else "the app"
                    deadline.running.append(f"{who} was running: {text} (for {float(seconds or 0):.1f} s)")
            deadline.backends = self._end_backends()
            deadline.terminated = deadline.backends.found - deadline.backends.surviving
        for cancel in deadline.cancel:
            with contextlib.suppress(Exception):
                cancel()

    # -- bounds past the deadline (services.case_bounds) ------------------------------------------------------------

    def trip(self, deadline: Deadline, memory: str) -> None:
        """Fire the armed ``deadline`` now, for a reason other than time (``memory``: the [memory] finding)."""
        with self._cond:
            if deadline.fired or self._armed is not deadline:
                return
            deadline.memory = memory
            deadline.seconds = time.monotonic() - deadline.started
            self._cond.notify_all()

    def _memory_watch(self, deadline: Deadline) -> contextlib.AbstractContextManager[object]:
        """A ``MemoryWatch`` over the case when it has a memory limit: past it, the case is tripped."""
        limit = deadline.max_memory_mb
        if limit is None:
            return contextlib.nullcontext()

        def exceeded(grown_mb: float, peak_mb: float) -> None:
            self.trip(
                deadline,
                f"the case made the pytest process grow by {grown_mb:.0f} MB (to {peak_mb:.0f} MB), past "
                f"llmtrace_max_case_memory_mb = {number_text(limit)}",
            )

        return MemoryWatch(limit, exceeded).running()

    def _end_backends(self) -> Ended:
        """Every backend of the roles ended (in any database), escalating to SIGKILL where the server allows."""
        return end_backends(self._connection, self._drop_connection, self.roles, self.killer)

    def _end_strays(self) -> None:
        """The roles' backends in other databases than the clone (a dblink connection, or a login into a database
        a URL server leaves open) end with the case; the app's own connections to the clone are left to it."""
        with self._conn_lock, untraced():
            try:
                end_backends(
                    self._connection,
                    self._drop_connection,
                    self.roles,
                    self.killer,
                    outside=self.database,
                    prepared=True,
                )
            except Exception:  # the next case's, or the session's end, gets another chance
                self._drop_connection()

    def _after_fired(self) -> None:
        """After a fired case: what connected before the bar held is ended, and the roles may log in again (else the
        next case's assert lets them in). Twice: the first connection may have died with a reset server's sessions."""
        for _ in range(2):
            with self._conn_lock:
                try:
                    self._end_backends()
                    self._allow_login(True)
                    return
                except Exception:
                    self._drop_connection()

    def _terminate(self, cur: Any) -> int:
        """End the case's backends and wait until they are gone (up to 5 s each); how many were ended."""
        if self._wait_arg is None:
            cur.execute("SELECT current_setting('server_version_num')::int >= 140000")
            row = cur.fetchone()
            self._wait_arg = bool(row and row[0])
        cur.execute(_ACTIVITY, (self.roles, self.database))
        pids = [row[0] for row in cur.fetchall()]
        ended = 0
        for pid in pids:
            if self._wait_arg:
                cur.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
            else:  # pragma: no cover - Postgres 13 and older
                cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
            row = cur.fetchone()
            ended += bool(row and row[0])
        return ended

    def _allow_login(self, allowed: bool) -> None:
        from psycopg2 import sql

        login = sql.SQL("LOGIN" if allowed else "NOLOGIN")
        with self._connection().cursor() as cur:
            for role in self.roles:
                cur.execute(sql.SQL("ALTER ROLE {} {}").format(sql.Identifier(role), login))

    def _connection(self) -> PgConnection:
        if self._conn is None or self._conn.closed:
            import psycopg2  # libpq; Postgres is up by now

            conn = psycopg2.connect(self.admin_url, application_name="pytest-llmtrace-watchdog")
            conn.autocommit = True
            prepare_strays(conn)  # looked for after every case (``_end_strays``)
            self._conn = conn
        return self._conn
