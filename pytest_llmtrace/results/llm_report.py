"""The model calls in the reports: TTFT, tokens/s and cost per case, now and golden, and the run's total cost.

One table in three shapes (terminal lines, summary.md, report.html), each made from ``llm_usage`` as results.json
holds it (``checks.usage.usage_summary``); a cost that is unknown (no price, a price error) reads ``unknown``,
never $0.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from pytest_llmtrace.core.inert import one_line
from pytest_llmtrace.results.case_record import CaseRecord, LLMUsageRecord, usage_of
from pytest_llmtrace.results.llm_gate import usage_totals

MAX_ROWS = 50


def _ms(value: object) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "-"


def _cost(value: object) -> str:
    return f"${value:.6f}" if isinstance(value, (int, float)) else "unknown"


_Row = tuple[str, str, str, str, str, str]


def _table(cases: Sequence[CaseRecord]) -> tuple[list[_Row], str | None]:
    """The rows (case, TTFT ms now / golden, tokens/s, cost now, cost golden, replayed part of the TTFT) and the
    total line, from one pass over the cases: a run's ``CaseLog`` reads a case anew each time."""
    rows: list[_Row] = []
    usages: list[LLMUsageRecord] = []
    for case in cases:
        now, golden = usage_of(case), usage_of(case, "golden_llm_usage")
        usages.append(now)
        if not now["calls"] and not golden["calls"]:
            continue
        replayed = now["ttft_replayed_ms"]
        rows.append(
            (
                case["case_id"],
                f"{_ms(now['ttft_ms'])} / {_ms(golden['ttft_ms'])}",
                _ms(now["tokens_per_s"]),
                _cost(now["cost_usd"]) if now["calls"] else "-",
                _cost(golden["cost_usd"]) if golden["calls"] else "-",
                f"{replayed:.1f}" if replayed else "",
            )
        )
    return rows, _total_line(usages)


def _total_line(usages: list[LLMUsageRecord]) -> str | None:
    """``cost: $0.012345 total over 23 cases (qwen-sql-prod $0.012345)``, or ``None`` when no case called a model."""
    found = usage_totals(usages)
    if not found["models"]:
        return None
    models = ", ".join(
        f"{name} {_cost(None if m.get('unknown_calls') else m['cost_usd'])}"
        for name, m in sorted(found["models"].items())
    )
    counted = sum(1 for usage in usages if usage["calls"])
    return f"cost: {_cost(found['cost_usd'])} total over {counted} cases ({models})"


def terminal_lines(cases: Sequence[CaseRecord]) -> list[str]:
    rows, total = _table(cases)
    if not rows:
        return []
    width = max(len(r[0]) for r in rows)
    lines = [f"{'case':<{width}}  TTFT ms now / golden   tokens/s   cost now   cost golden"]
    for case_id, ttft, rate, cost, golden, replayed in rows[:MAX_ROWS]:
        note = f"  ({replayed} ms replayed)" if replayed else ""
        lines.append(one_line(f"{case_id:<{width}}  {ttft:<20}  {rate:>8}   {cost}   {golden}{note}"))
    if len(rows) > MAX_ROWS:
        lines.append(f"... {len(rows) - MAX_ROWS} more in results.json")
    return [*lines, total] if total else lines


def markdown(cases: Sequence[CaseRecord]) -> list[str]:
    rows, total = _table(cases)
    if not rows:
        return []
    lines = [
        "### Model calls",
        "",
        "| case | TTFT ms now / golden | tokens/s | cost now | cost golden |",
        "|---|---|---|---|---|",
    ]
    for case_id, ttft, rate, cost, golden, replayed in rows[:MAX_ROWS]:
        ttft += f" ({replayed} replayed)" if replayed else ""
        lines.append(f"| {one_line(case_id).replace('|', '/')} | {ttft} | {rate} | {cost} | {golden} |")
    return [*lines, "", *([total, ""] if total else [])]


def html_section(cases: Sequence[CaseRecord]) -> str:
    rows, total = _table(cases)
    if not rows:
        return ""
    body = "".join(
        f"<tr><td>{html.escape(case_id)}</td><td>{ttft}{f' <span class=small>({rep} replayed)</span>' if rep else ''}"
        f"</td><td>{rate}</td><td>{cost}</td><td>{golden}</td></tr>"
        for case_id, ttft, rate, cost, golden, rep in rows
    )
    foot = f"<p id='llm-total'>{html.escape(total)}</p>" if total else ""
    return (
        "<h2>Model calls</h2><table id='llm-usage'><thead><tr><th>case</th><th>TTFT ms now / golden</th>"
        f"<th>tokens/s</th><th>cost now</th><th>cost golden</th></tr></thead><tbody>{body}</tbody></table>{foot}"
    )
