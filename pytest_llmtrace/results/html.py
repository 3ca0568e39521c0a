"""``report.html``: one self-contained page per run, made from results.json alone.

No network and no script: the styles are inline, there is no JavaScript, and a Content-Security-Policy of
``default-src 'none'`` makes the browser refuse anything a hostile string might still try to load. Every string
from a trace, a golden file or model output (case ids, SQL, errors, reasons, attribute values) goes through
``html.escape``; the only links are to the Phoenix the user configured (a golden file's other Phoenix is text), and
the CSP also forbids a ``<base>`` and form submissions (``base-uri 'none'; form-action 'none'``).

Layout: the gate verdict first (``#verdict``), then the totals, the gates with "was / now" against a baseline, and
one row per case, failing cases first: verdict (with pass rate when runs were repeated), failed checks, the total
and SQL latency and total tokens each as now / golden / limit with replayed time marked, the baseline's verdict,
and the Phoenix trace. Each case folds out (open for cases that did not pass) golden and now as two SVG waterfalls
on one time scale (``results.waterfall``), its checks' reasons and details (the rows that differ), every measurement
with its limit, the SQL diff and its runs.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any, Literal

from pytest_llmtrace.core.url_secrets import redact_url
from pytest_llmtrace.results import gate, llm_report, waterfall
from pytest_llmtrace.results.baseline import case_changes, figure, gate_changes
from pytest_llmtrace.results.case_record import (
    CaseRecord,
    MeasurementRecord,
    failed_checks,
    figure_of,
    runs_passed,
    verdict_of,
)
from pytest_llmtrace.results.summary import totals, why
from pytest_llmtrace.results.trace_links import phoenix_link

_ORDER = {"error": 0, "failed": 1, "passed": 2}
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#101828;background:#f9fafb}
main{max-width:1400px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:17px;margin:24px 0 8px}
.meta{color:#475467;margin:0 0 12px}.meta span{margin-right:16px}
#verdict{border-radius:8px;padding:14px 18px;color:#fff;margin:12px 0}
#verdict h2{margin:0 0 6px;font-size:20px}#verdict ul{margin:0;padding-left:20px}
.v-failed{background:#b42318}.v-passed{background:#067647}.v-none{background:#475467}
table{border-collapse:collapse;width:100%;background:#fff;margin:4px 0}
th,td{border:1px solid #d0d5dd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f2f4f7;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}.fig{white-space:nowrap}
table#cases{table-layout:fixed}td{overflow-wrap:anywhere}
tr.case.failed td:first-child,tr.case.error td:first-child{border-left:4px solid #b42318}
tr.case.passed td:first-child{border-left:4px solid #067647}
.badge{display:inline-block;border-radius:4px;padding:0 6px;font-weight:600;color:#fff;overflow-wrap:normal}
.b-failed,.b-error{background:#b42318}.b-passed{background:#067647}.b-new,.b-gone{background:#475467}
.bad{color:#b42318;font-weight:600}.muted{color:#667085}.small{font-size:12px}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}
pre{white-space:pre-wrap;word-break:break-word;background:#f2f4f7;padding:8px;margin:4px 0;border-radius:4px}
.add{color:#067647}.del{color:#b42318}
details>summary{cursor:pointer;color:#175cd3}tr.more td{background:#fcfcfd;border-top:none}
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _phoenix_cell(case: CaseRecord, phoenix: Sequence[str]) -> str:
    link = phoenix_link(case, phoenix)
    if link:
        return f"<a href='{_e(link)}' rel='noopener noreferrer'>trace</a>"
    found = case.get("phoenix")
    if isinstance(found, Mapping) and found.get("url"):  # another Phoenix: where the trace is, as text
        where = f"{redact_url(str(found.get('url')))} trace {found.get('trace_id') or '?'}"
        return f"<span class='muted small'>{_e(where)}</span>"
    return "<span class='muted'>-</span>"


def _measurements(case: CaseRecord, check: str, metric: str, unit: str) -> list[MeasurementRecord]:
    for result in case["checks"]:
        if result.get("name") == check:
            return [m for m in result.get("measurements", ()) if m.get("metric") == metric and m.get("unit") == unit]
    return []


def _now_text(now: float | None, source: str, replayed: float) -> str:
    if now is None:
        return "-"
    if source == "replayed":
        return f"{figure(now)} (replayed)"
    if replayed:
        return f"{figure(now)} ({figure(round(replayed, 1))} replayed)"
    return figure(now)


def _figure_cell(
    case: CaseRecord,
    check: str,
    metric: str,
    unit: Literal["ms", "tokens"],
    now_field: Literal["durations_ms", "tokens"],
    golden_field: Literal["golden_durations_ms", "golden_tokens"],
) -> str:
    """now / golden / limit for one metric, from the check's measurements (or the raw figures when it ran none)."""
    found = _measurements(case, check, metric, unit)
    if found:
        first = found[0]
        now = _now_text(first.get("now"), str(first.get("source", "")), float(first.get("replayed") or 0))
        golden = figure(first.get("golden"))
        failed = any(m.get("status") == "failed" for m in found)
        limits = "; ".join(str(m.get("rule")) for m in found if m.get("rule") and m.get("status") != "skipped")
    else:
        replayed = float(figure_of(case["replayed_durations_ms"], metric) or 0) if unit == "ms" else 0.0
        now = _now_text(figure_of(case.get(now_field), metric), "", replayed)
        golden = figure(figure_of(case.get(golden_field), metric))
        failed, limits = False, ""
    klass = "fig bad" if failed else "fig"
    return (
        f"<td class='num'><span class='{klass}'>{_e(now)}</span><br>"
        f"<span class='muted small'>golden {_e(golden)}</span>"
        f"<br><span class='muted small'>{_e(limits or 'no limit')}</span></td>"
    )


