"""What a query mentions: sqlglot reads the SQL only to decide what to perturb (mutants: ``suite_mutants.py``).

Nothing here decides a verdict: verdicts come from running the queries on Postgres. A query sqlglot cannot parse
still gets a suite (the generic perturbations); it just gets no perturbations around its constants and no mutants.
sqlglot is imported lazily, with an install hint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pytest_llmtrace.checks.suite_schema import Schema, Table
from pytest_llmtrace.core.errors import LLMTraceError

INSTALL_HINT = "pip install sqlglot (the semantic test suite reads SQL with it)"


def load_sqlglot() -> Any:
    try:
        import sqlglot
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise LLMTraceError(f"llmtrace_result_match = suite needs sqlglot: {INSTALL_HINT}") from exc
    return sqlglot


def parse(sql: str) -> Any | None:
    """The statement's tree, or ``None`` when sqlglot cannot read it as one Postgres statement."""
    sqlglot = load_sqlglot()
    try:
        trees = [t for t in sqlglot.parse(sql, read="postgres") if t is not None]
    except Exception:  # sqlglot raises several error types; any of them means: no tree
        return None
    return trees[0] if len(trees) == 1 else None


@dataclass(frozen=True)
class Constant:
    table: str  # qualified
    column: str
    text: str  # SQL of a column-free expression: a literal, or one to evaluate as the reader first
    literal: str | None  # its value when it is a plain literal (no evaluation needed)
    like: bool  # compared with LIKE / ILIKE / SIMILAR TO: a pattern


@dataclass
class Mentions:
    tables: set[str] = field(default_factory=set)
    columns: set[tuple[str, str]] = field(default_factory=set)
    constants: list[Constant] = field(default_factory=list)
    witnesses: list[tuple[str, str, str]] = field(default_factory=list)  # (table, key column, query of keys)

    def add(self, other: Mentions) -> None:
        self.tables |= other.tables
        self.columns |= other.columns
        self.constants += [c for c in other.constants if c not in self.constants]
        self.witnesses += [w for w in other.witnesses if w not in self.witnesses]


def mentions(sql: str, schema: Schema) -> Mentions:
    """The tables, columns and constants ``sql`` mentions, resolved against ``schema``; empty when unparsable."""
    from sqlglot import exp

    found = Mentions()
    tree = parse(sql)
    if tree is None:
        return found
    aliases: dict[str, list[Table]] = {}
    for node in tree.find_all(exp.Table):
        tables = schema.named(f"{node.db}.{node.name}" if node.db else node.name)
        for table in tables:
            found.tables.add(table.qualified)
        aliases.setdefault((node.alias_or_name or node.name).lower(), []).extend(tables)
    mentioned = [schema.tables[name] for name in sorted(found.tables)]

    def resolve(column: Any) -> list[Table]:
        qualifier = (column.table or "").lower()
        pool = aliases.get(qualifier, []) if qualifier else mentioned
        return [t for t in pool if t.has(column.name)]

    for column in tree.find_all(exp.Column):
        for table in resolve(column):
            found.columns.add((table.qualified, column.name))
    for node in tree.find_all(exp.Predicate):
        sides: list[Any]
        if isinstance(node, exp.Between):
            sides = [node.this, node.args.get("low"), node.args.get("high")]
        elif isinstance(node, exp.In):
            sides = [node.this, *node.expressions]
        elif isinstance(node, exp.Binary):
            sides = [node.this, node.expression]
        else:
            continue
        with_columns = [s for s in sides if s is not None and s.find(exp.Column) is not None]
        constant_sides = [s for s in sides if s is not None and _constant(s)]
        if not with_columns or not constant_sides:
            continue
        like = isinstance(node, (exp.Like, exp.ILike, exp.SimilarTo))
        columns = [c for side in with_columns for c in side.find_all(exp.Column)]
        for column in columns:
            for table in resolve(column):
                for side in constant_sides:
                    # = ANY (ARRAY[...]), <> ALL (...), a typed literal: the literals inside are values too
                    parts = [side] if isinstance(side, exp.Literal) else [side, *side.find_all(exp.Literal)]
                    for part in parts:
                        literal = part.this if isinstance(part, exp.Literal) else None
                        text = part.sql(dialect="postgres")
                        constant = Constant(table.qualified, column.name, text, literal, like)
                        if constant not in found.constants:
                            found.constants.append(constant)
    found.witnesses = _witnesses(tree, schema, aliases, found.columns)
    return found


