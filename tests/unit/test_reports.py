"""The reports over hand-made results: repeated runs folded into cases, "was / now" against a baseline, summary.md,
and model digests (from golden attributes, and from a real Ollama-API server's /api/tags)."""

from __future__ import annotations

import hashlib
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from pytest_llmtrace.modelapi import ModelInfo, OllamaAPIServer
from pytest_llmtrace.modelapi.scripted import ScriptedBackend
from pytest_llmtrace.results import gate
from pytest_llmtrace.results import model_digests as models
from pytest_llmtrace.results.baseline import case_changes, figure, gate_changes
from pytest_llmtrace.results.case_record import CaseRecord, as_case
from pytest_llmtrace.results.repeats import REPEAT_FIELD, aggregate, pass_hat_k, repeat_lines
from pytest_llmtrace.results.summary import cell, summary_markdown
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.otlp import read_trace

GOLDEN = Path(__file__).resolve().parents[2] / "golden_traces"


def _case(
    case_id: str, verdict: str = "passed", *, sql: str = "passed", total_ms: float = 100.0, tokens: int = 300
) -> CaseRecord:
    return as_case(
        {
            "case_id": case_id,
            "nodeid": f"golden_traces/{case_id}.json::{case_id}",
            "passed": verdict == "passed",
            "verdict": verdict,
            "checks": [{"name": "sql", "status": sql, "reason": "" if sql == "passed" else "boom", "measurements": []}],
            "app_error": None,
            "replay_misses": [],
            "sql": "SELECT 1",
            "durations_ms": {"total": total_ms},
            "tokens": {"total": tokens},
            "golden_tokens": {"total": 300},
        }
    )


def _run(case_id: str, run: int, of: int, verdict: str, **more: Any) -> CaseRecord:
    data = _case(case_id, verdict, sql="passed" if verdict == "passed" else "failed", **more)
    data["nodeid"] += f"[{run}/{of}]"
    data[REPEAT_FIELD] = {"run": run, "of": of, "case_nodeid": f"golden_traces/{case_id}.json::{case_id}"}
    return data


def test_pass_hat_k_is_the_unbiased_estimate_from_c_passes_in_n_runs() -> None:
    assert pass_hat_k(2, 3) == {"1": 2 / 3, "2": 1 / 3, "3": 0.0}  # C(2,2)/C(3,2) = 1/3
    assert pass_hat_k(3, 3) == {"1": 1.0, "2": 1.0, "3": 1.0}
    assert pass_hat_k(0, 2) == {"1": 0.0, "2": 0.0}


def test_runs_fold_into_one_case_by_pass_rate_with_a_representative_run_of_the_same_verdict() -> None:
    runs = [
        _run("flaky", 2, 3, "failed", total_ms=900.0),  # out of order: folded by run number
        _run("flaky", 1, 3, "passed", total_ms=110.0),
        _run("flaky", 3, 3, "passed", total_ms=120.0),
        _run("broken", 1, 3, "failed"),
        _run("broken", 2, 3, "error"),
        _run("broken", 3, 3, "passed"),
    ]
    lenient = {c["case_id"]: c for c in aggregate(runs, min_pass_rate=0.6)}
    assert set(lenient) == {"flaky", "broken"}
    flaky = lenient["flaky"]
    assert (flaky["verdict"], flaky["passed"], flaky["pass_rate"]) == ("passed", True, 2 / 3)
    assert flaky["representative_run"] == 1, "a passing case's figures are its first passed run's"
    assert flaky["durations_ms"] == {"total": 110.0}
    assert flaky["nodeid"] == "golden_traces/flaky.json::flaky"
    assert [r["verdict"] for r in flaky["runs"]] == ["passed", "failed", "passed"]
    assert flaky["runs"][1]["failed_checks"] == ["sql"]
    assert REPEAT_FIELD not in flaky
    broken = lenient["broken"]
    assert (broken["verdict"], broken["representative_run"], broken["pass_hat_k"]["1"]) == ("failed", 1, 1 / 3)

    strict = {c["case_id"]: c for c in aggregate(runs, min_pass_rate=1.0)}
    assert (strict["flaky"]["verdict"], strict["flaky"]["representative_run"]) == ("failed", 2)
    assert strict["flaky"]["durations_ms"] == {"total": 900.0}, "a failing case's figures are its first failed run's"

    # every gate metric counts a case once: 2 cases, not 6 runs; the flaky case's failed run is not counted
    results = gate.evaluate([gate.parse("cases == 2"), gate.parse("sql_success_rate >= 0.5")], list(lenient.values()))
    assert [(r.value, r.passed) for r in results] == [(2.0, True), (0.5, True)]
    assert results[1].cases == ("broken",)
    assert repeat_lines(list(lenient.values()), 3, 0.6) == [
        "llmtrace repeats: 2 cases x 3 runs, a case passes when its pass rate >= 0.6: 1 passed, 1 failed",
        "  broken: 1/3 runs passed -> failed",
        "  flaky: 2/3 runs passed -> passed",
    ]


