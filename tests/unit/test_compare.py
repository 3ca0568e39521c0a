"""``llmtrace gate`` and ``llmtrace compare`` over results.json files written here: exit statuses, wording, and
McNemar's exact p-value against hand-computed ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_llmtrace.cli import main
from pytest_llmtrace.results.case_record import CaseRecord, as_case
from pytest_llmtrace.results.compare import compare, mcnemar_p
from pytest_llmtrace.results.gate import GATE_EXIT_STATUS


def _case(case_id: str, ok: bool, sql: str = "SELECT 1") -> CaseRecord:
    status = "passed" if ok else "failed"
    return as_case(
        {
            "case_id": case_id,
            "passed": ok,
            "verdict": status,
            "checks": [{"name": "sql", "status": status}],
            "sql": sql,
        }
    )


def _write(path: Path, *cases: CaseRecord) -> Path:
    path.write_text(json.dumps({"schema_version": 1, "run": {}, "cases": list(cases)}))
    return path


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (1, 7, 2 * (1 + 8) / 256),  # 0.0703125
        (0, 5, 2 / 32),
        (3, 3, 1.0),
        (0, 0, 1.0),
        (10, 0, 2 / 1024),
    ],
)
def test_mcnemar_exact_p_matches_the_binomial_tail(b: int, c: int, p: float) -> None:
    assert mcnemar_p(b, c) == pytest.approx(p, rel=1e-12)
    assert mcnemar_p(c, b) == mcnemar_p(b, c)


def test_compare_lists_regressed_improved_and_changed_cases() -> None:
    old = [_case("a", True), _case("b", True), _case("c", False), _case("d", True), _case("gone", True)]
    new = [_case("a", True), _case("b", False), _case("c", True), _case("d", True, sql="SELECT 2"), _case("n", True)]
    result = compare(old, new)
    assert (result.regressed, result.improved, result.changed) == (["b"], ["c"], ["d"])
    assert (result.only_old, result.only_new) == (["gone"], ["n"])
    assert result.lines()[-1] == "McNemar exact test: 1 regressed vs 1 improved, p = 1 (not significant at 0.05)"


def test_compare_cli_fails_on_regression_only_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _write(tmp_path / "old.json", _case("a", True), _case("b", True))
    new = _write(tmp_path / "new.json", _case("a", True), _case("b", False))
    assert main(["compare", str(old), str(new)]) == 0
    assert "regressed (1): b" in capsys.readouterr().out
    assert main(["compare", str(old), str(new), "--fail-on-regression"]) == 1
    assert main(["compare", str(new), str(old), "--fail-on-regression"]) == 0


def test_gate_cli_merges_files_and_exits_like_the_in_run_gate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = _write(tmp_path / "1.json", _case("a", True), _case("b", False))
    two = _write(tmp_path / "2.json", _case("c", True), _case("d", True))
    assert main(["gate", str(one), str(two), "--gate", "sql_success_rate >= 0.75", "--gate", "cases == 4"]) == 0
    assert capsys.readouterr().out == (
        "llmtrace gate: passed sql_success_rate 0.75 >= 0.75 (+0)\nllmtrace gate: passed cases 4 == 4 (+0)\n"
    )
    assert main(["gate", str(one), "--gate", "sql_success_rate >= 0.75"]) == GATE_EXIT_STATUS
    assert capsys.readouterr().out == "llmtrace gate: FAILED sql_success_rate 0.5 < 0.75 (1 case: b)\n"
    assert main(["gate", str(one), "--gate", "regressions == 0", "--baseline", str(two)]) == 0


def test_gate_cli_refuses_a_bad_expression_or_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = _write(tmp_path / "1.json", _case("a", True))
    assert main(["gate", str(one), "--gate", "sql_success_rate > 1"]) == 2
    assert "e.g. 'sql_success_rate >= 0.95'" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text('{"resourceSpans": []}')
    assert main(["gate", str(other), "--gate", "cases >= 1"]) == 2
    assert "schema_version None is not 1; is it a results.json?" in capsys.readouterr().err
    assert main(["gate", str(one), "--gate", "regressions == 0"]) == 2
    assert "needs a baseline" in capsys.readouterr().err
