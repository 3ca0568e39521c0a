"""What one case can take: time (statements that ignore cancel), memory (the pytest process's and a backend's),
temporary files (parallel workers) and backends left in other databases.

A SIGKILL of a backend resets every session of its server, and under xdist the session's server is shared by the
workers: the tests that kill use a server of this module's own (``private``). The others read what Postgres and
the OS say (``pg_stat_database.temp_bytes``, SQLSTATEs, RSS through psutil). Timing is asserted only as the bound
the plugin promises, deadline + 5 s, against statements that run for a minute when nothing ends them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import pytest
from support import golden_with_statement as _golden
from support import rows as _rows

from pytest_llmtrace.checks.execute import execute_readonly
from pytest_llmtrace.checks.reader_connections import READERS
from pytest_llmtrace.services.base import Endpoint
from pytest_llmtrace.services.pg_databases import clone_database, database_url, drop_database
from pytest_llmtrace.services.pg_deadline import Deadline, Watchdog
from pytest_llmtrace.services.pg_guard import SessionGuard
from pytest_llmtrace.services.pg_lockdown import open_clone
from pytest_llmtrace.services.pg_roles import RoleLimits, SessionRoles, admin_connection
from pytest_llmtrace.services.postgres import EmbeddedPostgres, PostgresDatabase

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 2.0
# What a case may take past its deadline, whatever its SQL does: 5 s, plus room for a shared CI runner's scheduling
# (the escalation waits on a server's crash recovery). Unbounded, these cases took 40 to 80 s; the figures each test
# prints are what to compare with the 5 s (3.5 to 3.7 s on an idle 2-core machine).
BOUND_S = 5.0 + 6.0
# Statements that spend about a minute inside one function call, reading no interrupt: cancel, statement_timeout
# and pg_terminate_backend all wait for them. Three functions over the same text search, one of each kind of call.
UNCANCELLABLE = {
    "position": "SELECT position(('b' || repeat('a', 10000)) IN repeat('a', 4000000))",
    "replace": "SELECT length(replace(repeat('a', 4000000), 'b' || repeat('a', 10000), 'x'))",
    "split_part": "SELECT length(split_part(repeat('a', 4000000), 'b' || repeat('a', 10000), 2))",
}


def _backends(admin: str, role: str) -> list[tuple[Any, ...]]:
    return _rows(admin, "SELECT pid, datname FROM pg_stat_activity WHERE usename = %s", (role,))


@pytest.fixture(scope="module")
def private() -> Iterator[Endpoint]:
    """A server of this module's own, started as every embedded server is (so bounded the same way)."""
    server = EmbeddedPostgres()
    endpoint = server.start()
    yield endpoint
    server.stop()


class Held:
    """One session on ``private``: a database, its roles, its watchdog (with or without the killer)."""

    def __init__(self, endpoint: Endpoint, killer: bool) -> None:
        from pytest_llmtrace.services.case_bounds import backend_killer

        self.admin = endpoint.url
        self.name = f"bounds_{uuid.uuid4().hex[:10]}"
        with admin_connection(self.admin) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {self.name}")
        self.url = database_url(self.admin, self.name)
        self.roles = SessionRoles.create(self.admin, RoleLimits(statement_timeout_ms=600_000))
        open_clone(self.admin, self.url, self.name, self.roles)
        self.reader = self.roles.reader.dsn(self.admin, self.name)
        self.watchdog = Watchdog(self.admin, self.name, self.roles.names, backend_killer(endpoint) if killer else None)
        self.watchdog.start()
        self.guard = SessionGuard(self.roles, self.watchdog)

    def close(self) -> None:
        READERS.close()
        self.watchdog.stop()
        left = [pid for pid, _ in _backends(self.admin, self.roles.reader.name)]  # what a test left running on purpose
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        # Until the postmaster has reaped them it has not begun the reset that ends every session of the server: a
        # "SELECT 1" answered before that proves nothing, and the reset would then cut into the next test's session.
        for pid in left:
            _wait_reaped(pid)
        _wait_for_server(self.admin)
        drop_database(self.admin, self.name)
        self.roles.drop()


