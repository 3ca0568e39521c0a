"""The syrupy extension that keeps each golden case's normalized outcome in ``golden_traces/__snapshots__/``.

What is compared is the outcome, not the trace: the span tree (names, kinds, statuses), the SQL, its result rows (or a
digest of large results), token counts and durations. Timestamps and ids change on every run and are left out;
numbers that legitimately wobble (durations, tokens after a model update) are compared with the tolerance rules of
``checks.budgets`` and rows with the row-order rule of ``checks.equivalence``, the same functions the latency, tokens
and results checks use, so a snapshot only fails, and ``--snapshot-update`` only rewrites it, when something really
changed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeGuard

import pytest
from syrupy.extensions.json import JSONSnapshotExtension

from pytest_llmtrace.checks.budgets import latencies_ms, latency_vs_golden, source_of, tokens_of, tokens_vs_golden
from pytest_llmtrace.checks.equivalence import compare_results
from pytest_llmtrace.checks.names import TTFT
from pytest_llmtrace.checks.options import CheckOptions
from pytest_llmtrace.checks.outcome import CheckResult, Measurement, SqlOutcome
from pytest_llmtrace.trace.views import span_kind

if TYPE_CHECKING:
    from syrupy.assertion import SnapshotAssertion
    from syrupy.location import PyTestLocation
    from syrupy.types import PropertyFilter, PropertyMatcher, SerializableData, SerializedData, SnapshotIndex

    from pytest_llmtrace.trace.model import Trace

MAX_SNAPSHOT_ROWS = 50  # larger results are kept as a digest, so snapshot files stay reviewable
# The snapshot an item shares with others, named here instead of after the item: every run of a repeated golden case
# (``case[2/3]``, --llmtrace-repeat) is held against the case's one snapshot, ``case.json``.
SNAPSHOT_NAME_KEY = pytest.StashKey[str]()


def snapshot_data(trace: Trace, sql: str | None, result: SqlOutcome | None) -> dict[str, Any]:
    """The normalized, JSON-ready outcome of one case, as its snapshot file holds it."""
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
    data["tokens"] = tokens_of(trace)
    # TTFT is judged by the latency check against the golden trace; a snapshot keeps the spans' own durations
    data["durations_ms"] = {k: round(v, 1) for k, v in sorted(latencies_ms(trace).items()) if k != TTFT}
    return data


def compare_outcomes(
    golden: dict[str, Any],
    now: dict[str, Any],
    options: CheckOptions,
    *,
    replayed: bool = False,
    replayed_ms: Mapping[str, float] | None = None,
) -> tuple[list[str], list[Measurement]]:
    """What differs beyond the tolerances (one short line each), and the token and duration measurements made.

    ``replayed`` marks the token counts as the recording's; ``replayed_ms`` is each duration's replayed part."""
    found: list[str] = []
    for key in ("spans", "sql"):
        if golden.get(key) != now.get(key):
            found.append(f"{key} changed")
    found.extend(_result_changes(golden, now, options))
    measurements: list[Measurement] = []
    now_tokens = now.get("tokens") or {}
    for name, value in (golden.get("tokens") or {}).items():
        new = now_tokens.get(name)
        if not _is_number(new):
            found.append(f"{name} tokens {value} -> {new}")
            continue
        source = source_of(name, "tokens", replayed=replayed)
        measured = tokens_vs_golden(name, value, new, tolerance=options.token_tolerance, source=source)
        measurements.append(measured)
        if measured.status == "failed":
            found.append(f"{name} tokens {value} -> {new}")
    now_durations = now.get("durations_ms") or {}
    for name, value in (golden.get("durations_ms") or {}).items():
        new = now_durations.get(name)
        if not _is_number(new) or math.isnan(new):
            found.append(f"{name} duration missing")
            continue
        part = round((replayed_ms or {}).get(name, 0.0), 1)  # durations are stored rounded to 0.1 ms
        measured = latency_vs_golden(
            name, value, new, tolerance=options.latency_tolerance, floor_ms=options.latency_floor_ms, replayed_ms=part
        )
        measurements.append(measured)
        if measured.status == "failed":
            found.append(f"{name} {value} ms -> {new} ms")
    return found, measurements


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _result_changes(golden: dict[str, Any], now: dict[str, Any], options: CheckOptions) -> list[str]:
    golden_result, now_result = golden.get("result") or {}, now.get("result") or {}
    if ("error" in golden_result) != ("error" in now_result) or golden_result.get("sqlstate") != now_result.get(
        "sqlstate"
    ):
        return ["SQL outcome changed (error vs rows)"]
    if "error" in golden_result or not golden_result:
        return []
    if golden_result.get("columns") != now_result.get("columns"):
        return ["result columns changed"]
    if "digest" in golden_result or "digest" in now_result:
        return [] if golden_result.get("digest") == now_result.get("digest") else ["result digest changed"]
    diff = compare_results(
        golden_result.get("rows", []), now_result.get("rows", []), options.result_match, golden_sql=golden.get("sql")
    )
    return [] if diff is None else [f"result rows changed: {diff.summary}"]


class OutcomeSnapshotExtension(JSONSnapshotExtension):
    """One JSON file per case, named after it, directly in ``<golden dir>/__snapshots__/``.

    The options are a class attribute because syrupy instantiates extensions itself; ``configured`` makes a subclass
    carrying a test's options, one per distinct options: syrupy scans the snapshot folder once per extension class,
    so a class per test made a run of N cases read the folder N times (quadratic: minutes at 1,000 cases).
    """

    options: ClassVar[CheckOptions] = CheckOptions()
    _configured: ClassVar[dict[str, type[OutcomeSnapshotExtension]]] = {}
    verdict: bool | None = None  # set on the instance by OutcomeSnapshot.check for the one assertion it makes

    @classmethod
    def configured(cls, options: CheckOptions) -> type[OutcomeSnapshotExtension]:
        key = f"{cls.__module__}.{cls.__qualname__}:{options!r}"  # CheckOptions holds dicts: its repr is the key
        found = OutcomeSnapshotExtension._configured.get(key)
        if found is None:
            found = type("OutcomeSnapshotExtension", (cls,), {"options": options})
            OutcomeSnapshotExtension._configured[key] = found
        return found

    recalled: tuple[str, str] | None = None  # (path, text) of the file OutcomeSnapshot.of read: not read again
    # Set while OutcomeSnapshot asserts its outcome: its assertion has no matcher, include or exclude of a user's, so
    # the matcher syrupy always passes (to serialize SnapshotAssertion objects) has nothing to do on plain JSON.
    own_outcome: bool = False

    @classmethod
    def _sanitize_filename(cls, filename: str) -> str:
        return _sanitized(filename)  # syrupy asks for the same case's name half a dozen times per case

    def serialize(
        self,
        data: SerializableData,
        *,
        exclude: PropertyFilter | None = None,
        include: PropertyFilter | None = None,
        matcher: PropertyMatcher | None = None,
    ) -> SerializedData:
        """syrupy's JSON text, written at once when the data is plain JSON (an outcome always is): syrupy's own
        walk, made for any Python object, was a millisecond of every case. Same text: keys sorted, indent 2."""
        if exclude is None and include is None and (matcher is None or self.own_outcome) and _plain_json(data):
            return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
        return super().serialize(data, exclude=exclude, include=include, matcher=matcher)

    def read_snapshot_data_from_location(
        self, *, snapshot_location: str, snapshot_name: str, session_id: str
    ) -> SerializableData | None:
        if self.recalled is not None and self.recalled[0] == snapshot_location:
            return self.recalled[1]
        return super().read_snapshot_data_from_location(
            snapshot_location=snapshot_location, snapshot_name=snapshot_name, session_id=session_id
        )

    @classmethod
    def get_snapshot_name(cls, *, test_location: PyTestLocation, index: SnapshotIndex = 0) -> str:
        shared = test_location.item.stash.get(SNAPSHOT_NAME_KEY, None)
        if shared is None:
            return super().get_snapshot_name(test_location=test_location, index=index)
        return cls._sanitize_filename(shared)[: cls._max_stem_length()]  # as syrupy names single files

    @classmethod
    def dirname(cls, *, test_location: PyTestLocation) -> str:
        return _snapshot_dir(test_location.filepath)

    def matches(self, *, serialized_data: SerializableData, snapshot_data: SerializableData) -> bool:
        if self.verdict is not None:  # OutcomeSnapshot.check compared these very outcomes a moment ago
            return self.verdict
        try:
            now = json.loads(str(serialized_data))
            golden = json.loads(str(snapshot_data))
        except ValueError:
            return bool(serialized_data == snapshot_data)
        changes, _ = compare_outcomes(golden, now, self.options)
        return not changes


@functools.lru_cache(maxsize=4096)
def _sanitized(filename: str) -> str:
    return JSONSnapshotExtension._sanitize_filename(filename)


@functools.lru_cache(maxsize=1024)
def _snapshot_dir(test_file: str) -> str:
    return str(Path(test_file).parent / "__snapshots__")


def _plain_json(data: Any, depth: int = 0) -> bool:
    """Whether ``data`` is JSON as ``json.dumps`` writes it and syrupy's walk would leave it: str keys, lists, tuples
    and scalars, no deeper than syrupy's limit."""
    if data is None or isinstance(data, (str, int, float)):
        return True
    if depth >= _SYRUPY_MAX_DEPTH:
        return False
    if type(data) is dict:  # not an OrderedDict, whose order syrupy keeps
        return all(isinstance(k, str) and _plain_json(v, depth + 1) for k, v in data.items())
    if type(data) in (list, tuple):  # not a namedtuple, which syrupy writes as an object
        return all(_plain_json(v, depth + 1) for v in data)
    return False


