"""Each case of a session, held from the admin side: a deadline, and the roles as they must stay.

A golden case (or an ``llmtrace_check`` call) runs the app's code and model-written SQL; neither can be trusted to
end. ``Watchdog`` is one thread per session database with its own admin connection: when a case runs past its
deadline, it notes the statements the session's roles are running (``pg_stat_activity.query``), bars the roles from
logging in again, ends their backends with ``pg_terminate_backend`` and calls the case's cancel callbacks (the
replay backend's wait). The case then fails with ``[timeout]`` naming those statements, and the session goes on:
when the case ends the roles may log in again.

``SessionGuard`` puts the deadline together with ``SessionRoles``: before a case the roles are re-asserted, after it
any change a case made to them (``ALTER ROLE CURRENT_USER SET ...``, a new password) fails it with ``[sandbox]``.
No clock race decides anything here: a case's deadline passes or it does not, and what the watchdog did is recorded
on the case's ``Deadline``.

With an ``ObjectGuard`` (``pg_objects``), the database's catalogs are compared around each case too: a trigger,
function, rule or policy the case left is dropped, an owner it changed is put back, and the case fails with
``[sandbox]``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from pytest_llmtrace.core.errors import number_text
from pytest_llmtrace.services.pg_objects import ObjectGuard
from pytest_llmtrace.services.pg_roles import SessionRoles

if TYPE_CHECKING:
    from psycopg2.extensions import connection as PgConnection

__all__ = ["APPLICATION_NAME", "Deadline", "Finding", "SessionGuard", "Watchdog"]

# What the checks' connections call themselves in pg_stat_activity (checks.execute): the watchdog tells them from the
# app's by it.
APPLICATION_NAME = "pytest-llmtrace"

_QUERY_CHARS = 300
# The case's backends: its roles', in its database. What was running is kept before anything is ended.
_ACTIVITY = """
SELECT pid, state, query, extract(epoch FROM clock_timestamp() - query_start), application_name
FROM pg_stat_activity WHERE usename = ANY(%s) AND datname = %s AND pid <> pg_backend_pid()
"""


class DeadlineOptions(Protocol):
    """What a deadline is made of (``options.CheckOptions``): its seconds and where they came from."""

    @property
    def case_deadline_s(self) -> float: ...
    @property
    def case_deadline_source(self) -> str: ...


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

    @classmethod
    def of(cls, options: DeadlineOptions) -> Deadline:
        """The deadline of a case checked with ``options`` (``llmtrace_case_timeout_s``, or derived from the total
        latency budget); it starts when the watchdog is armed with it."""
        return cls(options.case_deadline_s, options.case_deadline_source)

    @property
    def at(self) -> float:
        return self.started + self.seconds

    def finding(self) -> Finding:
        """The ``[timeout]`` failure: the deadline, what was running and what was done about it."""
        source = f" ({self.source})" if self.source else ""
        phase = f" in {self.phase}" if self.phase else ""
        reason = (
            f"the case ran past its deadline of {number_text(round(self.seconds, 1))} s{source}{phase}; its database "
            f"sessions were ended ({self.terminated} backend{'s' if self.terminated != 1 else ''})"
        )
        details = self.running or [
            "no statement was running: the app was busy elsewhere (a replayed answer's wait, its own code)"
        ]
        return Finding("timeout", reason, tuple(details))


class Watchdog:
    """One daemon thread per session database, watching the ``Deadline`` a case holds it ``armed`` with."""

    def __init__(self, admin_url: str, database: str, roles: Sequence[str]) -> None:
        self.admin_url = admin_url
        self.database = database
        self.roles = list(roles)
        self._cond = threading.Condition()
        self._conn_lock = threading.Lock()
        self._conn: PgConnection | None = None
        self._armed: Deadline | None = None
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
            self._cond.notify_all()
        try:
            yield deadline
        finally:
            with self._cond:
                self._armed = None
                self._cond.notify_all()
            deadline.ended = time.monotonic()
            if deadline.fired:
                deadline.done.wait(60)  # the watchdog's work first, or it could bar the roles after this lets them in
                with self._conn_lock, contextlib.suppress(Exception):  # else the next case's assert lets them in
                    self._terminate(self._connection().cursor())  # what connected before the bar held
                    self._allow_login(True)

    def extend(self, deadline: Deadline, seconds: float, why: str, phase: str) -> None:
        """Give the armed ``deadline`` ``seconds`` more, for the next ``phase`` of the case (``why``: the reason)."""
        with self._cond:
            if deadline.fired:
                return
            deadline.seconds += seconds
            deadline.source += f" + {number_text(round(seconds, 1))} s {why}"
            deadline.phase = phase
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and not self._due():
                    armed = self._armed
                    self._cond.wait(None if armed is None or armed.fired else armed.at - time.monotonic())
                if self._stopped:
                    return
                deadline = self._armed
                assert deadline is not None, "due means armed"
                deadline.fired = True
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
            cur.execute(_ACTIVITY, (self.roles, self.database))
            for _, state, query, seconds, application in cur.fetchall():
                if state == "active" and query:
                    check = application == APPLICATION_NAME
                    text = " ".join(str(deadline.checking if check and deadline.checking else query).split())
                    text = text if len(text) <= _QUERY_CHARS else text[: _QUERY_CHARS - 3] + "..."
                    who = "the sql check" if check else "the app"
                    deadline.running.append(f"{who} was running: {text} (for {float(seconds or 0):.1f} s)")
            deadline.terminated += self._terminate(cur)
        for cancel in deadline.cancel:
            with contextlib.suppress(Exception):
                cancel()

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

            self._conn = psycopg2.connect(self.admin_url, application_name="pytest-llmtrace-watchdog")
            self._conn.autocommit = True
        return self._conn


class SessionGuard:
    """A session database's roles and watchdog, and how a case is held by them (``case``)."""

    def __init__(self, roles: SessionRoles, watchdog: Watchdog, objects: ObjectGuard | None = None) -> None:
        self.roles = roles
        self.watchdog = watchdog
        self.objects = objects  # the database's catalogs, compared around each case (pg_objects)

    @contextlib.contextmanager
    def case(self, deadline: Deadline) -> Iterator[CaseGuard]:
        """Roles re-asserted (what changed since the last case is kept in ``before``), the deadline armed; after
        the block, what the case changed (``after``), restored."""
        before = self.roles.changes()  # restores what it finds changed
        if not before and not self.roles.sees_everything:  # a password the admin cannot read: set it again anyway
            self.roles.assert_settings()
        guard = CaseGuard(deadline, before)
        with self._objects_checked(guard), self.watchdog.armed(deadline):
            yield guard
        guard.after = self.roles.changes()

    # -- code a case leaves behind (pg_objects) ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _objects_checked(self, guard: CaseGuard) -> Iterator[None]:
        """The catalogs as the case found them; after it (even one that raised, and after the watchdog ended its
        backends), what it left is dropped before anything else runs there, and kept in ``guard.objects``."""
        if self.objects is None:
            yield
            return
        before = self.objects.snapshot()
        try:
            yield
        finally:
            guard.objects = self.objects.changes(before)

    # ----------------------------------------------------------------------------------------------------------------

    def close(self) -> None:
        self.watchdog.stop()
        if self.objects is not None:
            self.objects.close()
        self.roles.drop()


@dataclass
class CaseGuard:
    """What the guard of one case found: the deadline, and the role changes before and after the case."""

    deadline: Deadline
    before: list[str]
    after: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)  # code the case left in its database, dropped (pg_objects)

    def findings(self) -> tuple[Finding, ...]:
        """``[timeout]`` when the deadline passed, ``[sandbox]`` when the case changed its roles."""
        found = [self.deadline.finding()] if self.deadline.fired else []
        found.extend(_objects_finding(self.objects))
        if self.after:
            found.append(
                Finding(
                    "sandbox",
                    "the case changed its database roles (restored now); its SQL must not alter roles",
                    tuple(self.after),
                )
            )
        return tuple(found)


def _objects_finding(objects: Sequence[str]) -> tuple[Finding, ...]:
    """``[sandbox]`` for code a case left behind (``pg_objects``): it would run as whoever fires it next."""
    if not objects:
        return ()
    return (
        Finding(
            "sandbox",
            "the case left code in its database that would run with the rights of whoever fires it next; its SQL "
            "must not create triggers, functions, rules or policies, or change owners (each one is undone now)",
            tuple(objects),
        ),
    )