def _wait_reaped(pid: int, seconds: float = 30) -> None:
    until = time.monotonic() + seconds
    while psutil.pid_exists(pid) and time.monotonic() < until:  # a zombie still exists until its parent reaps it
        time.sleep(0.02)


def _wait_for_server(url: str, seconds: float = 30) -> None:
    until = time.monotonic() + seconds
    while True:
        try:
            _rows(url, "SELECT 1")
            return
        except psycopg2.Error:
            if time.monotonic() > until:
                raise
            time.sleep(0.2)


@pytest.fixture
def held(private: Endpoint) -> Iterator[Held]:
    session = Held(private, killer=True)
    yield session
    session.close()


def _app(dsn: str, sql: str, errors: list[str]) -> Callable[[], None]:
    """What an app does: its own connection, no statement timeout of its own."""

    def run() -> None:
        try:
            _rows(dsn, "SET statement_timeout = 0; " + sql)
        except psycopg2.Error as exc:
            errors.append(str(exc).splitlines()[0])

    return run


# -- time -------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(UNCANCELLABLE))
def test_a_statement_that_ignores_cancel_is_killed_at_the_deadline_and_the_session_goes_on(
    held: Held, name: str
) -> None:
    deadline = Deadline(DEADLINE_S, "test", checking=UNCANCELLABLE[name])
    errors: list[str] = []
    started = time.monotonic()
    with held.guard.case(deadline) as case:
        _app(held.reader, UNCANCELLABLE[name], errors)()  # in the test's own thread: the kill alone must end it
    took = time.monotonic() - started
    (finding,) = case.findings()
    print(f"{name}: the case took {took:.1f} s (deadline {DEADLINE_S} s): {finding.reason}")
    assert took < DEADLINE_S + BOUND_S, finding.reason
    assert finding.name == "timeout"
    assert "killed (SIGKILL" in finding.reason
    assert "STILL RUNNING" not in finding.reason
    assert errors, "the app's statement was ended, not finished"
    assert _backends(held.admin, held.roles.reader.name) == []
    # the session goes on: the roles log in again, the checks' connections reconnect after the server's reset
    assert execute_readonly(held.reader, "SELECT 1").rows == ((1,),)


def test_quiet_cases_leave_the_watchdog_asleep_and_a_sooner_deadline_still_wakes_it(held: Held) -> None:
    """Arming, extending and disarming a deadline wake the watchdog only when the deadline comes sooner than its wait
    ends: thirty quiet cases cost it at most the first arm's wake-up (at least one each before), and a case with a
    short deadline after them is still ended at it."""
    for _ in range(30):
        quiet = Deadline(600, "test")
        with held.guard.case(quiet):
            held.watchdog.extend(quiet, 60, "for the checks", phase="the checks")
        assert not quiet.fired
    assert held.watchdog.wakeups <= 1
    deadline = Deadline(DEADLINE_S, "test", checking="SELECT pg_sleep(60)")
    errors: list[str] = []
    with held.guard.case(deadline) as case:
        _app(held.reader, "SELECT pg_sleep(60)", errors)()
    (finding,) = case.findings()
    assert finding.name == "timeout", finding.reason
    assert errors, "the app's statement was ended at the deadline, not finished"


