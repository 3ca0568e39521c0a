"""Model-written SQL against real Postgres: reads work, writes and runaway queries are stopped, errors are reported."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg2
import pytest

from pytest_llmtrace.checks import compare_results, execute_readonly, runner
from pytest_llmtrace.checks.cost import check_cost, measure_cost
from pytest_llmtrace.checks.execute import _escaped, _Session, check_sql, execute_untrusted
from pytest_llmtrace.checks.options import CheckOptions
from pytest_llmtrace.checks.outcome import SqlOutcome
from pytest_llmtrace.checks.reader_connections import MAX_IDLE, READERS, ReaderConnections, readonly_transaction
from pytest_llmtrace.checks.runner import CaseInput, run_checks
from pytest_llmtrace.services.pg_databases import clone_database, drop_database
from pytest_llmtrace.services.pg_lockdown import open_clone
from pytest_llmtrace.services.pg_roles import RoleLimits, SessionRoles
from pytest_llmtrace.services.postgres import PostgresDatabase
from pytest_llmtrace.trace.model import Span, Trace
from pytest_llmtrace.trace.span import Status


@pytest.fixture(scope="module")
def server_url(pg_admin_url: str) -> str:
    """The session's Postgres server (its template holds company_db), as its admin: no server of this module's own."""
    return pg_admin_url


@pytest.fixture(scope="module")
def roles(server_url: str) -> Iterator[SessionRoles]:
    roles = SessionRoles.create(server_url, RoleLimits())
    yield roles
    roles.drop()


@pytest.fixture
def clone(server_url: str, llmtrace_postgres: PostgresDatabase) -> Iterator[tuple[str, str]]:
    """A fresh clone per test, so a statement that did get through could not hide behind an earlier test's damage:
    (name, DSN as the admin)."""
    name = f"checks_{uuid.uuid4().hex[:10]}"
    url = clone_database(server_url, llmtrace_postgres.template, name)
    yield name, url
    READERS.close()
    drop_database(server_url, name)


@pytest.fixture
def owner_url(clone: tuple[str, str]) -> str:
    return clone[1]


@pytest.fixture
def reader(server_url: str, clone: tuple[str, str], roles: SessionRoles) -> str:
    """The clone as a session's read-only role (random name and password, like every session's)."""
    name, url = clone
    open_clone(server_url, url, name, roles)
    return roles.reader.dsn(server_url, name)


def _count(url: str, table: str) -> int:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")
            row = cur.fetchone()
            assert row is not None
            return int(row[0])
    finally:
        conn.close()


def test_select_returns_normalized_json_ready_rows(reader: str) -> None:
    outcome = execute_readonly(
        reader,
        "SELECT sku, list_price, active, TIMESTAMPTZ '2024-03-01 12:00:00+02' AS at FROM products "
        "WHERE id <= 2 ORDER BY id;",
    )
    assert outcome.ok, outcome.error
    assert outcome.columns == ("sku", "list_price", "active", "at")
    assert outcome.rows == (
        ("PLT-CORE", 1200.0, True, "2024-03-01T10:00:00+00:00"),
        ("PLT-PRO", 2400.0, True, "2024-03-01T10:00:00+00:00"),
    )
    assert type(outcome.rows[0][1]) is float  # numeric arrives as Decimal
    assert (outcome.row_count, outcome.truncated, outcome.error, outcome.sqlstate) == (2, False, None, None)
    assert outcome.elapsed_ms > 0
    assert json.loads(json.dumps(outcome.rows)) == [list(r) for r in outcome.rows]


def test_the_transaction_is_read_only_even_for_the_owner(owner_url: str) -> None:
    outcome = execute_readonly(owner_url, "SHOW transaction_read_only")
    assert outcome.rows == (("on",),)


@pytest.mark.parametrize(
    ("sql", "table"),
    [
        ("DELETE FROM order_items WHERE discount > 0;", "order_items"),
        ("UPDATE orders SET amount = 0", "orders"),
        ("INSERT INTO products (id, sku, name, category, list_price) VALUES (99, 'X', 'X', 'Add-on', 1)", "products"),
        ("WITH gone AS (DELETE FROM customers RETURNING id) SELECT count(*) FROM gone", "customers"),
        ("DROP TABLE order_items", "order_items"),
    ],
)
def test_writes_fail_with_25006_and_change_nothing(owner_url: str, sql: str, table: str) -> None:
    before = _count(owner_url, table)
    assert before > 0
    # As the owner, so the read-only transaction alone (not missing grants) is what stops the write.
    outcome = execute_readonly(owner_url, sql)
    assert not outcome.ok
    assert outcome.sqlstate == "25006", outcome.error
    assert outcome.error is not None
    assert "read-only transaction" in outcome.error
    assert _count(owner_url, table) == before


def test_the_reader_role_cannot_write_either(owner_url: str, reader: str) -> None:
    before = _count(owner_url, "order_items")
    outcome = execute_readonly(reader, "DELETE FROM order_items")
    assert outcome.sqlstate == "25006"
    assert _count(owner_url, "order_items") == before


@pytest.mark.parametrize(
    ("sql", "count"),
    [
        ("SELECT 1; COMMIT; DELETE FROM order_items; DELETE FROM orders", "4 statements"),
        # Lexer-confusing texts: to Postgres a name may hold any non-ASCII character and a $ after the first, so
        # "€$$" is a name, not the start of a dollar-quoted string hiding the rest (a lexer that thought so counted
        # one statement). Postgres refuses the list whatever a lexer counts.
        ("SELECT 1 AS €$$; COMMIT; DELETE FROM orders; SELECT 1 AS b€$$", "4 statements"),
        ("SELECT 1 AS a\u00a0; COMMIT; DELETE FROM orders", "3 statements"),
        ("DECLARE c CURSOR FOR SELECT 1; COMMIT; DELETE FROM orders", "3 statements"),
    ],
)
def test_several_statements_are_refused_by_postgres_before_anything_runs(owner_url: str, sql: str, count: str) -> None:
    before = _count(owner_url, "orders")
    outcome = execute_readonly(owner_url, sql)
    assert not outcome.ok
    assert outcome.sqlstate == "42601"
    assert outcome.error == (
        f"{count}; expected exactly one (Postgres: cannot insert multiple commands into a prepared statement)"
    )
    assert _count(owner_url, "orders") == before


@pytest.mark.parametrize("sql", ["COMMIT", "ROLLBACK", "END", "PREPARE TRANSACTION 'x'", "ABORT"])
def test_a_statement_that_ends_the_checks_transaction_fails(owner_url: str, sql: str) -> None:
    outcome = execute_readonly(owner_url, sql)
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith("the statement ended the check's read-only transaction")
    assert execute_readonly(owner_url, "SHOW transaction_read_only").rows == (("on",),)


def test_copy_is_refused_and_the_next_statement_runs(reader: str) -> None:
    outcome = execute_readonly(reader, "COPY (SELECT g FROM generate_series(1, 1000000) g) TO STDOUT")
    assert (outcome.ok, outcome.sqlstate) == (False, None)
    assert outcome.error == "COPY is refused: the check runs queries, not data transfers"
    assert execute_readonly(reader, "SELECT 1").rows == ((1,),)


def test_a_slow_query_is_cancelled_with_57014(reader: str) -> None:
    outcome = execute_readonly(reader, "SELECT pg_sleep(5)", timeout_ms=200)
    assert not outcome.ok
    assert outcome.sqlstate == "57014"
    assert outcome.error == "canceling statement due to statement timeout"
    assert 150 < outcome.elapsed_ms < 3000


@pytest.mark.parametrize(
    ("sql", "sqlstate", "message"),
    [
        (
            "SELECT o.id FROM orders o ORDER BY o.ordered_at DESC LIMT 10;",
            "42601",
            'syntax error at or near "LIMT"',
        ),
        ("SELECT c.segment FROM customers c", "42703", "column c.segment does not exist"),
        ("SELECT count(*) FROM invoices", "42P01", 'relation "invoices" does not exist'),
        ("SELEC 1", "42601", 'syntax error at or near "SELEC"'),
    ],
)
def test_errors_carry_sqlstate_and_first_message_line(reader: str, sql: str, sqlstate: str, message: str) -> None:
    outcome = execute_readonly(reader, sql)
    assert (outcome.ok, outcome.sqlstate, outcome.error) == (False, sqlstate, message)
    assert outcome.rows == ()


def test_a_result_over_the_row_or_byte_limit_fails_and_says_so(reader: str) -> None:
    outcome = execute_readonly(reader, "SELECT id FROM customers ORDER BY id", max_rows=5)
    assert (outcome.ok, outcome.truncated, outcome.row_count, outcome.rows) == (False, True, 5, ())
    assert outcome.error == "the result has more than 5 rows (llmtrace_max_rows); fetching stopped there"
    exact = execute_readonly(reader, "SELECT id FROM customers WHERE id <= 5", max_rows=5)
    assert (exact.ok, exact.row_count, exact.truncated) == (True, 5, False)
    # rows of 100 bytes, streamed (a set-returning function in the select list): fetched in batches and stopped
    # past 20 kB, long before the 10^9 rows are made
    big = execute_readonly(reader, "SELECT repeat('x', 100), generate_series(1, 1000000000)", max_bytes=20_000)
    assert (big.ok, big.truncated) == (False, True)
    assert big.error == "the result is larger than 20000 bytes (llmtrace_max_result_bytes); fetching stopped there"
    assert big.row_count < 1000
    check = check_sql("SELECT ...", big, golden_sql=None, against_golden=False)
    assert check.reason == f"the SQL's result is too large: {big.error}"


def test_a_cursor_the_check_cannot_close_refuses_the_statement(reader: str) -> None:
    """The check closes the statement's cursor in the round trip that looks at its transaction: a cursor gone by
    then (only the statement could have closed it) means the transaction is no longer the check's own."""
    with readonly_transaction(reader, 5000) as cur:
        cur.execute("DECLARE llmtrace_readonly NO SCROLL CURSOR FOR SELECT 1")
        session = _Session(cur.connection)
        assert _escaped(session, close_cursor=True) is None
        assert _escaped(session) is None  # closed: the transaction is still ours
        found = _escaped(session, close_cursor=True)
    assert found == (
        'the statement interfered with the check\'s transaction (cursor "llmtrace_readonly" does not exist); refused'
    )


