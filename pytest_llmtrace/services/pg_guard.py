"""Each case of a session, held from the admin side: a deadline, and the roles as they must stay.

``SessionGuard`` puts the case's deadline (``pg_deadline``: a ``Deadline`` its ``Watchdog`` enforces) together with
``SessionRoles``: before a case the roles are re-asserted, after it any change a case made to them (``ALTER ROLE
CURRENT_USER SET ...``, a new password) fails it with ``[sandbox]``.

With an ``ObjectGuard`` (``pg_objects``), the database's catalogs are compared around each case too: a trigger,
function, rule or policy the case left is dropped, an owner it changed is put back, and the case fails with
``[sandbox]``.

Reading the roles and the catalogs is most of the guard's time (a third of a millisecond each, four times a case),
and a replayed case usually writes nothing. So each check first reads the server's transaction snapshot
(``SessionRoles.transactions``): when it is the one under which the roles and catalogs were last read and found as
they must be, and that one had no transaction in progress, no transaction has ended on the server since, and
nothing there can have changed (every change to a role or a catalog is a transaction that takes an id). Only then
are the reads skipped; any write anywhere on the server (a fixture's, another worker's, the guard's own clean-up)
makes the next check read everything again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from pytest_llmtrace.services.case_bounds import RECOVERY_S
from pytest_llmtrace.services.pg_deadline import Deadline, Finding, Watchdog
from pytest_llmtrace.services.pg_objects import ObjectGuard, Snapshot
from pytest_llmtrace.services.pg_roles import SessionRoles
from pytest_llmtrace.services.untraced import untraced

T = TypeVar("T")


class SessionGuard:
    """A session database's roles and watchdog, and how a case is held by them (``case``)."""

    def __init__(self, roles: SessionRoles, watchdog: Watchdog, objects: ObjectGuard | None = None) -> None:
        self.roles = roles
        self.watchdog = watchdog
        self.objects = objects  # the database's catalogs, compared around each case (pg_objects)
        # The transaction snapshot under which the roles and catalogs were last read and found as they must be, and
        # the catalogs then: while the server's snapshot is still this one, they are the same (module docstring).
        self._verified: str | None = None
        self._baseline: Snapshot | None = None
        self.reads_skipped = 0  # checks that found the server's snapshot unchanged (for tests and reports)

    @contextlib.contextmanager
    def case(self, deadline: Deadline) -> Iterator[CaseGuard]:
        """Roles re-asserted (what changed since the last case is kept in ``before``), the deadline armed; after
        the block, what the case changed (``after``, and code it left in ``objects``), restored."""
        horizon = self._horizon()
        if horizon is not None and horizon == self._verified:
            self.reads_skipped += 1
            before: list[str] = []
            baseline = self._baseline
        else:
            before = self._roles_call(self.roles.changes)  # restores what it finds changed
            if not before and not self.roles.sees_everything:  # a password the admin cannot read: set it again anyway
                self._roles_call(self.roles.assert_settings)
            objects = self.objects
            baseline = self._admin_call(objects.snapshot, objects.close) if objects is not None else None
            self._verify(None if before else horizon, baseline)
        guard = CaseGuard(deadline, before)
        raised = True
        try:
            with self.watchdog.armed(deadline):
                yield guard
            raised = False
        finally:  # after a deadline's kill the server was reset: the checks reconnect while it recovers
            self._after(guard, baseline, raised=raised)

    def _after(self, guard: CaseGuard, baseline: Snapshot | None, *, raised: bool) -> None:
        """What the case left in its database (dropped before anything else runs there) and, unless the case
        ``raised`` (then the next case's check reads them), what it did to its roles; nothing is read when the
        server's snapshot is still the verified one."""
        horizon = None if guard.deadline.fired else self._horizon()
        if horizon is not None and horizon == self._verified:
            self.reads_skipped += 1
            return
        objects = self.objects
        if objects is not None and baseline is not None:
            guard.objects = self._admin_call(lambda: objects.changes(baseline), objects.close)
        if raised:  # the snapshot moved (or could not be read): it is not verified again before the roles are read
            return
        guard.after = self._roles_call(self.roles.changes)
        clean = not guard.objects and not guard.after and not guard.deadline.fired
        self._verify(horizon if clean else None, objects.last if objects is not None else None)

    def _verify(self, horizon: str | None, baseline: Snapshot | None) -> None:
        """Remember ``horizon`` as the snapshot the roles and catalogs (``baseline``) were found right under: only one
        listing no transaction in progress (``xmin:xmax:``), since one in progress may end unseen later, and only
        when the roles' reading sees everything (an admin that cannot read their passwords sets them again before
        every case instead)."""
        stable = (
            horizon is not None
            and horizon.endswith(":")
            and self.roles.sees_everything
            and (self.objects is None or baseline is not None)
        )
        self._verified = horizon if stable else None
        self._baseline = baseline if stable else None

    def _horizon(self) -> str | None:
        """The server's transaction snapshot (``SessionRoles.transactions``); ``None`` when it cannot be read."""
        try:
            return self._roles_call(self.roles.transactions)
        except Exception:  # the full reads below say what is wrong, or reconnect
            return None

    def _roles_call(self, call: Callable[[], T]) -> T:
        """``call`` on the roles' admin connection, again on a new one when the first was lost: a backend killed at
        a deadline (this session's or another worker's on the same server) resets every session of the server."""
        return self._admin_call(call, self.roles.reconnect)

    def _admin_call(self, call: Callable[[], T], reconnect: Callable[[], object]) -> T:
        """``call`` on an admin connection, ``reconnect`` and again while the server recovers from a reset."""
        import psycopg2

        until = time.monotonic() + RECOVERY_S
        while True:
            try:
                with untraced():  # an app's driver instrumentation must not record the guard's reads
                    return call()
            except psycopg2.DatabaseError as exc:  # "server closed the connection unexpectedly" (a bare
                # DatabaseError), then "the database system is in recovery mode" for a moment; SQL errors are raised
                lost = type(exc) is psycopg2.DatabaseError or isinstance(exc, psycopg2.OperationalError)
                if not lost or time.monotonic() >= until:
                    raise
                reconnect()
                time.sleep(0.1)

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