@pytest.mark.slow
def test_on_a_server_it_did_not_start_the_case_walks_away_and_says_what_still_runs(private: Endpoint) -> None:
    from pytest_llmtrace.services.case_bounds import Abandoned

    session = Held(private, killer=False)  # as on a server given by URL: no process of it may be killed
    try:
        deadline = Deadline(DEADLINE_S, "test")
        errors: list[str] = []
        started = time.monotonic()
        with session.guard.case(deadline) as case, pytest.raises(Abandoned):
            deadline.call(_app(session.reader, UNCANCELLABLE["position"], errors), "the app's request")
        took = time.monotonic() - started
        (finding,) = case.findings()
        print(f"URL server: the case took {took:.1f} s (deadline {DEADLINE_S} s): {finding.reason}")
        assert took < DEADLINE_S + BOUND_S
        assert "1 STILL RUNNING" in finding.reason
        assert "not started by the plugin, so their processes cannot be killed" in finding.reason
        assert "the app's request did not return and was abandoned" in finding.reason
        assert "sessions were ended" not in finding.reason
        assert len(_backends(session.admin, session.roles.reader.name)) == 1  # what the failure says
    finally:
        session.close()


@pytest.mark.slow
def test_a_backend_is_killed_from_inside_the_server_as_for_a_container(held: Held) -> None:
    """The Docker backend's killer (``COPY ... TO PROGRAM 'kill -9'``, the pids being the container's), here on the
    embedded server, whose admin is a superuser too."""
    from pytest_llmtrace.services.case_bounds import kill_by_sql

    errors: list[str] = []
    thread = threading.Thread(target=_app(held.reader, UNCANCELLABLE["position"], errors))
    thread.start()
    try:
        until = time.monotonic() + 10
        while not _backends(held.admin, held.roles.reader.name) and time.monotonic() < until:
            time.sleep(0.05)
        (pid, _), *_ = _backends(held.admin, held.roles.reader.name)
        assert kill_by_sql(held.admin, [pid]) == 1
        thread.join(10)
        assert not thread.is_alive()
        assert errors
        _wait_reaped(pid)  # then the postmaster's reset has begun, and the server is ready again only after it
        _wait_for_server(held.admin)
        assert _backends(held.admin, held.roles.reader.name) == []
    finally:
        thread.join(120)


def test_a_backend_in_another_database_ends_with_its_case(held: Held) -> None:
    """A reader's backend outside its clone (dblink, or a login into a database a URL server leaves open to PUBLIC)
    ends with the case; the app's connections to the clone are its own business."""
    other = f"bounds_other_{uuid.uuid4().hex[:8]}"
    with admin_connection(held.admin) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {other}")
        cur.execute(f"GRANT CONNECT ON DATABASE {other} TO PUBLIC")
    elsewhere = held.roles.reader.dsn(held.admin, other)
    errors: list[str] = []
    thread = threading.Thread(target=_app(elsewhere, "SELECT pg_sleep(60)", errors))
    try:
        with held.guard.case(Deadline(60, "test")):
            thread.start()
            until = time.monotonic() + 10
            while not _backends(held.admin, held.roles.reader.name) and time.monotonic() < until:
                time.sleep(0.05)
            assert [db for _, db in _backends(held.admin, held.roles.reader.name)] == [other]
        thread.join(10)
        assert not thread.is_alive()
        assert errors  # its connection was ended
        assert _backends(held.admin, held.roles.reader.name) == []
    finally:
        thread.join(60)
        drop_database(held.admin, other)


# -- memory and temporary files ---------------------------------------------------------------------------------------


class PeakRss:
    """The peak RSS of a process while the block runs, sampled every 10 ms."""

    def __init__(self, pid: int | None = None) -> None:
        self.process = psutil.Process(pid)
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def grown_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def test_the_checks_fetch_stops_at_the_byte_cap_without_taking_a_whole_batch(
    llmtrace_postgres: PostgresDatabase,
) -> None:
    sql = "SELECT repeat('x', 30000000) FROM generate_series(1, 20)"  # 20 rows of 30 MB
    with PeakRss() as rss:
        outcome = execute_readonly(llmtrace_postgres.reader_url, sql, timeout_ms=60_000, max_bytes=16 * 2**20)
    print(
        f"20 rows of 30 MB, 16 MB cap: the pytest process grew by {rss.grown_mb:.0f} MB (peak {rss.peak / 2**20:.0f})"
    )
    assert outcome.truncated
    assert outcome.error is not None
    assert "larger than 16777216 bytes" in outcome.error
    assert rss.grown_mb < 200  # one 30 MB row (libpq's copy and Python's), not 20


