"""The release gate: expressions over a whole run's cases, evaluated once, fail-closed.

Pure: it reads case dicts as ``results.json`` holds them (``CaseOutcome.to_dict``), so the in-run gate and
``llmtrace gate SHARD.json ...`` share every line of it and cannot disagree.

Fail-closed means a case counts against a rate unless it positively passed: an app error, a replay miss, a check
that was skipped or never ran all count as failures, and a case without a latency value counts as infinitely slow.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llmtrace.core.errors import LLMTraceError, did_you_mean
from pytest_llmtrace.core.inert import one_line
from pytest_llmtrace.results import llm_gate
from pytest_llmtrace.results.case_record import CaseRecord, case_passed, figure_of, read_case

# results.json's schema_version (docs/results-schema.md); bumped only when a field changes meaning or goes away.
RESULTS_SCHEMA_VERSION = 1
# pytest owns exit statuses 0-5; 6 says "the tests ran, the gate said no" so CI can tell the two apart.
GATE_EXIT_STATUS = 6
EXAMPLE = "sql_success_rate >= 0.95"
METRICS = (
    "sql_success_rate",
    "result_match_rate",
    "semantic_match_rate",
    "latency_p50_ms",
    "latency_p95_ms",
    "token_growth",
    "cases",
    "regressions",
    *llm_gate.METRICS,
)
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12),
}
_NEGATED = {">=": "<", "<=": ">", "==": "!="}
_EXPR = re.compile(
    r"^\s*([a-z0-9_]+)(?:\[([A-Za-z0-9_.\-]+)\])?\s*(>=|<=|==)\s*([-+]?[0-9]*\.?[0-9]+(?:e[-+]?\d+)?)\s*$"
)
_SHOWN_CASES = 10


class GateError(LLMTraceError, ValueError):
    """A malformed gate expression or a gate that cannot be evaluated (``regressions`` without a baseline)."""


@dataclass(frozen=True)
class Rule:
    metric: str
    kind: str | None
    op: str
    threshold: float

    @property
    def name(self) -> str:
        return f"{self.metric}[{self.kind}]" if self.kind else self.metric

    def __str__(self) -> str:
        return f"{self.name} {self.op} {_num(self.threshold)}"


@dataclass(frozen=True)
class GateResult:
    rule: Rule
    value: float
    passed: bool
    cases: tuple[str, ...]  # the cases that pulled the value to the wrong side (failing, slow, grown, regressed)


def parse(expression: str) -> Rule:
    """``metric[KIND] OP number``; anything else is a ``GateError`` that shows a valid expression."""
    match = _EXPR.match(expression)
    if not match:
        raise GateError(
            f"gate {expression!r} is not 'METRIC OP NUMBER' (OP is >=, <= or ==), e.g. {EXAMPLE!r} or "
            f"'latency_p95_ms[SQL] <= 500'; metrics: {', '.join(METRICS)}"
        )
    metric, kind, op, number = match.groups()
    if metric not in METRICS:
        hint = did_you_mean(metric, METRICS)
        raise GateError(
            f"gate {expression!r}: unknown metric {metric!r}{'; ' + hint if hint else ''}; e.g. {EXAMPLE!r}"
        )
    if kind and not metric.startswith("latency_"):
        raise GateError(f"gate {expression!r}: only latency metrics take [KIND], e.g. 'latency_p95_ms[SQL] <= 500'")
    return Rule(metric, kind, op, float(number))


def _check_ok(case: CaseRecord, name: str) -> bool:
    if case["app_error"] or case["replay_misses"]:
        return False
    return any(c.get("name") == name and c.get("status") == "passed" for c in case["checks"])


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: always one of the values, so a reported p95 is a latency some case really had."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _latency(case: CaseRecord, kind: str) -> float:
    if case["app_error"]:
        return math.inf
    value = figure_of(case["durations_ms"], kind)
    return math.inf if value is None else float(value)


def parse_slo(expression: str) -> Rule:
    """``llmtrace_slo``: a rate the run must hold (``sql_success_rate >= 0.95``), which ``error_budget_remaining``
    measures the unspent part of; anything else is a ``GateError`` with an example."""
    rule = parse(expression)
    if rule.metric not in llm_gate.SLO_RATES or rule.op != ">=" or not 0 <= rule.threshold < 1:
        raise GateError(
            f"SLO {expression!r}: expected a rate at least a threshold below 1, e.g. {llm_gate.SLO_EXAMPLE!r} "
            f"(rates: {', '.join(llm_gate.SLO_RATES)})"
        )
    return rule


def _value(
    rule: Rule, cases: Sequence[CaseRecord], baseline: Sequence[CaseRecord] | None, slo: Rule | None = None
) -> GateResult:
    ids = [str(c["case_id"]) for c in cases]
    if rule.metric in llm_gate.METRICS:
        if rule.metric == "error_budget_remaining" and slo is None:
            raise GateError(
                f"gate '{rule}' needs an SLO to measure the budget of: llmtrace_slo = {llm_gate.SLO_EXAMPLE!r} "
                "(--llmtrace-slo in pytest, --slo with llmtrace gate)"
            )
        measure = None if slo is None else (lambda: _value(slo, cases, baseline).value)
        value, figures, worse_up = llm_gate.value(rule.metric, cases, measure, None if slo is None else slo.threshold)
        passed = _OPERATORS[rule.op](value, rule.threshold)
        pulled = sorted(figures, key=lambda p: -p[0] if worse_up else p[0])
        bad = tuple(i for v, i in pulled if not _OPERATORS[rule.op](v, rule.threshold))
        return GateResult(rule, value, passed, () if passed else bad)
    if rule.metric == "cases":
        value = float(len(cases))
        return GateResult(rule, value, _OPERATORS[rule.op](value, rule.threshold), ())
    if rule.metric in ("sql_success_rate", "result_match_rate"):
        check = "sql" if rule.metric == "sql_success_rate" else "results"
        bad = tuple(i for i, c in zip(ids, cases, strict=True) if not _check_ok(c, check))
        value = 1 - len(bad) / len(cases) if cases else 0.0  # no cases: nothing passed, fail-closed
        return GateResult(rule, value, _OPERATORS[rule.op](value, rule.threshold), bad)
    if rule.metric == "semantic_match_rate":
        judged = [(i, semantic) for i, c in zip(ids, cases, strict=True) if (semantic := c.get("semantic"))]
        bad = tuple(i for i, s in judged if s["verdict"] != "equivalent")
        value = 1 - len(bad) / len(judged) if judged else 0.0  # nothing judged: fail-closed
        return GateResult(rule, value, _OPERATORS[rule.op](value, rule.threshold), bad)
    if rule.metric.startswith("latency_"):
        kind = rule.kind or "total"
        values = [_latency(c, kind) for c in cases]
        value = percentile(values, 50 if rule.metric == "latency_p50_ms" else 95) if values else math.inf
        passed = _OPERATORS[rule.op](value, rule.threshold)
        slow = tuple(
            i
            for i, v in sorted(zip(ids, values, strict=True), key=lambda p: -p[1])
            if not _OPERATORS[rule.op](v, rule.threshold)
        )
        return GateResult(rule, value, passed, () if passed else slow)
    if rule.metric == "token_growth":
        now = golden = 0.0
        grown: list[tuple[float, str]] = []
        for case_id, case in zip(ids, cases, strict=True):
            before, after = figure_of(case["golden_tokens"]), figure_of(case["tokens"])
            if not before or after is None:
                continue
            now, golden = now + after, golden + before
            grown.append((after / before - 1, case_id))
        value = now / golden - 1 if golden else 0.0
        passed = _OPERATORS[rule.op](value, rule.threshold)
        worst = tuple(i for g, i in sorted(grown, reverse=True) if not _OPERATORS[rule.op](g, rule.threshold))
        return GateResult(rule, value, passed, () if passed else worst)
    # regressions
    if baseline is None:
        raise GateError(
            f"gate '{rule}' needs a baseline, a previous results.json: --llmtrace-baseline PATH in pytest, "
            "--baseline PATH with llmtrace gate"
        )
    was = {str(c["case_id"]): case_passed(c) for c in baseline}
    regressed = tuple(i for i, c in zip(ids, cases, strict=True) if was.get(i) and not case_passed(c))
    value = float(len(regressed))
    return GateResult(rule, value, _OPERATORS[rule.op](value, rule.threshold), regressed)


def evaluate(
    rules: Sequence[Rule],
    cases: Sequence[CaseRecord],
    baseline: Sequence[CaseRecord] | None = None,
    slo: Rule | None = None,
) -> list[GateResult]:
    return [_value(rule, cases, baseline, slo) for rule in rules]


def _num(value: float) -> str:
    if math.isinf(value):
        return "inf"
    return str(int(value)) if value == int(value) else f"{value:.4g}"


def format_result(result: GateResult) -> str:
    """One line: ``llmtrace gate: FAILED sql_success_rate 0.75 < 0.95 (4 cases: a, b, c, d)`` or the margin."""
    rule = result.rule
    if result.passed:
        margin = result.value - rule.threshold
        sign = "+" if margin >= 0 else "-"
        held = f"{rule.name} {_num(result.value)} {rule.op} {_num(rule.threshold)}"
        return f"llmtrace gate: passed {held} ({sign}{_num(abs(margin))})"
    # case ids come from file names and results.json files: printed to terminals, so no control characters
    shown = ", ".join(map(one_line, result.cases[:_SHOWN_CASES]))
    shown += ", ..." if len(result.cases) > _SHOWN_CASES else ""
    cases = f" ({len(result.cases)} case{'s' if len(result.cases) != 1 else ''}: {shown})" if result.cases else ""
    return f"llmtrace gate: FAILED {rule.name} {_num(result.value)} {_NEGATED[rule.op]} {_num(rule.threshold)}{cases}"


def load_cases(path: Path) -> list[CaseRecord]:
    """The cases of a results.json; a wrong file is a ``ValueError`` that names it and what was expected."""
    return load_results(path)[1]


class _NonFinite(str):
    """A NaN, Infinity or -Infinity (or a number too large for a float) where results.json held it: kept as its text
    until the figure check names its place."""


def _finite_float(text: str) -> float | _NonFinite:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


# The figures of a case (and of each of its runs): what gates and reports compute with. A number or null each.
_FIGURE_MAPS = ("tokens", "golden_tokens", "durations_ms", "golden_durations_ms", "replayed_durations_ms", "pass_hat_k")
_FIGURES = ("pass_rate", "min_pass_rate")
_MEASURED = ("now", "golden", "limit", "low", "replayed")


def load_results(path: Path) -> tuple[dict[str, Any], list[CaseRecord]]:
    """The ``run`` object and the cases of a results.json.

    A wrong file is a ``ValueError`` that names it, the JSON path and what was expected: not JSON, another schema
    version, no case list, or a figure that is not a finite number. Python's JSON reader accepts ``NaN``,
    ``Infinity``, ``-Infinity`` and ``1e999``, none of which the plugin writes; a forged ``-Infinity`` latency would
    otherwise pass every ``<=`` gate and print as ``inf``. Only then are the cases read as ``CaseRecord``s; the
    other fields may still be missing (an older or hand-made file), so readers take them with ``.get``.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_NonFinite, parse_float=_finite_float)
    except (OSError, ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: not a readable results.json ({exc})") from None
    if not isinstance(data, dict) or data.get("schema_version") != RESULTS_SCHEMA_VERSION:
        found = data.get("schema_version") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: schema_version {found!r} is not {RESULTS_SCHEMA_VERSION}; is it a results.json?")
    cases = data.get("cases")
    if not isinstance(cases, list) or not all(isinstance(c, dict) for c in cases):
        raise ValueError(f"{path}: at $.cases: expected a list of case objects")
    run = data.get("run")
    if not isinstance(run, dict):
        run = {}
    for i, case in enumerate(cases):
        _check_figures(path, f"$.cases[{i}]", case)
        for j, one in enumerate(case.get("runs") or ()):
            if isinstance(one, dict):
                _check_figures(path, f"$.cases[{i}].runs[{j}]", one)
    _no_non_finite(path, "$", data)
    return run, [read_case(c) for c in cases]


def _check_figures(path: Path, where: str, case: Mapping[str, Any]) -> None:
    for name in _FIGURE_MAPS:
        values = case.get(name)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ValueError(f"{path}: at {where}.{name}: expected an object of numbers, got {type(values).__name__}")
        for key, value in values.items():
            _figure_of(path, f"{where}.{name}.{key}", value)
    for name in _FIGURES:
        _figure_of(path, f"{where}.{name}", case.get(name))
    for k, check in enumerate(case.get("checks") or ()):
        for m, measurement in enumerate((check or {}).get("measurements") or () if isinstance(check, dict) else ()):
            if isinstance(measurement, dict):
                for name in _MEASURED:
                    _figure_of(path, f"{where}.checks[{k}].measurements[{m}].{name}", measurement.get(name))


def _figure_of(path: Path, where: str, value: object) -> None:
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
        return
    got = f"{value}" if isinstance(value, _NonFinite) else f"{type(value).__name__} {json.dumps(value)[:40]}"
    raise ValueError(f"{path}: at {where}: expected a finite number or null, got {got}")


def _no_non_finite(path: Path, where: str, value: object) -> None:
    """No NaN or infinity anywhere: the plugin writes none (result rows hold them as strings)."""
    if isinstance(value, _NonFinite):
        raise ValueError(f"{path}: at {where}: expected a finite number, got {value}")
    if isinstance(value, dict):
        for key, inner in value.items():
            _no_non_finite(path, f"{where}.{key}", inner)
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            _no_non_finite(path, f"{where}[{i}]", inner)
