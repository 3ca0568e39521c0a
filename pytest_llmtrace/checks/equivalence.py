"""Whether two query results mean the same thing, following the published text-to-SQL metrics.

Comparison follows test-suite accuracy and BIRD's execution accuracy, so that a failing test means what people who
evaluate text-to-SQL already expect it to mean. Rows are normalized first, so raw driver rows and rows read back
from a snapshot file compare alike.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import json
import math
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pytest_llmtrace.checks.names import RESULT_MATCH, ResultMatch
from pytest_llmtrace.checks.outcome import CheckResult, SqlOutcome
from pytest_llmtrace.checks.sql_text import has_top_level_order_by

CompareRule = ResultMatch

# -- values -----------------------------------------------------------------------------------------------------------


def normalize_value(v: Any) -> Any:
    """A JSON-serializable value that compares equal whenever the database values are the same.

    Numbers become ``float`` (``numeric`` and ``double precision`` answers to the same question differ only in type,
    and comparison uses a tolerance); ``int`` and ``bool`` stay as they are. Non-finite floats become the strings
    ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` so that strict JSON can hold them and NaN equals NaN. Aware timestamps
    are converted to UTC, since the session time zone decides how Postgres returns them. Arrays become tuples (lists
    read back from a snapshot compare equal to them). ``interval`` becomes seconds. Anything unknown is ``str()``.
    """
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, (float, Decimal)):
        f = float(v)
        if math.isnan(f):
            return "NaN"
        if math.isinf(f):
            return "Infinity" if f > 0 else "-Infinity"
        return f
    if isinstance(v, dt.datetime):
        return (v.astimezone(dt.timezone.utc) if v.tzinfo is not None else v).isoformat()
    if isinstance(v, (dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, (list, tuple)):
        return tuple(normalize_value(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)
    return str(v)


# -- comparison -------------------------------------------------------------------------------------------------------

Row = tuple[Any, ...]


@dataclass(frozen=True)
class ResultDiff:
    """Why two results differ. ``missing`` rows are in the golden result only, ``unexpected`` rows in the new one;
    for an order difference both hold the rows at the first positions that differ."""

    rule: str
    golden_rows: int
    now_rows: int
    golden_columns: int
    now_columns: int
    missing: tuple[Row, ...] = ()
    unexpected: tuple[Row, ...] = ()
    first_difference: int | None = None  # 0-based row index, for ordered comparisons

    @property
    def summary(self) -> str:
        if self.golden_columns != self.now_columns:
            return (
                f"golden {self.golden_columns} columns, now {self.now_columns} columns "
                f"({self.golden_rows} and {self.now_rows} rows)"
            )
        head = f"golden {_rows(self.golden_rows)}, now {_rows(self.now_rows)}"
        if self.first_difference is not None:
            return f"{head}; rows differ in order or value from row {self.first_difference + 1}"
        return f"{head}; {len(self.missing)} missing, {len(self.unexpected)} unexpected"

    def lines(self, limit: int = 5) -> list[str]:
        """At most ``limit`` missing and ``limit`` unexpected rows, then how many more there are."""
        out: list[str] = []
        for label, rows in (("missing", self.missing), ("unexpected", self.unexpected)):
            if self.first_difference is not None:
                label = {"missing": "golden", "unexpected": "now"}[label]
            out.extend(f"{label + ':':<11} {_format_row(r)}" for r in rows[:limit])
            if len(rows) > limit:
                out.append(f"... {len(rows) - limit} more {label}")
        return out

    def __str__(self) -> str:
        return "\n".join([self.summary, *self.lines()])


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _format_row(row: Sequence[Any], width: int = 160) -> str:
    text = "(" + ", ".join("NULL" if v is None else repr(v) for v in row) + ")"
    return text if len(text) <= width else text[: width - 3] + "..."


def row_order_matters(rule: ResultMatch, golden_sql: str | None) -> bool:
    """Whether rows must come in the golden order: the one rule the results check and the snapshot both use.

    - ``ordered``: always.
    - ``bag``: only when the golden SQL orders its outer query (a top-level ORDER BY), as test-suite accuracy
      (Zhong et al. 2020) does: without one, the database may return rows in any order and both are right.
    - ``set``: never (BIRD's execution accuracy compares sets).
    - ``none``: rows are not compared at all.
    - ``suite``: as ``bag`` (the suite's verdict compares rows that way on each of its databases).
    """
    if rule == "ordered":
        return True
    if rule in ("bag", "suite"):
        return golden_sql is not None and has_top_level_order_by(golden_sql)
    return False


def compare_results(
    golden: Sequence[Sequence[Any]],
    now: Sequence[Sequence[Any]],
    rule: ResultMatch,
    *,
    golden_sql: str | None = None,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
) -> ResultDiff | None:
    """``None`` when ``now`` is an equivalent result to ``golden`` under ``rule``, else what differs.

    - ``bag``: test-suite accuracy: rows as a multiset, in order only if ``row_order_matters`` says so for
      ``golden_sql``. As there, columns may come in another order: ``SELECT count(*), tier`` answers the same
      question as ``SELECT tier, count(*)``.
    - ``set``: BIRD's execution accuracy: ``set(golden) == set(now)``; duplicates and order are ignored, columns not.
    - ``ordered``: the same rows in the same order.
    - ``none``: always equivalent (the check is off, but the rows are still recorded).

    Values are normalized first (so raw driver rows and rows read back from a snapshot compare alike), and numbers
    match within ``math.isclose(rel_tol, abs_tol)``. Floats cannot be hashed with a tolerance, and rounding to a
    tolerance-derived precision splits values that straddle a rounding boundary, so matching is two-pass: exact
    matches by hashing first, then the leftover rows are matched greedily against candidates with the same
    non-numeric values whose first number lies within the tolerance window (found by bisection). Greedy matching
    could pair wrongly only if two distinct rows were themselves within the tolerance of each other.
    """
    if rule not in RESULT_MATCH:
        raise ValueError(f"unknown comparison rule {rule!r}; expected one of {', '.join(RESULT_MATCH)}")
    if rule == "none":
        return None
    if rule == "suite":
        rule = "bag"
    g = [_row(r) for r in golden]
    n = [_row(r) for r in now]
    g_cols = len(g[0]) if g else 0
    n_cols = len(n[0]) if n else 0
    if g and n and g_cols != n_cols:
        return ResultDiff(rule, len(g), len(n), g_cols, n_cols)
    tol = _Tolerance(rel_tol, abs_tol)
    if row_order_matters(rule, golden_sql):
        return _compare_ordered(rule, g, n, tol, permute=rule == "bag")
    if rule == "set":
        return _compare_set(g, n, tol)
    return _compare_bag(g, n, tol)


def check_results(
    result: SqlOutcome | None,
    golden_result: Mapping[str, Any] | None,
    rule: ResultMatch,
    *,
    golden_sql: str | None,
) -> CheckResult:
    """The ``results`` check: the rows now against the rows the snapshot holds for the golden SQL.

    ``golden_result`` is the snapshot's ``result`` entry; without rows there (no snapshot yet, or a digest of a large
    result) the check is skipped and the snapshot check reports what is missing.
    """
    if rule == "none":
        return CheckResult("results", "skipped", "result_match is none")
    if result is None or not result.ok:
        return CheckResult("results", "skipped", "the SQL did not execute")
    if golden_result is None or "rows" not in golden_result:
        return CheckResult("results", "skipped", "the snapshot holds no golden rows to compare with")
    diff = compare_results(golden_result["rows"], result.rows, rule, golden_sql=golden_sql)
    if diff is None:
        return CheckResult("results", "passed")
    return CheckResult(
        "results", "failed", f"the rows differ from the snapshot ({rule}): {diff.summary}", details=tuple(diff.lines())
    )


def _row(row: Sequence[Any]) -> Row:
    return tuple(normalize_value(v) for v in row)


@dataclass(frozen=True)
class _Tolerance:
    rel: float
    abs: float

    def close(self, a: Any, b: Any) -> bool:
        if isinstance(a, bool) or isinstance(b, bool):
            return a is b
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return a == b or math.isclose(a, b, rel_tol=self.rel, abs_tol=self.abs)
        if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
            return len(a) == len(b) and all(self.close(x, y) for x, y in zip(a, b, strict=True))
        return bool(type(a) is type(b) and a == b)

    def window(self, x: float) -> float:
        """Half-width of the interval that can hold numbers close to ``x``."""
        return max(self.rel * abs(x) / max(1 - self.rel, 1e-12), self.abs)


def _key(value: Any) -> Any:
    """A hashable key for exact matching; tags bools so that ``True`` does not match ``1``."""
    if isinstance(value, bool):
        return ("__bool__", value)
    if isinstance(value, (tuple, list)):
        return ("__array__", tuple(_key(v) for v in value))
    return value


def _row_key(row: Row) -> Any:
    return tuple(_key(v) for v in row)


def _shape(value: Any) -> Any:
    """The row with numbers blanked out: rows can only match if these are equal."""
    if isinstance(value, bool):
        return ("__bool__", value)
    if isinstance(value, (int, float)):
        return "__number__"
    if isinstance(value, (tuple, list)):
        return ("__array__", tuple(_shape(v) for v in value))
    return value


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, (tuple, list)):
        return [x for v in value for x in _numbers(v)]
    return []


class _TolerantPool:
    """Rows waiting to be matched, grouped by shape and sorted by their first number for bisection."""

    def __init__(self, rows: Sequence[Row], tol: _Tolerance) -> None:
        self.tol = tol
        self.groups: dict[Any, tuple[list[float], list[Row], list[bool]]] = {}
        for row in sorted(rows, key=_first_number):
            keys, members, used = self.groups.setdefault(_shape(row), ([], [], []))
            keys.append(_first_number(row))
            members.append(row)
            used.append(False)

    def take(self, row: Row, *, consume: bool) -> bool:
        """Whether a close row is in the pool; with ``consume`` the first one found is used up."""
        group = self.groups.get(_shape(row))
        if group is None:
            return False
        keys, members, used = group
        first = _first_number(row)
        w = self.tol.window(first)
        for i in range(bisect.bisect_left(keys, first - w), bisect.bisect_right(keys, first + w)):
            if not used[i] and self.tol.close(row, members[i]):
                used[i] = consume
                return True
        return False

    def remaining(self) -> list[Row]:
        return [m for _, members, used in self.groups.values() for m, u in zip(members, used, strict=True) if not u]


def _first_number(row: Row) -> float:
    numbers = _numbers(row)
    return numbers[0] if numbers else 0.0


def _bag_leftovers(g: Sequence[Row], n: Sequence[Row], tol: _Tolerance) -> tuple[list[Row], list[Row]]:
    """Rows of ``g`` and ``n`` left unmatched by a one-to-one tolerant matching."""
    counts_n = Counter(_row_key(r) for r in n)
    g_left: list[Row] = []
    for r in g:
        k = _row_key(r)
        if counts_n[k] > 0:
            counts_n[k] -= 1
        else:
            g_left.append(r)
    n_left: list[Row] = []
    for r in n:
        k = _row_key(r)
        if counts_n[k] > 0:
            counts_n[k] -= 1
            n_left.append(r)
    if not g_left or not n_left:
        return g_left, n_left
    pool = _TolerantPool(n_left, tol)
    missing = [r for r in g_left if not pool.take(r, consume=True)]
    return missing, pool.remaining()


def _compare_bag(g: list[Row], n: list[Row], tol: _Tolerance) -> ResultDiff | None:
    missing, unexpected = _bag_leftovers(g, n, tol)
    if not missing and not unexpected:
        return None
    cols = len(g[0]) if g else len(n[0]) if n else 0
    if missing and unexpected and _permuted_columns_match(g, n, tol):
        return None
    return ResultDiff("bag", len(g), len(n), cols, cols, tuple(missing), tuple(unexpected))


def _compare_set(g: list[Row], n: list[Row], tol: _Tolerance) -> ResultDiff | None:
    g_unique = list({_row_key(r): r for r in g}.values())
    n_unique = list({_row_key(r): r for r in n}.values())
    g_keys = {_row_key(r) for r in g_unique}
    n_keys = {_row_key(r) for r in n_unique}
    g_rest = [r for r in g_unique if _row_key(r) not in n_keys]
    n_rest = [r for r in n_unique if _row_key(r) not in g_keys]
    if g_rest or n_rest:
        in_now = _TolerantPool(n_unique, tol)
        in_golden = _TolerantPool(g_unique, tol)
        g_rest = [r for r in g_rest if not in_now.take(r, consume=False)]
        n_rest = [r for r in n_rest if not in_golden.take(r, consume=False)]
    if not g_rest and not n_rest:
        return None
    cols = len(g[0]) if g else len(n[0]) if n else 0
    return ResultDiff("set", len(g), len(n), cols, cols, tuple(g_rest), tuple(n_rest))


def _compare_ordered(rule: str, g: list[Row], n: list[Row], tol: _Tolerance, *, permute: bool) -> ResultDiff | None:
    if len(g) == len(n) and all(tol.close(a, b) for a, b in zip(g, n, strict=True)):
        return None
    if permute and len(g) == len(n) and _permuted_columns_match(g, n, tol, ordered=True):
        return None
    first = next((i for i, (a, b) in enumerate(zip(g, n, strict=False)) if not tol.close(a, b)), min(len(g), len(n)))
    cols = len(g[0]) if g else len(n[0]) if n else 0
    return ResultDiff(rule, len(g), len(n), cols, cols, tuple(g[first:]), tuple(n[first:]), first_difference=first)


_MAX_PERMUTATIONS = 5040  # 7 columns; beyond that only column orders consistent with column contents are tried


def _permuted_columns_match(g: list[Row], n: list[Row], tol: _Tolerance, *, ordered: bool = False) -> bool:
    """Whether some reordering of ``now``'s columns makes the results equal, as test-suite accuracy allows.

    Only reorderings where each column holds the same multiset of values as the golden column it stands for are
    tried, which is what makes this affordable for wide results.
    """
    if len(g) != len(n) or not g:
        return False
    width = len(g[0])
    if width < 2:
        return False
    candidates: list[list[int]] = []
    for i in range(width):
        col_g = [(r[i],) for r in g]
        fits = [j for j in range(width) if _bag_leftovers(col_g, [(r[j],) for r in n], tol) == ([], [])]
        if not fits:
            return False
        candidates.append(fits)
    for tried, order in enumerate(itertools.product(*candidates)):
        if tried >= _MAX_PERMUTATIONS:
            return False
        if len(set(order)) != width or list(order) == list(range(width)):
            continue
        permuted = [tuple(r[j] for j in order) for r in n]
        if ordered:
            if all(tol.close(a, b) for a, b in zip(g, permuted, strict=True)):
                return True
        elif _bag_leftovers(g, permuted, tol) == ([], []):
            return True
    return False