def test_parallel_workers_get_no_temp_file_limit_of_their_own(
    llmtrace_postgres: PostgresDatabase, pg_admin_url: str
) -> None:
    """temp_file_limit holds per process: with parallel workers a query could write it once per worker."""
    server = pg_admin_url
    name = f"bounds_temp_{uuid.uuid4().hex[:8]}"
    url = clone_database(server, llmtrace_postgres.template, name)
    roles = SessionRoles.create(server, RoleLimits(temp_file_limit_kb=16 * 1024))
    try:
        _rows(url, "CREATE TABLE big AS SELECT g, md5(g::text) AS t FROM generate_series(1, 1500000) g; ANALYZE big")
        open_clone(server, url, name, roles)
        reader = roles.reader.dsn(server, name)
        before = _rows(url, "SELECT temp_bytes FROM pg_stat_database WHERE datname = %s", (name,))[0][0]
        conn = psycopg2.connect(reader)
        conn.autocommit = True
        error: str | None = None
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SET max_parallel_workers_per_gather = 4; SET max_parallel_workers = 8; "
                    "SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0"
                )
                try:
                    cur.execute("SELECT * FROM big ORDER BY t, g")
                except psycopg2.Error as exc:
                    error = exc.pgcode
        finally:
            conn.close()
        time.sleep(1)  # the statistics of exited workers are flushed on exit
        after = _rows(url, "SELECT temp_bytes FROM pg_stat_database WHERE datname = %s", (name,))[0][0]
        print(f"parallel sort, 16 MB temp_file_limit: {after - before} temporary bytes, SQLSTATE {error}")
        assert after - before <= 16 * 2**20 * 1.1
        assert error == "53400"  # temp_file_limit: one process sorts it all
    finally:
        READERS.close()
        drop_database(server, name)
        roles.drop()