def _constant(node: Any) -> bool:
    """A column-free, subquery-free expression: a value the query compares with."""
    from sqlglot import exp

    if isinstance(node, (exp.Select, exp.Subquery, exp.Tuple)) or node.find(exp.Column, exp.Select) is not None:
        return False
    return not isinstance(node, exp.Null)


def _witnesses(
    tree: Any, schema: Schema, aliases: dict[str, list[Table]], columns: set[tuple[str, str]]
) -> list[tuple[str, str, str]]:
    """Queries of the keys of rows the outer query reads, for each of its tables with an integer key: rows that
    pass its WHERE, the rows among them with the largest and smallest value of each number or date column the
    query mentions (where an aggregate looks), and, one conjunct dropped at a time, rows that nearly pass. A value
    put at a constant's edge in such a row is one the query actually looks at."""
    from sqlglot import exp

    select = tree if isinstance(tree, exp.Select) else tree.find(exp.Select)
    if select is None or select.args.get("from_") is None:
        return []
    where = select.args.get("where")
    conjuncts = list(where.this.flatten()) if where is not None and isinstance(where.this, exp.And) else []
    conjuncts = conjuncts or ([where.this] if where is not None else [])
    variants: list[Any] = [where.this if where is not None else None]
    variants += [_and([c for c in conjuncts if c is not dropped]) for dropped in conjuncts]
    out: list[tuple[str, str, str]] = []
    sources = [select.args["from_"].this, *[j.this for j in select.args.get("joins") or []]]
    for source in sources:
        if not isinstance(source, exp.Table):
            continue
        alias = source.alias_or_name
        for table in aliases.get(alias.lower(), [])[:1]:
            key = table.key or "ctid"  # without an integer key, rows are found by their ctid (as text)
            extremes = [
                c.name
                for c in table.columns
                if (table.qualified, c.name) in columns and c.category in ("N", "D") and c.name != key
            ]
            shapes: list[tuple[Any, str | None, str]] = [(variants[0], None, "")]
            shapes += [(variants[0], c, d) for c in extremes for d in ("DESC", "ASC")]
            shapes += [(v, None, "") for v in variants[1:]]
            for condition, extreme, direction in shapes:
                query = select.copy()
                for arg in ("group", "having", "order", "limit", "offset", "distinct", "qualify", "windows"):
                    query.set(arg, None)
                outputs = [
                    exp.column(key, table=alias) if table.key else exp.cast(exp.column("ctid", table=alias), "text")
                ]
                if extreme is not None:
                    outputs.append(exp.column(extreme, table=alias))
                query.set("expressions", outputs)
                query.set("where", exp.Where(this=condition.copy()) if condition is not None else None)
                text = query.distinct().sql(dialect="postgres")
                if extreme is None:
                    sql = f"SELECT k FROM ({text}) AS w(k) WHERE k IS NOT NULL ORDER BY k LIMIT 6"
                else:
                    sql = (
                        f"SELECT k FROM ({text}) AS w(k, v) WHERE k IS NOT NULL AND v IS NOT NULL "
                        f"ORDER BY v {direction}, k LIMIT 2"
                    )
                witness = (table.qualified, key, sql)
                if witness not in out:
                    out.append(witness)
    return out


