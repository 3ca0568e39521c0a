"""benchmarks/table.py: the docs' benchmark table comes from run.py's JSON, with its date and machine."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    """benchmarks/ is a folder of scripts, not an installed package: load the file itself."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


table = _load("table")

DOCUMENT: dict[str, Any] = {
    "date": "2026-12-07T02:10:00+00:00",
    "duration_s": 151.2,
    "command": "python benchmarks/run.py --quick --only startup",
    "machine": {
        "host": "vm",
        "arch": "x86_64",
        "cores": 2,
        "cpu_model": "AMD EPYC",
        "python": "3.11.7",
        "load": [8.8, 4.82, 2.08],
    },
    "note": "The machine was shared.",
    "rows": [
        {
            "name": "startup",
            "plugin_median_s": 4.4312,
            "baseline_median_s": 0.7,
            "ratio": 6.33,
            "target": "<= 2 s extra",
            "met": False,
            "note": "+3.73 s | embedded",
        },
        {
            "name": "sql_cost",
            "plugin_median_s": 45.0,
            "baseline_median_s": 44.5,
            "ratio": 1.011,
            "target": "<= 1.2x",
            "met": True,
            "note": "",
        },
    ],
}


def test_the_table_names_its_date_machine_and_conditions() -> None:
    text = table.markdown(DOCUMENT)
    head, _, rows = text.partition("\n\n")
    assert "2026-12-07T02:10:00+00:00" in head
    assert "`python benchmarks/run.py --quick --only startup` (151 s)" in head
    assert "2 cores (AMD EPYC, x86_64), Python 3.11.7, load average 8.8, 4.8, 2.1 at the start" in head
    assert head.endswith("The machine was shared.")
    assert rows.splitlines()[2:] == [
        "| startup | 4.431 | 0.7 | 6.33 | <= 2 s extra | no | +3.73 s \\| embedded |",
        "| sql_cost | 45 | 44.5 | 1.01 | <= 1.2x | yes |  |",
    ]


def test_into_replaces_only_the_marked_region(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(DOCUMENT))
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Benchmarks\n\nprose before\n\n{table.BEGIN}\nold table\n{table.END}\n\nprose after\n")
    for _ in range(2):  # a second run replaces the first table instead of adding one
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "table.py"), str(results), "--into", str(page)],
                       check=True)  # fmt: skip
    text = page.read_text()
    assert text.startswith("# Benchmarks\n\nprose before\n\n")
    assert text.endswith(f"{table.END}\n\nprose after\n")
    assert "old table" not in text
    assert text.count("| startup |") == 1


def test_a_page_without_markers_is_refused() -> None:
    with pytest.raises(SystemExit, match=r"no <!-- benchmarks:table --> .* markers"):
        table.replace_between("# Benchmarks\n", "| table |\n")


def test_the_command_line_leaves_out_the_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # run.py puts the checkout on it, as a script needs
    run = _load("run")
    argv = ["--quick", "--note", "The machine was shared.", "--only", "startup", "--note=again"]
    assert run.command_line(argv) == "python benchmarks/run.py --quick --only startup"


def test_the_docs_page_is_the_committed_results_file() -> None:
    """docs/benchmarks.md holds what table.py makes of benchmarks/results.json, not a hand-edited copy."""
    results = json.loads((REPO / "benchmarks" / "results.json").read_text())
    page = (REPO / "docs" / "benchmarks.md").read_text()
    assert table.replace_between(page, table.markdown(results)) == page
    assert {"cores", "cpu_model", "python"} <= set(results["machine"])
