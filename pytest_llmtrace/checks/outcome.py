"""What a case's checks found, as data: typed, frozen, and JSON-ready (``to_dict`` / ``from_dict`` round-trip).

The checks return these and nothing else; turning them into the text users read is ``checks.report``'s job, and
turning a failed outcome into a pytest failure happens once, at the edge (``failing.fail``). Reports and release
gates read the same objects, so every number a verdict was based on is kept: the value now, the golden value, the
limit applied, and whether the value was measured in this run or replayed from the recording.

Field names and meanings are stable: ``to_dict`` output carries ``SCHEMA_VERSION`` and only gains fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, Literal

SCHEMA_VERSION = 1

Status = Literal["passed", "failed", "skipped"]
Source = Literal["measured", "replayed"]
Unit = Literal["ms", "tokens", "blocks", "cost", "tokens/s", "usd"]
Basis = Literal["absolute", "relative"]
# replay / live / record: a golden case in that session mode; test: a hand-written test's llmtrace_check call.
Mode = Literal["replay", "live", "record", "test"]


@dataclass(frozen=True)
class Measurement:
    """One value held against one limit.

    - ``metric``: a latency metric (``total``, ``LLM``, ``SQL``, a span kind) or a token kind (``prompt``, ...).
    - ``unit``: ``ms``, ``tokens``, ``tokens/s`` (a stream's rate), ``usd`` (what the model calls cost), or for the
      cost check ``blocks`` (shared buffers) and ``cost`` (planner units);
      ``metric`` and ``unit`` together name the row (``SQL ms``, ``total tokens``, ``hit+read blocks``).
    - ``now``: the value in this run; ``golden``: the golden trace's (``None`` without a golden trace).
    - ``basis``: ``absolute`` (a budget or maximum the user set) or ``relative`` (derived from the golden value).
    - ``limit``: the largest passing value; ``low``: the smallest, for two-sided limits (token counts). Both are
      ``None`` when the limit was not applied.
    - ``rule``: the limit as the failure table shows it (``<= 1.5x golden (3471.3 ms)``).
    - ``status``: ``passed``, ``failed``, or ``skipped`` (the limit could not apply; ``reason`` says why).
    - ``source``: ``replayed`` when the value comes from the recording rather than from this run: in replay mode,
      the LLM spans' durations (virtual time: each replayed call counts its recorded duration) and all token counts.
      Everything else (SQL, the app's own code) is ``measured``.
    - ``replayed``: for durations, how many of the ``now`` ms come from the recording: all of them for a
      ``replayed`` value, some for a ``measured`` one that encloses replayed calls (``total``, CHAIN), else 0.
    - ``samples``: when the SQL was timed again after a latency limit failed, every timing in ms (the run's own
      first); ``now`` is then the fastest. ``finding``: for a relative latency limit that still failed after
      re-timing, ``regressed`` (the re-runs agree) or ``unstable`` (they spread too much to say); else empty.
    """

    metric: str
    unit: Unit
    now: float
    golden: float | None
    basis: Basis
    limit: float | None
    rule: str
    status: Status
    source: Source = "measured"
    low: float | None = None
    reason: str = ""
    replayed: float = 0.0
    samples: tuple[float, ...] = ()
    finding: Literal["", "regressed", "unstable"] = ""

    @property
    def label(self) -> str:
        return f"{self.metric} {self.unit}"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        values = dict(data)
        values["samples"] = tuple(values.get("samples", ()))
        return cls(**values)


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one check (``name`` is one of ``options.CHECKS``, or ``timeout`` / ``sandbox``: what the
    case's guard found, ``services.pg_guard``).

    ``reason`` is one line: why it failed or was skipped, empty when it passed. ``details`` are the lines a report
    shows under it (rows that differ, what changed in a snapshot). ``measurements`` are the numbers the latency and
    token checks (and the snapshot's tolerances) decided on, passed ones included.
    """

    name: str
    status: Status
    reason: str = ""
    measurements: tuple[Measurement, ...] = ()
    details: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "measurements": [_fields(m) for m in self.measurements],
            "details": list(self.details),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckResult:
        return cls(
            name=data["name"],
            status=data["status"],
            reason=data.get("reason", ""),
            measurements=tuple(Measurement.from_dict(m) for m in data.get("measurements", ())),
            details=tuple(data.get("details", ())),
        )


@dataclass(frozen=True)
class ReplayMiss:
    """A disagreement between the app and the recording it was replayed against.

    ``kind`` is ``prompt_changed`` (the app asked something no recorded call answers; ``text`` is the diagnosis with
    the nearest recordings and the prompt diff) or ``call_never_made`` (a recorded call the app no longer makes;
    ``text`` says which).
    """

    kind: Literal["prompt_changed", "call_never_made"]
    text: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReplayMiss:
        return cls(**data)


@dataclass(frozen=True)
class SqlOutcome:
    """What one re-executed statement did.

    ``rows`` are normalized values (``checks.equivalence.normalize_value``), so they are JSON-ready; ``row_count``
    counts the rows returned (at most the execution's ``max_rows``) and ``truncated`` says the query produced
    more, in which case comparing results would compare prefixes. ``error`` and ``sqlstate`` are set when ``ok`` is
    false; ``sqlstate`` is ``None`` when Postgres never saw the statement (a refusal, a failed connection).
    ``elapsed_ms`` covers executing and fetching, not connecting. When its cost was asked for (the ``cost`` check),
    ``plan_cost`` is the planner's total cost and ``buffers`` the shared blocks hit + read running it (``None``: the
    statement could not run, or could not even be planned).
    ``rows_omitted``: rows of ``row_count`` not kept in ``rows`` (``kept``: what the run's reports hold).
    """

    ok: bool
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    row_count: int
    truncated: bool
    error: str | None
    sqlstate: str | None
    elapsed_ms: float
    plan_cost: float | None = None
    buffers: int | None = None
    rows_omitted: int = 0

    REPORT_ROWS: ClassVar[int] = 50
    REPORT_BYTES: ClassVar[int] = 64 * 1024

    def kept(self) -> SqlOutcome:
        """The outcome with at most ``REPORT_ROWS`` rows and ``REPORT_BYTES`` of them (as JSON), for the reports.

        A run keeps every case's outcome until results.json is written at its end; with the full rows (up to
        ``llmtrace_max_result_bytes`` each) a thousand cases could fill the memory and the disk. The checks have
        compared the full rows already; a report shows the first ones and says how many more there were.
        """
        kept: list[tuple[Any, ...]] = []
        size = 0
        for row in self.rows[: self.REPORT_ROWS]:
            size += len(json.dumps(_lists(row), default=str))
            if size > self.REPORT_BYTES:
                break
            kept.append(row)
        if len(kept) == len(self.rows):
            return self
        return replace(self, rows=tuple(kept), rows_omitted=self.rows_omitted + len(self.rows) - len(kept))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["columns"] = list(self.columns)
        data["rows"] = [_lists(row) for row in self.rows]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SqlOutcome:
        values = dict(data)
        values["columns"] = tuple(values["columns"])
        values["rows"] = tuple(_tuples(row) for row in values["rows"])
        return cls(**values)


def _fields(value: Any) -> dict[str, Any]:
    """A flat dataclass's fields as a dict: ``asdict`` deep-copies every value, which made writing a case's results
    cost more than some of its checks; these hold only numbers, strings and tuples of numbers."""
    return {f.name: getattr(value, f.name) for f in fields(value)}


def _lists(value: Any) -> Any:
    return [_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (tuple, list)) else value


@dataclass(frozen=True)
class Timings:
    """Wall-clock times of the case in this run, in ms: the whole case (app call and checks), the app call alone
    (``None`` for ``llmtrace_check`` calls, where the test called its app itself), and the checks."""

    wall_ms: float
    app_ms: float | None
    checks_ms: float


@dataclass(frozen=True)
class SpanBar:
    """One span of a waterfall: where it sits in the tree and on the case's clock.

    ``start_ms`` is from the trace's first start; ``kind`` is ``SQL`` for a span that ran a statement, else the
    span's kind (``views.span_kind``: ``LLM`` in any convention). ``replayed_ms`` is the part of ``duration_ms`` the
    recording supplied (virtual time, ``trace.virtual``). ``open``: the span never ended; it is drawn to the trace's
    end. ``error``: its status was ERROR.
    """

    name: str
    kind: str
    depth: int
    start_ms: float
    duration_ms: float
    replayed_ms: float = 0.0
    error: bool = False
    open: bool = False


@dataclass(frozen=True)
class Waterfall:
    """A trace's spans as bars, depth first with children in start order: what report.html draws, kept in
    results.json so a report never needs the trace files. At most ``MAX_BARS`` bars; ``omitted`` counts the rest
    (a runaway loop must not make results.json as large as its trace)."""

    bars: tuple[SpanBar, ...]
    total_ms: float
    omitted: int = 0

    MAX_BARS: ClassVar[int] = 200

    def to_dict(self) -> dict[str, Any]:
        return {"bars": [_fields(b) for b in self.bars], "total_ms": self.total_ms, "omitted": self.omitted}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Waterfall:
        return cls(tuple(SpanBar(**b) for b in data["bars"]), data["total_ms"], data.get("omitted", 0))


def _waterfall(data: Mapping[str, Any], key: str) -> Waterfall | None:
    value = data.get(key)
    return None if value is None else Waterfall.from_dict(value)


@dataclass(frozen=True)
class CaseOutcome:
    """Everything one case (a golden file, or one ``llmtrace_check`` call) did and how each check judged it.

    - ``case_id``: the golden file's stem or the test's node id; ``file``: the golden file (``None`` for tests).
    - ``mode``: see ``Mode``.
    - ``checks``: the results of the checks that ran, in ``options.CHECKS`` order.
    - ``app_error``: ``"ExceptionType: message"`` when the app raised; ``replay_misses``: see ``ReplayMiss``.
    - ``sql`` / ``golden_sql``: the statement the app ran now / in the golden trace (the model's answer with code
      fences stripped when there is no SQL span); ``result``: what re-executing ``sql`` read-only returned.
    - ``tokens`` / ``golden_tokens``: token sums per kind; ``durations_ms`` / ``golden_durations_ms``: time per
      latency metric (``checks.budgets.latencies_ms``). Golden values are ``None`` without a golden trace.
    - ``replayed_durations_ms``: per latency metric, the part of ``durations_ms`` replay took from the recording
      (virtual time); metrics measured in full are absent, so ``{}`` means nothing was replayed.
    - ``llm_usage`` / ``golden_llm_usage``: the model calls' cost, TTFT, tokens/s and p95 chunk gap, per case and
      per call (``checks.usage.usage_summary``); ``None`` without a trace.
    - ``timings``: see ``Timings``.
    - ``question`` / ``question_source``: what a golden case asked the app, and which ``llmtrace_question`` source
      it came from (``None`` for ``llmtrace_check`` calls).
    - ``waterfall`` / ``golden_waterfall``: the spans now (on the clock the latency check judged) and in the golden
      trace, for the report's waterfalls; ``None`` when there was no trace.
    """

    case_id: str
    mode: Mode
    file: str | None = None
    checks: tuple[CheckResult, ...] = ()
    app_error: str | None = None
    replay_misses: tuple[ReplayMiss, ...] = ()
    sql: str | None = None
    golden_sql: str | None = None
    result: SqlOutcome | None = None
    tokens: dict[str, int] = field(default_factory=dict)
    golden_tokens: dict[str, int] | None = None
    durations_ms: dict[str, float] = field(default_factory=dict)
    golden_durations_ms: dict[str, float] | None = None
    replayed_durations_ms: dict[str, float] = field(default_factory=dict)
    llm_usage: dict[str, Any] | None = None
    golden_llm_usage: dict[str, Any] | None = None
    timings: Timings | None = None
    question: str | None = None
    question_source: str | None = None
    waterfall: Waterfall | None = None
    golden_waterfall: Waterfall | None = None
    # ``result_match = suite``: the semantic verdict (``checks.semantic.Verdict.to_dict``); ``None`` under other rules
    semantic: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        """No app error, no replay miss, and no failed check (skipped checks do not fail a case)."""
        return self.app_error is None and not self.replay_misses and not any(c.failed for c in self.checks)

    def check(self, name: str) -> CheckResult | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "case_id": self.case_id,
            "mode": self.mode,
            "file": self.file,
            "passed": self.passed,
            "checks": [c.to_dict() for c in self.checks],
            "app_error": self.app_error,
            "replay_misses": [_fields(m) for m in self.replay_misses],
            "sql": self.sql,
            "golden_sql": self.golden_sql,
            "result": None if self.result is None else self.result.to_dict(),
            "tokens": dict(self.tokens),
            "golden_tokens": None if self.golden_tokens is None else dict(self.golden_tokens),
            "durations_ms": dict(self.durations_ms),
            "golden_durations_ms": None if self.golden_durations_ms is None else dict(self.golden_durations_ms),
            "replayed_durations_ms": dict(self.replayed_durations_ms),
            "llm_usage": self.llm_usage,
            "golden_llm_usage": self.golden_llm_usage,
            "timings": None if self.timings is None else _fields(self.timings),
            "question": self.question,
            "question_source": self.question_source,
            "waterfall": None if self.waterfall is None else self.waterfall.to_dict(),
            "golden_waterfall": None if self.golden_waterfall is None else self.golden_waterfall.to_dict(),
            "semantic": self.semantic,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaseOutcome:
        if data.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"case outcome schema {data.get('schema')!r} is not {SCHEMA_VERSION}")
        return cls(
            case_id=data["case_id"],
            mode=data["mode"],
            file=data.get("file"),
            checks=tuple(CheckResult.from_dict(c) for c in data.get("checks", ())),
            app_error=data.get("app_error"),
            replay_misses=tuple(ReplayMiss.from_dict(m) for m in data.get("replay_misses", ())),
            sql=data.get("sql"),
            golden_sql=data.get("golden_sql"),
            result=None if data.get("result") is None else SqlOutcome.from_dict(data["result"]),
            tokens=dict(data.get("tokens", {})),
            golden_tokens=None if data.get("golden_tokens") is None else dict(data["golden_tokens"]),
            durations_ms=dict(data.get("durations_ms", {})),
            golden_durations_ms=None if data.get("golden_durations_ms") is None else dict(data["golden_durations_ms"]),
            replayed_durations_ms=dict(data.get("replayed_durations_ms", {})),
            llm_usage=data.get("llm_usage"),
            golden_llm_usage=data.get("golden_llm_usage"),
            timings=None if data.get("timings") is None else Timings(**data["timings"]),
            question=data.get("question"),
            question_source=data.get("question_source"),
            waterfall=_waterfall(data, "waterfall"),
            golden_waterfall=_waterfall(data, "golden_waterfall"),
            semantic=data.get("semantic"),
        )
