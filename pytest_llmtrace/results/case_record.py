"""One case of results.json as a type: the fields ``CaseOutcome.to_dict()`` writes and those the report adds.

Every module of ``results/`` and the run's results read cases through these types, so a misspelt field or a field
read as the wrong kind is a type error instead of a silent ``None``. They describe what the plugin writes
(docs/results-schema.md); a file from another shard or a baseline may be older or hand-made, so readers still treat
the fields the report adds, and those added to schema version 1 later, as possibly absent (``NotRequired``), and
``gate.load_results`` checks every figure before a file's cases are read as ``CaseRecord``s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict, cast

from pytest_llmtrace.checks.outcome import SCHEMA_VERSION, Basis, Source, Status, Unit

if TYPE_CHECKING:  # typing.NotRequired is Python 3.11+; the annotations are strings (no runtime lookup) on 3.10
    from typing_extensions import NotRequired


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


class LLMCallRecord(TypedDict):
    """One model call of ``llm_usage`` (``checks.usage.CallUsage.to_dict()``)."""

    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float | None  # None: unknown (no recorded cost and no price)
    cost_source: str
    ttft_ms: float | None
    ttft_replayed_ms: float | None
    tokens_per_s: float | None
    gap_p95_ms: float | None


class LLMUsageRecord(TypedDict):
    """A case's model calls (``llm_usage``, ``golden_llm_usage``: ``checks.usage.usage_summary``)."""

    cost_usd: float | None  # None when any call's cost is unknown
    calls_without_llm_span: int
    ttft_ms: float | None
    ttft_replayed_ms: float
    tokens_per_s: float | None
    gap_p95_ms: float | None
    calls: list[LLMCallRecord]


class SemanticRecord(TypedDict):
    """``result_match = suite``: the semantic verdict (``checks.semantic.Verdict.to_dict()``, or an unchanged SQL)."""

    verdict: Literal["equivalent", "different", "error"]
    databases: int
    build_ms: NotRequired[float]
    unchanged: NotRequired[bool]  # the SQL text is the golden one: judged equivalent without a suite
    error: NotRequired[str]
    counterexample: NotRequired[dict[str, Any]]
    skipped: NotRequired[list[str]]


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
    llm_usage: NotRequired[LLMUsageRecord | None]  # read through usage_of
    golden_llm_usage: NotRequired[LLMUsageRecord | None]
    question: str | None
    question_source: str | None
    waterfall: WaterfallRecord | None
    golden_waterfall: WaterfallRecord | None
    semantic: NotRequired[SemanticRecord | None]  # result_match = suite: the semantic verdict
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
    semantic = given.get("semantic")
    if isinstance(semantic, Mapping):  # a verdict a hand-made file left out is not "equivalent"
        given["semantic"] = {"verdict": "error", "databases": 0, **semantic}
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


_NO_CALL: LLMCallRecord = {
    "model": "unknown",
    "input_tokens": 0,
    "output_tokens": 0,
    "cost_usd": None,
    "cost_source": "",
    "ttft_ms": None,
    "ttft_replayed_ms": None,
    "tokens_per_s": None,
    "gap_p95_ms": None,
}

_NO_USAGE: LLMUsageRecord = {
    "cost_usd": None,
    "calls_without_llm_span": 0,
    "ttft_ms": None,
    "ttft_replayed_ms": 0.0,
    "tokens_per_s": None,
    "gap_p95_ms": None,
    "calls": [],
}


def usage_of(case: CaseRecord, field: Literal["llm_usage", "golden_llm_usage"] = "llm_usage") -> LLMUsageRecord:
    """A case's model-call figures with every field present, as ``read_case`` does for the case: a case without
    them (an older results.json, a case whose app failed) reads as no calls, and absent or null call fields as their
    empty value, so the gate, the reports and the metrics index them (``usage["calls"]``) as mypy checks."""
    usage: Mapping[str, Any] = case.get(field) or {}
    if not isinstance(usage, Mapping):
        return _NO_USAGE
    calls = [
        cast(LLMCallRecord, {**_NO_CALL, **{k: v for k, v in call.items() if v is not None}})
        for call in usage.get("calls") or ()
        if isinstance(call, Mapping)
    ]
    given = {key: value for key, value in usage.items() if value is not None}
    return cast(LLMUsageRecord, {**_NO_USAGE, **given, "calls": calls})
