"""Running model-written SQL safely and deciding whether two query results mean the same thing.

A regression check replays the golden SQL and the model's new SQL against the same fixture database and compares
what came back. Both statements are untrusted text from a language model, so execution is locked down: a read-only
transaction with a statement timeout, always rolled back, on a connection closed before returning. Comparison
follows the published text-to-SQL metrics (test-suite accuracy, BIRD's execution accuracy) so that a failing test
means what people who evaluate text-to-SQL already expect it to mean.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import itertools
import json
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

__all__ = [
    "CompareRule",
    "ResultDiff",
    "SqlOutcome",
    "compare_results",
    "execute_readonly",
    "has_top_level_order_by",
    "normalize_value",
    "split_statements",
    "strip_code_fences",
]

CompareRule = Literal["bag", "set", "ordered", "none"]

# -- answers and statements -------------------------------------------------------------------------------------------

# A language tag is only taken as one when it is a known SQL tag or ends the fence line: in "```SELECT 1```" the first
# word is SQL, not a language.
_FENCE = re.compile(
    r"```[ \t]*(?:(?:sql|postgresql|postgres|pgsql|psql|plpgsql)\b|[\w+.-]*(?=[ \t]*\r?\n))?(.*?)```",
    re.DOTALL | re.IGNORECASE,
)
_OPEN_FENCE = re.compile(r"^\s*```[^\n]*\n?")


def strip_code_fences(text: str) -> str:
    """The SQL inside the first Markdown code fence, else the whole text, trimmed.

    Small models wrap SQL in fences despite being told not to, sometimes with a sentence around it. Taking the first
    fenced block matches what the reference gateway executes. An opening fence without a closing one (an answer cut
    off at the token limit) still loses its fence line, so the SQL is not rejected for a Markdown artifact.
    """
    match = _FENCE.search(text)
    if match:
        return match.group(1).strip()
    return _OPEN_FENCE.sub("", text, count=1).strip()


@dataclass(frozen=True)
class _Token:
    kind: Literal["word", "punct", "literal"]
    text: str
    depth: int  # parenthesis depth before the token
    start: int


_DOLLAR_TAG = re.compile(r"\$(?:[^\W\d]\w*)?\$")


def _tokens(sql: str) -> Iterator[_Token]:
    """Words, punctuation and literals outside comments, with their paren depth; literals are opaque.

    Not a parser: just enough of PostgreSQL's lexical rules (standard and E'' strings, quoted identifiers, dollar
    quoting, nested block comments) that a keyword or semicolon inside a literal or comment is never taken for SQL.
    """
    i, n, depth = 0, len(sql), 0
    while i < n:
        c = sql[i]
        start = i
        if c.isspace():
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            level, i = 1, i + 2
            while i < n and level:
                if sql.startswith("/*", i):
                    level, i = level + 1, i + 2
                elif sql.startswith("*/", i):
                    level, i = level - 1, i + 2
                else:
                    i += 1
        elif c in "'\"":
            i = _skip_quoted(sql, i, c, backslash=False)
            yield _Token("literal", sql[start:i], depth, start)
        elif c == "$" and (m := _DOLLAR_TAG.match(sql, i)):
            close = sql.find(m.group(0), m.end())
            i = n if close < 0 else close + len(m.group(0))
            yield _Token("literal", sql[start:i], depth, start)
        elif c.isalpha() or c == "_":
            while i < n and (sql[i].isalnum() or sql[i] in "_$"):
                i += 1
            if i - start == 1 and c in "eE" and i < n and sql[i] == "'":
                i = _skip_quoted(sql, i, "'", backslash=True)
                yield _Token("literal", sql[start:i], depth, start)
            else:
                yield _Token("word", sql[start:i].upper(), depth, start)
        else:
            if c == ")":
                depth = max(depth - 1, 0)
            yield _Token("punct", c, depth, start)
            if c == "(":
                depth += 1
            i += 1


def _skip_quoted(sql: str, i: int, quote: str, *, backslash: bool) -> int:
    """Index after the literal starting at ``i``; a doubled quote (and in E'' strings a backslash) escapes."""
    i += 1
    n = len(sql)
    while i < n:
        c = sql[i]
        if backslash and c == "\\":
            i += 2
        elif c == quote:
            if i + 1 < n and sql[i + 1] == quote:
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return n


def split_statements(sql: str) -> list[str]:
    """The statements in ``sql``, split at semicolons outside literals and comments; empty statements are dropped.

    A statement that holds only comments is empty too, so ``SELECT 1; -- done`` is one statement.
    """
    statements: list[str] = []
    start = 0
    has_code = False
    for token in _tokens(sql):
        if token.kind == "punct" and token.text == ";":
            if has_code:
                statements.append(sql[start : token.start].strip())
            start, has_code = token.start + 1, False
        else:
            has_code = True
    if has_code:
        statements.append(sql[start:].strip())
    return statements


def has_top_level_order_by(sql: str) -> bool:
    """Whether the outer query is ordered: ORDER BY outside parentheses, literals and comments.

    Test-suite accuracy compares rows in order only when the gold query orders them; an ORDER BY inside a subquery,
    a window (``OVER (ORDER BY ...)``) or an aggregate (``string_agg(x, ',' ORDER BY x)``) does not order the result.
    """
    previous: _Token | None = None
    for token in _tokens(sql):
        if (
            token.kind == "word"
            and token.text == "BY"
            and token.depth == 0
            and previous is not None
            and previous.kind == "word"
            and previous.text == "ORDER"
            and previous.depth == 0
        ):
            return True
        previous = token
    return False


# -- execution --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SqlOutcome:
    """What one statement did. ``row_count`` counts the rows returned here (at most ``max_rows``); when
    ``truncated`` is true the query produced more, and comparing truncated results would compare prefixes."""

    ok: bool
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    row_count: int
    truncated: bool
    error: str | None
    sqlstate: str | None
    elapsed_ms: float


# Errors that DECLARE CURSOR raises for statements that are not plain queries (DML, EXPLAIN, SHOW, data-modifying
# WITH): those are run again without a cursor, so the error reported is the statement's own (25006 for a DELETE).
_NOT_A_CURSOR_QUERY = frozenset({"42601", "0A000"})
_CURSOR = "llmtrace_readonly"


def execute_readonly(dsn: str, sql: str, *, timeout_ms: int = 5000, max_rows: int = 10_000) -> SqlOutcome:
    """Run one untrusted statement and report what happened; SQL errors are outcomes, connection errors raise.

    Safety does not depend on the role behind ``dsn``: the transaction is started READ ONLY (a write fails with
    SQLSTATE 25006), ``SET LOCAL statement_timeout`` cancels a runaway query (57014), the transaction is rolled back
    even on success (so volatile functions leave nothing either), and the connection is always closed.

    More than one statement is refused without running anything: inside a string of statements, ``COMMIT;`` or
    ``ROLLBACK;`` would end the read-only transaction and let the rest run in a new, writable one, and ``SET
    TRANSACTION READ WRITE`` before the first query would lift it. The model was asked for exactly one statement, so
    a refusal is also the honest result. Trailing semicolons and comments are fine. Refusals and an empty answer
    come back with ``sqlstate=None``: Postgres never saw them.

    Queries run through a server-side cursor so that at most ``max_rows + 1`` rows ever reach this process: a cross
    join the model wrote by mistake must not fill memory. ``cursor_tuple_fraction = 1`` makes the planner choose the
    plan it would choose without a cursor, so rows come back as the application saw them. ``elapsed_ms`` covers
    executing and fetching, not connecting.
    """
    import psycopg2

    if timeout_ms < 1 or max_rows < 0:  # statement_timeout = 0 would mean no timeout at all
        raise ValueError(f"need timeout_ms >= 1 and max_rows >= 0, got timeout_ms={timeout_ms}, max_rows={max_rows}")
    statements = split_statements(sql)
    if len(statements) != 1:
        problem = "no SQL statement" if not statements else f"{len(statements)} statements; expected exactly one"
        return SqlOutcome(False, (), (), 0, False, problem, None, 0.0)

    conn = psycopg2.connect(dsn, connect_timeout=10, application_name="pytest-llmtrace")
    try:
        conn.autocommit = True  # transactions are spelled out below, so nothing depends on psycopg2's defaults
        with conn.cursor() as cur:
            cur.execute("BEGIN TRANSACTION READ ONLY")
            cur.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
            cur.execute("SET LOCAL cursor_tuple_fraction = 1")
            started = time.perf_counter()
            try:
                columns, raw, truncated = _run(cur, statements[0], max_rows)
            except psycopg2.Error as exc:
                elapsed = (time.perf_counter() - started) * 1000
                return SqlOutcome(False, (), (), 0, False, _message(exc), exc.pgcode, elapsed)
            finally:
                with contextlib.suppress(psycopg2.Error):  # a dead connection has no transaction left to end
                    cur.execute("ROLLBACK")
            elapsed = (time.perf_counter() - started) * 1000
    finally:
        conn.close()
    rows = tuple(tuple(normalize_value(v) for v in row) for row in raw)
    return SqlOutcome(True, columns, rows, len(rows), truncated, None, None, elapsed)


def _run(cur: Any, statement: str, max_rows: int) -> tuple[tuple[str, ...], list[tuple[Any, ...]], bool]:
    import psycopg2

    cur.execute("SAVEPOINT llmtrace_declare")
    try:
        cur.execute(f"DECLARE {_CURSOR} NO SCROLL CURSOR FOR {statement}")
    except psycopg2.Error as exc:
        if exc.pgcode not in _NOT_A_CURSOR_QUERY:
            raise
        cur.execute("ROLLBACK TO SAVEPOINT llmtrace_declare")
        cur.execute(statement)
        rows = cur.fetchmany(max_rows + 1) if cur.description is not None else []
    else:
        cur.execute(f"FETCH FORWARD {int(max_rows) + 1} FROM {_CURSOR}")
        rows = cur.fetchall()
    columns = tuple(column.name for column in cur.description or ())
    truncated = len(rows) > max_rows
    return columns, [tuple(r) for r in rows[:max_rows]], truncated


def _message(exc: Any) -> str:
    """Postgres's primary message (no ``ERROR:`` prefix, no ``LINE 1:`` context), as the application logs it."""
    primary = getattr(getattr(exc, "diag", None), "message_primary", None)
    if primary:
        return str(primary)
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


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


