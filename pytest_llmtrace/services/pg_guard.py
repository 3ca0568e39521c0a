"""Each case of a session, held from the admin side: a deadline, and the roles as they must stay.

``SessionGuard`` puts the case's deadline (``pg_deadline``: a ``Deadline`` its ``Watchdog`` enforces) together with
``SessionRoles``: before a case the roles are re-asserted, after it any change a case made to them (``ALTER ROLE
CURRENT_USER SET ...``, a new password) fails it with ``[sandbox]``.

With an ``ObjectGuard`` (``pg_objects``), the database's catalogs are compared around each case too: a trigger,
function, rule or policy the case left is dropped, an owner it changed is put back, and the case fails with
``[sandbox]``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from pytest_llmtrace.services.case_bounds import RECOVERY_S
from pytest_llmtrace.services.pg_deadline import Deadline, Finding, Watchdog
from pytest_llmtrace.services.pg_objects import ObjectGuard
from pytest_llmtrace.services.pg_roles import SessionRoles

T = TypeVar("T")


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
        before = self._roles_call(self.roles.changes)  # restores what it finds changed
        if not before and not self.roles.sees_everything:  # a password the admin cannot read: set it again anyway
            self._roles_call(self.roles.assert_settings)
        guard = CaseGuard(deadline, before)
        with self._objects_checked(guard), self.watchdog.armed(deadline):
            yield guard
        guard.after = self._roles_call(self.roles.changes)

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
                return call()
            except psycopg2.DatabaseError as exc:  # "server closed the connection unexpectedly" (a bare
                # DatabaseError), then "the database system is in recovery mode" for a moment; SQL errors are raised
                lost = type(exc) is psycopg2.DatabaseError or isinstance(exc, psycopg2.OperationalError)
                if not lost or time.monotonic() >= until:
                    raise
                reconnect()
                time.sleep(0.1)

    # -- code a case leaves behind (pg_objects) ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _objects_checked(self, guard: CaseGuard) -> Iterator[None]:
        """The catalogs as the case found them; after it (even one that raised, and after the watchdog ended its
        backends), what it left is dropped before anything else runs there, and kept in ``guard.objects``."""
        if self.objects is None:
            yield
            return
        objects = self.objects
        before = self._admin_call(objects.snapshot, objects.close)
        try:
            yield
        finally:  # after a deadline's kill the server was reset: the check reconnects while it recovers
            guard.objects = self._admin_call(lambda: objects.changes(before), objects.close)

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