def test_sql_that_cannot_be_encoded_fails_its_case_instead_of_raising(reader: str) -> None:
    """A lone surrogate (a trace's JSON may hold one) cannot be sent to any server: the statement fails saying so,
    and the next one runs."""
    outcome = execute_untrusted(reader, "SELECT '\ud800' AS broken", 5000)
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error == (
        "the check does not run this statement: the statement holds text the connection's encoding (utf-8) cannot "
        "carry: surrogates not allowed"
    )
    assert execute_untrusted(reader, "SELECT 1 AS fine", 5000).rows == ((1,),)


def test_statements_that_are_not_queries_still_run(reader: str) -> None:
    outcome = execute_readonly(reader, "EXPLAIN SELECT * FROM customers")
    assert outcome.ok, outcome.error
    assert outcome.columns == ("QUERY PLAN",)
    assert "customers" in outcome.rows[0][0]


def test_golden_and_rewritten_sql_compare_equal_under_bag(reader: str) -> None:
    golden = execute_readonly(reader, "SELECT tier, count(*) AS n FROM customers GROUP BY tier ORDER BY n DESC")
    rewritten = execute_readonly(reader, "SELECT count(id)::numeric, tier FROM customers GROUP BY 2")
    wrong = execute_readonly(reader, "SELECT tier, count(*) FROM customers WHERE region = 'NA' GROUP BY tier")
    assert golden.ok
    assert rewritten.ok
    assert wrong.ok
    assert compare_results(golden.rows, rewritten.rows, "bag") is None
    diff = compare_results(golden.rows, wrong.rows, "bag")
    assert diff is not None
    assert diff.summary.startswith("golden 3 rows, now 3 rows; 3 missing, 3 unexpected")