def compare_results(
    golden: Sequence[Sequence[Any]],
    now: Sequence[Sequence[Any]],
    rule: Literal["bag", "set", "ordered", "none"],
    *,
    order_matters: bool = False,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
) -> ResultDiff | None:
    """``None`` when ``now`` is an equivalent result to ``golden`` under ``rule``, else what differs.

    - ``bag``: test-suite accuracy (Zhong et al. 2020): rows as a multiset, in order only if ``order_matters`` (pass
      ``has_top_level_order_by(golden_sql)``). As there, columns may come in another order: ``SELECT count(*), tier``
      answers the same question as ``SELECT tier, count(*)``.
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
    g = [_row(r) for r in golden]
    n = [_row(r) for r in now]
    g_cols = len(g[0]) if g else 0
    n_cols = len(n[0]) if n else 0
    if rule == "none":
        return None
    if g and n and g_cols != n_cols:
        return ResultDiff(rule, len(g), len(n), g_cols, n_cols)
    tol = _Tolerance(rel_tol, abs_tol)
    if rule == "ordered" or (rule == "bag" and order_matters):
        return _compare_ordered(rule, g, n, tol, permute=rule == "bag")
    if rule == "set":
        return _compare_set(g, n, tol)
    if rule == "bag":
        return _compare_bag(g, n, tol)
    raise ValueError(f"unknown comparison rule {rule!r}; expected one of bag, set, ordered, none")


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
