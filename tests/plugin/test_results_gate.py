"""results.json, summary.md and the release gate, end to end: a small golden project run (in process), serially,
under xdist and in shards, as CI would run it.

Latency limits are made generous (100x golden, 60 s floor) so that a loaded machine cannot flip a verdict: what is
under test is the counting, not the speed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from pytest_llmtrace.cli import main as cli_main
from pytest_llmtrace.results.gate import GATE_EXIT_STATUS

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "golden_traces"
PASSING = ("customers_by_tier", "inactive_products", "pending_orders_value")
FAILING = "error_unknown_column"  # the app's SQL names a column that does not exist: the sql check fails


@pytest.fixture(scope="module")
def pg_url(pg_admin_url: str) -> str:
    """The server behind this session's database: the subprocess runs clone their databases there."""
    return pg_admin_url


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
    """In process: pytester restores sys.modules after each run, so each project's ``gateway`` is its own."""
    return pytester.runpytest(f"--llmtrace-postgres={pg_url}", "--llmtrace-replay-speed=virtual", *args)


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
    # the waterfalls: on virtual time the replayed LLM bar lasts exactly the golden LLM span, marked replayed
    golden_llm = next(b for b in failing["golden_waterfall"]["bars"] if b["kind"] == "LLM")
    now_llm = next(b for b in failing["waterfall"]["bars"] if b["kind"] == "LLM")
    assert now_llm["duration_ms"] == now_llm["replayed_ms"] == golden_llm["duration_ms"] > 0
    assert golden_llm["replayed_ms"] == 0
    assert [b["error"] for b in failing["waterfall"]["bars"] if b["kind"] == "SQL"] == [True]
    assert next(c for c in data["cases"] if c["case_id"] == "broken")["waterfall"] is None
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
    assert run["models"] == [
        {
            "name": "qwen-sql-prod",
            "digest": None,
            "source": None,
            "reason": "replay: no LLM span attribute of the golden traces carries this model's digest",
        }
    ]
    summary = (pytester.path / "reports" / "summary.md").read_text()
    assert "5 cases: 3 passed, 1 failed, 1 errors" in summary
    assert f"| `{FAILING}` | failed | `sql: the SQL does not execute" in summary
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