# -- reused connections -----------------------------------------------------------------------------------------------


def _pid(dsn: str) -> object:
    outcome = execute_readonly(dsn, "SELECT pg_backend_pid()")
    assert outcome.ok, outcome.error
    return outcome.rows[0][0]


def test_the_connection_is_reused_until_closed(reader: str) -> None:
    first = _pid(reader)
    assert _pid(reader) == first
    READERS.close(reader)
    assert _pid(reader) != first


@pytest.mark.parametrize(
    ("leave_behind", "look"),
    [
        ("SELECT pg_advisory_lock(42)", "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"),
        ("PREPARE left_behind AS SELECT 1", "SELECT count(*) FROM pg_prepared_statements"),
        ("SELECT set_config('work_mem', '77MB', false)", "SELECT (current_setting('work_mem') = '77MB')::int"),
        ("DECLARE held CURSOR WITH HOLD FOR SELECT 1", "SELECT count(*) FROM pg_cursors WHERE name = 'held'"),
    ],
)
def test_nothing_a_statement_leaves_in_its_session_reaches_the_next(reader: str, leave_behind: str, look: str) -> None:
    pid = _pid(reader)
    execute_readonly(reader, leave_behind)
    after = execute_readonly(reader, look)

    assert after.ok, after.error
    assert after.rows == ((0,),)
    assert _pid(reader) == pid  # the same session, reset, not a new one


