"""The one runner of checks: golden cases and the ``llmtrace_check`` helpers both end here.

Given what the app did now (and, for a golden case, what it did then), ``run_checks`` runs the selected checks and
returns a ``CaseOutcome``. It fails nothing itself: the callers at the pytest edge turn a failed outcome into a test
failure with ``checks.report``'s text, and keep the outcome for reports.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pytest_llmtrace.checks.budgets import check_latency, check_tokens, latencies_ms, tokens_of
from pytest_llmtrace.checks.cost import SqlCost, check_cost, check_unchanged_cost, cost_of, measure_cost
from pytest_llmtrace.checks.equivalence import check_results
from pytest_llmtrace.checks.execute import check_sql, execute_untrusted
from pytest_llmtrace.checks.names import CHECKS, CheckName
from pytest_llmtrace.checks.options import CheckOptions
from pytest_llmtrace.checks.outcome import CaseOutcome, CheckResult, Mode, ReplayMiss, SqlOutcome, Timings
from pytest_llmtrace.checks.semantic import Verdict, check_semantic, same_sql
from pytest_llmtrace.checks.snapshot import OutcomeSnapshot, snapshot_data
from pytest_llmtrace.checks.sql_text import strip_code_fences
from pytest_llmtrace.checks.timeline import waterfall_of
from pytest_llmtrace.checks.usage import streams_outside_calls, trace_usage, usage_summary, with_cost
from pytest_llmtrace.services.case_bounds import Abandoned
from pytest_llmtrace.services.pg_deadline import Deadline, Finding
from pytest_llmtrace.services.pg_guard import SessionGuard
from pytest_llmtrace.trace.model import SqlStatement, Trace
from pytest_llmtrace.trace.virtual import retime

_NEEDS_DATABASE = frozenset({"sql", "results", "cost", "snapshot"})
# The noise the re-runs exist for: a busy machine may slow a statement to this many times its limit, not more. A SQL
# time past it (or one cut off by the statement timeout) is a finding as it stands: timing it again would spend up to
# latency_retries x the timeout to say the same.
RETRY_NOISE = 2.0
# Re-runs of a statement whose slowest is more than this many times its fastest are too noisy to call a regression.
UNSTABLE_SPREAD = 1.5


def sql_of(trace: Trace) -> str | None:
    """The SQL the app ran; without a SQL span, the model's answer with code fences stripped."""
    if trace.sql_statements:
        return trace.sql_statements[-1].text
    calls = trace.llm_calls
    if calls:
        return strip_code_fences(calls[-1].output_text) or None
    return None


def guard_checks(findings: Iterable[Finding]) -> tuple[CheckResult, ...]:
    """What a case's guard found (``services.pg_guard``: ``[timeout]``, ``[sandbox]``) as failed checks: the guard
    sits below the checks and hands back plain data."""
    return tuple(CheckResult(f.name, "failed", f.reason, details=f.details) for f in findings)


@dataclass(frozen=True)
class CaseInput:
    """Everything one case hands the checks, assembled once by its caller (a golden case, or one ``llmtrace_check``
    call), so the two paths cannot pass the runner different things under the same names.

    ``database`` is the read-only DSN the SQL is re-executed on (needed by the sql, results and snapshot checks);
    ``sql`` replaces the statement taken from ``now``. Without ``golden`` only absolute limits apply, and a missing
    statement fails the sql check. ``snapshot`` holds the stored outcome: the results check compares rows with it
    (skipped under ``--snapshot-update``, which rewrites it) and the snapshot check asserts against it.
    ``started`` is the ``time.perf_counter()`` at which the case began, for its wall time. ``replayed_ms`` is the
    part of each latency metric of ``now`` that replay took from the recording (``now`` is then the trace on virtual
    time, ``trace.virtual``); the latency and snapshot checks mark those numbers as replayed, and
    ``replayed_spans_ns`` (``VirtualTrace.replayed_ns``) marks the replayed spans of the outcome's waterfall.
    """

    now: Trace
    options: CheckOptions
    case_id: str
    mode: Mode
    golden: Trace | None = None
    file: str | None = None
    checks: Collection[CheckName] | None = None  # default: ``options.checks``
    database: str | None = None
    sql: str | None = None
    snapshot: OutcomeSnapshot | None = None
    update_snapshots: bool = False
    app_error: str | None = None
    replay_misses: Sequence[ReplayMiss] = ()
    app_ms: float | None = None
    started: float | None = None
    replayed_ms: Mapping[str, float] | None = None
    replayed_spans_ns: Mapping[str, int] | None = None
    # ``result_match = suite``: judges the SQL now against the golden SQL on the gold query's suite of databases
    semantic: Callable[[str, str], Verdict] | None = None


