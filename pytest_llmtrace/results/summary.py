"""``summary.md``: what a person reads in ten seconds (also appended to ``$GITHUB_STEP_SUMMARY``): totals, the gate,
the failing cases with their first reason, and with a baseline each gate's and each case's "was / now".

Every value taken from a trace, a golden file, model output or a baseline is made inert for Markdown: table cells
lose their pipes, line breaks and control characters, and text is shown as code, so a hostile answer or baseline
cannot add rows, links, images or HTML to a CI page; a verdict is shown as is only when it is one the plugin writes.
"""

from __future__ import annotations

from collections.abc import Sequence

from pytest_llmtrace.core.inert import one_line
from pytest_llmtrace.results import gate, llm_report
from pytest_llmtrace.results.baseline import case_changes, figure, gate_changes
from pytest_llmtrace.results.case_record import CaseRecord, failed_checks, runs_passed, verdict_of

VERDICTS = ("passed", "failed", "error", "new", "gone")  # new, gone: a case in one run only
MAX_CASE_ROWS = 200  # a step summary stays readable; report.html and results.json list every case


def totals(cases: Sequence[CaseRecord]) -> dict[str, int]:
    out = {"cases": len(cases), "passed": 0, "failed": 0, "error": 0}
    for case in cases:
        out[verdict_of(case)] = out.get(verdict_of(case), 0) + 1
    return out


def cell(text: object, limit: int = 160) -> str:
    """Text as one inert Markdown table cell: a code span (no links, emphasis or HTML), no pipes, one line, its
    control characters escaped."""
    flat = " ".join(one_line(text).split())[:limit].replace("|", "\\|").replace("`", "'")  # a backtick ends the span
    return f"`{flat}`" if flat else ""


def verdict_cell(value: object) -> str:
    """A verdict as the plugin writes it (passed, failed, error) as is; anything else a file claims is a verdict
    (a baseline is any results.json) as an inert cell."""
    return str(value) if value in VERDICTS else cell(value, 40)


def why(case: CaseRecord) -> str:
    """The first reason a case did not pass, as plain text."""
    if case["app_error"]:
        return str(case["app_error"])
    if case["replay_misses"]:
        return f"replay: {case['replay_misses'][0]['kind']}"
    failed = failed_checks(case)
    return f"{failed[0]['name']}: {failed[0]['reason']}" if failed else ""


def _trace_link(url: object) -> str:
    """A link to the case's trace; the URL is the plugin's own (Phoenix's base URL and ids), still kept inert."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return ""
    return f"[trace]({url.replace(' ', '%20').replace(')', '%29').replace('|', '%7C')})"


def _runs(case: CaseRecord) -> str:
    runs = case.get("runs") or []
    return f" ({runs_passed(case)}/{len(runs)} runs)" if len(runs) > 1 else ""


def summary_markdown(
    cases: Sequence[CaseRecord],
    gate_results: Sequence[gate.GateResult],
    baseline: Sequence[CaseRecord] | None = None,
) -> str:
    count = totals(cases)
    lines = [
        "## llmtrace results",
        "",
        f"{count['cases']} cases: {count['passed']} passed, {count['failed']} failed, {count['error']} errors",
        "",
    ]
    repeated = [c for c in cases if len(c.get("runs") or []) > 1]
    if repeated:
        runs = sum(len(c["runs"]) for c in repeated)
        lines += [f"Each case ran {runs // len(repeated)} times; a case counts once, by its pass rate.", ""]
    if gate_results and baseline is not None:
        lines += ["### Gate", "", "| gate | was | now | verdict |", "|---|---|---|---|"]
        for change in gate_changes(gate_results, baseline):
            result = change.result
            verdict = "passed" if result.passed else f"**FAILED** {cell(', '.join(result.cases), 120)}"
            lines.append(f"| `{result.rule}` | {figure(change.was)} | {figure(result.value)} | {verdict} |")
        lines.append("")
    elif gate_results:
        lines += ["### Gate", ""] + [f"- {cell(gate.format_result(r), 400)}" for r in gate_results] + [""]
    failing = [c for c in cases if c.get("verdict") != "passed"]
    if failing:
        linked = any(c.get("phoenix_url") for c in failing)  # the column only when the run was sent to Phoenix
        columns = ["case", "verdict", "why", *(["Phoenix"] if linked else [])]
        lines += ["### Failing cases", "", f"| {' | '.join(columns)} |", "|---" * len(columns) + "|"]
        for case in failing[:MAX_CASE_ROWS]:
            shown = f"{verdict_cell(case.get('verdict'))}{_runs(case)}"
            row = f"| {cell(case['case_id'])} | {shown} | {cell(why(case))} |"
            if linked:
                row += f" {_trace_link(case.get('phoenix_url'))} |"
            lines.append(row)
        if len(failing) > MAX_CASE_ROWS:
            lines.append(f"| ... {len(failing) - MAX_CASE_ROWS} more in results.json |" + " |" * (len(columns) - 1))
        lines.append("")
    lines += llm_report.markdown(cases)
    if baseline is not None:
        lines += _was_now(cases, baseline)
    return "\n".join(lines) + "\n"


def _was_now(cases: Sequence[CaseRecord], baseline: Sequence[CaseRecord]) -> list[str]:
    changes = case_changes(cases, baseline)
    rates = any(c.was_rate is not None or c.now_rate is not None for c in changes)
    regressed = sum(1 for c in changes if c.regressed)
    improved = sum(1 for c in changes if c.improved)
    lines = [
        "### Against the baseline",
        "",
        f"{regressed} regressed, {improved} improved, {len(changes)} cases in either run.",
        "",
        "| case | verdict was | verdict now | total ms was | total ms now | tokens was | tokens now |"
        + (" pass rate was | pass rate now |" if rates else ""),
        "|---|---|---|---|---|---|---|" + ("---|---|" if rates else ""),
    ]
    for change in changes[:MAX_CASE_ROWS]:
        mark = " (regressed)" if change.regressed else " (improved)" if change.improved else ""
        row = (
            f"| {cell(change.case_id)} | {verdict_cell(change.was or 'new')} | "
            f"{verdict_cell(change.now or 'gone')}{mark} | "
            f"{figure(change.was_ms)} | {figure(change.now_ms)} | {figure(change.was_tokens)} | "
            f"{figure(change.now_tokens)} |"
        )
        if rates:
            row += f" {figure(change.was_rate)} | {figure(change.now_rate)} |"
        lines.append(row)
    if len(changes) > MAX_CASE_ROWS:
        lines.append(f"\n... {len(changes) - MAX_CASE_ROWS} more cases in report.html")
    lines.append("")
    return lines
