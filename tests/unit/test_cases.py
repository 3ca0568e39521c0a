"""Pure parts of golden-case handling: mark parsing, option validation, and the [sql] message."""

from __future__ import annotations

import pytest

from pytest_llmtrace.cases import CheckOptions, _parse_case_marks, execute_untrusted, sql_failure


def test_case_marks_are_parsed_not_evaluated() -> None:
    ((pattern, mark),) = _parse_case_marks("error_*: xfail(reason='fails in prod', strict=True)")
    assert pattern == "error_*"
    assert mark.name == "xfail"
    assert mark.kwargs == {"reason": "fails in prod", "strict": True}
    with pytest.raises(pytest.UsageError, match="mark arguments must be literals"):
        list(_parse_case_marks("x*: skip(reason=__import__('os').getcwd())"))


def test_a_zero_sql_timeout_is_refused_because_postgres_reads_it_as_no_timeout() -> None:
    with pytest.raises(pytest.UsageError, match=r"sql_timeout_ms: expected a number >= 1, got 0"):
        CheckOptions().with_marker(pytest.mark.llmtrace(sql_timeout_ms=0).mark, "case")
    assert CheckOptions().with_marker(pytest.mark.llmtrace(sql_timeout_ms=1).mark, "case").sql_timeout_ms == 1


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