def test_a_finished_case_leaves_its_record_in_the_run_and_nothing_heavy_on_its_item(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    """Items live until the session ends: a case's outcome and parsed trace on its item would keep a thousand cases'
    rows, measurements and spans in memory twice (the run's records hold what the reports need)."""
    _project(pytester)
    pytester.makeconftest(
        """
        import json
        from pytest_llmtrace.pytest.failing import OUTCOMES_KEY
        from pytest_llmtrace.pytest.golden import CASE_KEY

        def pytest_sessionfinish(session):
            kept = {
                item.name: {
                    "outcomes": len(item.stash.get(OUTCOMES_KEY, [])),
                    "trace_parsed": item.stash[CASE_KEY]._read is not None,
                }
                for item in session.items
            }
            with open("kept.json", "w") as out:
                json.dump(kept, out)
        """
    )
    result = _run(pytester, pg_url, "--llmtrace-report=reports")
    result.assert_outcomes(passed=len(PASSING), failed=1)
    kept = json.loads((pytester.path / "kept.json").read_text())
    assert kept == {case: {"outcomes": 0, "trace_parsed": False} for case in (*PASSING, FAILING)}
    cases = _results(pytester.path / "reports")["cases"]
    first_checks = {c["case_id"]: [k["name"] for k in c["checks"]][:2] for c in cases}
    assert first_checks == {case: ["sql", "results"] for case in (*PASSING, FAILING)}


def test_a_malformed_gate_is_a_usage_error_with_a_valid_example(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\naddopts = -p no:phoenix -p no:randomly\n")
    result = pytester.runpytest("--llmtrace-gate", "sql_success_rate > 0.9")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*gate 'sql_success_rate > 0.9' is not*e.g. 'sql_success_rate >= 0.95'*"])


def test_a_met_gate_does_not_excuse_a_failed_test_that_is_no_case(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\naddopts = -p no:phoenix -p no:randomly\n")
    pytester.makepyfile(test_plain="def test_broken():\n    assert 1 == 2\n")
    met = pytester.runpytest("--llmtrace-gate", "cases == 0")
    assert met.ret == pytest.ExitCode.TESTS_FAILED
    met.stdout.fnmatch_lines(["llmtrace gate: passed cases 0 == 0 (+0)"])
    violated = pytester.runpytest("--llmtrace-gate", "sql_success_rate >= 0.5")
    assert violated.ret == GATE_EXIT_STATUS, "no cases at all: a rate gate fails closed"
    violated.stdout.fnmatch_lines(["llmtrace gate: FAILED sql_success_rate 0 < 0.5"])


FLAKY_APP = """
import collections

from gateway.app import handle_user_request

asked = collections.Counter()


def app(question):
    asked[question] += 1
    if "tier" in question and asked[question] % 2 == 0:  # every second run of customers_by_tier
        raise RuntimeError("the model timed out")
    return handle_user_request(question)
"""


def test_repeats_fail_runs_honestly_count_each_case_once_and_show_was_and_now(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    _project(pytester, ini="llmtrace_min_pass_rate = 0.5\n")
    pytester.makepyfile(flaky=FLAKY_APP)
    baseline = pytester.path / "baseline.json"
    before = [
        {"case_id": c, "passed": True, "verdict": "passed", "checks": [{"name": "sql", "status": "passed"}]}
        for c in (*PASSING, FAILING)
    ]
    before[-1]["durations_ms"] = {"total": 2.5}
    baseline.write_text(json.dumps({"schema_version": 1, "run": {}, "cases": before}))
    args = ["--llmtrace-target=flaky:app", "--llmtrace-repeat=2", "--llmtrace-report=reports"]
    args.append(f"--llmtrace-baseline={baseline}")
    gates = ["cases == 4", "sql_success_rate >= 0.75", "regressions <= 1"]
    result = _run(pytester, pg_url, *args, *(f"--llmtrace-gate={g}" for g in gates))
    # each run passes or fails on its own: the flaky case's second run and both runs of the failing case
    result.assert_outcomes(passed=5, failed=3)
    result.stdout.fnmatch_lines(
        [
            "llmtrace repeats: 4 cases x 2 runs, a case passes when its pass rate >= 0.5: 3 passed, 1 failed",
            "  customers_by_tier: 1/2 runs passed -> passed",
            "llmtrace gate: passed cases 4 == 4 (+0)",
            "llmtrace gate: passed sql_success_rate 0.75 >= 0.75 (+0)",
            "llmtrace gate: passed regressions 1 <= 1 (+0)",
            "FAILED golden_traces/customers_by_tier.json::customers_by_tier[[]2/2[]]*",
        ]
    )
    assert result.ret == 0, "every gate holds over the cases counted once"
    data = _results(pytester.path / "reports")
    assert data["totals"] == {"cases": 4, "passed": 3, "failed": 1, "error": 0}
    flaky = next(c for c in data["cases"] if c["case_id"] == "customers_by_tier")
    assert (flaky["verdict"], flaky["pass_rate"], flaky["pass_hat_k"]) == ("passed", 0.5, {"1": 0.5, "2": 0.0})
    assert [(r["run"], r["verdict"]) for r in flaky["runs"]] == [(1, "passed"), (2, "failed")]
    assert flaky["runs"][1]["app_error"] == "RuntimeError: the model timed out"
    assert flaky["nodeid"] == "golden_traces/customers_by_tier.json::customers_by_tier"
    assert flaky["app_error"] is None, "a passing case's figures are its passed run's"

    summary = (pytester.path / "reports" / "summary.md").read_text()
    assert "| `regressions <= 1` | - | 1 | passed |" in summary
    assert "| `sql_success_rate >= 0.75` | 1 | 0.75 | passed |" in summary
    assert f"| `{FAILING}` | passed | failed (regressed) | 2.5 |" in summary
    page = (pytester.path / "reports" / "report.html").read_text()
    assert "data-verdict='passed'" in page
    assert "1/2 runs, floor 0.5" in page

    # without a gate, a failed run whose case reached its pass rate does not fail the session either
    alone = _run(pytester, pg_url, "--llmtrace-target=flaky:app", "--llmtrace-repeat=2", "-k", "customers_by_tier")
    alone.assert_outcomes(passed=1, failed=1)
    assert alone.ret == 0


WORSE_MODEL_APP = """
from gateway.app import handle_user_request


def app(question):
    if "tier" in question or "no longer active" in question:  # the new model fails two cases the old one passed
        raise RuntimeError("the new model answered with prose, not SQL")
    return handle_user_request(question)
"""


def test_compare_two_saved_runs_lists_the_regressions_with_mcnemars_p(pytester: pytest.Pytester, pg_url: str) -> None:
    _project(pytester)
    pytester.makepyfile(worse=WORSE_MODEL_APP)
    _run(pytester, pg_url, "--llmtrace-report=old").assert_outcomes(passed=3, failed=1)
    _run(pytester, pg_url, "--llmtrace-target=worse:app", "--llmtrace-report=new").assert_outcomes(passed=1, failed=3)
    old, new = (str(pytester.path / name / "results.json") for name in ("old", "new"))
    shown = pytester.run(sys.executable, "-m", "pytest_llmtrace", "compare", old, new)
    assert shown.ret == 0
    # b = 2 regressed, c = 0 improved: the exact two-sided p is 2 * 0.5**2 = 0.5, by hand
    shown.stdout.fnmatch_lines(
        [
            "regressed (2): customers_by_tier, inactive_products",
            "McNemar exact test: 2 regressed vs 0 improved, p = 0.5 (not significant at 0.05)",
        ]
    )
    gated = pytester.run(sys.executable, "-m", "pytest_llmtrace", "compare", old, new, "--fail-on-regression")
    assert gated.ret == 1
    assert pytester.run(sys.executable, "-m", "pytest_llmtrace", "compare", new, old, "--fail-on-regression").ret == 0


@pytest.mark.parametrize("shard", ["0/3", "4/3", "\u0662/\u0663", "2/3/4", "two/3"])
def test_a_shard_that_is_not_k_of_n_in_ascii_digits_is_a_usage_error(pytester: pytest.Pytester, shard: str) -> None:
    """The one whole-number parser reads K and N: ``str.isdigit`` took Arabic-Indic digits for 2/3."""
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest(f"--llmtrace-shard={shard}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --llmtrace-shard {shard!r}: use K/N with 1 <= K <= N, e.g. 2/4"])