def test_a_cancelled_statement_leaves_a_reusable_connection(reader: str) -> None:
    pid = _pid(reader)
    cancelled = execute_readonly(reader, "SELECT pg_sleep(5)", timeout_ms=50)
    assert cancelled.sqlstate == "57014"
    assert execute_readonly(reader, "SELECT 1").rows == ((1,),)
    assert _pid(reader) == pid


# -- cost -------------------------------------------------------------------------------------------------------------


def _relpages(url: str, table: str) -> int:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::int", (table,))
            row = cur.fetchone()
            assert row is not None
            return int(row[0])
    finally:
        conn.close()


def test_a_full_scan_reads_every_block_of_its_table_every_time(reader: str, owner_url: str) -> None:
    costs = [measure_cost(reader, "SELECT sum(amount) FROM orders", timeout_ms=5000, run=True) for _ in range(3)]

    assert [c.buffers for c in costs] == [_relpages(owner_url, "orders")] * 3
    assert len({c.plan_cost for c in costs}) == 1
    assert costs[0].plan_cost is not None
    assert costs[0].plan_cost > 0
    assert costs[0].error is None


def test_a_lookup_that_lost_its_index_fails_the_cost_check_with_both_numbers(reader: str, owner_url: str) -> None:
    golden = measure_cost(reader, "SELECT * FROM order_items WHERE id = 5", timeout_ms=5000, run=True)
    now = measure_cost(reader, "SELECT * FROM order_items WHERE id + 0 = 5", timeout_ms=5000, run=True)
    check = check_cost(now, golden, tolerance=2.0)

    assert golden.buffers is not None
    assert golden.buffers <= 4  # the primary key's root, a leaf, the heap page
    assert now.buffers == _relpages(owner_url, "order_items")
    assert check.status == "failed"
    blocks, planner = check.measurements
    assert (blocks.label, blocks.golden, blocks.now, blocks.status) == (
        "hit+read blocks",
        golden.buffers,
        now.buffers,
        "failed",
    )
    assert (planner.label, planner.golden, planner.now) == ("planner cost", golden.plan_cost, now.plan_cost)
    assert planner.status == "skipped"  # the buffers decide; the planner's estimate is kept beside them


def test_a_statement_that_may_not_run_is_costed_by_its_plan(owner_url: str) -> None:
    before = _count(owner_url, "order_items")
    cost = measure_cost(owner_url, "DELETE FROM order_items WHERE discount > 0", timeout_ms=5000, run=True)

    assert cost.buffers is None
    assert cost.plan_cost is not None
    assert cost.plan_cost > 0
    assert cost.error == "cannot execute DELETE in a read-only transaction"
    assert _count(owner_url, "order_items") == before


