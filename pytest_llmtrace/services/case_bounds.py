"""What one case may take, past what a statement timeout and a role can bound: time, backends, memory.

A cancel or ``pg_terminate_backend`` only sets a flag the backend reads at its next ``CHECK_FOR_INTERRUPTS``; a
statement that spends minutes inside one function call (``position()`` of a long pattern in a long text, ``md5()``
of a huge string) reads none, so it outlives both. The watchdog (``pg_deadline``) therefore escalates here, by time
alone and whatever the SQL is: terminate, wait ``KILL_GRACE_S``, then, on a server the plugin started, SIGKILL the
backends still there (``backend_killer``). Postgres then resets every session of the server and recovers; the
plugin's connections reconnect (the watchdog's own one here, the checks' cached ones in ``checks.execute``). What
is left afterwards is counted again from the admin side, so a failure never says "ended" of a backend that runs on.

The case itself runs where the session can walk away from it (``call_within``): the app's request and the checks
each in a daemon thread the case stops waiting for once the deadline's work is done and a short grace passed. The
threads are reused from call to call; one whose call was abandoned is reused only once that call returns.

What a case may grow the pytest process by is ``memory_watch``'s.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import psutil

from pytest_llmtrace.core.errors import LLMTraceError
from pytest_llmtrace.services.base import Endpoint

# After pg_terminate_backend, how long a backend has to notice before its process is killed.
KILL_GRACE_S = 1.0
# After a SIGKILL, how long the server may take to reset its sessions and accept connections again.
RECOVERY_S = 10.0
# Once the watchdog has acted (or ESCALATION_WAIT_S after the deadline), how long a case's thread may take to return.
ABANDON_GRACE_S = 1.0
ESCALATION_WAIT_S = 3.0

# Every backend of the session's roles, in any database (a dblink connection opened into another one included).
# From pg_stat_get_activity, the function under the pg_stat_activity view: the view's joins and columns took twice
# as long, and this runs after every case. pid, usesysid and datid are visible to any admin, superuser or not.
_ROLE_BACKENDS = """
SELECT a.pid FROM pg_stat_get_activity(NULL) a
WHERE a.usesysid IN (SELECT oid FROM pg_roles WHERE rolname = ANY(%s)) AND a.pid <> pg_backend_pid()
"""
# The same outside one database: what a case left in databases that are not its clone.
_ROLE_BACKENDS_ELSEWHERE = (
    _ROLE_BACKENDS + "AND a.datid IS DISTINCT FROM (SELECT oid FROM pg_database WHERE datname = %s)\n"
)

# ``_ROLE_BACKENDS_ELSEWHERE`` as a prepared statement, on an admin connection that looks for strays after every
# case (``prepare_strays``): planning it was half of each call.
STRAYS_STATEMENT = "llmtrace_strays"

BackendKiller = Callable[[Sequence[int]], int]
"""Kills backend processes of one server by pid; returns how many it killed."""

T = TypeVar("T")


# -- killing backends -------------------------------------------------------------------------------------------------


def backend_killer(endpoint: Endpoint) -> BackendKiller | None:
    """How to kill a backend of ``endpoint``'s server, when the plugin started it; ``None`` on a server given by URL
    (its processes are the user's)."""
    if endpoint.backend == "embedded" and endpoint.extra.get("pgdata"):
        pgdata = Path(str(endpoint.extra["pgdata"]))
        return lambda pids: kill_embedded(pgdata, pids)
    if endpoint.backend == "docker":
        url = endpoint.url
        return lambda pids: kill_by_sql(url, pids)
    return None


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text(encoding="utf-8").split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def kill_embedded(pgdata: Path, pids: Sequence[int]) -> int:
    """SIGKILL each pid that is a child of the postmaster of ``pgdata`` (never another process that reused a pid),
    and wait until the postmaster has reaped them: from then on it is resetting, so a connection that succeeds is
    one made after the reset, not one the reset is about to end."""
    postmaster = _postmaster_pid(pgdata)
    killed: list[psutil.Process] = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if postmaster is None or process.ppid() != postmaster:
                continue
            os.kill(pid, signal.SIGKILL)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
        killed.append(process)
    until = time.monotonic() + RECOVERY_S
    while any(process.is_running() for process in killed) and time.monotonic() < until:
        time.sleep(0.02)  # a zombie "is running" until its parent reaps it
    return len(killed)


def kill_by_sql(admin_url: str, pids: Sequence[int]) -> int:
    """SIGKILL backends from inside the server (``COPY ... TO PROGRAM 'kill -9'``, superuser only): for a server in a
    container, whose pids this machine cannot see. The reset that follows ends this connection as well."""
    import psycopg2

    wanted = [int(pid) for pid in pids]
    if not wanted:
        return 0
    command = "kill -9 " + " ".join(map(str, wanted)) + "; sleep 0.5"  # the reset begins before COPY returns
    with contextlib.suppress(psycopg2.Error):
        conn = psycopg2.connect(admin_url, connect_timeout=5, application_name="pytest-llmtrace-watchdog")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("COPY (SELECT 1) TO PROGRAM %s", (command,))
        finally:
            with contextlib.suppress(Exception):
                conn.close()
    return len(wanted)


# -- ending a case's backends -----------------------------------------------------------------------------------------


@dataclass
class Ended:
    """What became of a case's backends: how many there were, how each was ended, and what is still running."""

    found: int = 0
    terminated: int = 0  # gone after pg_terminate_backend
    killed: int = 0  # gone after SIGKILL of their process
    surviving: int = 0  # still there, counted from the admin side after everything
    unbounded: str = ""  # why the survivors could not be ended

    def text(self) -> str:
        """For the failure message: never "ended" of a backend that still runs."""
        if not self.found:
            return "it had no database sessions left to end"
        ways = [f"{self.terminated} by pg_terminate_backend"] if self.terminated else []
        if self.killed:
            ways.append(
                f"{self.killed} ignored it and {'was' if self.killed == 1 else 'were'} killed (SIGKILL: the server "
                "reset all its sessions)"
            )
        gone = self.found - self.surviving
        text = f"{gone} of its {self.found} database session{'s' if self.found != 1 else ''} ended"
        text += f" ({'; '.join(ways)})" if ways else ""
        if self.surviving:
            text += f"; {self.surviving} STILL RUNNING: {self.unbounded}"
        return text


def prepare_strays(conn: Any) -> None:
    """Prepare ``STRAYS_STATEMENT`` on ``conn`` (psycopg2, autocommit): once per connection."""
    parameters = _ROLE_BACKENDS_ELSEWHERE.replace("%s", "$1", 1).replace("%s", "$2", 1)
    with conn.cursor() as cur:
        cur.execute(f"PREPARE {STRAYS_STATEMENT}(name[], name) AS {parameters}")


def _pids(cur: Any, roles: Sequence[str], outside: str | None = None, *, prepared: bool = False) -> set[int]:
    if outside is None:
        cur.execute(_ROLE_BACKENDS, (list(roles),))
    elif prepared:
        cur.execute(f"EXECUTE {STRAYS_STATEMENT}(%s, %s)", (list(roles), outside))
    else:
        cur.execute(_ROLE_BACKENDS_ELSEWHERE, (list(roles), outside))
    return {int(row[0]) for row in cur.fetchall()}


def end_backends(
    connection: Callable[[], Any],
    drop_connection: Callable[[], None],
    roles: Sequence[str],
    killer: BackendKiller | None,
    *,
    grace_s: float = KILL_GRACE_S,
    outside: str | None = None,
    prepared: bool = False,
) -> Ended:
    """End every backend of ``roles`` (any database; with ``outside``, those in any other database than that one):
    terminate, wait ``grace_s``, kill what is left (``killer``), and count again. ``connection`` gives the admin
    connection (autocommit, psycopg2), reconnecting when ``drop_connection`` dropped it. For a count that holds, the
    roles are barred from logging in meanwhile (the caller does that). With ``prepared``, every connection
    ``connection`` gives has ``STRAYS_STATEMENT`` prepared (``prepare_strays``)."""
    cur = connection().cursor()
    pids = _pids(cur, roles, outside, prepared=prepared)
    ended = Ended(found=len(pids))
    for pid in pids:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    left = pids
    until = time.monotonic() + grace_s
    while left:
        left = pids & _pids(cur, roles)
        if not left or time.monotonic() >= until:
            break
        time.sleep(0.05)
    ended.terminated = len(pids - left)
    if not left:
        return ended
    if killer is None:
        ended.surviving = len(left)
        ended.unbounded = (
            "they ignore cancel and terminate (a long call inside one function), and this server was not started by "
            "the plugin, so their processes cannot be killed: they run on the server until they end"
        )
        return ended
    killer(sorted(left))
    drop_connection()  # the server resets every session, this one too
    still = _count_after_reset(connection, drop_connection, roles, left)
    ended.killed = len(left) - len(still)
    ended.surviving = len(still)
    if still:
        ended.unbounded = "killing their processes did not end them (or the server did not come back to say)"
    return ended


def _count_after_reset(
    connection: Callable[[], Any], drop_connection: Callable[[], None], roles: Sequence[str], left: set[int]
) -> set[int]:
    """The pids of ``left`` still there once the server takes connections again (all of them, if it never does)."""
    until = time.monotonic() + RECOVERY_S
    while True:
        try:
            return left & _pids(connection().cursor(), roles)
        except Exception:  # in recovery: "the database system is in recovery mode", or the old connection died
            drop_connection()
            if time.monotonic() >= until:
                return left
            time.sleep(0.1)


# -- walking away from a case -----------------------------------------------------------------------------------------


class Abandoned(LLMTraceError):
    """The call was still running after its deadline's work was done: the case no longer waits for it."""


def call_within(fn: Callable[[], T], fired: Callable[[], float | None], done: threading.Event) -> T:
    """``fn()`` in a daemon thread (with the caller's context variables: the test's OTel context), its result or
    exception; ``Abandoned`` when it has not returned ``ABANDON_GRACE_S`` after the watchdog acted (``done``, or
    ``ESCALATION_WAIT_S`` after ``fired()`` first gives the time the deadline passed)."""
    job = in_daemon_thread(fn, CASE_THREAD)
    while not job.ended.wait(0.05):
        at = fired()
        if at is None:
            continue
        done.wait(max(0.0, at + ESCALATION_WAIT_S - time.monotonic()))
        if not job.ended.wait(ABANDON_GRACE_S):
            raise Abandoned(fn)
    if job.error is not None:
        raise job.error
    return job.value  # type: ignore[no-any-return]


CASE_THREAD = "llmtrace-case"  # the name of a daemon thread while it runs a case's call (an idle one: IDLE_THREAD)
IDLE_THREAD = "llmtrace-idle"


@dataclass
class Job:
    """One call in a daemon thread: ``ended`` is set when it returned (``value``) or raised (``error``)."""

    fn: Callable[[], Any]
    context: contextvars.Context
    ended: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None


class _DaemonThread:
    """A daemon thread running one ``Job`` after another, idle in between.

    Threads are reused, not started per call: starting one per call (three a case) was a millisecond of every case.
    A call the case walked away from keeps its thread until it returns, and only then is the thread idle again.
    """

    _idle: ClassVar[list[_DaemonThread]] = []
    _lock: ClassVar[threading.Lock] = threading.Lock()
    _pid: ClassVar[int] = os.getpid()  # a forked child has none of its parent's threads: it starts its own

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Job, str]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=IDLE_THREAD, daemon=True)
        self._thread.start()

    @classmethod
    def run(cls, job: Job, name: str) -> None:
        with cls._lock:
            if cls._pid != os.getpid():
                cls._idle, cls._pid = [], os.getpid()
            worker = cls._idle.pop() if cls._idle else None
        (worker or cls())._jobs.put((job, name))

    def _loop(self) -> None:
        while True:
            job, name = self._jobs.get()
            self._thread.name = name
            try:
                job.value = job.context.run(job.fn)
            except BaseException as exc:  # re-raised in the caller's thread
                job.error = exc
            self._thread.name = IDLE_THREAD
            with self._lock:
                self._idle.append(self)  # before the caller hears of the end: its next call finds this thread idle
            job.ended.set()
            del job  # the result is the caller's now


def in_daemon_thread(fn: Callable[[], Any], name: str) -> Job:
    """Start ``fn()`` in an idle daemon thread (a new one when none is idle), with the caller's context variables."""
    job = Job(fn, contextvars.copy_context())
    _DaemonThread.run(job, name)
    return job
