"""The semantic suite's clones are held like the case's own SQL: the reader's queries in them end at the case's
deadline, a build the deadline abandoned makes no clone after the session closed its clones, and on a server given
by URL each clone carries the run's marker, so a killed run's clones are dropped by the next run there.

The deadline test kills backends (SIGKILL resets every session of the server), so it uses a server of its own.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO
from support import rows as _rows

from pytest_llmtrace.checks.reader_connections import READERS
from pytest_llmtrace.checks.semantic import judge
from pytest_llmtrace.checks.suite_build import SuiteBuilder, SuiteError
from pytest_llmtrace.services import pg_databases, pg_leftovers
from pytest_llmtrace.services.base import Endpoint
from pytest_llmtrace.services.case_bounds import CASE_THREAD, Abandoned, backend_killer
from pytest_llmtrace.services.pg_deadline import Deadline, Watchdog
from pytest_llmtrace.services.pg_guard import SessionGuard
from pytest_llmtrace.services.pg_roles import RoleLimits, SessionRoles
from pytest_llmtrace.services.pg_suite import SuiteClones, SuiteClosed, suite_session
from pytest_llmtrace.services.postgres import EmbeddedPostgres

FIXTURES = [REPO / "fixtures/company_db/01_schema.sql", REPO / "fixtures/company_db/02_seed.sql"]
GOLD = "SELECT count(*) FROM orders WHERE amount >= 1000"
# About a minute inside one function call, reading no interrupt (tests/services/test_case_bounds.py)
UNCANCELLABLE = "SELECT position(('b' || repeat('a', 10000)) IN repeat('a', 4000000))"

# Suite clones live on the session's shared Postgres, and these tests count them before and after: under xdist they
# run on one worker (xdist_group; .ci/run's slow tier distributes with --dist loadgroup), or another worker's clones
# would show up in their counts.
SUITE_CLONES = pytest.mark.xdist_group("suite_clones")
# each test builds the reference seed's template and clones of it (seconds)
pytestmark = [pytest.mark.slow, SUITE_CLONES]


def _suite_clones(admin_url: str) -> set[str]:
    return {
        name for (name,) in _rows(admin_url, "SELECT datname FROM pg_database WHERE datname LIKE 'llmtrace_suite%'")
    }


def test_no_clone_is_made_after_the_clones_are_closed(private: Endpoint) -> None:
    pg_admin_url = private.url  # a server of its own: it counts suite clones, which other tests make and drop
    """What a build the deadline abandoned meets once the session dropped its clones: a refusal, not a new clone
    that nobody would drop."""
    with suite_session(pg_admin_url, FIXTURES) as (clones, _, _):
        made = clones.build(())
        assert made.name in _suite_clones(pg_admin_url)
        before = _suite_clones(pg_admin_url)
        clones.close()
        assert made.name not in _suite_clones(pg_admin_url)
        with pytest.raises(SuiteClosed, match="no new one is made"):
            clones.build(())
        assert _suite_clones(pg_admin_url) <= before - {made.name}


def test_a_cancelled_builder_makes_and_queries_nothing(private: Endpoint) -> None:
    pg_admin_url = private.url  # a server of its own: it counts suite clones, which other tests make and drop
    with suite_session(pg_admin_url, FIXTURES) as (clones, seed_url, digest):
        builder = SuiteBuilder(clones, seed_url, digest)
        before = _suite_clones(pg_admin_url)
        builder.cancel()
        with pytest.raises(SuiteError, match="cancelled at the case's deadline"):
            judge(builder, GOLD, "SELECT count(*) FROM orders WHERE amount > 1000")
        with pytest.raises(SuiteError, match="cancelled"):
            builder.make_clone(())
        assert _suite_clones(pg_admin_url) <= before  # none made (an earlier test's may have gone meanwhile)


def test_on_a_url_server_each_clone_carries_the_runs_marker(pg_admin_url: str) -> None:
    """The marker ``pg_leftovers.reap`` looks for; the manager passes ``mark`` on a server given by URL."""
    marker = pg_leftovers.MARKER + '{"host": "test"}'
    with suite_session(pg_admin_url, FIXTURES) as (plain, _, _):
        marked = SuiteClones(
            pg_admin_url,
            plain.template,
            plain.roles,
            mark=lambda name: pg_leftovers.mark(pg_admin_url, name, (), marker),
        )
        try:
            clone = marked.build(())
            comment = _rows(
                pg_admin_url,
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                (clone.name,),
            )
            assert comment == [(marker,)]
        finally:
            marked.close()


# -- the case's deadline ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private() -> Iterator[Endpoint]:
    server = EmbeddedPostgres()
    endpoint = server.start()
    yield endpoint
    server.stop()


class Held:
    """A session on ``private``: its clone, its reader role, the watchdog (with the killer), and suite clones."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.admin = endpoint.url
        self.template = f"llmtrace_tpl_{uuid.uuid4().hex[:12]}"
        pg_databases.create_template(self.admin, self.template, [Path(f) for f in FIXTURES])
        self.session = f"llmtrace_bounds_{uuid.uuid4().hex[:8]}"
        pg_databases.clone_database(self.admin, self.template, self.session)
        self.roles = SessionRoles.create(self.admin, RoleLimits(statement_timeout_ms=600_000), owner=False)
        self.watchdog = Watchdog(self.admin, self.session, [self.roles.reader.name], backend_killer(endpoint))
        self.watchdog.start()
        self.guard = SessionGuard(self.roles, self.watchdog)
        self.clones = SuiteClones(self.admin, self.template, self.roles)
        seed = self.clones.build(())
        self.builder = SuiteBuilder(self.clones, seed.reader_url, self.template, timeout_ms=600_000)

    def close(self) -> None:
        READERS.close()
        self.watchdog.stop()
        self.clones.close()
        for name in (self.session, self.template):
            pg_databases.drop_database(self.admin, name)
        self.roles.drop()


