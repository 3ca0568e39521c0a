""" "Was / now" against ``--llmtrace-baseline``: each gate's value over the baseline's cases and over this run's, and
each case's verdict and figures in both, paired by case id. summary.md and report.html show the same rows.

A gate's "was" is the same expression evaluated over the baseline run's cases, so the two numbers are comparable
by construction; ``regressions`` has no "was" (a baseline does not regress against itself).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pytest_llmtrace.results import gate
from pytest_llmtrace.results.case_record import CaseRecord, figure_of, verdict_of


@dataclass(frozen=True)
class GateChange:
    result: gate.GateResult  # now
    was: float | None  # the same metric over the baseline's cases; None for regressions


@dataclass(frozen=True)
class CaseChange:
    case_id: str
    was: str | None  # the baseline's verdict; None: the case is new
    now: str | None  # this run's verdict; None: the case is gone
    was_ms: float | None  # durations_ms.total
    now_ms: float | None
    was_tokens: float | None  # tokens.total
    now_tokens: float | None
    was_rate: float | None  # pass_rate, when the run repeated its cases
    now_rate: float | None

    @property
    def regressed(self) -> bool:
        return self.was == "passed" and self.now not in (None, "passed")

    @property
    def improved(self) -> bool:
        return self.was not in (None, "passed") and self.now == "passed"


def gate_changes(results: Sequence[gate.GateResult], baseline: Sequence[CaseRecord] | None) -> list[GateChange]:
    changes = []
    for result in results:
        was = None
        if baseline is not None and result.rule.metric != "regressions":
            (before,) = gate.evaluate([result.rule], baseline)
            was = before.value
        changes.append(GateChange(result, was))
    return changes


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def case_changes(cases: Sequence[CaseRecord], baseline: Sequence[CaseRecord]) -> list[CaseChange]:
    """Every case of either run, regressed first, then improved, then the rest, each group by case id."""
    before = {str(c["case_id"]): c for c in baseline}
    after = {str(c["case_id"]): c for c in cases}
    rows = []
    for case_id in sorted(before.keys() | after.keys()):
        old, new = before.get(case_id), after.get(case_id)
        rows.append(
            CaseChange(
                case_id,
                None if old is None else verdict_of(old),
                None if new is None else verdict_of(new),
                None if old is None else _float(figure_of(old["durations_ms"])),
                None if new is None else _float(figure_of(new["durations_ms"])),
                None if old is None else _float(figure_of(old["tokens"])),
                None if new is None else _float(figure_of(new["tokens"])),
                None if old is None else _float(old.get("pass_rate")),
                None if new is None else _float(new.get("pass_rate")),
            )
        )
    rows.sort(key=lambda r: (not r.regressed, not r.improved, r.case_id))
    return rows


def figure(value: float | None, unit: str = "") -> str:
    """A number as reports show it: ``-`` when absent, ``inf`` for a case that never answered, 4 significant digits."""
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    text = str(int(value)) if value == int(value) and abs(value) < 1e15 else f"{value:.4g}"
    return f"{text} {unit}".strip()