@pytest.mark.slow
def test_a_backend_that_sets_a_huge_work_mem_runs_out_of_memory_instead_of_taking_the_machine(
    llmtrace_postgres: PostgresDatabase,
) -> None:
    conn = psycopg2.connect(llmtrace_postgres.reader_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SET work_mem = '3GB'; SET statement_timeout = 120000; SELECT pg_backend_pid()")
            row = cur.fetchone()
            assert row is not None
            with PeakRss(row[0]) as rss, pytest.raises(psycopg2.Error) as failed:
                cur.execute("SELECT count(*) FROM (SELECT DISTINCT md5(g::text) FROM generate_series(1, 30000000) g) t")
    finally:
        conn.close()
    print(f"work_mem = 3GB: the backend's RSS peaked at {rss.peak / 2**20:.0f} MB: {failed.value.pgerror}")
    assert failed.value.pgcode == "53200"  # out of memory
    assert rss.peak / 2**20 < 1024 + 128 + 200  # RLIMIT_DATA, shared_buffers it touched, and the code


# -- through a golden case --------------------------------------------------------------------------------------------


def _project(pytester: pytest.Pytester, cases: dict[str, str], ini: str) -> None:
    shutil.copytree(REPO / "fixtures" / "company_db", pytester.path / "fixtures" / "company_db")
    shutil.copytree(REPO / "fixtures" / "gateway", pytester.path / "gateway")
    golden = pytester.path / "golden_traces"
    (golden / "__snapshots__").mkdir(parents=True)
    for prefix in ("a_good", "z_good"):
        shutil.copy(REPO / "golden_traces" / "customers_by_tier.json", golden / f"{prefix}.json")
        shutil.copy(
            REPO / "golden_traces" / "__snapshots__" / "customers_by_tier.json",
            golden / "__snapshots__" / f"{prefix}.json",
        )
    for name, sql in cases.items():
        (golden / f"h_{name}.json").write_text(json.dumps(_golden(sql)))
    pytester.makeini(
        "[pytest]\naddopts = -p no:phoenix -p no:randomly -p no:cacheprovider\npythonpath = .\n"
        "llmtrace_target = gateway.app:handle_user_request\njunit_duration_report = call\n"
        'llmtrace_case_marks = h_*: llmtrace(checks="sql")\n' + ini
    )


def _cases(pytester: pytest.Pytester) -> dict[str, tuple[float, str]]:
    """(seconds of the call, failure message) per test case name, from the run's JUnit XML."""
    root = ET.parse(pytester.path / "junit.xml").getroot()
    found = {}
    for case in root.iter("testcase"):
        failure = case.find("failure")
        found[case.attrib["name"]] = (float(case.attrib["time"]), "" if failure is None else failure.attrib["message"])
    return found


@pytest.mark.slow
def test_golden_cases_whose_sql_ignores_cancel_end_within_their_deadline_and_the_next_case_passes(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = {name: UNCANCELLABLE[name] for name in ("position", "split_part")}
    _project(pytester, cases, f"llmtrace_case_timeout_s = {DEADLINE_S:g}\n")
    # embedded: a server of the run's own, which it may reset (the session's is shared with other xdist workers)
    result = pytester.runpytest_subprocess(
        "--llmtrace-postgres=embedded", "--llmtrace-replay-speed=virtual", "--junitxml=junit.xml", timeout=900
    )
    found = _cases(pytester)
    with capsys.disabled():
        for name in cases:
            print(
                f"\ngolden h_{name}: {found[f'h_{name}'][0]:.1f} s (deadline {DEADLINE_S:g} s): {found[f'h_{name}'][1]}"
            )
    for name in cases:
        seconds, message = found[f"h_{name}"]
        assert "[timeout] the case ran past its deadline" in message, message
        assert "killed (SIGKILL" in message, message
        assert "STILL RUNNING" not in message, message
        assert seconds < DEADLINE_S + BOUND_S, message
    assert found["a_good"][1] == ""
    assert found["z_good"][1] == ""  # the session goes on after the server's reset
    result.assert_outcomes(passed=2, failed=len(cases))


@pytest.mark.slow
def test_an_app_that_fetches_a_huge_result_fails_with_memory_past_the_limit(
    pytester: pytest.Pytester, pg_admin_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _project(
        pytester,
        {"huge_fetch": "SELECT repeat('x', 30000000) FROM generate_series(1, 40)"},  # 1.2 GB for the app's fetchall
        "llmtrace_case_timeout_s = 60\nllmtrace_max_case_memory_mb = 300\n",
    )
    pytester.makeconftest(
        "import json, threading, psutil, pytest\n"
        "PEAK = [0]\n"
        "def _sample():\n"
        "    me = psutil.Process()\n"
        "    while True:\n"
        "        PEAK[0] = max(PEAK[0], me.memory_info().rss)\n"
        "        threading.Event().wait(0.01)\n"
        "threading.Thread(target=_sample, daemon=True).start()\n"
        "def pytest_sessionfinish(session):\n"
        "    open('peak.json', 'w').write(json.dumps(PEAK[0]))\n"
    )
    result = pytester.runpytest_subprocess(
        f"--llmtrace-postgres={pg_admin_url}",
        "--llmtrace-replay-speed=virtual",
        "--junitxml=junit.xml",
        "-k",
        "huge_fetch",
        timeout=900,
    )
    peak_mb = json.loads((pytester.path / "peak.json").read_text()) / 2**20
    seconds, message = _cases(pytester)["h_huge_fetch"]
    with capsys.disabled():
        print(f"\napp fetching 40 x 30 MB, limit 300 MB: peak RSS {peak_mb:.0f} MB, {seconds:.1f} s: {message}")
    assert "\n[memory] the case made the pytest process grow by" in message, message
    assert peak_mb < 1000
    result.assert_outcomes(failed=1)