@pytest.fixture
def held(private: Endpoint) -> Iterator[Held]:
    session = Held(private)
    yield session
    session.close()


def _judged_under(held: Held, deadline: Deadline, candidate: str) -> tuple[str, ...]:
    """``judge`` as a case's checks run it: in a thread the case walks away from at the deadline; the finding."""
    # the kill ends the query (the suite can no longer be read), or the case walks away from the thread
    with held.guard.case(deadline) as case, pytest.raises((Abandoned, SuiteError)):
        deadline.call(lambda: judge(held.builder, GOLD, candidate), "the checks")
    (finding,) = case.findings()
    assert finding.name == "timeout"
    assert "STILL RUNNING" not in finding.reason
    assert held.builder.cancelled, "the deadline's cancel reached the builder"
    return (finding.reason, *finding.details)


def test_a_candidate_that_ignores_cancel_in_a_suite_clone_is_killed_at_the_deadline(held: Held) -> None:
    held.builder.suite(GOLD, "SELECT 1")  # built before the case (the same key: neither mentions a column's value)
    deadline = Deadline(2.0, "test", checking="SELECT 1", cancel=(held.builder.cancel,))
    reason, *details = _judged_under(held, deadline, UNCANCELLABLE)
    print(reason, *details, sep="\n")
    assert deadline.backends is not None
    assert deadline.backends.killed >= 1, reason  # it ignored pg_terminate_backend, as it ignores cancel
    assert any("the semantic check (in llmtrace_suite_" in d and "position(" in d for d in details), details
    assert _rows(held.admin, "SELECT pid FROM pg_stat_activity WHERE usename = %s", (held.roles.reader.name,)) == []


def test_a_build_the_deadline_abandoned_leaves_no_clone_behind(held: Held) -> None:
    """A deadline shorter than a suite's build: the case walks away mid-build, the session then drops its clones,
    and the builder's thread, cancelled, makes none after that."""
    deadline = Deadline(0.5, "test", cancel=(held.builder.cancel,))
    _judged_under(held, deadline, "SELECT count(*) FROM orders WHERE amount > 1000")
    held.clones.close()  # what the session's end does
    until = time.monotonic() + 60  # the abandoned build stops at its next step, and its thread goes idle
    while any(t.name == CASE_THREAD for t in threading.enumerate()) and time.monotonic() < until:
        time.sleep(0.05)
    assert _suite_clones(held.admin) == set()