_SYRUPY_MAX_DEPTH = JSONSnapshotExtension._max_depth


@dataclass
class OutcomeSnapshot:
    """A test's outcome snapshot: the syrupy assertion, where its file is, and what it held before this run."""

    assertion: SnapshotAssertion  # with the OutcomeSnapshotExtension configured for this test
    options: CheckOptions
    path: Path
    stored: dict[str, Any] | None
    asserted: bool = False
    recalled: tuple[str, str] | None = None  # (syrupy's location, the text read there): syrupy need not read it again

    @classmethod
    def of(cls, request: pytest.FixtureRequest, options: CheckOptions) -> OutcomeSnapshot:
        extension = OutcomeSnapshotExtension.configured(options)
        assertion = request.getfixturevalue("snapshot").use_extension(extension)
        location = extension.get_location(test_location=assertion.test_location, index=assertion.index)
        path = Path(location)
        try:
            text = path.read_text()
            stored = json.loads(text)
        except (OSError, ValueError):
            return cls(assertion, options, path, None)
        if not isinstance(stored, dict):
            return cls(assertion, options, path, None)
        return cls(assertion, options, path, stored, recalled=(location, text))

    def _assert(self, data: dict[str, Any]) -> bool:
        """syrupy's assertion of ``data`` (it records the snapshot as used, and writes it when updating), handed the
        file's text read in ``of``."""
        extension = self.assertion.extension
        if not isinstance(extension, OutcomeSnapshotExtension):
            return bool(self.assertion == data)
        extension.recalled, extension.own_outcome = self.recalled, True
        try:
            return bool(self.assertion == data)
        finally:
            extension.recalled, extension.own_outcome = None, False

    def check(
        self, data: dict[str, Any], *, replayed: bool = False, replayed_ms: Mapping[str, float] | None = None
    ) -> CheckResult:
        """The ``snapshot`` check: ``data`` against the stored outcome (``--snapshot-update`` writes it instead)."""
        self.asserted = True
        changes: list[str] = []
        measurements: list[Measurement] = []
        if self.stored is not None:
            changes, measurements = compare_outcomes(
                self.stored, data, self.options, replayed=replayed, replayed_ms=replayed_ms
            )
        extension = self.assertion.extension
        if isinstance(extension, OutcomeSnapshotExtension) and self.stored is not None:
            extension.verdict = not changes  # the stored outcome is the file syrupy reads: no second comparison
        try:
            matched = self._assert(data)
        finally:
            if isinstance(extension, OutcomeSnapshotExtension):
                extension.verdict = None
        if matched:
            return CheckResult("snapshot", "passed", "", tuple(measurements))
        if self.stored is None:
            return CheckResult(
                "snapshot", "failed", f"no snapshot at {self.path}: run with --snapshot-update to create it"
            )
        reason = f"the outcome differs from {self.path} (--snapshot-update accepts it)"
        return CheckResult("snapshot", "failed", reason, tuple(measurements), tuple(changes))

    def keep(self) -> None:
        """Tell syrupy the snapshot is still in use when the test could not reach its snapshot check.

        Otherwise ``--snapshot-update`` deletes the snapshot of every case that failed early (an app error, a
        malformed file) or runs without the snapshot check, as syrupy does for tests that never assert their
        snapshot. Asserting the stored outcome against itself marks it used and writes nothing.
        """
        if self.stored is not None:
            self._assert(self.stored)
