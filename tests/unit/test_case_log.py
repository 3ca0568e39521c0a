"""The run's case records kept compressed (``CaseLog``): what is read back is what results.json holds, a worker's
records reach the controller unparsed, the repeats fold one case at a time, and a long run holds a fraction of the
memory its records take as dicts."""

from __future__ import annotations

import json
import math
import tracemalloc
from typing import Any

import pytest

from pytest_llmtrace.checks.outcome import CaseOutcome, CheckResult, Measurement
from pytest_llmtrace.results import case_log
from pytest_llmtrace.results.case_log import CaseKey, CaseLog
from pytest_llmtrace.results.case_record import CaseRecord, as_case
from pytest_llmtrace.results.repeats import REPEAT_FIELD, aggregate, fold_log, keep


def _record(i: int, **more: Any) -> CaseRecord:
    """A replayed case's record as ``run_results`` makes it: checks with measurements, the waterfalls' numbers."""
    latency = tuple(
        Measurement(
            kind,
            "ms",
            10.0 + i + n,
            9.5 + n,
            "relative",
            200.0 + n,
            f"<= golden + 200 ms ({209.5 + n} ms)",
            "passed",
            "measured",
            replayed=12.5 * n,
        )
        for n, kind in enumerate(("total", "LLM", "SQL", "CHAIN", "ttft"))
    )
    outcome = CaseOutcome(
        f"c{i:04d}_monthly_revenue",
        "replay",
        f"golden_traces/c{i:04d}_monthly_revenue.json",
        checks=(CheckResult("sql", "passed"), CheckResult("latency", "passed", "", latency)),
        sql=f"SELECT date_trunc('month', ordered_at) AS month, sum(amount) FROM orders WHERE customer_id = {i}",
    )
    data = {**outcome.to_dict(), "verdict": "passed", "nodeid": f"golden_traces/c{i:04d}.json::c{i:04d}"}
    return as_case({**data, **more})


def _log(records: list[CaseRecord]) -> CaseLog:
    log = CaseLog()
    for record in records:
        log.append(record)
    return log


def test_a_record_reads_back_as_results_json_holds_it_and_a_worker_hands_records_on_unparsed() -> None:
    records = [_record(i) for i in range(3)]
    log = _log(records)
    as_json = [json.loads(json.dumps(r, default=str)) for r in records]  # tuples become lists, as in results.json
    assert (len(log), list(log), log[1], log[-1], log[1:]) == (3, as_json, as_json[1], as_json[2], as_json[1:])
    assert log.keys[2] == CaseKey("golden_traces/c0002.json::c0002", "c0002_monthly_revenue", "passed", None, None)

    controller = _log([_record(9)])
    controller.take(json.loads(json.dumps(log.hand_over())))  # through xdist's JSON, as testnodedown gets it
    assert [c["case_id"] for c in controller] == ["c0009_monthly_revenue", *(r["case_id"] for r in records)]
    assert (controller[3], controller.keys[3]) == (as_json[2], log.keys[2])


def test_a_record_with_numbers_json_writes_and_orjson_does_not_read_reads_back() -> None:
    log = _log([_record(1, tokens={"total": 2**70, "prompt": math.inf})])
    assert log[0]["tokens"] == {"total": 2**70, "prompt": math.inf}


def test_the_log_folds_repeated_runs_reading_only_them_and_orders_cases_by_node_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def run(i: int, k: int, verdict: str) -> CaseRecord:
        record = _record(i, verdict=verdict, passed=verdict == "passed")
        record["nodeid"] += f"[{k}/2]"
        record[REPEAT_FIELD] = {"run": k, "of": 2, "case_nodeid": f"golden_traces/c{i:04d}.json::c{i:04d}"}
        return record

    records = [_record(5), run(3, 2, "failed"), _record(1), run(3, 1, "passed"), run(2, 1, "failed"), _record(4)]
    records += [run(2, 2, "failed"), _record(1, nodeid="golden_traces/c0000.json::c0000")]
    log = CaseLog()
    for record in records:  # as run_results.record keeps them
        keep(log, record)
    reads: list[bytes] = []
    read = case_log._read

    def counted(blob: bytes) -> CaseRecord:
        reads.append(blob)
        return read(blob)

    monkeypatch.setattr(case_log, "_read", counted)
    folded = fold_log(log, 0.5)
    assert len(reads) == 4, "only the four runs of the two repeated cases are read"
    monkeypatch.undo()

    cases = list(folded)
    assert [c["nodeid"] for c in cases] == [f"golden_traces/c000{i}.json::c000{i}" for i in range(6)]
    assert [c["verdict"] for c in cases] == ["passed", "passed", "failed", "passed", "passed", "passed"]
    assert [k.verdict for k in folded.keys] == [c["verdict"] for c in cases]
    repeated, whole = cases[3], cases[1]
    assert (repeated["pass_rate"], repeated["representative_run"]) == (0.5, 1)
    assert [r["verdict"] for r in repeated["runs"]] == ["passed", "failed"]
    assert REPEAT_FIELD not in repeated
    assert (whole["pass_rate"], whole["representative_run"], len(whole["runs"])) == (1.0, 1, 1)
    assert aggregate(records, 0.5) == cases


def test_a_thousand_records_take_a_fraction_of_the_memory_they_take_as_dicts() -> None:
    handed = _log([_record(i) for i in range(1000)]).hand_over()

    tracemalloc.start()
    try:
        as_dicts = [json.loads(text) for text, _ in handed]
        dict_bytes = tracemalloc.get_traced_memory()[0]
        del as_dicts
        base = tracemalloc.get_traced_memory()[0]
        log = CaseLog()
        log.take(handed)
        log_bytes = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(log) == 1000
    assert log_bytes * 8 < dict_bytes, (log_bytes, dict_bytes)  # as plain JSON text they take a quarter