def run_checks(case: CaseInput) -> CaseOutcome:
    """Run the case's checks on what it did now and gather the verdicts (``CaseInput`` says what each part is for)."""
    now, options, golden, database, sql = case.now, case.options, case.golden, case.database, case.sql
    snapshot, replayed_ms, checks = case.snapshot, case.replayed_ms, case.checks
    checks_started = time.perf_counter()
    selected = options.checks if checks is None else frozenset(checks)
    unknown = selected - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; expected some of {', '.join(CHECKS)}")
    statement = sql if sql is not None else sql_of(now)
    golden_sql = sql_of(golden) if golden is not None else None
    # The golden SQL's cost is measured on this database too: for the same statement, the same numbers.
    cost_unchanged = statement is not None and golden_sql is not None and golden_sql.strip() == statement.strip()
    measure = "cost" in selected and not cost_unchanged
    result: SqlOutcome | None = None
    if statement is not None and selected & _NEEDS_DATABASE:
        if database is None:
            raise ValueError(f"the {', '.join(sorted(selected & _NEEDS_DATABASE))} checks need a database")
        result = _timed_out_in_the_app(now, statement, options) if sql is None else None
        if result is None:
            result = _execute(database, statement, options, cost=measure)
    replayed = case.mode == "replay"
    costs = _costs(database, statement, golden_sql, result, options) if measure else None
    timing: Trace = now  # the trace the timing checks judge: `now`, or `now` with its SQL re-timed
    reruns: tuple[float, ...] = ()
    if selected & {"latency", "snapshot"} and database is not None and statement is not None:
        timing, reruns = _retimed(now, golden, statement, result, database, options, replayed_ms)

    semantic: dict[str, Any] | None = None

    def results() -> CheckResult:
        nonlocal semantic
        if golden is None:
            return CheckResult("results", "skipped", "no golden trace to compare with")
        if options.result_match == "suite" and golden_sql is not None and statement is not None:
            if same_sql(golden_sql, statement):  # unchanged: nothing to judge, and it costs nothing
                semantic = {"verdict": "equivalent", "databases": 0, "unchanged": True}
            elif result is not None and not result.ok:
                return CheckResult("results", "skipped", "the SQL did not execute")
            elif case.semantic is None:
                return CheckResult("results", "skipped", "result_match = suite needs the session's Postgres")
            else:
                try:
                    verdict = case.semantic(golden_sql, statement)
                except Exception as exc:  # the suite's databases could not be made: say so, never pass
                    return CheckResult("results", "failed", f"semantic: the test suite could not be built: {exc}")
                semantic = verdict.to_dict()
                return check_semantic(verdict)
        if case.update_snapshots:
            return CheckResult(
                "results", "skipped", "--snapshot-update rewrites the snapshot the rows are compared with"
            )
        stored = (snapshot.stored or {}).get("result") if snapshot is not None else None
        return check_results(result, stored, options.result_match, golden_sql=golden_sql)

    def snapshot_check() -> CheckResult:
        if snapshot is None:
            return CheckResult("snapshot", "skipped", "no snapshot for this test")
        return snapshot.check(snapshot_data(timing, statement, result), replayed=replayed, replayed_ms=replayed_ms)

    usages, price_error = trace_usage(timing, options.prices)
    golden_usages = None if golden is None else trace_usage(golden, options.prices)[0]
    runs: dict[CheckName, Callable[[], CheckResult]] = {
        "sql": lambda: check_sql(statement, result, golden_sql=golden_sql, against_golden=golden is not None),
        "results": results,
        "cost": lambda: (
            check_unchanged_cost()
            if cost_unchanged
            else check_cost(*(costs or (None, None)), tolerance=options.cost_tolerance)
        ),
        "latency": lambda: _with_reruns(_latency(golden, timing, options, replayed_ms), reruns),
        "tokens": lambda: with_cost(
            check_tokens(golden, now, tolerance=options.token_tolerance, maxima=options.token_max, replayed=replayed),
            usages,
            golden_usages,
            price_error,
            replayed=replayed,
        ),
        "snapshot": snapshot_check,
    }
    verdicts = tuple(runs[name]() for name in CHECKS if name in selected)
    finished = time.perf_counter()
    return CaseOutcome(
        case_id=case.case_id,
        mode=case.mode,
        file=case.file,
        checks=verdicts,
        app_error=case.app_error,
        replay_misses=tuple(case.replay_misses),
        sql=statement,
        golden_sql=golden_sql,
        result=result,
        tokens=tokens_of(now),
        golden_tokens=None if golden is None else tokens_of(golden),
        durations_ms=latencies_ms(timing),
        golden_durations_ms=None if golden is None else latencies_ms(golden),
        replayed_durations_ms=dict(replayed_ms or {}),
        llm_usage=usage_summary(usages, streams_outside_calls(timing)),
        golden_llm_usage=None if golden_usages is None else usage_summary(golden_usages, streams_outside_calls(golden)),
        waterfall=waterfall_of(timing, case.replayed_spans_ns),
        golden_waterfall=None if golden is None else waterfall_of(golden),
        semantic=semantic,
        timings=Timings(
            wall_ms=(finished - (checks_started if case.started is None else case.started)) * 1000,
            app_ms=case.app_ms,
            checks_ms=(finished - checks_started) * 1000,
        ),
    )


