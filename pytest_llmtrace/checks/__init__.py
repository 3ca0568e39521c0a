"""The checks that compare a new trace with its golden trace, their options and their outcomes.

The module map is in docs/architecture.md. In short: ``options`` and ``check_settings`` (what can be checked and
how), ``runner`` (one case's checks into a ``CaseOutcome``), ``sql_text``, ``execute`` and ``reader_connections``
(the SQL, run read-only and bounded), ``equivalence`` (result rows), ``cost``, ``budgets`` (latency and tokens),
``snapshot``, ``timeline`` (waterfall bars), ``outcome`` (the typed results) and ``report`` (the text users read).
Which checks run, and what becomes a test failure, is decided by ``runner`` and the callers at the pytest edge.
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
