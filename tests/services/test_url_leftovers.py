"""A run killed with SIGKILL on a Postgres server given by URL: the next run there drops the clone and roles it
left, and nothing else (a live run's, another machine's, anything without the plugin's marker)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmtrace.services.pg_leftovers import MARKER
from pytest_llmtrace.services.pg_roles import admin_connection
from pytest_llmtrace.services.postgres import PostgresDatabase

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

HOLDER = """
import json, os, pathlib, time

def test_holds_its_database(llmtrace_postgres):
    held = {"database": llmtrace_postgres.database, "role": llmtrace_postgres.reader_role}
    pathlib.Path(os.environ["HELD"]).write_text(json.dumps(held))
    time.sleep(300)
"""
# A run killed while its semantic test suite had databases (``result_match = suite``), as the checks make them
SUITE_HOLDER = """
import json, os, pathlib, time
from pytest_llmtrace.pytest import service_session as services

def test_holds_a_suite_clone(request, llmtrace_postgres):
    made = services.get_manager(request.config).suite_clones(llmtrace_postgres).build(())
    held = {"database": llmtrace_postgres.database, "role": llmtrace_postgres.reader_role, "suite": made.name}
    pathlib.Path(os.environ["HELD"]).write_text(json.dumps(held))
    time.sleep(300)
"""
# Roles a killed run on this server could look like, but that are not this machine's dead runs' to drop.
FOREIGN = {
    "llmtrace_r_elsewhere": MARKER + json.dumps({"host": "another-ci-runner", "boot": "x", "pid": 1, "started": 0.0}),
    "llmtrace_r_unmarked": None,
}


def _exists(url: str) -> dict[str, set[str]]:
    with admin_connection(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database")
        databases = {name for (name,) in cur.fetchall()}
        cur.execute("SELECT rolname FROM pg_roles")
        return {"database": databases, "role": {name for (name,) in cur.fetchall()}}


def _held_by(
    pytester: pytest.Pytester, url: str, name: str, test_file: str = "test_holder.py"
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """A pytest run on ``url`` that sets up its database, says which, and then sleeps."""
    held = pytester.path / f"{name}.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--llmtrace-postgres={url}", test_file],
        cwd=pytester.path,
        env={**os.environ, "HELD": str(held)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not held.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if not held.exists():
        proc.kill()
        raise AssertionError(f"the {name} run never set up its database:\n{proc.communicate()[0]}")
    data: dict[str, Any] = json.loads(held.read_text())
    return proc, data


@pytest.fixture
def foreign_roles(pg_admin_url: str) -> Iterator[None]:
    from psycopg2 import sql

    url = pg_admin_url
    with admin_connection(url) as conn, conn.cursor() as cur:
        for name, comment in FOREIGN.items():
            cur.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(name)))
            if comment is not None:
                cur.execute(sql.SQL("COMMENT ON ROLE {} IS %s").format(sql.Identifier(name)), (comment,))
    try:
        yield
    finally:
        with admin_connection(url) as conn, conn.cursor() as cur:
            for name in FOREIGN:
                cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def test_the_next_run_drops_what_a_killed_run_left_and_nothing_else(
    pytester: pytest.Pytester, llmtrace_postgres: PostgresDatabase, pg_admin_url: str, foreign_roles: None
) -> None:
    url = pg_admin_url
    shutil.copytree(REPO / "fixtures" / "company_db", pytester.path / "fixtures" / "company_db")
    pytester.makeini("[pytest]\naddopts = -p no:randomly\n")
    pytester.makepyfile(test_holder=HOLDER)
    killed, dead = _held_by(pytester, url, "killed")
    live, alive = _held_by(pytester, url, "live")
    try:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(30)
        before = _exists(url)
        assert dead["database"] in before["database"], "SIGKILL gives no chance to clean up: the clone stays"
        assert dead["role"] in before["role"]

        # the next run on this server, with a test of its own
        pytester.makepyfile(test_next="def test_db(llmtrace_postgres):\n    assert llmtrace_postgres.database\n")
        pytester.runpytest_subprocess(f"--llmtrace-postgres={url}", "test_next.py", timeout=180).assert_outcomes(
            passed=1
        )
        after = _exists(url)
        assert dead["database"] not in after["database"]
        assert dead["role"] not in after["role"]
        assert alive["database"] in after["database"], "a live run's clone is not the next run's to drop"
        assert alive["role"] in after["role"]
        assert set(FOREIGN) <= after["role"], "another machine's roles and unmarked ones are left alone"
    finally:
        os.killpg(live.pid, signal.SIGTERM)  # the live run ends as CI would end it, and cleans up after itself
        output, _ = live.communicate(timeout=120)
        killed.communicate()
    assert live.returncode == pytest.ExitCode.INTERRUPTED, output
    gone = _exists(url)
    assert alive["database"] not in gone["database"]
    assert alive["role"] not in gone["role"]


@pytest.mark.xdist_group("suite_clones")  # counts suite clones on the shared server: see test_suite_clones.py
def test_the_next_run_drops_the_suite_clones_a_killed_run_left(
    pytester: pytest.Pytester, llmtrace_postgres: PostgresDatabase, pg_admin_url: str
) -> None:
    url = pg_admin_url
    shutil.copytree(REPO / "fixtures" / "company_db", pytester.path / "fixtures" / "company_db")
    pytester.makeini("[pytest]\naddopts = -p no:randomly\n")
    pytester.makepyfile(test_suite_holder=SUITE_HOLDER)
    killed, dead = _held_by(pytester, url, "killed", "test_suite_holder.py")
    try:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(30)
        assert dead["suite"] in _exists(url)["database"], "SIGKILL gives no chance to clean up: the clone stays"

        pytester.makepyfile(test_next="def test_db(llmtrace_postgres):\n    assert llmtrace_postgres.database\n")
        pytester.runpytest_subprocess(f"--llmtrace-postgres={url}", "test_next.py", timeout=180).assert_outcomes(
            passed=1
        )
        after = _exists(url)
        assert dead["suite"] not in after["database"]
        assert dead["database"] not in after["database"]
        assert dead["role"] not in after["role"]
    finally:
        killed.communicate()