def run_held(
    guard: SessionGuard,
    deadline: Deadline,
    prepare: Callable[[], CaseInput | None],
    fallback: Callable[[tuple[CheckResult, ...]], CaseOutcome],
) -> CaseOutcome:
    """One case held by the session's guard, for golden cases and ``llmtrace_check`` alike.

    ``prepare`` runs inside the guard (a golden case calls its app there) and gives the checks' input, or ``None``
    when the deadline fired and the checks would run the runaway statement again. The checks run under the deadline,
    in a thread it walks away from; what the guard found is added as failed checks. When the deadline fired, or the
    checks never returned, ``fallback(findings)`` is the outcome. Role changes found before the case (restored by
    then) fail it too, golden case and ``llmtrace_check`` call alike: SQL run outside a guard (the app of a
    hand-written test, a fixture, an earlier test) changed the roles every case relies on, and a restore nobody
    hears of would hide it.
    """
    outcome: CaseOutcome | None = None
    with guard.case(deadline) as held:
        case_input = prepare()
        if case_input is not None:
            with contextlib.suppress(Abandoned):  # the deadline's finding says so
                outcome = deadline.call(functools.partial(run_checks, case_input), "the checks")
    findings = guard_checks(held.findings())
    if held.before:
        reason = (
            "the database roles were changed before this case (by SQL run outside the checks: the app of a "
            "hand-written test, a fixture or an earlier test; restored now)"
        )
        findings += (CheckResult("sandbox", "failed", reason, details=tuple(held.before)),)
    if outcome is None or deadline.fired:
        return fallback(findings)
    return replace(outcome, checks=outcome.checks + findings)


def _latency(
    golden: Trace | None, now: Trace, options: CheckOptions, replayed_ms: Mapping[str, float] | None
) -> CheckResult:
    return check_latency(
        golden,
        now,
        budgets_ms=options.latency_budgets_ms,
        tolerance=options.latency_tolerance,
        floor_ms=options.latency_floor_ms,
        replayed_ms=replayed_ms,
        min_tokens_per_s=options.min_tokens_per_s,
    )


def _execute(database: str, statement: str, options: CheckOptions, *, cost: bool) -> SqlOutcome:
    """Execute read-only, once: a statement the statement timeout cancelled is judged at once, not run again (it
    already ran past every limit, and another try would cost the whole timeout again)."""
    return _untrusted(database, statement, options, cost=cost)


def _timed_out_in_the_app(now: Trace, statement: str, options: CheckOptions) -> SqlOutcome | None:
    """The app's own run of ``statement`` on the sandbox, when the statement timeout cancelled it after at least the
    check's own timeout: running it again would wait that whole timeout to learn the same, so it is judged at once.

    Only a cancel by the statement timeout counts (SQLSTATE 57014 with that message, or the span's
    ``db.response.status_code``), and only after the span ran ``sql_timeout_ms`` or longer: a lower timeout the app
    set itself, or any other error, leaves the check to run the statement as usual.
    """
    for found in reversed(now.sql_statements):
        if found.text != statement or found.ok or found.span.duration_ms < options.sql_timeout_ms:
            continue
        code = found.span.attributes.get(DB_RESPONSE_STATUS_CODE)
        if str(code) == STATEMENT_TIMEOUT or "statement timeout" in (found.error or ""):
            return SqlOutcome(
                ok=False,
                columns=(),
                rows=(),
                row_count=0,
                truncated=False,
                error=f"canceling statement due to statement timeout (in the app's own run, after "
                f"{found.span.duration_ms:.0f} ms; not run again)",
                sqlstate=STATEMENT_TIMEOUT,
                elapsed_ms=found.span.duration_ms,
            )
    return None


STATEMENT_TIMEOUT = "57014"  # query_canceled: the statement timeout, or a cancel request
DB_RESPONSE_STATUS_CODE = "db.response.status_code"  # OTel database semantic conventions


