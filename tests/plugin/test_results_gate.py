"""results.json, summary.md and the release gate, end to end: a small golden project run in a subprocess, serially,
under xdist and in shards, as CI would run it.

Latency limits are made generous (100x golden, 60 s floor) so that a loaded machine cannot flip a verdict: what is
under test is the counting, not the speed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from pytest_llmtrace.cli import main as cli_main
from pytest_llmtrace.gate import GATE_EXIT_STATUS
from pytest_llmtrace.services.postgres import PostgresDatabase

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "golden_traces"
PASSING = ("customers_by_tier", "inactive_products", "pending_orders_value")
FAILING = "error_unknown_column"  # the app's SQL names a column that does not exist: the sql check fails


@pytest.fixture(scope="module")
def pg_url(llmtrace_postgres: PostgresDatabase) -> str:
    """The server behind this session's database: the subprocess runs clone their databases there."""
    return llmtrace_postgres.endpoint.url


def _project(pytester: pytest.Pytester, ini: str = "") -> Path:
    shutil.copytree(REPO / "fixtures" / "company_db", pytester.path / "fixtures" / "company_db")
    shutil.copytree(REPO / "fixtures" / "gateway", pytester.path / "gateway")
    golden = pytester.path / "golden_traces"
    (golden / "__snapshots__").mkdir(parents=True)
    for case in (*PASSING, FAILING):
        shutil.copy(GOLDEN / f"{case}.json", golden / f"{case}.json")
        shutil.copy(GOLDEN / "__snapshots__" / f"{case}.json", golden / "__snapshots__" / f"{case}.json")
    pytester.makeini(
        "[pytest]\naddopts = -p no:phoenix -p no:randomly\npythonpath = .\n"
        "llmtrace_target = gateway.app:handle_user_request\n"
        f"llmtrace_latency_tolerance = 100\nllmtrace_latency_floor_ms = 60000\n{ini}"
    )
    return golden


def _run(pytester: pytest.Pytester, pg_url: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        f"--llmtrace-postgres={pg_url}", "--llmtrace-replay-speed=instant", *args, timeout=180
    )


def _results(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((path / "results.json").read_text())
    return data


def _verdicts(data: dict[str, Any]) -> dict[str, str]:
    return {c["case_id"]: c["verdict"] for c in data["cases"]}


def test_a_violated_gate_exits_6_names_the_cases_and_counts_a_broken_case_as_failed(
    pytester: pytest.Pytester, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    golden = _project(pytester, ini="llmtrace_gate =\n    cases == 5\n")
    (golden / "broken.json").write_text("{not json")  # no outcome at all: kept as a failed case (fail-closed)
    step_summary = pytester.path / "step_summary.md"
    step_summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    result = _run(
        pytester,
        pg_url,
        "--llmtrace-report=reports",
        "--llmtrace-gate",
        "sql_success_rate >= 0.95",
        "--junitxml=junit.xml",
    )
    assert result.ret == GATE_EXIT_STATUS
    result.stdout.fnmatch_lines(
        [
            "llmtrace gate: FAILED sql_success_rate 0.6 < 0.95 (2 cases: broken, error_unknown_column)",
            "llmtrace gate: passed cases 5 == 5 (+0)",
        ]
    )
    data = _results(pytester.path / "reports")
    assert data["schema_version"] == 1
    assert _verdicts(data) == {
        **dict.fromkeys(PASSING, "passed"),
        FAILING: "failed",
        "broken": "error",
    }
    assert data["totals"] == {"cases": 5, "passed": 3, "failed": 1, "error": 1}
    failing = next(c for c in data["cases"] if c["case_id"] == FAILING)
    assert failing["mode"] == "replay"
    assert failing["file"].endswith(f"{FAILING}.json")
    assert next(c for c in failing["checks"] if c["name"] == "sql")["status"] == "failed"
    run = data["run"]
    schema = pytester.path / "fixtures" / "company_db" / "01_schema.sql"
    assert (
        run["sql_fixture_hashes"]["fixtures/company_db/01_schema.sql"]
        == hashlib.sha256(schema.read_bytes()).hexdigest()
    )
    assert len(run["system_prompt_hashes"]) >= 1
    assert run["cpu_count"] == os.cpu_count()
    assert run["plugin_version"]
    assert run["model"] == "qwen-sql-prod"
    summary = (pytester.path / "reports" / "summary.md").read_text()
    assert "5 cases: 3 passed, 1 failed, 1 errors" in summary
    assert f"| {FAILING} | failed | sql:" in summary
    assert step_summary.read_text() == "earlier step\n" + summary

    properties = {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in ElementTree.parse(pytester.path / "junit.xml").iter("testcase")
    }
    assert properties[FAILING]["sql_ok"] == "False"
    assert properties[FAILING]["result_match"] == "False"
    assert properties["customers_by_tier"]["sql_ok"] == "True"
    assert properties["customers_by_tier"]["result_match"] == "True"
    tokens = next(c["tokens"] for c in data["cases"] if c["case_id"] == "customers_by_tier")
    assert properties["customers_by_tier"]["tokens.total"] == str(tokens["total"])
    assert float(properties["customers_by_tier"]["latency_ms.SQL"] or "nan") > 0


def test_a_met_gate_exits_0_and_xdist_and_shards_give_the_serial_totals(
    pytester: pytest.Pytester, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _project(pytester)
    gate = "sql_success_rate >= 0.75"
    serial = _run(pytester, pg_url, "--llmtrace-report=serial", "--llmtrace-gate", gate)
    assert serial.ret == 0, "the one failing case is within the gate, so the run passes"
    serial.stdout.fnmatch_lines(["llmtrace gate: passed sql_success_rate 0.75 >= 0.75 (+0)"])
    expected = _verdicts(_results(pytester.path / "serial"))
    assert expected == {**dict.fromkeys(PASSING, "passed"), FAILING: "failed"}

    parallel = _run(pytester, pg_url, "-n", "2", "--llmtrace-report=parallel", "--llmtrace-gate", gate)
    assert parallel.ret == 0
    assert _verdicts(_results(pytester.path / "parallel")) == expected

    shards: list[str] = []
    for k in (1, 2, 3):
        _run(pytester, pg_url, f"--llmtrace-shard={k}/3", f"--llmtrace-report=shard{k}")
        shards.append(str(pytester.path / f"shard{k}" / "results.json"))
    merged: dict[str, str] = {}
    for path in shards:
        merged.update(_verdicts(json.loads(Path(path).read_text())))
    assert merged == expected
    assert sum(len(json.loads(Path(p).read_text())["cases"]) for p in shards) == len(expected)

    capsys.readouterr()
    assert cli_main(["gate", *shards, "--gate", gate]) == 0
    assert capsys.readouterr().out == "llmtrace gate: passed sql_success_rate 0.75 >= 0.75 (+0)\n"
    assert cli_main(["gate", *shards, "--gate", "sql_success_rate >= 0.95", "--gate", "cases == 4"]) == GATE_EXIT_STATUS
    assert capsys.readouterr().out == (
        "llmtrace gate: FAILED sql_success_rate 0.75 < 0.95 (1 case: error_unknown_column)\n"
        "llmtrace gate: passed cases 4 == 4 (+0)\n"
    )


def test_a_malformed_gate_is_a_usage_error_with_a_valid_example(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\naddopts = -p no:phoenix -p no:randomly\n")
    result = pytester.runpytest_subprocess("--llmtrace-gate", "sql_success_rate > 0.9", timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*gate 'sql_success_rate > 0.9' is not*e.g. 'sql_success_rate >= 0.95'*"])
