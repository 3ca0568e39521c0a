"""The golden-case checks for hand-written tests: ``def test_smb_revenue(llm_trace, llmtrace_check): ...``.

A team that has no captured traffic yet still wants "the SQL runs", "the call stays in budget" and "nothing changed
since last time"; these are the same checks golden cases run, pointed at whatever the test just recorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pytest_llmtrace import cases

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pytest_llmtrace.checks.sql import SqlOutcome
    from pytest_llmtrace.fixtures import TestRecording
    from pytest_llmtrace.services.postgres import PostgresDatabase
    from pytest_llmtrace.trace.model import Trace


class Checker:
    """Bound to one test: its recording, the session database, its snapshot, and the ``llmtrace`` marker's options."""

    __test__ = False

    def __init__(self, request: pytest.FixtureRequest, recording: TestRecording) -> None:
        self._request = request
        self._recording = recording
        self.options = cases.options_for(request.node, cases.get_config(request.config).options)

    def _trace(self, trace: Trace | None) -> Trace:
        return trace if trace is not None else self._recording.trace

    def sql_executes(self, trace: Trace | None = None, *, sql: str | None = None) -> SqlOutcome:
        """Re-run the SQL the app ran (or ``sql``) read-only on the session database; fail with the Postgres error."""
        statement = sql if sql is not None else cases.sql_of(self._trace(trace))
        if statement is None:
            pytest.fail("llmtrace_check.sql_executes: the trace has no SQL span and no model answer", pytrace=False)
        database: PostgresDatabase = self._request.getfixturevalue("llmtrace_postgres")
        result = cases.execute_untrusted(database.reader_url, statement, self.options.sql_timeout_ms)
        if not result.ok:
            pytest.fail(cases.sql_failure(result, statement), pytrace=False)
        return result

    def within_budget(
        self,
        trace: Trace | None = None,
        *,
        latency_ms: Mapping[str, float] | None = None,
        tokens: Mapping[str, int] | None = None,
    ) -> None:
        """Absolute budgets: ``latency_ms={"LLM": 5000, "total": 8000}``, ``tokens={"total": 600}``.

        Without arguments the session's ini budgets (and the test's ``llmtrace`` marker) apply.
        """
        from pytest_llmtrace.checks.budgets import check_latency, check_tokens

        now = self._trace(trace)
        limits = dict(self.options.latency_budgets_ms if latency_ms is None else latency_ms)
        token_max = dict(self.options.token_max if tokens is None else tokens)
        # Compared with itself, only the absolute budgets can be violated: there is no golden trace here.
        unknown = sorted(set(token_max) - set(cases.TOKEN_KINDS))
        if unknown:
            pytest.fail(
                f"llmtrace_check.within_budget: unknown token kind {unknown[0]!r}; use {cases.TOKEN_KINDS}",
                pytrace=False,
            )
        try:
            violations = check_latency(now, now, budgets_ms=limits, tolerance=float("inf"))
        except ValueError as exc:  # an unknown span kind in latency_ms
            message = f"llmtrace_check.within_budget: {exc}"
        else:
            message = ""
        if message:
            pytest.fail(message, pytrace=False)
        violations += check_tokens(
            now,
            now,
            tolerance=float("inf"),
            max_prompt=token_max.get("prompt"),
            max_completion=token_max.get("completion"),
            max_total=token_max.get("total"),
        )
        failures = cases.budget_failures(violations)
        if failures:
            pytest.fail("\n\n".join(failures), pytrace=False)

    def matches_snapshot(self, trace: Trace | None = None) -> None:
        """The normalized outcome (span tree, SQL, result rows, tokens, durations) against a syrupy snapshot."""
        now = self._trace(trace)
        sql = cases.sql_of(now)
        result = self.sql_executes(now) if sql is not None else None
        from pytest_llmtrace.snapshot import outcome

        failures = cases.OutcomeSnapshot.of(self._request, self.options).failures(outcome(now, sql, result))
        if failures:
            pytest.fail("\n\n".join(failures), pytrace=False)