def test_the_cost_check_measures_only_sql_that_differs_from_the_golden_sql(
    reader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both statements are measured on this database, so the golden SQL itself would give the same numbers twice:
    it passes unmeasured (replay's usual case). A changed statement is still run under EXPLAIN ANALYZE, both of them."""
    asked: list[bool] = []
    real = execute_untrusted

    def recorded(dsn: str, sql: str, timeout_ms: int, **kwargs: Any) -> SqlOutcome:
        asked.append(kwargs["cost"])
        return real(dsn, sql, timeout_ms, **kwargs)

    monkeypatch.setattr(runner, "execute_untrusted", recorded)
    options = CheckOptions(checks=frozenset({"sql", "cost"}))
    lookup = "SELECT * FROM order_items WHERE id = 5"

    def cost_check(golden_sql: str, sql_now: str) -> Any:
        golden, now = _sql_trace(golden_sql, 5), _sql_trace(f"  {sql_now}\n", 5)
        outcome = run_checks(CaseInput(now, options=options, case_id="c", mode="live", golden=golden, database=reader))
        return outcome.check("cost")

    unchanged = cost_check(lookup, lookup)
    assert asked == [False]
    assert unchanged is not None
    assert (unchanged.status, unchanged.measurements) == ("passed", ())
    assert "golden SQL" in unchanged.reason

    changed = cost_check(lookup, "SELECT * FROM order_items WHERE id + 0 = 5")  # the index no longer used
    assert asked == [False, True]
    assert changed is not None
    assert changed.status == "failed"
    assert [m.label for m in changed.measurements] == ["hit+read blocks", "planner cost"]


# -- re-timing a SQL latency that failed ------------------------------------------------------------------------------


def _sql_trace(sql: str, sql_ms: float) -> Trace:
    ms = 1_000_000
    return Trace(
        [
            Span("t" * 32, "r" * 16, None, "request", 0, int((sql_ms + 2) * ms), {"openinference.span.kind": "CHAIN"}),
            Span("t" * 32, "s" * 16, "r" * 16, "sql", 1 * ms, int((1 + sql_ms) * ms), {"db.query.text": sql}),
        ]
    )


def test_a_sql_span_slowed_by_the_machine_is_re_timed_and_passes(reader: str) -> None:
    """The app's span says 400 ms (a busy machine; within twice the 205 ms limit); the statement, timed again, is
    fast: not a regression."""
    golden, now = _sql_trace("SELECT 1", 5), _sql_trace("SELECT 1", 400)
    outcome = run_checks(
        CaseInput(
            now,
            options=CheckOptions(checks=frozenset({"latency"})),
            case_id="c",
            mode="live",
            golden=golden,
            database=reader,
        )
    )
    check = outcome.check("latency")

    assert check is not None
    assert check.status == "passed", check.reason
    (sql,) = [m for m in check.measurements if m.label == "SQL ms" and m.basis == "relative"]
    assert len(sql.samples) == 4
    assert sql.samples[0] == 400.0
    assert sql.now == min(sql.samples) < 400.0
    assert outcome.durations_ms["total"] < 400.0  # the chain around it follows the fastest timing


def test_a_statement_that_is_really_slower_still_fails_after_re_timing(reader: str) -> None:
    """Golden 250 ms, limit 450 ms (1.5x), now 700 ms: within twice the limit, so timed again; pg_sleep(0.5) stays
    over the limit every time."""
    golden, now = _sql_trace("SELECT pg_sleep(0.5)", 250), _sql_trace("SELECT pg_sleep(0.5)", 700)
    options = CheckOptions(checks=frozenset({"latency"}), latency_retries=2, latency_budgets_ms={})
    outcome = run_checks(CaseInput(now, options=options, case_id="c", mode="live", golden=golden, database=reader))
    check = outcome.check("latency")

    assert check is not None
    assert check.status == "failed"
    (sql,) = [m for m in check.measurements if m.label == "SQL ms"]
    assert len(sql.samples) == 3
    assert sql.now >= 500.0  # pg_sleep(0.5) never returns sooner, however idle the machine
    assert sql.finding in ("regressed", "unstable")


def _counting_executions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The statement timeout of every execution ``run_checks`` makes (each still runs, on the real server)."""
    timeouts: list[int] = []
    real = execute_untrusted

    def counted(dsn: str, sql: str, timeout_ms: int, **kwargs: Any) -> SqlOutcome:
        timeouts.append(timeout_ms)
        return real(dsn, sql, timeout_ms, **kwargs)

    monkeypatch.setattr(runner, "execute_untrusted", counted)
    return timeouts


def test_a_statement_the_timeout_cancelled_is_judged_at_once(reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The golden trace ran it in 5 ms; now it runs past the 300 ms statement timeout: one execution, not 1 + the
    retries (each would cost the whole timeout again)."""
    timeouts = _counting_executions(monkeypatch)
    golden, now = _sql_trace("SELECT pg_sleep(30)", 5), _sql_trace("SELECT pg_sleep(30)", 400)
    options = CheckOptions(checks=frozenset({"sql", "latency"}), sql_timeout_ms=300, latency_retries=3)
    outcome = run_checks(CaseInput(now, options=options, case_id="c", mode="live", golden=golden, database=reader))

    assert timeouts == [300]
    sql_check = outcome.check("sql")
    assert sql_check is not None
    assert sql_check.status == "failed"
    assert "statement timeout" in sql_check.reason


def test_a_sql_time_past_twice_its_limit_is_judged_at_once(reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The span says 600 s against a 205 ms limit: far past a busy machine's noise, so the statement is executed
    once (for the sql check) and not timed again."""
    timeouts = _counting_executions(monkeypatch)
    golden, now = _sql_trace("SELECT 1", 5), _sql_trace("SELECT 1", 600_000)
    options = CheckOptions(checks=frozenset({"sql", "latency"}), latency_retries=3)
    outcome = run_checks(CaseInput(now, options=options, case_id="c", mode="live", golden=golden, database=reader))
    check = outcome.check("latency")

    assert len(timeouts) == 1
    assert check is not None
    assert check.status == "failed"
    (sql,) = [m for m in check.measurements if m.label == "SQL ms" and m.basis == "relative"]
    assert (sql.now, sql.samples) == (600_000.0, ())


def test_re_runs_are_cut_off_at_twice_the_limit(reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Limit 205 ms (golden 5 ms + the 200 ms floor), span 300 ms: timed again under a 410 ms cut-off, and
    pg_sleep(0.5) never finishes within it, so the first re-run cut off ends the re-runs."""
    timeouts = _counting_executions(monkeypatch)
    golden, now = _sql_trace("SELECT pg_sleep(0.5)", 5), _sql_trace("SELECT pg_sleep(0.5)", 300)
    options = CheckOptions(checks=frozenset({"latency"}), latency_retries=3, latency_budgets_ms={})
    outcome = run_checks(CaseInput(now, options=options, case_id="c", mode="live", golden=golden, database=reader))

    assert timeouts == [410]  # one re-run (the latency check alone executes nothing else), cut off
    check = outcome.check("latency")
    assert check is not None
    assert check.status == "failed"


def test_a_cached_connection_the_server_closed_is_replaced(reader: str, owner_url: str) -> None:
    pid = _pid(reader)
    conn = psycopg2.connect(owner_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        conn.close()

    outcome = execute_readonly(reader, "SELECT count(*) FROM products")
    assert outcome.ok, outcome.error
    assert _pid(reader) != pid


def test_the_check_measures_the_cost_of_what_it_executes_in_the_same_transaction(reader: str, owner_url: str) -> None:
    executed = execute_readonly(reader, "SELECT sum(amount) FROM orders", cost=True)
    alone = measure_cost(reader, "SELECT sum(amount) FROM orders", timeout_ms=5000, run=True)
    refused = execute_readonly(owner_url, "DELETE FROM order_items WHERE discount > 0", cost=True)

    assert executed.ok
    assert (executed.plan_cost, executed.buffers) == (alone.plan_cost, alone.buffers)
    assert executed.buffers == _relpages(owner_url, "orders")
    assert (refused.sqlstate, refused.buffers) == ("25006", None)
    assert refused.plan_cost is not None  # planned, not run
    assert execute_readonly(reader, "SELECT 1").plan_cost is None  # measured only when asked for


# -- what the app's own run already showed, and what is not run twice ------------------------------------------------


def _timed_out_trace(sql: str, sql_ms: float, message: str) -> Trace:
    ms = 1_000_000
    root = Span("t" * 32, "r" * 16, None, "request", 0, int((sql_ms + 2) * ms), {"openinference.span.kind": "CHAIN"})
    span = Span(
        "t" * 32,
        "s" * 16,
        "r" * 16,
        "sql",
        1 * ms,
        int((1 + sql_ms) * ms),
        {"db.query.text": sql},
        status=Status.ERROR,
        status_message=message,
    )
    return Trace([root, span])


def test_a_statement_the_statement_timeout_cancelled_in_the_app_is_not_run_again(
    reader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app's own run on the sandbox ran past the check's whole timeout and was cancelled by it: the check takes
    that outcome instead of waiting the timeout out a second time."""
    executed: list[str] = []
    real = execute_untrusted

    def counting(dsn: str, sql: str, *args: Any, **kwargs: Any) -> SqlOutcome:
        executed.append(sql)
        return real(dsn, sql, *args, **kwargs)

    monkeypatch.setattr(runner, "execute_untrusted", counting)
    options = CheckOptions(checks=frozenset({"sql"}), sql_timeout_ms=300)
    cancelled = "canceling statement due to statement timeout"
    outcome = run_checks(
        CaseInput(
            _timed_out_trace("SELECT 1", 310, cancelled), options=options, case_id="c", mode="live", database=reader
        )
    )
    assert executed == []
    assert outcome.result is not None
    assert (outcome.result.ok, outcome.result.sqlstate) == (False, "57014")
    assert "not run again" in (outcome.result.error or "")

    # shorter than the check's own timeout (the app set a lower one itself), or another error: run as usual
    for trace in (
        _timed_out_trace("SELECT 1", 100, cancelled),
        _timed_out_trace("SELECT 1", 310, "canceling statement due to user request"),
    ):
        outcome = run_checks(CaseInput(trace, options=options, case_id="c", mode="live", database=reader))
        assert outcome.result is not None
        assert outcome.result.ok
    assert executed == ["SELECT 1", "SELECT 1"]


def test_a_slow_statement_is_costed_by_its_plan_not_run_a_second_time(reader: str) -> None:
    fast = execute_readonly(reader, "SELECT sum(amount) FROM orders", cost=True)
    slow = execute_readonly(reader, "SELECT pg_sleep(1.1), count(*) FROM orders", cost=True, timeout_ms=5000)

    assert fast.ok
    assert fast.buffers is not None
    assert slow.ok
    assert slow.elapsed_ms >= 1000
    assert slow.plan_cost is not None
    assert slow.buffers is None  # EXPLAIN ANALYZE would have slept another 1.1 s


def test_idle_connections_are_capped_and_the_least_recently_used_go_first(reader: str, server_url: str) -> None:
    """A semantic suite's clones each leave connections behind: kept without a cap they used up a shared server's
    connection slots. Past ``MAX_IDLE`` the pool closes the least recently used, and keeps reusing the recent ones."""
    pool = ReaderConnections()
    dsns = [f"{reader}&fallback_application_name=cap{i}" for i in range(MAX_IDLE + 4)]  # a key each, one database
    pids = {}
    for dsn in dsns:
        with pool.connection(dsn) as conn:
            pids[dsn] = conn.info.backend_pid
    try:
        assert pool.idle_count() == MAX_IDLE
        role = urlsplit(reader).username
        admin = psycopg2.connect(server_url)
        try:
            admin.autocommit = True  # each count a new snapshot of pg_stat_activity
            until = time.monotonic() + 30  # a closed session's backend leaves the view a moment after the close
            with admin.cursor() as cur:
                while True:
                    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,))
                    open_now = cur.fetchone()[0]  # type: ignore[index]  # count(*) always gives a row
                    if open_now <= MAX_IDLE or time.monotonic() > until:
                        break
                    time.sleep(0.05)
            assert open_now == MAX_IDLE  # the evicted ones are closed, not only forgotten
        finally:
            admin.close()
        with pool.connection(dsns[-1]) as conn:  # used last: still there
            assert conn.info.backend_pid == pids[dsns[-1]]
        with pool.connection(dsns[0]) as conn:  # used first: evicted, so a new session
            assert conn.info.backend_pid != pids[dsns[0]]
    finally:
        pool.close()
