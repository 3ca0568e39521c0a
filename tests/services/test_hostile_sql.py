"""A corpus of hostile SQL (tests/services/hostile_sql.json) replayed through the reference app and through
``llmtrace_check.sql_executes()``, in one pytest run, as a user's CI would meet it.

Every statement is the model's answer of a generated golden case (the app runs it on ``DB_URI``, with the app's own
statement timeout removed, as in most apps) and the SQL of one ``sql_executes`` call. For each, the run must show:
the case failed with the reason the corpus names; every table's checksum, the large objects, the roles and the
session's role settings are as before; the case ended within its deadline (plus a hang guard only: the machine is
shared); the temporary files it wrote stayed under the roles' ``temp_file_limit``; and the good cases after it still
pass. The same run seeds passwords in the server URL (user part and query) and finds none in any output it wrote.

One run, a 2 s deadline and a 16 MB temp_file_limit keep it to about a minute; the figures the lead quotes are
printed at the end (statements tried, longest hostile case, peak temporary bytes, secrets found).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from support import golden_with_statement as _golden

from pytest_llmtrace.services.postgres import PostgresDatabase

REPO = Path(__file__).resolve().parents[2]
CORPUS = json.loads((REPO / "tests" / "services" / "hostile_sql.json").read_text(encoding="utf-8"))
STATEMENTS: list[dict[str, str]] = CORPUS["statements"]
DEADLINE_S = 2
TEMP_LIMIT_MB = 16
GOOD = ("customers_by_tier", "inactive_products")
SECRETS = ("S3cretUserPart-7f3a", "S3cretQuery-91c2", "S3cretSsl-55d0")

# What the test project's conftest records about each test, after it: Postgres's own view of what it left behind.
CONFTEST = """
import json
import os
import pathlib
import time

import psutil
import psycopg2
import pytest

import gateway.app
from pytest_llmtrace.checks.reader_connections import READERS

gateway.app.STATEMENT_TIMEOUT_MS = 0  # as in most users' apps: no statement timeout of the app's own
HERE = pathlib.Path(__file__).parent
MARKER = pathlib.Path(__PWNED__)


def _rows(url, sql, params=()):
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def _write(record):
    with (HERE / "figures.jsonl").open("a", encoding="utf-8") as out:
        out.write(json.dumps(record, default=str) + "\\n")