def test_outcomes_of_one_test_that_is_not_repeated_stay_separate_cases() -> None:
    one, two = _case("tests/test_app.py::test_two_checks"), _case("tests/test_app.py::test_two_checks", "failed")
    one["nodeid"] = two["nodeid"] = "tests/test_app.py::test_two_checks"
    folded = aggregate([one, two], min_pass_rate=0.5)
    assert [c["verdict"] for c in folded] == ["passed", "failed"]
    assert [c["pass_rate"] for c in folded] == [1.0, 0.0]


def test_was_and_now_pair_gates_and_cases_with_the_baseline() -> None:
    baseline = [_case("a"), _case("b"), _case("c", "failed", sql="failed"), _case("gone")]
    now = [_case("a", total_ms=250.0, tokens=330), _case("b", "failed", sql="failed"), _case("c"), _case("new")]
    rules = [gate.parse("sql_success_rate >= 0.9"), gate.parse("regressions == 0")]
    changes = gate_changes(gate.evaluate(rules, now, baseline), baseline)
    assert [(c.result.value, c.was) for c in changes] == [(0.75, 0.75), (1.0, None)]
    rows = case_changes(now, baseline)
    assert [(r.case_id, r.was, r.now) for r in rows] == [
        ("b", "passed", "failed"),  # regressed first
        ("c", "failed", "passed"),  # then improved
        ("a", "passed", "passed"),
        ("gone", "passed", None),
        ("new", None, "passed"),
    ]
    assert (rows[2].was_ms, rows[2].now_ms, rows[2].was_tokens, rows[2].now_tokens) == (100.0, 250.0, 300.0, 330.0)

    text = summary_markdown(now, gate.evaluate(rules, now, baseline), baseline)
    assert "| `sql_success_rate >= 0.9` | 0.75 | 0.75 | **FAILED** `b` |" in text
    assert "| `regressions == 0` | - | 1 | **FAILED** `b` |" in text
    assert "1 regressed, 1 improved, 5 cases in either run." in text
    assert "| `b` | passed | failed (regressed) | 100 | 100 | 300 | 300 |" in text
    assert "| `a` | passed | passed | 100 | 250 | 300 | 330 |" in text
    assert "| `new` | new | passed |" in text


def test_summary_cells_stay_inert_whatever_the_model_wrote() -> None:
    hostile = _case("x", "failed", sql="failed")
    hostile["checks"][0]["reason"] = "bad | row\n| injected | [link](http://evil) `code` <img src=x>"
    text = summary_markdown([hostile], [])
    (row,) = [line for line in text.splitlines() if line.startswith("| `x`")]
    assert row.count(" | ") == 2, "no pipe of the reason splits the row"
    assert row.endswith("<img src=x>` |")
    assert "\n| injected" not in text
    assert cell("a`b") == "`a'b`"
    assert figure(float("inf")) == "inf"
    assert figure(None) == "-"


def _with_digest(trace: Trace, key: str, value: str) -> Trace:
    llm = trace.llm_calls[0].span
    return Trace([replace(s, attributes={**s.attributes, key: value}) if s is llm else s for s in trace.spans])


def test_replay_digests_come_only_from_golden_attributes_that_say_so() -> None:
    plain = read_trace(GOLDEN / "customers_by_tier.json")
    assert models.trace_digests(plain) == {"qwen-sql-prod": (None, "")}
    (entry,) = models.model_entries(["qwen-sql-prod"], "replay", models.trace_digests(plain), None)
    assert entry["digest"] is None
    assert entry["reason"] == "replay: no LLM span attribute of the golden traces carries this model's digest"

    tagged = _with_digest(plain, "llm.model_digest", "sha256:abc123")
    recorded = models.trace_digests(tagged)
    assert recorded == {"qwen-sql-prod": ("sha256:abc123", "llm.model_digest")}
    (entry,) = models.model_entries(["qwen-sql-prod"], "replay", recorded, None)
    assert entry == {
        "name": "qwen-sql-prod",
        "digest": "sha256:abc123",
        "source": "golden trace attribute llm.model_digest",
        "reason": None,
    }
    (live,) = models.model_entries(["qwen-sql-prod"], "live", recorded, None)
    assert live["digest"] is None, "a recording's digest is not the live model's"
    assert live["reason"] == "live: no Ollama server was used by this run's cases"


def test_live_digests_are_what_a_real_ollama_api_lists(tmp_path: Path) -> None:
    served = ModelInfo("qwen-sql-prod")
    with OllamaAPIServer(ScriptedBackend({"hi": "hello"}, [served, ModelInfo("other:7b")])) as server:
        listed = models.ollama_tag_digests(server.url)
    assert listed == {"qwen-sql-prod:latest": served.digest, "other:7b": ModelInfo("other:7b").digest}
    live = ({name: (d, "/api/tags") for name, d in listed.items()}, "")
    entries = models.model_entries(["qwen-sql-prod", "missing"], "live", {}, live)
    assert [(e["name"], e["digest"], e["reason"]) for e in entries] == [
        ("missing", None, "live: the Ollama server does not list missing:latest"),
        ("qwen-sql-prod", served.digest, None),
    ]

    with socket.socket() as probe:  # a port nothing listens on: the lookup fails, and says so
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        models.ollama_tag_digests(f"http://127.0.0.1:{closed}", timeout_s=2)

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 5000)
    assert models.file_sha256(gguf) == "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
