"""Deterministic SQL cost: how much work a statement does, in numbers that machine load does not change.

A query that starts scanning a table still returns the right rows, and its wall time on a busy CI machine says
little: the golden slow query took 2.3 s idle and 6.2 s under load. Postgres can say how much work a statement is
without a clock:

- the planner's estimate, ``EXPLAIN (FORMAT JSON)``'s ``Total Cost`` of the top plan node: available for any
  statement Postgres can plan (a DELETE too, as it is not executed);
- the buffers executing it touched, ``EXPLAIN (ANALYZE, BUFFERS)``'s shared hit + read blocks of the top plan node
  (which includes its children's), for statements that may run: one run, and the same number every run on the
  same data and plan. Planning buffers are left out (they depend on what the session has cached).

Both run inside the read-only transaction that is rolled back (``execute.readonly_transaction``), with parallel
workers off so the plan, and with it the count, does not depend on how many workers happen to be free. The ``cost``
check compares the SQL now with the golden SQL on this database: buffers when both could run, else planner cost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Literal

from pytest_llmtrace.checks.execute import postgres_message, readonly_transaction
from pytest_llmtrace.checks.sql_text import split_statements
from pytest_llmtrace.options import number_text
from pytest_llmtrace.outcome import CheckResult, Measurement, Status

__all__ = ["FLOOR_BLOCKS", "SqlCost", "check_cost", "measure_cost"]

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
    """Plan ``sql`` (and with ``run``, execute it under EXPLAIN ANALYZE) read-only; SQL errors are outcomes."""
    import psycopg2  # loaded by the execution before this; imported here for its exception type

    statements = split_statements(sql)
    if len(statements) != 1:
        return SqlCost(None, None, "not exactly one statement")
    error = None
    if run:
        try:
            plan = _explain(dsn, statements[0], timeout_ms, analyze=True)
            return SqlCost(float(plan["Total Cost"]), _blocks(plan))
        except psycopg2.Error as exc:  # a timeout, or a write refused: the plan alone is still worth having
            error = postgres_message(exc)
    try:
        plan = _explain(dsn, statements[0], timeout_ms, analyze=False)
    except psycopg2.Error as exc:
        return SqlCost(None, None, postgres_message(exc))
    return SqlCost(float(plan["Total Cost"]), None, error)


def _explain(dsn: str, statement: str, timeout_ms: int, *, analyze: bool) -> dict[str, Any]:
    options = "ANALYZE, BUFFERS, TIMING OFF, " if analyze else ""
    with readonly_transaction(dsn, timeout_ms, ("SET LOCAL max_parallel_workers_per_gather = 0",)) as cur:
        cur.execute(f"EXPLAIN ({options}FORMAT JSON) {statement}")
        row = cur.fetchone()
    if row is None:
        raise AssertionError("EXPLAIN always returns its plan")
    document = json.loads(row[0]) if isinstance(row[0], str) else row[0]  # psycopg2 parses json; a changed one may not
    plan: dict[str, Any] = document[0]["Plan"]
    return plan


def _blocks(plan: dict[str, Any]) -> int:
    return int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0))


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
