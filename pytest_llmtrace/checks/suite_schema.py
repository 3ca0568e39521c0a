"""The schema a suite's perturbations must respect, read from the catalog of the seed database as the reader.

Only what the perturbations need: each table's columns (type, type category, NOT NULL), its primary key, its unique
column sets, its foreign keys, its row count and largest integer key (new rows get keys past the seed's range).
CHECK constraints are not modelled: Postgres rejects a row that breaks one and the perturbation is left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pytest_llmtrace.checks.reader_connections import readonly_transaction

_COLUMNS = """
SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), t.typcategory, a.attnotnull,
       a.attgenerated <> ''
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
  AND NOT c.relispartition
ORDER BY n.nspname, c.relname, a.attnum
"""

_CONSTRAINTS = """
SELECT n.nspname, c.relname, k.contype,
       ARRAY(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY u(n, i)
             JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.i)::text[],
       rn.nspname, rc.relname,
       ARRAY(SELECT a.attname FROM unnest(k.confkey) WITH ORDINALITY u(n, i)
             JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.i)::text[]
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_class rc ON rc.oid = k.confrelid LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace
WHERE k.contype IN ('p', 'u', 'f') AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
ORDER BY n.nspname, c.relname, k.conname
"""


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A string literal whatever ``standard_conforming_strings`` says: backslashes go through ``E''``."""
    text = value.replace("'", "''")
    if "\\" in text:
        return "E'" + text.replace("\\", "\\\\") + "'"
    return "'" + text + "'"


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type: ``numeric(12,2)``, ``timestamp with time zone``
    category: str  # pg_type.typcategory: N numeric, S string, D date/time, B boolean, ...
    not_null: bool
    generated: bool  # a generated column: never written (identity columns are, with OVERRIDING SYSTEM VALUE)

    @property
    def is_integer(self) -> bool:
        return self.type in ("integer", "bigint", "smallint")


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    table: str  # the referenced table's qualified name
    ref_columns: tuple[str, ...]


@dataclass
class Table:
    schema: str
    name: str
    columns: list[Column] = field(default_factory=list)
    primary_key: tuple[str, ...] = ()
    uniques: list[tuple[str, ...]] = field(default_factory=list)
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    rows: int = 0
    max_key: int | None = None  # the largest value of an integer one-column primary key

    @property
    def qualified(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    @property
    def key(self) -> str | None:
        """The one-column integer primary key copies are numbered by, if the table has one."""
        if len(self.primary_key) == 1 and self.column(self.primary_key[0]).is_integer:
            return self.primary_key[0]
        return None

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def has(self, name: str) -> bool:
        return any(c.name == name for c in self.columns)

    @property
    def unique_columns(self) -> set[str]:
        """Columns that alone are unique (a copied row must change them)."""
        return {u[0] for u in self.uniques if len(u) == 1} | (
            {self.primary_key[0]} if len(self.primary_key) == 1 else set()
        )


@dataclass
class Schema:
    tables: dict[str, Table]  # by qualified name

    def named(self, name: str) -> list[Table]:
        """Tables called ``name`` (unqualified, or ``schema.name``), in any schema; lower case as Postgres folds."""
        wanted = name.lower()
        return [t for t in self.tables.values() if wanted in (t.name.lower(), f"{t.schema}.{t.name}".lower())]

    def children(self, table: Table) -> list[tuple[Table, ForeignKey]]:
        return [(t, fk) for t in self.tables.values() for fk in t.foreign_keys if fk.table == table.qualified]

    def digest_text(self) -> str:
        return repr(sorted((k, [c.name for c in t.columns], t.rows, t.max_key) for k, t in self.tables.items()))


def read_schema(reader_url: str, timeout_ms: int = 5000) -> Schema:
    """The schema and the seed's sizes, read in one read-only transaction as the reader."""
    tables: dict[str, Table] = {}
    with readonly_transaction(reader_url, timeout_ms) as cur:
        for schema, name, column, type_, category, not_null, generated in cur.execute(_COLUMNS).fetchall():
            table = tables.setdefault(f"{quote_ident(schema)}.{quote_ident(name)}", Table(schema, name))
            table.columns.append(Column(column, type_, category, bool(not_null), bool(generated)))
        for schema, name, kind, cols, ref_schema, ref_name, ref_cols in cur.execute(_CONSTRAINTS).fetchall():
            holder = tables.get(f"{quote_ident(schema)}.{quote_ident(name)}")
            if holder is None:
                continue
            if kind == "p":
                holder.primary_key = tuple(cols)
            elif kind == "u":
                holder.uniques.append(tuple(cols))
            else:
                ref = f"{quote_ident(ref_schema)}.{quote_ident(ref_name)}"
                holder.foreign_keys.append(ForeignKey(tuple(cols), ref, tuple(ref_cols)))
        for table in tables.values():
            key = table.key
            extra = f", max({quote_ident(key)})" if key else ""
            row: Any = cur.execute(f"SELECT count(*){extra} FROM {table.qualified}").fetchone()
            table.rows = int(row[0])
            table.max_key = int(row[1]) if key and row[1] is not None else (0 if key else None)
    return Schema(tables)
