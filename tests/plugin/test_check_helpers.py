"""llmtrace_check in hand-written tests: the golden-case checks on whatever the test just recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pytest_llmtrace.checks.outcome import SqlOutcome

REPO = Path(__file__).resolve().parents[2]

APP = '''
from opentelemetry import trace

tracer = trace.get_tracer("app")


def ask(question, sql, *, prompt_tokens=300, completion_tokens=40):
    """Spans shaped like the reference gateway's, without a model: the helpers only read spans."""
    with tracer.start_as_current_span("request", attributes={"openinference.span.kind": "CHAIN",
                                                             "input.value": question}):
        with tracer.start_as_current_span("llm", attributes={
            "openinference.span.kind": "LLM",
            "llm.model_name": "qwen-sql-prod",
            "llm.token_count.prompt": prompt_tokens,
            "llm.token_count.completion": completion_tokens,
            "llm.output_messages.0.message.role": "assistant",
            "llm.output_messages.0.message.content": sql,
        }):
            pass
        with tracer.start_as_current_span("sql", attributes={"db.system.name": "postgresql", "db.query.text": sql}):
            pass
'''


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    shutil.copytree(REPO / "fixtures" / "company_db", pytester.path / "fixtures" / "company_db")
    pytester.makepyfile(app=APP)
    pytester.makeini("[pytest]\naddopts = -p no:phoenix -p no:randomly\npythonpath = .\n")
    return pytester


def test_passing_helpers_and_snapshot_creation(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_app="""
        from app import ask

        def test_revenue(llm_trace, llmtrace_check):
            ask("SMB revenue?", "SELECT tier, count(*) FROM customers GROUP BY tier ORDER BY tier")
            result = llmtrace_check.sql_executes()
            assert result.rows == (("Enterprise", 30), ("Mid-Market", 90), ("SMB", 180))
            llmtrace_check.within_budget(latency_ms={"total": 60_000}, tokens={"total": 1000})
            llmtrace_check.matches_snapshot()
        """
    )
    first = project.runpytest_subprocess("--llmtrace-postgres=embedded")
    first.stdout.fnmatch_lines(["*[[]snapshot[]] no snapshot at *__snapshots__/test_revenue.json*"])
    first.assert_outcomes(failed=1)
    project.runpytest_subprocess("--llmtrace-postgres=embedded", "--snapshot-update").assert_outcomes(passed=1)
    stored = (project.path / "__snapshots__" / "test_revenue.json").read_text()
    assert '"Mid-Market"' in stored
    assert '"prompt": 300' in stored
    project.runpytest_subprocess("--llmtrace-postgres=embedded").assert_outcomes(passed=1)


def test_failing_helpers_name_the_check(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_app="""
        import pytest
        from app import ask

        def test_bad_sql(llm_trace, llmtrace_check):
            ask("segments?", "SELECT segment FROM customers")
            llmtrace_check.sql_executes()

        def test_destructive(llm_trace, llmtrace_check):
            ask("clean up", "DELETE FROM orders")
            llmtrace_check.sql_executes()

        def test_over_budget(llm_trace, llmtrace_check):
            ask("big", "SELECT 1", prompt_tokens=5000, completion_tokens=10)
            llmtrace_check.within_budget(tokens={"prompt": 4000})

        @pytest.mark.llmtrace(token_max={"total": 100})
        def test_marker_budget(llm_trace, llmtrace_check):
            ask("small", "SELECT 1", prompt_tokens=90, completion_tokens=20)
            llmtrace_check.within_budget()

        def test_typo(llm_trace, llmtrace_check):
            ask("x", "SELECT 1")
            llmtrace_check.within_budget(latency_ms={"LMM": 10})

        @pytest.mark.llmtrace(latency_budgets_ms={"TOOL": 60_000})
        def test_every_span_kind_is_a_metric_in_any_case(llm_trace, llmtrace_check):
            ask("x", "SELECT 1")
            assert llmtrace_check.options.latency_budgets_ms["TOOL"] == 60_000
            llmtrace_check.within_budget(latency_ms={"tool": 60_000, "llm": 60_000})
        """
    )
    result = project.runpytest_subprocess("--llmtrace-postgres=embedded")
    result.assert_outcomes(failed=5, passed=1)
    result.stdout.fnmatch_lines(
        [
            '*[[]sql[]] the SQL does not execute: column "segment" does not exist (SQLSTATE 42703)',
            "*[[]sql[]] the SQL does not execute: cannot execute DELETE in a read-only transaction (SQLSTATE 25006)",
        ]
    )
    result.stdout.fnmatch_lines(["*[[]tokens[]]", "*prompt tokens*5000*<= 4000*"])
    result.stdout.fnmatch_lines(["*[[]tokens[]]", "*total tokens*110*<= 100*"])
    result.stdout.fnmatch_lines(
        ["[[]latency[]] llmtrace_check.within_budget: unknown latency metric 'LMM'; did you mean 'LLM'? (valid: *)"]
    )
    assert "Traceback" not in result.stdout.str()


def test_a_misspelled_llmtrace_mark_argument_stops_the_run_at_collection(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_app="""
        import pytest

        @pytest.mark.llmtrace(latency_tolerence=2)
        def test_x():
            pass
        """
    )
    result = project.runpytest_subprocess()
    result.stderr.fnmatch_lines(
        [
            "ERROR: test_app.py::test_x: llmtrace() got an unknown argument 'latency_tolerence'; "
            "did you mean 'latency_tolerance'? (valid: *)"
        ]
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_a_large_result_is_whole_for_the_test_and_kept_short_in_the_report(project: pytest.Pytester) -> None:
    """The test gets every row; results.json keeps the first ones, so a thousand such cases cannot fill the disk."""
    project.makepyfile(
        test_app="""
        from app import ask

        def test_many_rows(llm_trace, llmtrace_check):
            ask("every number", "SELECT n, repeat('x', 100) AS filler FROM generate_series(1, 5000) AS n")
            assert len(llmtrace_check.sql_executes().rows) == 5000
        """
    )
    project.runpytest_subprocess("--llmtrace-postgres=embedded", "--llmtrace-report=out").assert_outcomes(passed=1)
    (case,) = json.loads((project.path / "out" / "results.json").read_text())["cases"]
    result = case["result"]
    assert result["row_count"] == 5000
    assert len(result["rows"]) == SqlOutcome.REPORT_ROWS
    assert result["rows"][0] == [1, "x" * 100]
    assert result["rows_omitted"] == 5000 - SqlOutcome.REPORT_ROWS
