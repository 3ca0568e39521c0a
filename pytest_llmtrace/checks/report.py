"""The failure text users read, made from outcomes: one ``[check]`` block per finding, tables for numbers.

Nothing here decides a verdict; every function reads a ``CaseOutcome`` or ``CheckResult`` and formats it, so a
report in another shape (a results file, a CI summary) can be built from the same data.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable

from pytest_llmtrace.checks.outcome import CaseOutcome, CheckResult, Measurement, ReplayMiss


def indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _cell(m: Measurement, value: float | None) -> str:
    if value is None:
        return "-"
    if m.unit == "usd":
        return f"{value:.6f}"
    return f"{value:.1f}" if m.unit in ("ms", "cost", "tokens/s") else str(round(value))


def _now_cell(m: Measurement) -> str:
    """The value now, how much of it replay took from the recording (a replayed number never reads as measured),
    and for re-timed SQL the fastest of how many runs and what the re-runs found."""
    text = _cell(m, m.now)
    notes = []
    if m.unit == "ms" and m.replayed > 0:
        notes.append("replayed" if m.source == "replayed" else f"{m.replayed:.1f} replayed")
    if m.samples:
        notes.append(f"fastest of {len(m.samples)}")
    if m.finding:
        notes.append(m.finding)
    return f"{text} ({', '.join(notes)})" if notes else text


def format_table(measurements: Iterable[Measurement]) -> str:
    """Measurements as an aligned table for a failure message; empty string when there are none.

    Numbers are right-aligned so that magnitudes can be compared at a glance; ms get one decimal, tokens none.
    """
    rows = [(m.label, _cell(m, m.golden), _now_cell(m), m.rule) for m in measurements]
    if not rows:
        return ""
    header = ("metric", "golden", "now", "limit")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(3)]

    def line(cells: tuple[str, str, str, str], numbers: bool) -> str:
        metric, g, n, limit = cells
        g_cell = g.rjust(widths[1]) if numbers else g.ljust(widths[1])
        n_cell = n.rjust(widths[2]) if numbers else n.ljust(widths[2])
        return f"{metric.ljust(widths[0])} | {g_cell} | {n_cell} | {limit}".rstrip()

    return "\n".join([line(header, numbers=False), *(line(r, numbers=True) for r in rows)])


def sql_diff(golden_sql: str | None, now_sql: str | None) -> str:
    """A unified diff from the golden SQL to the SQL now, indented, with a leading newline; ``""`` if unchanged."""
    if golden_sql is None or now_sql is None or golden_sql.strip() == now_sql.strip():
        return ""
    diff = difflib.unified_diff(
        golden_sql.strip().splitlines(), now_sql.strip().splitlines(), "golden SQL", "SQL now", lineterm=""
    )
    return "\n" + indent("\n".join(diff))


def _replay(miss: ReplayMiss) -> str:
    if miss.kind == "prompt_changed":
        return "[replay] prompt changed: " + indent(miss.text).lstrip()
    return f"[replay] recorded call never made: {miss.text}"


def _sql(check: CheckResult, outcome: CaseOutcome) -> str:
    if outcome.sql is None or outcome.result is None:
        return f"[sql] {check.reason}"
    return f"[sql] {check.reason}\n" + indent(outcome.sql) + sql_diff(outcome.golden_sql, outcome.sql)


def _results(check: CheckResult, outcome: CaseOutcome) -> str:
    lines = [f"[results] {check.reason}", *("    " + line for line in check.details)]
    lines.append(sql_diff(outcome.golden_sql, outcome.sql).rstrip())
    return "\n".join(line for line in lines if line)


def _table(check: CheckResult, outcome: CaseOutcome) -> str:
    failed = [m for m in check.measurements if m.status == "failed"]
    if not failed:  # failed before measuring (an unknown metric in a helper call): the reason says why
        return _generic(check, outcome)
    return f"[{check.name}]\n" + indent(format_table(failed))


def _snapshot(check: CheckResult, outcome: CaseOutcome) -> str:
    if not check.details:
        return f"[snapshot] {check.reason}"
    return f"[snapshot] {check.reason}:\n" + indent("\n".join(check.details))


def _generic(check: CheckResult, outcome: CaseOutcome) -> str:
    return "\n".join([f"[{check.name}] {check.reason}", *("    " + line for line in check.details)])


_RENDERERS: dict[str, Callable[[CheckResult, CaseOutcome], str]] = {
    "sql": _sql,
    "results": _results,
    "cost": _table,
    "latency": _table,
    "tokens": _table,
    "snapshot": _snapshot,
}


def failure_blocks(outcome: CaseOutcome) -> list[str]:
    """One block per finding, in the order a reader should fix them: the app, the replay, then each check."""
    blocks = [] if outcome.app_error is None else [f"[app] the app raised {outcome.app_error}"]
    blocks.extend(_replay(miss) for miss in outcome.replay_misses)
    for check in outcome.checks:
        if check.failed:
            blocks.append(_RENDERERS.get(check.name, _generic)(check, outcome))
    return blocks


def failure_message(outcome: CaseOutcome, *, title: str | None = None) -> str:
    """The blocks, separated by blank lines, under ``"<title>: N checks failed"`` when a title is given, and last
    the question the case asked and where it came from, when the case has one."""
    blocks = failure_blocks(outcome)
    if title is not None:
        count = len(blocks)
        blocks.insert(0, f"{title}: {count} check{'s' if count != 1 else ''} failed")
    if outcome.question is not None:
        blocks.append(f"question (from {outcome.question_source}): {_clip(outcome.question)!r}")
    return "\n\n".join(blocks)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
