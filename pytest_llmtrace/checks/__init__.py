"""Regression checks that compare a new trace with its golden trace: query results, latency and tokens.

Pure functions over the trace model and plain rows, so they can be tested without pytest and reused outside it;
the plugin decides which checks run and turns their findings into test failures.
"""

from __future__ import annotations

from pytest_llmtrace.checks.budgets import Violation, check_latency, check_tokens, format_table, latencies_ms
from pytest_llmtrace.checks.sql import (
    CompareRule,
    ResultDiff,
    SqlOutcome,
    compare_results,
    execute_readonly,
    has_top_level_order_by,
    normalize_value,
    split_statements,
    strip_code_fences,
)

__all__ = [
    "CompareRule",
    "ResultDiff",
    "SqlOutcome",
    "Violation",
    "check_latency",
    "check_tokens",
    "compare_results",
    "execute_readonly",
    "format_table",
    "has_top_level_order_by",
    "latencies_ms",
    "normalize_value",
    "split_statements",
    "strip_code_fences",
]