def _verdict(doc: Mapping[str, Any], results: Sequence[gate.GateResult]) -> str:
    count = doc.get("totals") or totals(doc.get("cases", ()))
    if results:
        ok = all(r.passed for r in results)
        klass, title = ("v-passed", "Gate passed") if ok else ("v-failed", "Gate FAILED")
        items = "".join(f"<li>{_e(gate.format_result(r))}</li>" for r in results)
    else:
        bad = count.get("failed", 0) + count.get("error", 0)
        klass = "v-failed" if bad else "v-passed"
        title = f"No gate: {bad} of {count.get('cases', 0)} cases did not pass"
        items = ""
    verdict = "none" if not results else ("passed" if all(r.passed for r in results) else "failed")
    return (
        f"<section id='verdict' class='{klass}' data-verdict='{verdict}'><h2>{_e(title)}</h2>"
        f"<ul>{items}</ul><p>{_e(count.get('cases', 0))} cases: {_e(count.get('passed', 0))} passed, "
        f"{_e(count.get('failed', 0))} failed, {_e(count.get('error', 0))} errors</p></section>"
    )


def _gate_table(results: Sequence[gate.GateResult], baseline: Sequence[CaseRecord] | None) -> str:
    if not results:
        return ""
    rows = []
    for change in gate_changes(results, baseline):
        result = change.result
        status = "passed" if result.passed else "failed"
        cases = ", ".join(result.cases[:20]) + (" ..." if len(result.cases) > 20 else "")
        was = f"<td class='num'>{_e(figure(change.was))}</td>" if baseline is not None else ""
        rows.append(
            f"<tr><td><code>{_e(result.rule)}</code></td>{was}<td class='num'>{_e(figure(result.value))}</td>"
            f"<td><span class='badge b-{status}'>{status}</span></td><td class='small'>{_e(cases)}</td></tr>"
        )
    was_head = "<th>was (baseline)</th>" if baseline is not None else ""
    return (
        f"<h2>Gates</h2><table id='gates'><thead><tr><th>gate</th>{was_head}<th>now</th><th>verdict</th>"
        f"<th>cases that caused it</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _sql_diff(case: CaseRecord) -> str:
    golden, now = case["golden_sql"], case["sql"]
    if golden is None and now is None:
        return ""
    if golden == now:
        return f"<p class='small'>SQL, the same as the golden trace's:</p><pre>{_e(now)}</pre>"
    lines = difflib.unified_diff(
        str(golden or "").splitlines(), str(now or "").splitlines(), "golden", "now", lineterm=""
    )
    shown = []
    for line in lines:
        klass = "add" if line.startswith("+") else "del" if line.startswith("-") else ""
        shown.append(f"<span class='{klass}'>{_e(line)}</span>" if klass else _e(line))
    return "<p class='small'>SQL diff, golden trace to now:</p><pre>" + "\n".join(shown) + "</pre>"


def _budget_table(case: CaseRecord) -> str:
    rows = []
    for check in case["checks"]:
        for m in check.get("measurements", ()):
            now = _now_text(m.get("now"), str(m.get("source", "")), float(m.get("replayed") or 0))
            status = str(m.get("status"))
            klass = " class='bad'" if status == "failed" else ""
            rows.append(
                f"<tr><td>{_e(check.get('name'))}</td><td>{_e(m.get('metric'))} {_e(m.get('unit'))}</td>"
                f"<td class='num'>{_e(figure(m.get('golden')))}</td><td class='num'>{_e(now)}</td>"
                f"<td>{_e(m.get('rule') or '')}</td><td{klass}>{_e(status)}</td><td>{_e(m.get('source', ''))}</td>"
                f"<td class='small'>{_e(m.get('reason') or m.get('finding') or '')}</td></tr>"
            )
    if not rows:
        return ""
    return (
        "<table class='budgets'><thead><tr><th>check</th><th>metric</th><th>golden</th><th>now</th><th>limit</th>"
        "<th>status</th><th>source</th><th>note</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _runs_table(case: CaseRecord) -> str:
    runs = case.get("runs") or []
    if len(runs) < 2:
        return ""
    rows = "".join(
        f"<tr><td class='num'>{_e(r.get('run'))}</td><td><span class='badge b-{_e(r.get('verdict'))}'>"
        f"{_e(r.get('verdict'))}</span></td><td>{_e(', '.join(r.get('failed_checks') or []))}</td>"
        f"<td class='small'>{_e(r.get('app_error') or '')}</td>"
        f"<td class='num'>{_e(figure(figure_of(r.get('durations_ms'))))}</td></tr>"
        for r in runs
    )
    return (
        f"<p class='small'>Runs (the case's figures are run {_e(case.get('representative_run', 1))}'s):</p>"
        "<table class='runs'><thead><tr><th>run</th><th>verdict</th><th>failed checks</th><th>app error</th>"
        f"<th>total ms</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _details(case: CaseRecord) -> str:
    parts = []
    if case["question"] is not None:
        parts.append(f"<p><b>Question</b> ({_e(case.get('question_source') or '')}): {_e(case['question'])}</p>")
    if case["app_error"]:
        parts.append(f"<p class='bad'>App error:</p><pre>{_e(case['app_error'])}</pre>")
    for miss in case["replay_misses"]:
        parts.append(f"<p class='bad'>Replay: {_e(miss.get('kind'))}</p><pre>{_e(miss.get('text'))}</pre>")
    semantic = case.get("semantic")
    if semantic:
        how = "SQL unchanged" if semantic.get("unchanged") else f"{semantic['databases']} databases"
        parts.append(f"<p><b>Semantic</b>: {_e(semantic['verdict'])} ({_e(how)})</p>")
    for check in case["checks"]:
        if check.get("status") == "passed" and not check.get("details"):
            continue
        text = "\n".join([str(check.get("reason") or ""), *map(str, check.get("details") or ())]).strip()
        parts.append(f"<p><b>[{_e(check.get('name'))}]</b> {_e(check.get('status'))}</p><pre>{_e(text or '-')}</pre>")
    parts += [
        waterfall.pair(case["golden_waterfall"], case["waterfall"]),
        _sql_diff(case),
        _budget_table(case),
        _runs_table(case),
    ]
    return "".join(parts)


def _slug(text: str, seen: set[str]) -> str:
    base = "case-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:60] or "x")
    slug, n = base, 1
    while slug in seen:
        n += 1
        slug = f"{base}-{n}"
    seen.add(slug)
    return slug


def _case_rows(cases: Sequence[CaseRecord], was: Mapping[str, str | None] | None, phoenix: Sequence[str]) -> str:
    ordered = sorted(cases, key=lambda c: (_ORDER.get(verdict_of(c), 1), c["case_id"]))
    seen: set[str] = set()
    rows = []
    width = 8 if was is not None else 7
    for case in ordered:
        verdict = verdict_of(case)
        verdict = verdict if verdict in _ORDER else "failed"
        runs = case.get("runs") or []
        rate = ""
        if len(runs) > 1:
            floor = _e(case.get("min_pass_rate"))
            rate = f"<br><span class='small'>{runs_passed(case)}/{len(runs)} runs, floor {floor}</span>"
        failed = [str(c.get("name")) for c in failed_checks(case)]
        reason = why(case)
        phoenix_cell = _phoenix_cell(case, phoenix)
        baseline = ""
        if was is not None:
            before = was.get(str(case["case_id"]))
            label = before or "new"
            baseline = f"<td><span class='badge b-{_e(label if label in _ORDER else 'new')}'>{_e(label)}</span></td>"
        rows.append(
            f"<tr class='case {verdict}' id='{_slug(str(case.get('case_id')), seen)}' data-verdict='{verdict}'>"
            f"<td><b>{_e(case.get('case_id'))}</b><br><span class='muted small'>{_e(case.get('nodeid') or '')}"
            f"</span></td><td><span class='badge b-{verdict}'>{verdict}</span>{rate}</td>"
            f"<td>{_e(', '.join(failed) or '-')}<br><span class='small'>{_e(reason[:300])}</span></td>"
            + _figure_cell(case, "latency", "total", "ms", "durations_ms", "golden_durations_ms")
            + _figure_cell(case, "latency", "SQL", "ms", "durations_ms", "golden_durations_ms")
            + _figure_cell(case, "tokens", "total", "tokens", "tokens", "golden_tokens")
            + baseline
            + f"<td>{phoenix_cell}</td></tr>"
            f"<tr class='more'><td colspan='{width}'><details{'' if verdict == 'passed' else ' open'}>"
            "<summary>waterfalls, checks, SQL and budgets</summary>"
            f"{_details(case)}</details></td></tr>"
        )
    return "".join(rows)


def _was_now_table(cases: Sequence[CaseRecord], baseline: Sequence[CaseRecord]) -> str:
    rows = []
    for change in case_changes(cases, baseline):
        mark = "regressed" if change.regressed else "improved" if change.improved else ""
        flag = f" <span class='bad'>{mark}</span>" if mark else ""
        rows.append(
            f"<tr><td>{_e(change.case_id)}</td><td>{_e(change.was or 'new')}</td><td>{_e(change.now or 'gone')}"
            f"{flag}</td>"
            f"<td class='num'>{_e(figure(change.was_ms))}</td><td class='num'>{_e(figure(change.now_ms))}</td>"
            f"<td class='num'>{_e(figure(change.was_tokens))}</td><td class='num'>{_e(figure(change.now_tokens))}</td>"
            f"<td class='num'>{_e(figure(change.was_rate))}</td><td class='num'>{_e(figure(change.now_rate))}</td></tr>"
        )
    return (
        "<h2>Against the baseline</h2><table id='was-now'><thead><tr><th>case</th><th>verdict was</th>"
        "<th>verdict now</th><th>total ms was</th><th>total ms now</th><th>tokens was</th><th>tokens now</th>"
        "<th>pass rate was</th><th>pass rate now</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _meta(run: Mapping[str, Any]) -> str:
    models = ", ".join(
        f"{m.get('name')} ({str(m.get('digest'))[:19] if m.get('digest') else 'digest unknown'})"
        for m in run.get("models") or ()
    )
    fields = [
        ("mode", run.get("mode")),
        ("model", models or run.get("model")),
        ("git", str(run.get("git_revision") or "-")[:12]),
        ("pytest-llmtrace", run.get("plugin_version")),
        ("python", run.get("python")),
        ("machine", f"{run['platform']}, {run.get('cpu_count')} CPUs" if run.get("platform") else None),
    ]
    shown = "".join(f"<span><b>{k}</b> {_e('-' if v is None else v)}</span>" for k, v in fields)
    return f"<p class='meta'>{shown}</p>"


def _columns(baseline: bool) -> str:
    widths = [16, 8, 26, 13, 12, 11] + ([8, 6] if baseline else [14])
    return "<colgroup>" + "".join(f"<col style='width:{w}%'>" for w in widths) + "</colgroup>"


def render(
    doc: Mapping[str, Any],
    gate_results: Sequence[gate.GateResult] = (),
    baseline: Sequence[CaseRecord] | None = None,
    *,
    phoenix: Sequence[str] = (),
) -> str:
    """The page for one results.json document (``doc``), its gates' results, and the baseline's cases if any;
    ``phoenix``: the URLs of the Phoenix the user configured, the only one trace links go to."""
    cases: list[CaseRecord] = list(doc.get("cases", ()))
    was = None if baseline is None else {str(c["case_id"]): verdict_of(c) for c in baseline}
    baseline_head = "<th>baseline</th>" if was is not None else ""
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "base-uri 'none'; form-action 'none'\">"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>llmtrace report</title><style>{_CSS}{waterfall.CSS}</style></head><body><main>"
        f"<h1>llmtrace report</h1>{_meta(doc.get('run') or {})}"
        f"{_verdict(doc, gate_results)}{_gate_table(gate_results, baseline)}"
        "<h2>Cases</h2><table id='cases'>"
        + _columns(was is not None)
        + "<thead><tr><th>case</th><th>verdict</th><th>failed checks</th>"
        "<th>total ms<br><span class='small'>now / golden / limit</span></th>"
        "<th>SQL ms<br><span class='small'>now / golden / limit</span></th>"
        f"<th>tokens<br><span class='small'>now / golden / limit</span></th>{baseline_head}<th>Phoenix</th></tr>"
        f"</thead><tbody>{_case_rows(cases, was, phoenix)}</tbody></table>"
        + llm_report.html_section(cases)
        + (_was_now_table(cases, baseline) if baseline is not None else "")
        + "</main></body></html>\n"
    )
