"""Pure parts of golden-case handling: the [sql] message."""

from __future__ import annotations

from pytest_llmtrace.cases import execute_untrusted, sql_failure


def test_a_connection_failure_is_an_sql_outcome_not_a_traceback() -> None:
    outcome = execute_untrusted("postgresql://llmtrace_reader@127.0.0.1:9/nowhere", "SELECT 1", 1000)
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith("cannot connect to the session database as the read-only role: ")
    assert outcome.sqlstate is None
    message = sql_failure(outcome, "SELECT 1")
    assert message.startswith("[sql] the SQL does not execute: cannot connect to the session database")
    assert "SQLSTATE" not in message  # there is none to show
    assert message.endswith("\n    SELECT 1")