def _and(conditions: list[Any]) -> Any | None:
    from sqlglot import exp

    if not conditions:
        return None
    out = conditions[0].copy()
    for c in conditions[1:]:
        out = exp.and_(out, c.copy())
    return out


def order_keys_query(sql: str) -> str | None:
    """The outer query's ORDER BY keys, one more row than its LIMIT: where two adjacent keys are equal, the query's
    rows (or their order) are not determined by the data, and a rewrite may rightly return others. ``None`` when the
    query is not ordered or the keys cannot be read."""
    from sqlglot import exp

    tree = parse(sql)
    if not isinstance(tree, exp.Select) or tree.args.get("order") is None:
        return None
    outputs = list(tree.expressions)
    by_alias = {e.alias.lower(): e.this for e in outputs if isinstance(e, exp.Alias)}
    keys: list[Any] = []
    for ordered in tree.args["order"].expressions:
        key = ordered.this
        if isinstance(key, exp.Literal) and not key.is_string and key.this.isdigit():
            index = int(key.this) - 1
            if not 0 <= index < len(outputs):
                return None
            key = outputs[index]
            key = key.this if isinstance(key, exp.Alias) else key
        elif isinstance(key, exp.Column) and not key.table and key.name.lower() in by_alias:
            key = by_alias[key.name.lower()]
        keys.append(key.copy())
    if not keys or tree.args.get("distinct") is not None:
        return None
    query = tree.copy()
    query.set("expressions", [exp.alias_(k, f"k{i}") for i, k in enumerate(keys)])
    query.set("order", exp.Order(expressions=[o.copy() for o in tree.args["order"].expressions]))
    limit = tree.args.get("limit")
    if limit is not None:
        count = limit.expression if limit.expression is not None else limit.this
        if not isinstance(count, exp.Literal) or not count.this.isdigit():
            return None
        query.set("limit", exp.Limit(expression=exp.Literal.number(int(count.this) + 1)))
    # positions and aliases of the original select list no longer exist: order by the keys themselves
    query.set(
        "order",
        exp.Order(
            expressions=[
                exp.Ordered(this=exp.column(f"k{i}"), desc=o.args.get("desc"), nulls_first=o.args.get("nulls_first"))
                for i, o in enumerate(tree.args["order"].expressions)
            ]
        ),
    )
    return query.sql(dialect="postgres")


def limit_of(sql: str) -> tuple[int, str] | None:
    """(the outer query's LIMIT, the query without it) when it has a literal one; ``None`` otherwise."""
    from sqlglot import exp

    tree = parse(sql)
    if tree is None:
        return None
    limit = tree.args.get("limit")
    if not isinstance(limit, exp.Limit) or tree.args.get("offset") is not None:
        return None
    count = limit.expression if limit.expression is not None else limit.this
    if not isinstance(count, exp.Literal) or not count.this.isdigit():
        return None
    unlimited = tree.copy()
    unlimited.set("limit", None)
    return int(count.this), unlimited.sql(dialect="postgres")


# Window functions whose values do not depend on how the server orders rows with equal ORDER BY keys (peers): ranks
# give peers one value, and these aggregates over the default frame take all peers at once.
_PEER_SAFE = ("Rank", "DenseRank", "PercentRank", "CumeDist")
_PEER_SAFE_AGGREGATES = ("Count", "Sum", "Avg", "Min", "Max")


