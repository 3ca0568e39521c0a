"""Security review, finding 6: ``llmtrace gate`` counts each file and each case once, fails closed when a shard's
results.json is missing, and refuses a forged NaN or infinity where a figure belongs."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_llmtrace.checks.outcome import CaseOutcome, CheckResult, Measurement
from pytest_llmtrace.cli import main as cli_main
from pytest_llmtrace.results.gate import GATE_EXIT_STATUS, load_cases


def _case(case_id: str, total_ms: float | str = 100.0) -> dict[str, Any]:
    return {
        "case_id": case_id,
        "nodeid": f"golden_traces/{case_id}.json::{case_id}",
        "passed": True,
        "verdict": "passed",
        "checks": [{"name": "sql", "status": "passed"}, {"name": "results", "status": "passed"}],
        "durations_ms": {"total": total_ms},
        "tokens": {"total": 10},
    }


def _write(path: Path, *cases: dict[str, Any], run: dict[str, Any] | None = None, text: str | None = None) -> Path:
    doc = {"schema_version": 1, "run": run or {"run_id": "r1"}, "totals": {}, "cases": list(cases)}
    path.write_text(text if text is not None else json.dumps(doc), encoding="utf-8")
    return path


def _gate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli_main(["gate", *argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_a_file_given_twice_counts_once_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = _write(tmp_path / "results.json", _case("a"), _case("b"))
    copy = tmp_path / "copy" / "results.json"
    copy.parent.mkdir()
    shutil.copy(one, copy)  # the same run's file again at another path (an artifact downloaded twice)
    link = tmp_path / "link.json"
    link.symlink_to(one)  # the same file by another name
    status, out, err = _gate(capsys, str(one), str(link), str(copy), "--gate", "cases == 2")
    assert status == 0, out + err
    assert "llmtrace gate: passed cases 2 == 2" in out
    assert f"note: {link} is {one} again: read once" in err
    assert "note: 2 cases already read from another file (same run id and node id): counted once" in err


def test_the_same_cases_of_two_runs_both_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = _write(tmp_path / "1.json", _case("a"), run={"run_id": "r1"})
    second = _write(tmp_path / "2.json", _case("a"), run={"run_id": "r2"})
    assert _gate(capsys, str(first), str(second), "--gate", "cases == 2")[0] == 0


def _shard(path: Path, index: int, count: int, *case_ids: str, run_id: str = "") -> Path:
    run = {"run_id": run_id or f"r{index}", "shard": {"index": index, "count": count}}
    return _write(path, *(_case(c) for c in case_ids), run=run)


def test_a_missing_shard_fails_closed_and_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = _shard(tmp_path / "1.json", 1, 4, "a")
    third = _shard(tmp_path / "3.json", 3, 4, "c")
    status, out, err = _gate(capsys, str(first), str(third), "--gate", "sql_success_rate >= 1")
    assert status == 2
    assert out == ""
    assert "error: shards 2/4, 4/4 missing: the gate needs every shard's results.json" in err
    second, fourth = _shard(tmp_path / "2.json", 2, 4, "b"), _shard(tmp_path / "4.json", 4, 4)
    files = [str(p) for p in (first, second, third, fourth)]
    assert _gate(capsys, *files, "--gate", "cases == 3")[0] == 0
    other = _shard(tmp_path / "other.json", 2, 4, "b", run_id="another run")  # shard 2 again
    status, _, err = _gate(capsys, *files, str(other), "--gate", "cases >= 0")
    assert status == 2
    assert f"shard 2/4 is given twice: {second} and {other}" in err
    plain = _write(tmp_path / "plain.json", _case("z"), run={"run_id": "r9"})
    status, _, err = _gate(capsys, *files, str(plain), "--gate", "cases >= 0")
    assert status == 2
    assert f"{plain} is not a shard, but the other files are shards of 4" in err


@pytest.mark.parametrize("token", ["-Infinity", "Infinity", "NaN", "-1e999"])
def test_a_non_finite_figure_is_refused_with_its_file_and_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], token: str
) -> None:
    text = json.dumps({"schema_version": 1, "run": {}, "cases": [_case("a", "X")]}).replace('"X"', token)
    path = _write(tmp_path / "results.json", text=text)
    status, out, err = _gate(capsys, str(path), "--gate", "latency_p95_ms <= 500")
    assert status == 2
    assert out == ""
    assert f"error: {path}: at $.cases[0].durations_ms.total: expected a finite number or null, got {token}" in err


def test_a_figure_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "results.json", _case("a", "[x](https://evil.example)"))
    with pytest.raises(ValueError, match=r"at \$\.cases\[0\]\.durations_ms\.total: expected a finite number or null"):
        load_cases(path)


def test_a_violated_gate_still_exits_6(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "results.json", _case("a", 900.0))
    assert _gate(capsys, str(path), "--gate", "latency_p95_ms <= 500")[0] == GATE_EXIT_STATUS


def test_what_the_plugin_writes_passes_the_figure_check(tmp_path: Path) -> None:
    """Every field of an outcome (a measurement's basis is a word, its samples a list) reads back."""
    slow = Measurement("total", "ms", 1406.0, 1006.0, "relative", 1509.0, "<= 1.5x golden", "failed", replayed=1000)
    outcome = CaseOutcome(
        "a",
        "replay",
        "golden_traces/a.json",
        checks=(CheckResult("latency", "failed", "slow", (replace(slow, samples=(1406.0, 1500.5)),)),),
        tokens={"total": 10},
        durations_ms={"total": 1406.0},
    )
    path = _write(tmp_path / "results.json", {**outcome.to_dict(), "verdict": "failed", "nodeid": "x"})
    assert load_cases(path)[0]["case_id"] == "a"


def test_a_hand_made_case_without_the_outcome_fields_is_read_with_them_absent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Readers index a case's fields (``case["app_error"]``): a file that lacks them, or holds null where a list
    belongs, is read once with each absent, instead of a KeyError in the gate."""
    bare = {"case_id": "bare", "passed": True, "checks": None, "replay_misses": None}
    path = _write(tmp_path / "results.json", _case("full"), bare)
    (full, read) = load_cases(path)
    assert (read["checks"], read["replay_misses"], read["app_error"], read["durations_ms"]) == ([], [], None, {})
    assert read["sql"] is None
    assert full["checks"][0]["name"] == "sql"
    status, out, _ = _gate(capsys, str(path), "--gate", "sql_success_rate >= 0.5", "--gate", "token_growth <= 0")
    assert status == 0, out
    assert "passed sql_success_rate 0.5 >= 0.5" in out
