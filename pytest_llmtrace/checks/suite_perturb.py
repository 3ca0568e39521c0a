"""The perturbations of a suite's databases, as statements of literals the admin runs inside a clone.

Each perturbation is a short list of statements applied all or none (a copied row with its child rows); Postgres
refuses the ones the schema does not allow (``services/pg_suite.py``). They are plain SQL, so a cached suite is
rebuilt by running them again, and a counterexample can be reproduced by hand on a copy of the seed.

What they put in the data, around what the two queries mention (Zhong, Yu & Klein 2020 fuzz values the same way):
values at, just below and just above each constant; day, month and year edges of dates and timestamps; strings in
other letter case and LIKE patterns with their wildcards filled in and kept; NULLs; rows copied (with their child
rows, keys past the seed's range) or deleted (with their dependants); columns mixed between rows, which breaks the
seed generator's regularities (``id % 10`` deciding a tier); and tables emptied or cut down to one row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from pytest_llmtrace.checks.suite_schema import Column, Schema, Table, quote_ident, quote_literal
from pytest_llmtrace.checks.suite_sql import Mentions

Perturbation = tuple[str, ...]
MAX_TARGETED = 12  # databases around one constant each
MAX_DEPTH = 3  # child tables copied or deleted with a row: children, grandchildren, great-grandchildren


@dataclass
class Plan:
    """The databases of a suite before distillation: a label and its perturbations each."""

    databases: list[tuple[str, list[Perturbation]]] = field(default_factory=list)


class _Numbers:
    """Copy numbers: each copy's keys are offset by its number times a power of ten above the table's keys."""

    def __init__(self) -> None:
        self.n = 0

    def next(self) -> int:
        self.n += 1
        return self.n


def _offset(table: Table, n: int) -> int:
    digits = len(str(max(table.max_key or 1, 1)))
    return int(n * pow(10, digits))


def copy_rows(
    schema: Schema, table: Table, keys: Sequence[int], n: int, overrides: dict[str, str] | None = None, depth: int = 0
) -> list[str]:
    """Copies of ``table``'s rows with these keys, and of their child rows (keys past the seed's range)."""
    if table.key is None or not keys:
        return []
    key_list = ", ".join(str(k) for k in keys)
    return _copy_children(schema, table, key_list, n, dict(overrides or {}), depth)


def _copy_children(
    schema: Schema, table: Table, keys_sql: str, n: int, overrides: dict[str, str], depth: int
) -> list[str]:
    """Like ``copy_rows`` for the rows whose keys ``keys_sql`` selects (evaluated before their copies exist)."""
    key = table.key
    assert key is not None
    off = _offset(table, n)
    names, exprs = [], []
    for column in table.columns:
        if column.generated:
            continue
        q = quote_ident(column.name)
        if column.name in overrides:
            expr = overrides[column.name]
        elif column.name == key or (column.name in table.unique_columns and column.is_integer):
            expr = f"{q} + {off}"
        elif column.name in table.unique_columns and column.category == "S":
            expr = f"{q} || '~{n}'"
        else:
            expr = q
        names.append(q)
        exprs.append(expr)
    statements = [
        f"INSERT INTO {table.qualified} ({', '.join(names)}) OVERRIDING SYSTEM VALUE "
        f"SELECT {', '.join(exprs)} FROM {table.qualified} "
        f"WHERE {quote_ident(key)} IN ({keys_sql})"
    ]
    if depth >= MAX_DEPTH:
        return statements
    for child, fk in schema.children(table):
        if child is table or len(fk.columns) != 1 or fk.ref_columns != (key,) or child.key is None:
            continue
        inner = (
            f"SELECT {quote_ident(child.key)} FROM {child.qualified} WHERE {quote_ident(fk.columns[0])} IN ({keys_sql})"
        )
        statements += _copy_children(
            schema, child, inner, n, {fk.columns[0]: f"{quote_ident(fk.columns[0])} + {off}"}, depth + 1
        )
    return statements


def delete_rows(schema: Schema, table: Table, condition: str, depth: int = 0) -> list[str]:
    """Delete ``table``'s rows matching ``condition`` and, first, the rows that reference them."""
    statements: list[str] = []
    if depth < MAX_DEPTH:
        for child, fk in schema.children(table):
            if child is table:
                continue
            cols = ", ".join(quote_ident(c) for c in fk.columns)
            refs = ", ".join(quote_ident(c) for c in fk.ref_columns)
            inner = f"({cols}) IN (SELECT {refs} FROM {table.qualified} WHERE {condition})"
            statements += delete_rows(schema, child, inner, depth + 1)
    statements.append(f"DELETE FROM {table.qualified} WHERE {condition}")
    return statements


