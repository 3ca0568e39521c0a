"""Regression checks that compare a new trace with its golden trace, one module per job.

- ``sql_text``: the SQL inside a model's answer, statement splitting, top-level ORDER BY.
- ``execute``: running untrusted SQL read-only and bounded; the ``sql`` check.
- ``results``: normalizing and comparing result rows; the ``results`` check and the row-order rule.
- ``budgets``: latency and token limits; the ``latency`` and ``tokens`` checks and the tolerance rules.
- ``report``: turning outcomes into the failure text users read.

Each check returns an ``outcome.CheckResult``; which checks run and what becomes a test failure is decided by
``runner`` and the callers at the pytest edge.
"""

from __future__ import annotations

from pytest_llmtrace.checks.budgets import check_latency, check_tokens, latencies_ms
from pytest_llmtrace.checks.equivalence import (
    CompareRule,
    ResultDiff,
    check_results,
    compare_results,
    normalize_value,
    row_order_matters,
)
from pytest_llmtrace.checks.execute import check_sql, execute_readonly, execute_untrusted
from pytest_llmtrace.checks.outcome import SqlOutcome
from pytest_llmtrace.checks.report import format_table
from pytest_llmtrace.checks.sql_text import has_top_level_order_by, split_statements, strip_code_fences

__all__ = [
    "CompareRule",
    "ResultDiff",
    "SqlOutcome",
    "check_latency",
    "check_results",
    "check_sql",
    "check_tokens",
    "compare_results",
    "execute_readonly",
    "execute_untrusted",
    "format_table",
    "has_top_level_order_by",
    "latencies_ms",
    "normalize_value",
    "row_order_matters",
    "split_statements",
    "strip_code_fences",
]
