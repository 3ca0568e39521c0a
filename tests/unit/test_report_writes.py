"""Security review, finding 5: results.json, summary.md and report.html are written as golden files are: atomically,
never through a symbolic link planted at their names, and never into a folder reached through a planted link."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_llmtrace.core.errors import LLMTraceError
from pytest_llmtrace.results.case_record import read_case
from pytest_llmtrace.results.report_files import write_reports

META = {"mode": "replay"}
CASES = [read_case({"case_id": "c", "passed": True, "verdict": "passed", "checks": []})]
NAMES = ("results.json", "summary.md", "report.html")


@pytest.mark.parametrize("name", NAMES)
def test_a_link_planted_at_a_report_name_is_refused_and_its_target_untouched(tmp_path: Path, name: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    reports = tmp_path / "project" / "out"
    reports.mkdir(parents=True)
    (reports / name).symlink_to(victim)
    with pytest.raises(LLMTraceError, match=f"{name} is a symbolic link"):
        write_reports(reports, CASES, META, [], None, root=tmp_path / "project")
    assert victim.read_text() == "precious\n"
    assert (reports / name).is_symlink()


def test_a_report_folder_reached_through_a_planted_link_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    project = tmp_path / "project"
    (project / "build").mkdir(parents=True)
    (project / "build" / "reports").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(LLMTraceError, match="reports is a symbolic link"):
        write_reports(project / "build" / "reports" / "llmtrace", CASES, META, [], None, root=project)
    assert list(elsewhere.iterdir()) == []


def test_reports_replace_old_files_atomically_and_leave_no_temporary_file(tmp_path: Path) -> None:
    reports = tmp_path / "out"
    reports.mkdir()
    old = reports / "results.json"
    old.write_text("old")
    held = old.open()  # a reader of the old file keeps reading the old file: a new one replaced it, not rewrote it
    write_reports(reports, CASES, META, [], None, root=tmp_path)
    assert held.read() == "old"
    held.close()
    assert sorted(p.name for p in reports.iterdir()) == sorted(NAMES)
    assert '"schema_version": 1' in old.read_text()