def _untrusted(
    database: str, statement: str, options: CheckOptions, *, cost: bool = False, timeout_ms: int | None = None
) -> SqlOutcome:
    return execute_untrusted(
        database,
        statement,
        options.sql_timeout_ms if timeout_ms is None else timeout_ms,
        cost=cost,
        max_rows=options.max_rows,
        max_bytes=options.max_result_bytes,
    )


def _costs(
    database: str | None,
    statement: str | None,
    golden_sql: str | None,
    result: SqlOutcome | None,
    options: CheckOptions,
) -> tuple[SqlCost, SqlCost] | None:
    """(now, golden) cost of two different statements on this database (the same one is ``check_unchanged_cost``).

    The SQL now was measured with its execution (``execute_readonly(cost=True)``)."""
    if database is None or statement is None or golden_sql is None or result is None:
        return None
    return cost_of(result), measure_cost(database, golden_sql, timeout_ms=options.sql_timeout_ms, run=True)


def _retimed(
    now: Trace,
    golden: Trace | None,
    statement: str,
    result: SqlOutcome | None,
    database: str,
    options: CheckOptions,
    replayed_ms: Mapping[str, float] | None,
) -> tuple[Trace, tuple[float, ...]]:
    """When a SQL latency limit fails within the noise (``retimings``), time the statement again and let the SQL span
    take the fastest timing (its ancestors follow, ``trace.virtual.retime``). Returns the trace to judge and every
    timing (the span's own first); ``()`` when nothing was re-timed."""
    if (result is not None and not result.ok) or options.latency_retries < 1:  # a statement that fails has no time
        return now, ()
    first = _latency(golden, now, options, replayed_ms)
    limits = [m.limit for m in first.measurements if m.metric == "SQL" and m.status == "failed" and m.limit is not None]
    if not limits:
        return now, ()
    spans = [span for span in now if SqlStatement.from_span(span) is not None]
    if not spans:
        return now, ()
    last = spans[-1]  # the statement sql_of re-executes

    def run(timeout_ms: int) -> float | None:
        outcome = _untrusted(database, statement, options, timeout_ms=timeout_ms)
        return outcome.elapsed_ms if outcome.ok else None

    samples = retimings(last.duration_ms, min(limits), options.latency_retries, options.sql_timeout_ms, run)
    if len(samples) < 2:  # judged at once
        return now, ()
    samples = tuple(round(ms, 3) for ms in samples)  # to 1 us
    fastest = min(samples)
    if fastest >= samples[0]:
        return now, samples
    return retime(now, {last.span_id: round(fastest * 1000) * 1000}), samples


def retimings(
    first_ms: float, limit_ms: float, retries: int, timeout_ms: int, run: Callable[[int], float | None]
) -> tuple[float, ...]:
    """Every timing of a statement whose first timing ``first_ms`` failed ``limit_ms`` (the tightest limit it failed):
    ``first_ms``, then up to ``retries`` re-runs, ``run(timeout_ms)`` each (its time, or ``None`` when it did not
    finish).

    The re-runs are there for a busy machine's noise, ``RETRY_NOISE`` times the limit: a first timing past that is
    judged at once (``(first_ms,)``), each re-run is cut off at that much (or at the statement timeout, if sooner),
    and a re-run cut off ends the re-runs. So the checks of one case take at most ``retries`` times the noise bound
    on top of what the app took, never ``retries`` statement timeouts."""
    bound = RETRY_NOISE * limit_ms
    if retries < 1 or first_ms > bound:
        return (first_ms,)
    cap = max(1, min(timeout_ms, math.ceil(bound)))
    samples = [first_ms]
    for _ in range(retries):
        ms = run(cap)
        if ms is None:
            break
        samples.append(ms)
    return tuple(samples)


def _with_reruns(check: CheckResult, samples: Sequence[float]) -> CheckResult:
    """The SQL measurements with their timings; a relative one that still fails is ``regressed`` or ``unstable``."""
    if not samples:
        return check
    reruns = samples[1:]
    spread = max(reruns) / min(reruns) if len(reruns) >= 2 and min(reruns) > 0 else 1.0
    measurements = []
    for m in check.measurements:
        if m.metric == "SQL":
            finding: Literal["", "regressed", "unstable"] = ""
            if m.status == "failed" and m.basis == "relative":
                finding = "unstable" if spread > UNSTABLE_SPREAD else "regressed"
            m = replace(m, samples=tuple(samples), finding=finding)
        measurements.append(m)
    return replace(check, measurements=tuple(measurements))
