"""When the sandbox guard may skip reading the roles and catalogs around a case (``pg_guard``).

The guard skips them only while the server's transaction snapshot is the one under which they were last read and
found right, with no transaction in progress then. On a shared server (this suite's xdist workers share one) the
snapshot moves whenever another worker writes, so which checks skip is not deterministic there: the decision is
tested here with the snapshots given in order, and ``tests/services/test_owner_sandbox.py`` holds the real server's
side (a change made in a case is found even right after a case that wrote nothing; a write moves the snapshot).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, cast

import pytest

from pytest_llmtrace.services.pg_deadline import Deadline
from pytest_llmtrace.services.pg_guard import SessionGuard

QUIET = "1000:1000:"  # xmin:xmax:in-progress, nothing in progress
LATER = "1003:1003:"
BUSY = "1000:1002:1000"  # transaction 1000 in progress: it may end, unseen, after a read under this snapshot


class Server:
    """The roles and catalogs of one database as the guard reads them, and the snapshots it is shown, in order."""

    def __init__(self, snapshots: list[str]) -> None:
        self.snapshots = snapshots
        self.role_reads = 0
        self.catalog_reads = 0
        self.role_changes: list[list[str]] = []  # what the next role reads find, in order ([] when none left)
        self.sees_everything = True
        self.last: dict[Any, Any] | None = None

    # SessionRoles
    def transactions(self) -> str:
        return self.snapshots.pop(0)

    def changes(self) -> list[str]:
        self.role_reads += 1
        return self.role_changes.pop(0) if self.role_changes else []

    def assert_settings(self) -> None:
        self.role_reads += 1  # a write: the roles set again

    def reconnect(self) -> None: ...

    # ObjectGuard (``changes`` of the catalogs is ``catalog_changes``, wired in ``guard``)
    def snapshot(self) -> dict[Any, Any]:
        self.catalog_reads += 1
        self.last = {}
        return self.last

    def catalog_changes(self, before: dict[Any, Any]) -> list[str]:
        return [] if self.snapshot() == before else ["function f(): left behind (dropped)"]

    def close(self) -> None: ...

    # Watchdog
    @contextlib.contextmanager
    def armed(self, deadline: Deadline) -> Iterator[Deadline]:
        yield deadline


def guard(server: Server) -> SessionGuard:
    objects = cast(Any, type("Objects", (), {}))()
    objects.snapshot, objects.changes, objects.close = server.snapshot, server.catalog_changes, server.close
    type(objects).last = property(lambda _: server.last)
    return SessionGuard(cast(Any, server), cast(Any, server), objects)


def case(held: SessionGuard, *, fired: bool = False) -> Any:
    deadline = Deadline(60.0, "test")
    with held.case(deadline) as found:
        deadline.fired = fired
    return found


def test_cases_under_an_unchanged_quiet_snapshot_read_nothing_after_the_first_check() -> None:
    server = Server([QUIET] * 6)
    held = guard(server)
    for _ in range(3):
        case(held)
    assert (server.role_reads, server.catalog_reads) == (1, 1)  # the first case's check before it
    assert held.reads_skipped == 5


def test_a_snapshot_that_moved_is_read_again_and_then_trusted() -> None:
    server = Server([QUIET, QUIET, LATER, LATER, LATER, LATER])
    held = guard(server)
    case(held)
    case(held)  # something committed before it: read again, found right, trusted from then on
    case(held)
    assert (server.role_reads, server.catalog_reads) == (2, 2)
    assert held.reads_skipped == 4


def test_a_snapshot_with_a_transaction_in_progress_is_never_trusted() -> None:
    server = Server([BUSY] * 4)
    held = guard(server)
    case(held)
    case(held)
    assert (server.role_reads, server.catalog_reads) == (4, 4)
    assert held.reads_skipped == 0


def test_a_change_in_a_case_is_found_and_what_was_restored_is_read_again_next_time() -> None:
    """The change committed (the snapshot moved): found after the case; the guard's own restoring is a write the
    snapshot read before it has not seen, so the next case's check reads everything again."""
    server = Server([QUIET, LATER, LATER, LATER])
    server.role_changes = [[], ["role r: ALTER ROLE ... SET work_mem (restored)"]]
    held = guard(server)
    found = case(held)
    assert found.after == ["role r: ALTER ROLE ... SET work_mem (restored)"]
    case(held)
    assert (server.role_reads, server.catalog_reads) == (3, 3)
    assert held.reads_skipped == 1  # the second case's check after it


def test_roles_restored_before_a_case_are_read_again_after_it() -> None:
    """A change made between cases (found and restored by the check before the next one) is not trusted either."""
    server = Server([QUIET, QUIET, QUIET])
    server.role_changes = [["role r: ALTER ROLE ... SET work_mem (restored)"]]
    held = guard(server)
    found = case(held)
    assert found.before == ["role r: ALTER ROLE ... SET work_mem (restored)"]
    assert (server.role_reads, server.catalog_reads) == (2, 2)
    assert held.reads_skipped == 0


def test_roles_whose_passwords_the_admin_cannot_read_are_read_at_every_check() -> None:
    """A non-superuser admin sets the roles again before each case (a write), so it never trusts a snapshot."""
    server = Server([QUIET] * 4)
    server.sees_everything = False
    held = guard(server)
    case(held)
    case(held)
    assert server.role_reads == 6  # each check reads them; each one before a case sets them again as well
    assert held.reads_skipped == 0


def test_a_case_whose_deadline_fired_is_read_after_it_and_before_the_next() -> None:
    server = Server([QUIET] * 5)
    held = guard(server)
    case(held)
    case(held, fired=True)  # the watchdog barred and let in the roles again: writes of its own
    case(held)
    assert server.role_reads == 3  # before the first case, after the fired one, before the third
    assert held.reads_skipped == 3


def test_a_case_that_raised_leaves_its_roles_to_the_next_check() -> None:
    server = Server([QUIET, LATER, LATER, LATER])
    held = guard(server)
    with pytest.raises(RuntimeError), held.case(Deadline(60.0, "test")):
        raise RuntimeError("the app failed")
    assert (server.role_reads, server.catalog_reads) == (1, 2)  # no role read after it; its catalogs read
    case(held)
    assert (server.role_reads, server.catalog_reads) == (2, 3)
    assert held.reads_skipped == 1
