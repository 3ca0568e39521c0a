"""One case of results.json as a type: the fields ``CaseOutcome.to_dict()`` writes and those the report adds.

Every module of ``results/`` and the run's results read cases through these types, so a misspelt field or a field
read as the wrong kind is a type error instead of a silent ``None``. They describe what the plugin writes
(docs/results-schema.md); a file from another shard or a baseline may be older or hand-made, so readers still treat
the fields the report adds, and those added to schema version 1 later, as possibly absent (``NotRequired``), and
``gate.load_results`` checks every figure before a file's cases are read as ``CaseRecord``s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NotRequired, TypedDict, cast

from pytest_llmtrace.checks.outcome import SCHEMA_VERSION, Basis, Source, Status, Unit


class MeasurementRecord(TypedDict):
    """``Measurement`` as JSON (``checks/outcome.py`` defines each field)."""

    metric: str
    unit: Unit
    now: float
    golden: float | None
    basis: Basis
    limit: float | None
    rule: str
    status: Status
    source: Source
    low: float | None
    reason: str
    replayed: float
    samples: list[float]
    finding: Literal["", "regressed", "unstable"]


class CheckRecord(TypedDict):
    """``CheckResult`` as JSON."""

    name: str
    status: Literal["passed", "failed", "skipped"]
    reason: str
    measurements: list[MeasurementRecord]
    details: list[str]


class ReplayMissRecord(TypedDict):
    kind: Literal["prompt_changed", "call_never_made"]
    text: str


class SpanBarRecord(TypedDict):
    """One bar of a waterfall: times in ms from the trace's first start."""

    name: str
    kind: str
    depth: int
    start_ms: float
    duration_ms: float
    replayed_ms: float
    error: bool
    open: bool


class WaterfallRecord(TypedDict):
    bars: list[SpanBarRecord]
    total_ms: float
    omitted: int


class TimingsRecord(TypedDict):
    wall_ms: float
    app_ms: float | None
    checks_ms: float


class RunRecord(TypedDict):
    """One run of a case in ``runs`` (``repeats.run_summary``)."""

    run: int
    nodeid: str | None
    verdict: str
    failed_checks: list[str]
    app_error: str | None
    replay_misses: int
    sql: str | None
    durations_ms: dict[str, float | None]
    tokens: dict[str, float | None]


class RepeatRecord(TypedDict):
    """Which run of a repeated case a not yet folded case is (``repeat``; never written to results.json)."""

    run: int
    of: int
    case_nodeid: str


class PhoenixRecord(TypedDict):
    """Where a captured golden trace came from (``llmtrace capture`` provenance)."""

    url: str
    project: object  # the golden trace's resource attribute as it holds it (a Phoenix project name)
    trace_id: str


class CaseRecord(TypedDict):
    """One element of results.json's ``cases``."""

    # CaseOutcome.to_dict()
    schema: int
    case_id: str
    mode: str
    file: str | None
    passed: bool
    checks: list[CheckRecord]
    app_error: str | None
    replay_misses: list[ReplayMissRecord]
    sql: str | None
    golden_sql: str | None
    result: dict[str, Any] | None
    tokens: dict[str, float | None]
    golden_tokens: dict[str, float | None] | None
    durations_ms: dict[str, float | None]
    golden_durations_ms: dict[str, float | None] | None
    replayed_durations_ms: dict[str, float | None]
    timings: TimingsRecord | None
    llm_usage: NotRequired[dict[str, Any] | None]  # checks.usage.usage_summary: cost_usd, ttft_ms, tokens_per_s, calls
    golden_llm_usage: NotRequired[dict[str, Any] | None]
    question: str | None
    question_source: str | None
    waterfall: WaterfallRecord | None
    golden_waterfall: WaterfallRecord | None
    semantic: NotRequired[dict[str, Any] | None]  # result_match = suite: the semantic verdict
    # added by the report
    verdict: NotRequired[Literal["passed", "failed", "error"]]
    nodeid: NotRequired[str]
    phoenix_url: NotRequired[str | None]
    phoenix: NotRequired[PhoenixRecord]
    runs: NotRequired[list[RunRecord]]
    pass_rate: NotRequired[float]
    pass_hat_k: NotRequired[dict[str, float]]
    min_pass_rate: NotRequired[float]
    representative_run: NotRequired[int]
    repeat: NotRequired[RepeatRecord]


def as_case(data: Mapping[str, Any]) -> CaseRecord:
    """A case dict made in this process (``CaseOutcome.to_dict()`` plus the report's fields) as a ``CaseRecord``;
    files are read through ``read_case``."""
    return cast(CaseRecord, data)


# What a case from a file that lacks a field (an older or hand-made results.json), or holds null there, is read as.
# Typed as a whole CaseRecord, so a field added to the record without a default here is a type error.
_ABSENT: CaseRecord = {
    "schema": SCHEMA_VERSION,
    "case_id": "",
    "mode": "",
    "file": None,
    "passed": False,
    "checks": [],
    "app_error": None,
    "replay_misses": [],
    "sql": None,
    "golden_sql": None,
    "result": None,
    "tokens": {},
    "golden_tokens": None,
    "durations_ms": {},
    "golden_durations_ms": None,
    "replayed_durations_ms": {},
    "timings": None,
    "question": None,
    "question_source": None,
    "waterfall": None,
    "golden_waterfall": None,
}


def read_case(data: Mapping[str, Any]) -> CaseRecord:
    """A case of a results.json file, read once (``gate.load_results``, after its figures were checked): every
    field ``CaseOutcome.to_dict()`` writes is then there, so readers index it (``case["sql"]``, which mypy checks
    against ``CaseRecord``) instead of asking ``.get`` with a string nothing checks. The fields the report adds stay
    optional."""
    given = {key: value for key, value in data.items() if value is not None}
    return cast(CaseRecord, {**_ABSENT, **given})


def case_passed(case: CaseRecord) -> bool:
    """Passed, for the gate and ``llmtrace compare``: a case whose verdict is missing (an outcome never folded into
    the report) is judged by ``passed`` alone."""
    return bool(case["passed"]) and case.get("verdict", "passed") == "passed"


def failed_checks(case: CaseRecord) -> list[CheckRecord]:
    return [c for c in case["checks"] if c.get("status") == "failed"]


def runs_passed(case: CaseRecord) -> int:
    return sum(1 for r in case.get("runs") or () if r.get("verdict") == "passed")


def verdict_of(case: CaseRecord) -> str:
    """The verdict the reports show; a case without one has not passed."""
    return str(case.get("verdict", "failed"))


def figure_of(values: Mapping[str, float | None] | None, key: str = "total") -> float | None:
    """One figure of ``durations_ms`` / ``tokens`` and their ``golden_`` forms, absent ones as ``None``."""
    return (values or {}).get(key)
