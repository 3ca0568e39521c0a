"""Deterministic SQL cost: how much work a statement does, in numbers that machine load does not change.

A query that starts scanning a table still returns the right rows, and its wall time on a busy CI machine says
little: the golden slow query took 2.3 s idle and 6.2 s under load. Postgres can say how much work a statement is
without a clock:

- the planner's estimate, ``EXPLAIN (FORMAT JSON)``'s ``Total Cost`` of the top plan node: available for any
  statement Postgres can plan (a DELETE too, as it is not executed);
- the buffers executing it touched, ``EXPLAIN (ANALYZE, BUFFERS)``'s shared hit + read blocks of the top plan node
  (which includes its children's), for statements that may run: one run, and the same number every run on the
  same data and plan. Planning buffers are left out (they depend on what the session has cached).

Both are read inside the read-only transaction that is rolled back (``execute.explain``), for the SQL now in the
same transaction as the sql check's execution. The ``cost`` check compares the SQL now with the golden SQL on this
database: buffers when both could run, else planner cost. When the SQL now is the golden SQL, nothing is measured:
the same statement on the same database does the same work.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from pytest_llmtrace.checks.execute import SAVEPOINT, statement_cost
from pytest_llmtrace.checks.options import number_text
from pytest_llmtrace.checks.outcome import CheckResult, Measurement, SqlOutcome, Status
from pytest_llmtrace.checks.reader_connections import ConnectFailed, readonly_transaction
from pytest_llmtrace.checks.sql_text import split_statements
from pytest_llmtrace.core.errors import first_line

# Growth by fewer blocks than this (80 kB) is never a regression, whatever the ratio: a lookup going from 2 to 6
# blocks (an index page more) is not what the check is for.
FLOOR_BLOCKS = 10


@dataclass(frozen=True)
class SqlCost:
    """What one statement costs: ``plan_cost`` (planner units) and ``buffers`` (shared hit + read blocks when run).

    ``None`` where it could not be had; ``error`` says why (the plan failed, or running it failed and only the plan
    is known).
    """

    plan_cost: float | None
    buffers: int | None
    error: str | None = None


def measure_cost(dsn: str, sql: str, *, timeout_ms: int, run: bool) -> SqlCost:
    """Plan ``sql`` (and with ``run``, execute it under EXPLAIN ANALYZE) read-only; SQL errors are outcomes.

    For a statement the check executes anyway, ``execute_readonly(cost=True)`` measures this in its own
    transaction; this is for the golden SQL when it differs from the SQL now.
    """
    if not split_statements(sql):
        return SqlCost(None, None, "no SQL statement")
    # The whole text goes to EXPLAIN over the extended protocol: Postgres refuses it if it holds several statements.
    import psycopg  # loaded already by the execution this follows; here for its exception type

    try:
        with readonly_transaction(dsn, timeout_ms, (f"SAVEPOINT {SAVEPOINT}",)) as cur:
            return SqlCost(*statement_cost(cur, sql, run=run))
    except (ConnectFailed, psycopg.Error) as exc:  # the session ended under it (the case's deadline): no cost
        return SqlCost(None, None, f"no connection to measure it: {first_line(exc)}")


def cost_of(result: SqlOutcome) -> SqlCost:
    """The cost ``execute_readonly(cost=True)`` measured with the statement."""
    return SqlCost(result.plan_cost, result.buffers, result.error)


def check_cost(now: SqlCost | None, golden: SqlCost | None, *, tolerance: float) -> CheckResult:
    """The ``cost`` check: the SQL now must not do more than ``tolerance`` times the golden SQL's work.

    Buffers decide when both statements could run; otherwise the planner's cost does. Both numbers are kept.
    """
    if now is None or golden is None:
        return CheckResult("cost", "skipped", "no golden SQL and SQL now to compare")
    both_ran = now.buffers is not None and golden.buffers is not None
    measurements: list[Measurement] = []
    if now.buffers is not None and golden.buffers is not None:
        measurements.append(_relative("hit+read", "blocks", golden.buffers, now.buffers, tolerance, FLOOR_BLOCKS))
    if now.plan_cost is not None and golden.plan_cost is not None:
        planner = _relative("planner", "cost", golden.plan_cost, now.plan_cost, tolerance, 0.0)
        if both_ran:  # informative: the buffers really read decide
            planner = replace(planner, status="skipped", reason="buffers decide")
        measurements.append(planner)
    failed = [m for m in measurements if m.status == "failed"]
    if failed:
        labels = ", ".join(m.label for m in failed)
        return CheckResult("cost", "failed", f"the SQL now does more work: {labels}", tuple(measurements))
    if any(m.status == "passed" for m in measurements):
        return CheckResult("cost", "passed", "", tuple(measurements))
    why = now.error or golden.error or "Postgres gave no plan"
    return CheckResult("cost", "skipped", f"no cost to compare: {why}", tuple(measurements))


def check_unchanged_cost() -> CheckResult:
    """The ``cost`` check when the SQL now is the golden SQL: both are measured on this database, so the numbers are
    the same by construction and the check cannot fail. Measuring would only run the statement a third time (under
    EXPLAIN ANALYZE): in replay, where the SQL is the recorded SQL, that was 1.3-1.6 ms of every case."""
    return CheckResult(
        "cost", "passed", "the SQL now is the golden SQL: the same work on the same database (not measured)"
    )


def _relative(
    metric: str, unit: Literal["cost", "blocks"], golden: float, now: float, tolerance: float, floor: float
) -> Measurement:
    limit = max(golden * tolerance, golden + floor)
    if golden * tolerance >= golden + floor:
        rule = f"<= {number_text(tolerance)}x golden ({number_text(round(limit, 1))})"
    else:
        rule = f"<= golden + {number_text(floor)} ({number_text(round(limit, 1))})"
    status: Status = "failed" if now > limit else "passed"
    return Measurement(metric, unit, now, golden, "relative", limit, rule, status)