# -- values around a constant -----------------------------------------------------------------------------------------


def edge_values(column: Column, value: str, *, like: bool) -> list[str]:
    """SQL expressions of values at, below and above ``value`` (the constant's text) for ``column``'s type."""
    q = quote_literal(value)
    if column.category == "N":
        base = f"{q}::numeric"
        return [base, f"({base} - 1)", f"({base} + 1)", f"({base} - 0.01)", f"({base} + 0.01)"]
    if column.category == "D":
        cast = "timestamptz" if "with time zone" in column.type else "timestamp"
        base = f"{q}::{cast}"
        if value.strip().isdigit() and 1000 <= int(value) <= 9999:  # a year, as in extract(year ...) = 2024
            base = f"make_timestamp({int(value)}, 1, 1, 0, 0, 0)::{cast}"
        day = f"date_trunc('day', {base})"
        us = "interval '1 microsecond'"
        return [
            base,
            f"({base} - {us})",
            f"({base} + {us})",
            day,
            f"({day} - {us})",
            f"({day} + interval '12 hours')",
            f"({day} + interval '1 day' - {us})",
            f"({day} + interval '1 day')",
            f"(date_trunc('month', {base}) + interval '1 month' - {us})",
            f"(date_trunc('month', {base}) - {us})",
            f"(date_trunc('year', {base}) + interval '1 year' - {us})",
            f"(date_trunc('year', {base}) + interval '1 year')",
            f"(date_trunc('year', {base}) - {us})",
        ]
    if column.category == "B":
        return ["true", "false"]
    if column.category == "S":
        texts = [value, value.lower(), value.upper(), value.title(), value.swapcase(), value + " ", value + "x"]
        if len(value) > 1:
            texts += [value[:-1], value[1:]]
        if like or "%" in value or "_" in value:
            filled = value.replace("%", "").replace("_", "x")
            padded = value.replace("%", "Zq").replace("_", "Q")
            texts += [filled, filled.lower(), filled.upper(), padded, padded.lower(), padded.upper()]
            texts += [value.replace("_", "__"), "x" + filled + "x", filled + "%"]
        unique = list(dict.fromkeys(texts))
        return [quote_literal(t) for t in unique]
    return [q]


# -- the plan ---------------------------------------------------------------------------------------------------------


