"""The report files of a run: results.json, summary.md (appended to $GITHUB_STEP_SUMMARY too) and report.html,
made from the same cases and written as golden files are: atomically, never through a symbolic link.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_llmtrace.core.errors import LLMTraceError
from pytest_llmtrace.results import gate, html, llm_gate
from pytest_llmtrace.results.case_record import CaseRecord
from pytest_llmtrace.results.summary import summary_markdown, totals
from pytest_llmtrace.trace.otlp import write_golden


def _make_report_dir(directory: Path, root: Path | None) -> None:
    """Create the report folder, refusing one reached through a symbolic link below ``root`` (the rootdir): a link
    planted there (a checked-out repository can hold one) would send the reports anywhere the user can write. Links
    above the rootdir (a home folder on another disk) are the user's own and stay allowed; without a ``root``, only
    the report folder itself is checked."""
    if root is not None and directory.is_relative_to(root):
        parts = directory.relative_to(root).parts
        checked = [root.joinpath(*parts[:i]) for i in range(1, len(parts) + 1)]
    else:
        directory.parent.mkdir(parents=True, exist_ok=True)
        checked = [directory]
    for path in checked:
        if path.is_symlink():
            raise LLMTraceError(
                f"{path} is a symbolic link; reports are never written through a link: remove it, or give "
                "--llmtrace-report a folder that is not one"
            )
        if not path.exists():
            path.mkdir()
        elif not path.is_dir():
            raise LLMTraceError(f"{path} exists and is not a folder; remove it, or give --llmtrace-report another one")


def write_reports(
    directory: Path,
    records: Sequence[CaseRecord],
    meta: dict[str, Any],
    gate_results: list[gate.GateResult],
    baseline: list[CaseRecord] | None,
    *,
    phoenix: list[str] | None = None,
    root: Path | None = None,
) -> None:
    """results.json, summary.md (appended to $GITHUB_STEP_SUMMARY too) and report.html, from the same cases;
    ``phoenix``: the configured Phoenix URLs, the only ones report.html links to.

    Written as golden files are (``trace.otlp.write_golden``): atomically, never through a symbolic link planted at
    a report's name, and never into a folder reached through a link planted inside the project; an
    ``LLMTraceError`` says which path was refused.
    """
    _make_report_dir(directory, root)
    cases = list(records)  # a run's CaseLog, read once: the three files are made from the same dicts
    doc = {
        "schema_version": gate.RESULTS_SCHEMA_VERSION,
        "run": meta,
        "totals": totals(cases),
        "llm_totals": llm_gate.totals(cases),  # the run's cost, and tokens and cost per model
        "cases": cases,
    }
    write_golden(directory / "results.json", json.dumps(doc, indent=2, default=str) + "\n", force=True)
    summary = summary_markdown(cases, gate_results, baseline)
    write_golden(directory / "summary.md", summary, force=True)
    write_golden(directory / "report.html", html.render(doc, gate_results, baseline, phoenix=phoenix or ()), force=True)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as out:
            out.write(summary)
