"""The golden-case checks for hand-written tests: ``def test_smb_revenue(llm_trace, llmtrace_check): ...``.

A team that has no captured traffic yet still wants "the SQL runs", "the call stays in budget" and "nothing changed
since last time"; these are the same checks golden cases run, through the same runner, pointed at whatever the test
just recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmtrace.checks.check_settings import options_for
from pytest_llmtrace.checks.names import CheckName, UnknownName, canonical_metric, canonical_token_kind
from pytest_llmtrace.checks.options import CheckOptions
from pytest_llmtrace.checks.outcome import CaseOutcome, CheckResult, SqlOutcome
from pytest_llmtrace.checks.runner import CaseInput, run_checks, run_held, sql_of
from pytest_llmtrace.checks.snapshot import OutcomeSnapshot
from pytest_llmtrace.modelapi import stream_log
from pytest_llmtrace.pytest import service_session as services
from pytest_llmtrace.pytest.failing import conclude
from pytest_llmtrace.pytest.replay_config import get_config
from pytest_llmtrace.services.pg_deadline import Deadline
from pytest_llmtrace.trace.stream_timing import with_front_timings

if TYPE_CHECKING:
    from pytest_llmtrace.pytest.recording import TestRecording
    from pytest_llmtrace.services.postgres import PostgresDatabase
    from pytest_llmtrace.trace.model import Trace


class Checker:
    """Bound to one test: its recording, the session database, its snapshot, and the ``llmtrace`` marker's options.

    Each call runs a subset of the golden-case checks on the test's trace (or on ``trace``) with no golden trace, so
    only absolute limits apply; a failed check fails the test with the golden cases' message for it.
    """

    __test__ = False

    def __init__(self, request: pytest.FixtureRequest, recording: TestRecording) -> None:
        self._request = request
        self._recording = recording
        self.options = options_for(request.node, get_config(request.config).options)

    def _run(
        self,
        trace: Trace | None,
        checks: Collection[CheckName],
        *,
        options: CheckOptions | None = None,
        sql: str | None = None,
        snapshot: OutcomeSnapshot | None = None,
    ) -> CaseOutcome:
        now = trace if trace is not None else self._recording.trace
        if now:  # the model front's timing of the test's own model calls (TTFT, chunk times) on their LLM spans
            now = with_front_timings(now, stream_log.recent(now.start_time_unix_nano))
        options = options or self.options
        if not ({"sql", "snapshot"} & set(checks) and (sql is not None or sql_of(now) is not None)):
            outcome = run_checks(self._input(now, checks, options, None, sql, snapshot))
        else:
            postgres: PostgresDatabase = self._request.getfixturevalue("llmtrace_postgres")  # starts Postgres
            guard = services.get_manager(self._request.config).guard(postgres)
            deadline = Deadline.of(options)
            deadline.checking = checking = sql if sql is not None else sql_of(now)
            nodeid = self._request.node.nodeid
            # the call's deadline, and the roles as they must stay; the checks in a thread it walks away from
            outcome = run_held(
                guard,
                deadline,
                lambda: self._input(now, checks, options, postgres.reader_url, sql, snapshot),
                lambda findings: CaseOutcome(nodeid, "test", checks=findings, sql=checking),
            )
        conclude(self._request.node, outcome)
        return outcome

    def _input(
        self,
        now: Trace,
        checks: Collection[CheckName],
        options: CheckOptions,
        database: str | None,
        sql: str | None,
        snapshot: OutcomeSnapshot | None,
    ) -> CaseInput:
        return CaseInput(
            now,
            options=options,
            case_id=self._request.node.nodeid,
            mode="test",
            checks=checks,
            database=database,
            sql=sql,
            snapshot=snapshot,
        )

    def sql_executes(self, trace: Trace | None = None, *, sql: str | None = None) -> SqlOutcome:
        """Re-run the SQL the app ran (or ``sql``) read-only on the session database; fail with the Postgres error."""
        outcome = self._run(trace, {"sql"}, sql=sql)
        assert outcome.result is not None, "a passed sql check has executed the statement"
        return outcome.result

    def within_budget(
        self,
        trace: Trace | None = None,
        *,
        latency_ms: Mapping[str, float] | None = None,
        tokens: Mapping[str, int] | None = None,
    ) -> None:
        """Absolute budgets: ``latency_ms={"LLM": 5000, "total": 8000}``, ``tokens={"total": 600}``.

        Without arguments the session's ini budgets (and the test's ``llmtrace`` marker) apply. Metric names are
        those of the ini and the marker, in any letter case; an unknown one fails the check naming the near miss.
        """
        budgets = self._names("latency", latency_ms, canonical_metric, self.options.latency_budgets_ms)
        maxima = self._names("tokens", tokens, canonical_token_kind, self.options.token_max)
        self._run(
            trace, {"latency", "tokens"}, options=replace(self.options, latency_budgets_ms=budgets, token_max=maxima)
        )

    def _names(
        self,
        check: str,
        given: Mapping[str, Any] | None,
        canonical: Callable[[object], str],
        default: Mapping[str, Any],
    ) -> dict[str, Any]:
        if given is None:
            return dict(default)
        try:
            return {canonical(name): value for name, value in given.items()}
        except UnknownName as exc:
            problem = CheckResult(check, "failed", f"llmtrace_check.within_budget: {exc}")
            conclude(self._request.node, CaseOutcome(self._request.node.nodeid, "test", checks=(problem,)))
            raise  # not reached: conclude failed the test

    def matches_snapshot(self, trace: Trace | None = None) -> None:
        """The normalized outcome (span tree, SQL, result rows, tokens, durations) against a syrupy snapshot.

        When the trace has SQL, it must execute too: a snapshot of an error is not what this call is meant to keep.
        """
        now = trace if trace is not None else self._recording.trace
        checks: set[CheckName] = {"sql", "snapshot"} if sql_of(now) is not None else {"snapshot"}
        self._run(now, checks, snapshot=OutcomeSnapshot.of(self._request, self.options))