def _state(db):
    tables = [t for (t,) in _rows(db.url, "SELECT oid::regclass::text FROM pg_class WHERE relkind = 'r' "
                                  "AND relnamespace = 'public'::regnamespace ORDER BY 1")]
    sums = {t: _rows(db.url, f"SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x")[0][0]
            for t in tables}
    return {
        "tables": sums,
        "large_objects": _rows(db.url, "SELECT count(*) FROM pg_largeobject_metadata")[0][0],
        # superusers and the roles the corpus tries to create (not every role: under xdist, other workers' sessions
        # add and drop their own roles on the same server meanwhile)
        "roles": _rows(db.url, "SELECT count(*) FROM pg_roles WHERE rolsuper OR rolname = 'evil'")[0][0],
        "settings": _rows(db.url, "SELECT coalesce(d.datname, ''), s.setconfig FROM pg_db_role_setting s "
                          "LEFT JOIN pg_database d ON d.oid = s.setdatabase WHERE s.setrole = %s::regrole "
                          "ORDER BY 1", (db.reader_role,)),
        "login": _rows(db.url, "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (db.reader_role,))[0][0],
        "pwned": MARKER.exists(),
    }


def _temp_bytes(db):
    return _rows(db.url, "SELECT temp_bytes FROM pg_stat_database WHERE datname = %s", (db.database,))[0][0]


@pytest.fixture(scope="session", autouse=True)
def the_session(llmtrace_postgres):
    db = llmtrace_postgres
    password = db.reader_url.split("@")[0].rsplit(":", 1)[1]
    (HERE / "session.json").write_text(json.dumps({"role": db.reader_role, "database": db.database,
                                                   "password": password}))


@pytest.fixture(autouse=True)
def after_each(request, llmtrace_postgres):
    db = llmtrace_postgres
    temp_before = _temp_bytes(db)
    yield
    role_backends = "SELECT pid FROM pg_stat_activity WHERE usename = %s"
    left = [pid for (pid,) in _rows(db.url, role_backends, (db.reader_role,))]
    READERS.close()  # the checks' idle connections: their backends exit and report their temporary files
    for pid in [pid for (pid,) in _rows(db.url, role_backends, (db.reader_role,))]:
        try:
            psutil.Process(pid).wait(30)
        except psutil.Error:
            pass
    _write({"nodeid": request.node.nodeid, "after": _state(db), "backends_left": len(left),
            "temp_bytes": _temp_bytes(db) - temp_before})


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        _write({"nodeid": item.nodeid, "outcome": report.outcome, "seconds": report.duration,
                "message": str(report.longrepr) if report.failed else ""})
    return report
"""

CHECKS = """
import json
import pathlib

import pytest

CORPUS = json.loads((pathlib.Path(__file__).parent / "hostile_sql.json").read_text(encoding="utf-8"))["statements"]


@pytest.mark.parametrize("sql", [e["sql"] for e in CORPUS], ids=[e["name"] for e in CORPUS])
def test_hostile(llmtrace_check, sql):
    llmtrace_check.sql_executes(sql=sql)


def test_zz_a_good_statement_after_them(llmtrace_check):
    assert llmtrace_check.sql_executes(sql="SELECT count(*) FROM customers").rows == ((300,),)
"""


def _project(pytester: pytest.Pytester) -> None:
    shutil.copytree(REPO / "fixtures" / "company_db", pytester.path / "fixtures" / "company_db")
    shutil.copytree(REPO / "fixtures" / "gateway", pytester.path / "gateway")
    golden = pytester.path / "golden_traces"
    (golden / "__snapshots__").mkdir(parents=True)
    for prefix, case in [("a_good", GOOD[0]), *(("z_good", c) for c in GOOD)]:
        shutil.copy(REPO / "golden_traces" / f"{case}.json", golden / f"{prefix}_{case}.json")
        shutil.copy(
            REPO / "golden_traces" / "__snapshots__" / f"{case}.json",
            golden / "__snapshots__" / f"{prefix}_{case}.json",
        )
    for entry in STATEMENTS:
        (golden / f"h_{entry['name']}.json").write_text(json.dumps(_golden(entry["sql"]), ensure_ascii=False))
    shutil.copy(REPO / "tests" / "services" / "hostile_sql.json", pytester.path / "hostile_sql.json")
    pytester.makeconftest(CONFTEST.replace("__PWNED__", repr(CORPUS["pwned_marker"])))
    pytester.makepyfile(test_hostile_checks=CHECKS)
    pytester.makeini(
        "[pytest]\n"
        "addopts = -p no:phoenix -p no:randomly -p no:cacheprovider\n"
        "pythonpath = .\n"
        "llmtrace_target = gateway.app:handle_user_request\n"
        f"llmtrace_case_timeout_s = {DEADLINE_S}\n"
        f"llmtrace_temp_file_limit_mb = {TEMP_LIMIT_MB}\n"
        'llmtrace_case_marks = h_*: llmtrace(checks="sql")\n'
    )


def _rows(url: str, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())
    finally:
        conn.close()


def _seeded(url: str) -> str:
    """The server's URL with a password in its user part and in its query: none may appear in any output."""
    user_part, _, rest = url.partition("@")  # postgresql://postgres:@/postgres?host=<socket dir>
    return f"{user_part.rpartition(':')[0]}:{SECRETS[0]}@{rest}&password={SECRETS[1]}&sslpassword={SECRETS[2]}"


@pytest.mark.slow
def test_hostile_sql_never_escapes_hangs_or_fills_the_disk_and_the_good_cases_still_pass(
    pytester: pytest.Pytester,
    llmtrace_postgres: PostgresDatabase,
    pg_admin_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    marker = Path(CORPUS["pwned_marker"])
    marker.unlink(missing_ok=True)
    _project(pytester)
    result = pytester.runpytest_subprocess(
        f"--llmtrace-postgres={_seeded(pg_admin_url)}",
        "--llmtrace-replay-speed=virtual",
        "--junitxml=junit.xml",
        "--llmtrace-report=report",
        "--log-file=run.log",
        "--log-file-level=DEBUG",
        "-rA",
        timeout=900,  # a hang guard only
    )
    records = [json.loads(line) for line in (pytester.path / "figures.jsonl").read_text().splitlines()]
    calls = {r["nodeid"]: r for r in records if "outcome" in r}
    after = {r["nodeid"]: r for r in records if "after" in r}
    baseline = after[next(n for n in after if "a_good_" in n)]["after"]

    hostile = [(f"golden_traces/h_{e['name']}.json::h_{e['name']}", e, "golden") for e in STATEMENTS]
    hostile += [(f"test_hostile_checks.py::test_hostile[{e['name']}]", e, "check") for e in STATEMENTS]
    wrong: list[str] = []
    for nodeid, entry, path in hostile:
        call = calls[nodeid]
        expected = entry.get(path, entry["reason"])
        if call["outcome"] != "failed" or not re.search(expected, call["message"]):
            wrong.append(f"{nodeid}: {call['outcome']}, expected /{expected}/ in:\n{call['message']}")
    assert wrong == [], "\n\n".join(wrong)

    limit = TEMP_LIMIT_MB * 1024 * 1024
    for nodeid, _, _ in hostile:
        state = after[nodeid]
        assert state["after"] == baseline, f"{nodeid} left the database changed: {state['after']} != {baseline}"
        # per backend at most the limit; the app's, the check's, and parallel workers (2 per query by default)
        assert state["temp_bytes"] <= 2 * 3 * limit, nodeid
        assert calls[nodeid]["seconds"] < DEADLINE_S + 30, nodeid  # a hang guard; the figure is printed below
        if "[timeout]" in calls[nodeid]["message"]:
            assert state["backends_left"] == 0, f"{nodeid}: the timed-out case left backends"
    assert not marker.exists()
    # a golden case stopped at its deadline still has its waterfall: the SQL bar that ran into the deadline
    cases = json.loads((pytester.path / "report" / "results.json").read_text())["cases"]
    stopped = [c for c in cases if c["mode"] == "replay" and any(k["name"] == "timeout" for k in c["checks"])]
    assert stopped
    for case in stopped:
        longest = max(b["duration_ms"] for b in case["waterfall"]["bars"] if b["kind"] == "SQL")
        assert longest >= DEADLINE_S * 1000 / 2, case["case_id"]

    good = [n for n in calls if "good" in n]
    assert len(good) == len(GOOD) + 2
    assert all(calls[n]["outcome"] == "passed" for n in good), {n: calls[n]["message"] for n in good}
    result.assert_outcomes(passed=len(good), failed=2 * len(STATEMENTS))

    session = json.loads((pytester.path / "session.json").read_text())
    reader_password = session["password"]
    # the run's role and clone are gone with it (a server given by URL keeps nothing of the run)
    leftovers = (
        "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = %s), "
        "(SELECT count(*) FROM pg_database WHERE datname = %s)"
    )
    assert _rows(llmtrace_postgres.url, leftovers, (session["role"], session["database"])) == [(0, 0)]
    outputs = {
        "stdout": result.stdout.str(),
        "stderr": result.stderr.str(),
        **{
            str(path.relative_to(pytester.path)): path.read_text(encoding="utf-8", errors="replace")
            for pattern in ("junit.xml", "report/*", "run.log", "golden_traces/**/*.json")
            for path in pytester.path.glob(pattern)
            if path.is_file()
        },
    }
    found = [
        (name, secret) for name, text in outputs.items() for secret in (*SECRETS, reader_password) if secret in text
    ]
    assert found == []
    assert {"junit.xml", "report/results.json", "run.log"} <= set(outputs)

    durations = [(calls[n]["seconds"], n) for n, _, _ in hostile]
    longest, longest_case = max(durations)
    peak = max(after[n]["temp_bytes"] for n, _, _ in hostile)
    with capsys.disabled():
        print(
            f"\nhostile SQL: {len(STATEMENTS)} statements tried, each through the reference app and through "
            f"sql_executes ({len(hostile)} cases), all failed with the expected reason; "
            f"longest hostile case {longest:.1f} s ({longest_case}; deadline {DEADLINE_S} s); "
            f"peak temporary bytes {peak} (temp_file_limit {limit}); "
            f"secrets found in {len(outputs)} outputs: {len(found)}"
        )
