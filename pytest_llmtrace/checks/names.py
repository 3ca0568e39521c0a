"""The names the checks know: the checks, the ways rows are matched, the latency metrics, the token kinds.

A name from a user (ini text, a marker, ``llmtrace_check``) is spelled as here whatever its letter case, or it is an
``UnknownName`` with the nearest valid one: a budget on ``LMM`` that silently did nothing would pass every test.
``checks.options`` builds the knobs on these names; reports and the gate only read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

from openinference.semconv.trace import OpenInferenceSpanKindValues

from pytest_llmtrace.core.errors import LLMTraceError, did_you_mean

__all__ = [
    "CHECKS",
    "LATENCY_METRICS",
    "RESULT_MATCH",
    "SPAN_KINDS",
    "TOKEN_KINDS",
    "TTFT",
    "CheckName",
    "ResultMatch",
    "UnknownName",
    "canonical",
    "canonical_metric",
    "canonical_token_kind",
]

# The checks a golden case runs, in the order their findings are reported: the one list of check names, which mypy
# holds every literal check name in a signature to.
CheckName = Literal["sql", "results", "cost", "latency", "tokens", "snapshot"]
CHECKS: tuple[CheckName, ...] = get_args(CheckName)

# How result rows are compared (see checks.equivalence.row_order_matters for what each means). ``suite``: when the SQL
# text changed, the SQL now and the golden SQL are compared on a distilled test suite of databases (checks.semantic);
# rows are otherwise compared as ``bag``.
ResultMatch = Literal["bag", "set", "ordered", "none", "suite"]
RESULT_MATCH: tuple[ResultMatch, ...] = ("bag", "set", "ordered", "none", "suite")

# OpenInference's span kinds, taken from its semantic conventions so a kind added there is known here too. UNKNOWN is
# what Phoenix calls a span that has no kind: not something to budget. LLM and CHAIN come first because reports list
# metrics in this order and those two are in nearly every trace.
_OPENINFERENCE_KINDS = tuple(kind.value for kind in OpenInferenceSpanKindValues if kind.value != "UNKNOWN")
SPAN_KINDS: tuple[str, ...] = ("LLM", "CHAIN", *(k for k in _OPENINFERENCE_KINDS if k not in ("LLM", "CHAIN")))

# Latency metrics: the whole trace, the span kinds, SQL (spans with a statement, which OTel's database conventions
# mark, not OpenInference), and ttft: the slowest model call's time to first token (trace.stream_timing).
TTFT = "ttft"
LATENCY_METRICS: tuple[str, ...] = ("total", "LLM", "SQL", *SPAN_KINDS[1:], TTFT)

TOKEN_KINDS = ("prompt", "completion", "total")


class UnknownName(LLMTraceError, ValueError):
    """A name that is not one of a fixed set (a check, a metric, a token kind), with the nearest valid one."""

    def __init__(self, what: str, name: object, choices: Sequence[str]) -> None:
        self.what, self.name, self.choices = what, name, tuple(choices)
        hint = did_you_mean(str(name).strip(), choices, ignore_case=True)
        hint = f"; {hint}" if hint else ""
        super().__init__(f"unknown {what} {name!r}{hint} (valid: {', '.join(choices)})")


def canonical(name: object, choices: Sequence[str], what: str) -> str:
    """``name`` spelled as in ``choices``, whatever its letter case (``llm``, ``Total``); else ``UnknownName``.

    An unknown name is a typo, never a value to ignore: a budget on ``LMM`` that silently did nothing would pass
    every test.
    """
    wanted = str(name).strip().lower()
    for choice in choices:
        if choice.lower() == wanted:
            return choice
    raise UnknownName(what, name, choices)


def canonical_metric(name: object) -> str:
    """The one spelling of a latency metric, used by the ini, the marker and ``llmtrace_check.within_budget``."""
    return canonical(name, LATENCY_METRICS, "latency metric")


def canonical_token_kind(name: object) -> str:
    return canonical(name, TOKEN_KINDS, "token kind")
