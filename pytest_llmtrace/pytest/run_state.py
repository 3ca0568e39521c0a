"""The session's results state, kept in the config's stash: the cases seen so far, the gate, the shard, the models."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pytest_llmtrace.results import gate
from pytest_llmtrace.results import model_digests as models
from pytest_llmtrace.results.case_log import CaseLog
from pytest_llmtrace.results.case_record import CaseRecord


@dataclass
class RunResults:
    """The session's state: the cases seen so far and the configured gate."""

    report_dir: Path | None
    rules: list[gate.Rule]
    baseline: list[CaseRecord] | None
    shard: tuple[int, int] | None
    mode: str
    repeat: int = 1
    min_pass_rate: float = 1.0
    slo: gate.Rule | None = None  # llmtrace_slo: what error_budget_remaining measures
    error_budget: float | None = None  # its value at session end
    metrics_error: str | None = None  # why --llmtrace-metrics / --llmtrace-pushgateway failed
    cases: CaseLog = field(default_factory=CaseLog)  # one per outcome; per run of a repeated case
    other_failures: int = 0  # failed items that are not cases: a gate does not excuse them
    gate_results: list[gate.GateResult] = field(default_factory=list)
    prompt_hashes: set[str] = field(default_factory=set)  # sha256 of each system prompt the cases' LLM calls hold
    recorded_models: dict[str, tuple[str | None, str]] = field(default_factory=dict)  # models.trace_digests, merged
    live_models: models.LiveDigests | None = None  # what the Ollama server said, asked once per process
    report_error: str | None = None  # why the reports could not be written (a refused symbolic link, say)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # a case is (run_id, nodeid) to llmtrace gate


RESULTS_KEY = pytest.StashKey[RunResults]()
