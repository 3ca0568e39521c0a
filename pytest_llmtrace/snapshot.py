"""The syrupy extension that keeps each golden case's normalized outcome in ``golden_traces/__snapshots__/``.

What is compared is the outcome, not the trace: the span tree (names, kinds, statuses), the SQL, its result rows (or a
digest of large results), token counts and durations. Timestamps and ids change on every run and are left out;
numbers that legitimately wobble (durations, tokens after a model update) are compared with tolerances, so a snapshot
only fails, and ``--snapshot-update`` only rewrites it, when something really changed.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from syrupy.extensions.json import JSONSnapshotExtension

from pytest_llmtrace.checks.budgets import latencies_ms
from pytest_llmtrace.checks.sql import compare_results
from pytest_llmtrace.trace.views import span_kind

if TYPE_CHECKING:
    from syrupy.location import PyTestLocation
    from syrupy.types import SerializableData

    from pytest_llmtrace.checks.sql import SqlOutcome
    from pytest_llmtrace.trace.model import Trace

MAX_SNAPSHOT_ROWS = 50  # larger results are kept as a digest, so snapshot files stay reviewable


def outcome(trace: Trace, sql: str | None, result: SqlOutcome | None) -> dict[str, Any]:
    """The normalized, JSON-ready outcome of one case."""
    spans = [f"{'  ' * depth}{span.name} {span_kind(span)} {span.status.value}" for depth, span in trace.walk()]
    data: dict[str, Any] = {"spans": spans, "sql": sql}
    if result is not None:
        if result.ok:
            rows = [list(row) for row in result.rows]
            data["result"] = {"columns": list(result.columns), "row_count": result.row_count}
            if len(rows) <= MAX_SNAPSHOT_ROWS:
                data["result"]["rows"] = rows
            else:
                data["result"]["digest"] = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
        else:
            data["result"] = {"error": result.error, "sqlstate": result.sqlstate}
    data["tokens"] = {"prompt": trace.prompt_tokens, "completion": trace.completion_tokens, "total": trace.total_tokens}
    data["durations_ms"] = {k: round(v, 1) for k, v in sorted(latencies_ms(trace).items())}
    return data


class OutcomeSnapshotExtension(JSONSnapshotExtension):
    """One JSON file per case, named after it, directly in ``<golden dir>/__snapshots__/``.

    Tolerances are class attributes because syrupy instantiates extensions itself; ``configured`` makes a subclass
    carrying the session's settings.
    """

    result_match: ClassVar[str] = "bag"
    token_tolerance: ClassVar[float] = 0.10
    latency_tolerance: ClassVar[float] = 1.5
    latency_floor_ms: ClassVar[float] = 200.0

    @classmethod
    def configured(
        cls, *, result_match: str, token_tolerance: float, latency_tolerance: float, latency_floor_ms: float
    ) -> type[OutcomeSnapshotExtension]:
        return type(
            "OutcomeSnapshotExtension",
            (cls,),
            {
                "result_match": result_match,
                "token_tolerance": token_tolerance,
                "latency_tolerance": latency_tolerance,
                "latency_floor_ms": latency_floor_ms,
            },
        )

    @classmethod
    def dirname(cls, *, test_location: PyTestLocation) -> str:
        return str(Path(test_location.filepath).parent / "__snapshots__")

    def matches(self, *, serialized_data: SerializableData, snapshot_data: SerializableData) -> bool:
        try:
            now = json.loads(str(serialized_data))
            golden = json.loads(str(snapshot_data))
        except ValueError:
            return bool(serialized_data == snapshot_data)
        return not self.differences(golden, now)

    @classmethod
    def differences(cls, golden: dict[str, Any], now: dict[str, Any]) -> list[str]:
        """What differs beyond the tolerances, one short line each (used for messages and for ``matches``)."""
        found: list[str] = []
        for key in ("spans", "sql"):
            if golden.get(key) != now.get(key):
                found.append(f"{key} changed")
        golden_result, now_result = golden.get("result") or {}, now.get("result") or {}
        if ("error" in golden_result) != ("error" in now_result) or golden_result.get("sqlstate") != now_result.get(
            "sqlstate"
        ):
            found.append("SQL outcome changed (error vs rows)")
        elif "error" not in golden_result and golden_result:
            if golden_result.get("columns") != now_result.get("columns"):
                found.append("result columns changed")
            elif "digest" in golden_result or "digest" in now_result:
                if golden_result.get("digest") != now_result.get("digest"):
                    found.append("result digest changed")
            else:
                order = cls.result_match == "ordered"
                diff = compare_results(
                    golden_result.get("rows", []),
                    now_result.get("rows", []),
                    cls.result_match,  # type: ignore[arg-type]
                    order_matters=order,
                )
                if diff is not None:
                    found.append(f"result rows changed: {diff.summary}")
        for name, value in (golden.get("tokens") or {}).items():
            new = (now.get("tokens") or {}).get(name)
            if not isinstance(new, (int, float)) or abs(new - value) > cls.token_tolerance * max(value, 1):
                found.append(f"{name} tokens {value} -> {new}")
        for name, value in (golden.get("durations_ms") or {}).items():
            new = (now.get("durations_ms") or {}).get(name)
            if not isinstance(new, (int, float)) or math.isnan(new):
                found.append(f"{name} duration missing")
            elif new > value * cls.latency_tolerance and new - value > cls.latency_floor_ms:
                found.append(f"{name} {value} ms -> {new} ms")
        return found