def plan(
    schema: Schema,
    mentions: Mentions,
    values: dict[str, str],
    witnesses: dict[str, list[int | str]],
) -> Plan:
    """The databases to build: broad ones holding many perturbations, and small targeted ones.

    ``values``: each constant's text (as the reader evaluated it). ``witnesses``: per table, keys of rows the
    queries read (``Mentions.witnesses`` as the reader ran them), the rows a perturbation is most telling in.
    """
    numbers = _Numbers()
    tables = [schema.tables[t] for t in sorted(mentions.tables) if t in schema.tables]
    if not tables:  # the queries read views or functions: perturb every table
        tables = [schema.tables[t] for t in sorted(schema.tables)]
    rows_of = {t.qualified: _rows_of(t, witnesses.get(t.qualified, [])) for t in tables}
    inserts: list[Perturbation] = []
    updates: list[Perturbation] = []
    targeted: list[tuple[str, list[Perturbation]]] = []
    for constant in mentions.constants:
        table = schema.tables.get(constant.table)
        value = values.get(constant.text)
        if table is None or value is None or not table.has(constant.column):
            continue
        column = table.column(constant.column)
        if column.generated:
            continue
        rows = rows_of[table.qualified]
        mine: list[Perturbation] = []
        for i, edge in enumerate(edge_values(column, value, like=constant.like)):
            row = rows[i % len(rows)] if rows else None
            if row is None:
                continue
            update = (
                f"UPDATE {table.qualified} SET {quote_ident(column.name)} = {edge} WHERE {_where_key(table, row)}",
            )
            updates.append(update)
            mine.append(update)
            if table.key is not None:
                inserts.append(tuple(copy_rows(schema, table, _keys([row]), numbers.next(), {column.name: edge})))
        if mine:
            targeted.append((f"around {column.name} {value!s:.30}", mine))
            at = edge_values(column, value, like=constant.like)[0]  # the constant itself, on every row read
            everywhere = [
                (f"UPDATE {table.qualified} SET {quote_ident(column.name)} = {at} WHERE {_where_key(table, row)}",)
                for row in rows
            ]
            extremes: list[Perturbation] = []
            if table.key is not None:  # a new largest / smallest value on a row at the constant: what MAX sees
                for other in table.columns:
                    mentioned = (table.qualified, other.name) in mentions.columns
                    if not mentioned or other.name in (column.name, table.key) or other.category not in ("N", "D"):
                        continue
                    step = "1" if other.category == "N" else "interval '1 day'"
                    for sign in ("+", "-"):
                        shifted = f"{quote_ident(other.name)} {sign} {step}"
                        for row in rows:
                            overrides = {column.name: at, other.name: shifted}
                            extremes.append(tuple(copy_rows(schema, table, _keys([row]), numbers.next(), overrides)))
                inserts.extend(extremes)
            label = f"{column.name} = {value!s:.30} on the rows read, and in new extremes"
            targeted.append((label, everywhere + extremes))
    mixed: list[Perturbation] = []
    nulls: list[Perturbation] = []
    for table in tables:
        rows = rows_of[table.qualified]
        columns = [table.column(c) for t, c in sorted(mentions.columns) if t == table.qualified]
        for column in columns:
            if not column.not_null and not column.generated:
                for row in rows[:2]:
                    nulls.append(
                        (
                            f"UPDATE {table.qualified} SET {quote_ident(column.name)} = NULL "
                            f"WHERE {_where_key(table, row)}",
                        )
                    )
                if table.key is not None and rows:
                    nulls.append(
                        tuple(copy_rows(schema, table, _keys(rows[-1:]), numbers.next(), {column.name: "NULL"}))
                    )
        for i, row in enumerate(rows):
            donor = rows[(i + len(rows) // 2 + 1) % len(rows)]
            for column in columns:
                if column.name in table.unique_columns or column.generated or donor == row:
                    continue
                q = quote_ident(column.name)
                mixed.append(
                    (
                        f"UPDATE {table.qualified} SET {q} = (SELECT {q} FROM {table.qualified} WHERE "
                        f"{_where_key(table, donor)}) WHERE {_where_key(table, row)}",
                    )
                )
        if table.key is not None and rows:
            mixed.append(
                tuple(copy_rows(schema, table, _keys(rows[:2]), numbers.next()))
            )  # duplicates, keys past the range
        if rows:
            mixed.append(tuple(delete_rows(schema, table, _where_key(table, rows[-1]))))
    plan = Plan()
    plan.databases.append(("seed", []))
    plan.databases.append(("values at the constants' edges, in copied rows", inserts + nulls[1::2]))
    plan.databases.append(("values at the constants' edges, in place", updates))
    plan.databases.append(("rows mixed, duplicated, deleted; NULLs", mixed + nulls))
    # the constants' edges last: mixing must not overwrite them
    plan.databases.append(("all perturbations", mixed + nulls + updates + inserts))
    for table in tables:
        # DELETE, not TRUNCATE: Postgres counts the rows it removes, and a table referencing it empties first
        plan.databases.append((f"{table.name} empty", [tuple(delete_rows(schema, table, "true"))]))
        rows = rows_of[table.qualified]
        if rows:
            keep = f"NOT ({_where_key(table, rows[0])})"
            plan.databases.append((f"{table.name}: one row", [tuple(delete_rows(schema, table, keep))]))
    plan.databases.extend(targeted[:MAX_TARGETED])
    return plan


def _rows_of(table: Table, witnesses: list[int | str]) -> list[int | str]:
    """Rows to perturb: the witnesses, then rows spread over the table (by key, or by ctid without one)."""
    rows: list[int | str] = [w for w in dict.fromkeys(witnesses) if isinstance(w, int) == (table.key is not None)][:8]
    if table.key is not None and table.max_key:
        spread = [max(1, table.max_key * i // 5) for i in (1, 2, 3, 4)]
        rows += [k for k in spread if k not in rows]
    return rows


def _where_key(table: Table, row: int | str) -> str:
    """The row a perturbation changes: by its integer key, or by its ctid (checked by the builder: ``(n,n)``)."""
    if table.key is not None:
        return f"{quote_ident(table.key)} = {int(row)}"
    return f"ctid = {quote_literal(str(row))}"


def _keys(rows: Sequence[int | str]) -> list[int]:
    return [r for r in rows if isinstance(r, int)]


def each_statement(perturbations: Sequence[Perturbation]) -> Iterator[str]:
    for p in perturbations:
        yield from p
