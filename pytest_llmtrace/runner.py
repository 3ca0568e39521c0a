"""The one runner of checks: golden cases and the ``llmtrace_check`` helpers both end here.

Given what the app did now (and, for a golden case, what it did then), ``run_checks`` runs the selected checks and
returns a ``CaseOutcome``. It fails nothing itself: the callers at the pytest edge turn a failed outcome into a test
failure with ``checks.report``'s text, and keep the outcome for reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING

from pytest_llmtrace.checks.budgets import check_latency, check_tokens, latencies_ms, tokens_of
from pytest_llmtrace.checks.execute import check_sql, execute_untrusted
from pytest_llmtrace.checks.results import check_results
from pytest_llmtrace.checks.sql_text import strip_code_fences
from pytest_llmtrace.options import CHECKS, CheckOptions
from pytest_llmtrace.outcome import CaseOutcome, CheckResult, Mode, ReplayMiss, SqlOutcome, Timings
from pytest_llmtrace.snapshot import OutcomeSnapshot, snapshot_data

if TYPE_CHECKING:
    from pytest_llmtrace.trace.model import Trace

__all__ = ["run_checks", "sql_of"]

_NEEDS_DATABASE = frozenset({"sql", "results", "snapshot"})


def sql_of(trace: Trace) -> str | None:
    """The SQL the app ran; without a SQL span, the model's answer with code fences stripped."""
    if trace.sql_statements:
        return trace.sql_statements[-1].text
    calls = trace.llm_calls
    if calls:
        return strip_code_fences(calls[-1].output_text) or None
    return None


def run_checks(
    now: Trace,
    *,
    options: CheckOptions,
    case_id: str,
    mode: Mode,
    golden: Trace | None = None,
    file: str | None = None,
    checks: Collection[str] | None = None,
    database: str | None = None,
    sql: str | None = None,
    snapshot: OutcomeSnapshot | None = None,
    update_snapshots: bool = False,
    app_error: str | None = None,
    replay_misses: Sequence[ReplayMiss] = (),
    app_ms: float | None = None,
    started: float | None = None,
    replayed_ms: Mapping[str, float] | None = None,
) -> CaseOutcome:
    """Run ``checks`` (default: ``options.checks``) on ``now`` and gather the verdicts.

    ``database`` is the read-only DSN the SQL is re-executed on (needed by the sql, results and snapshot checks);
    ``sql`` replaces the statement taken from ``now``. Without ``golden`` only absolute limits apply, and a missing
    statement fails the sql check. ``snapshot`` holds the stored outcome: the results check compares rows with it
    (skipped under ``--snapshot-update``, which rewrites it) and the snapshot check asserts against it.
    ``started`` is the ``time.perf_counter()`` at which the case began, for its wall time. ``replayed_ms`` is the
    part of each latency metric of ``now`` that replay took from the recording (``now`` is then the trace on virtual
    time, ``trace.virtual``); the latency and snapshot checks mark those numbers as replayed.
    """
    checks_started = time.perf_counter()
    selected = options.checks if checks is None else frozenset(checks)
    unknown = selected - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; expected some of {', '.join(CHECKS)}")
    statement = sql if sql is not None else sql_of(now)
    golden_sql = sql_of(golden) if golden is not None else None
    result: SqlOutcome | None = None
    if statement is not None and selected & _NEEDS_DATABASE:
        if database is None:
            raise ValueError(f"the {', '.join(sorted(selected & _NEEDS_DATABASE))} checks need a database")
        result = execute_untrusted(database, statement, options.sql_timeout_ms)
    replayed = mode == "replay"

    def results() -> CheckResult:
        if golden is None:
            return CheckResult("results", "skipped", "no golden trace to compare with")
        if update_snapshots:
            return CheckResult(
                "results", "skipped", "--snapshot-update rewrites the snapshot the rows are compared with"
            )
        stored = (snapshot.stored or {}).get("result") if snapshot is not None else None
        return check_results(result, stored, options.result_match, golden_sql=golden_sql)

    def snapshot_check() -> CheckResult:
        if snapshot is None:
            return CheckResult("snapshot", "skipped", "no snapshot for this test")
        return snapshot.check(snapshot_data(now, statement, result), replayed=replayed, replayed_ms=replayed_ms)

    runs: dict[str, Callable[[], CheckResult]] = {
        "sql": lambda: check_sql(statement, result, golden_sql=golden_sql, against_golden=golden is not None),
        "results": results,
        "latency": lambda: check_latency(
            golden,
            now,
            budgets_ms=options.latency_budgets_ms,
            tolerance=options.latency_tolerance,
            floor_ms=options.latency_floor_ms,
            replayed_ms=replayed_ms,
        ),
        "tokens": lambda: check_tokens(
            golden, now, tolerance=options.token_tolerance, maxima=options.token_max, replayed=replayed
        ),
        "snapshot": snapshot_check,
    }
    verdicts = tuple(runs[name]() for name in CHECKS if name in selected)
    finished = time.perf_counter()
    return CaseOutcome(
        case_id=case_id,
        mode=mode,
        file=file,
        checks=verdicts,
        app_error=app_error,
        replay_misses=tuple(replay_misses),
        sql=statement,
        golden_sql=golden_sql,
        result=result,
        tokens=tokens_of(now),
        golden_tokens=None if golden is None else tokens_of(golden),
        durations_ms=latencies_ms(now),
        golden_durations_ms=None if golden is None else latencies_ms(golden),
        replayed_durations_ms=dict(replayed_ms or {}),
        timings=Timings(
            wall_ms=(finished - (checks_started if started is None else started)) * 1000,
            app_ms=app_ms,
            checks_ms=(finished - checks_started) * 1000,
        ),
    )