def choice_ties_queries(sql: str) -> list[str]:
    """Queries that return a row where a DISTINCT ON or a window function of ``sql`` (at any depth) picks among
    rows its ORDER BY leaves tied, and those rows differ in what it outputs: there the data does not decide the rows,
    and a true rewrite may break the tie another way. A window whose tie-break cannot be read gives a query that
    always returns a row (a star in its outputs); a query sqlglot cannot read gives none."""
    from sqlglot import exp

    tree = parse(sql)
    if tree is None:
        return []
    queries: list[str] = []
    for select in tree.find_all(exp.Select):
        on = select.args.get("distinct")
        on = on.args.get("on") if isinstance(on, exp.Distinct) else None
        if on is not None:
            keys = list(on.expressions if isinstance(on, exp.Tuple) else [on])
            order = select.args.get("order")
            keys += [_output_key(select, o.this) for o in (order.expressions if order is not None else [])]
            queries.append(_ties_query(select, keys, []))
        for window in select.find_all(exp.Window):
            if window.find_ancestor(exp.Select) is not select or not isinstance(window.this, exp.Func):
                continue  # a nested query's (its own turn) or a WINDOW clause's definition
            if _peer_safe(window):
                continue
            keys = _window_keys(select, window)
            queries.append(_ties_query(select, keys, list(window.this.find_all(exp.Column))))
    return [q for q in queries if q]


def _peer_safe(window: Any) -> bool:
    from sqlglot import exp

    name = type(window.this).__name__
    if name in _PEER_SAFE:
        return True
    named = isinstance(window.args.get("alias"), exp.Identifier) and window.args.get("order") is None
    return name in _PEER_SAFE_AGGREGATES and window.args.get("spec") is None and not named


def _window_keys(select: Any, window: Any) -> list[Any]:
    """The PARTITION BY and ORDER BY expressions of ``window``, a named window's (``OVER w``) included."""
    from sqlglot import exp

    parts = [window]
    alias = window.args.get("alias")
    if isinstance(alias, exp.Identifier):
        for named in select.args.get("windows") or []:
            if isinstance(named.this, exp.Identifier) and named.this.name.lower() == alias.name.lower():
                parts.insert(0, named)
    keys: list[Any] = []
    for part in parts:
        keys += list(part.args.get("partition_by") or [])
        order = part.args.get("order")
        keys += [o.this for o in (order.expressions if order is not None else [])]
    return keys


def _output_key(select: Any, key: Any) -> Any:
    """An ORDER BY key as an expression: a position or an output alias replaced by the output it names."""
    from sqlglot import exp

    outputs = list(select.expressions)
    if isinstance(key, exp.Literal) and not key.is_string and key.this.isdigit():
        index = int(key.this) - 1
        if 0 <= index < len(outputs):
            output = outputs[index]
            return output.this if isinstance(output, exp.Alias) else output
    if isinstance(key, exp.Column) and not key.table:
        for output in outputs:
            if isinstance(output, exp.Alias) and output.alias.lower() == key.name.lower():
                return output.this
    return key


def _ties_query(select: Any, keys: list[Any], read: list[Any]) -> str:
    """Rows of ``select``'s FROM, WHERE and GROUP BY with equal ``keys`` that differ in its outputs (other than its
    windows) or in ``read`` (a window function's arguments); on a star or a correlated query, any equal keys."""
    from sqlglot import exp

    values = [o.this if isinstance(o, exp.Alias) else o for o in select.expressions]
    values = [v.copy() for v in values if not v.find(exp.Window)] + [c.copy() for c in read]
    inner = select.copy()
    for arg in ("distinct", "order", "limit", "offset", "windows"):
        inner.set(arg, None)
    named = [exp.alias_(k.copy(), f"k{i}") for i, k in enumerate(keys)]
    named += [exp.alias_(v, f"v{i}") for i, v in enumerate(values)]
    if not named or any(isinstance(v, exp.Star) or v.find(exp.Star) for v in values):
        return "SELECT 1"  # nothing to compare, or rows a star hides: always undecided
    inner.set("expressions", named)
    groups = ", ".join(f"k{i}" for i in range(len(keys)))
    row = ", ".join(f"v{i}" for i in range(len(values)))
    differ = f"count(DISTINCT ROW({row})) > 1" if values else "count(*) > 1"
    group_by = f" GROUP BY {groups}" if keys else ""
    text = inner.sql(dialect="postgres")
    return f"SELECT 1 FROM ({text}) AS llmtrace_choice{group_by} HAVING {differ} LIMIT 1"
