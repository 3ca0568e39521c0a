"""A distilled test suite of databases for one gold query (Zhong, Yu & Klein, EMNLP 2020), on Postgres.

Building: the schema is read from the seed, the constants the queries mention are evaluated and the rows they read
are found (as the reader: model text never runs as the admin), ``suite_perturb.plan`` says which databases to
make, ``services/pg_suite.py`` makes them, and the gold query and its mutants run on each (as the reader). A
database where the gold query fails, or where its rows are not determined by the data (ties at its ORDER BY), is
dropped: a rewrite may rightly answer otherwise there. The suite keeps the seed, the broad databases, and the
targeted ones that kill a mutant the others do not. A suite is cached on disk as the perturbations of each kept
database (``Suite.to_json``), keyed by the schema and seed's digest and the gold SQL: a later session rebuilds its
databases from statements without distilling.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pytest_llmtrace.checks.equivalence import compare_results
from pytest_llmtrace.checks.execute import execute_untrusted
from pytest_llmtrace.checks.outcome import SqlOutcome
from pytest_llmtrace.checks.reader_connections import READERS
from pytest_llmtrace.checks.suite_mutants import mutants
from pytest_llmtrace.checks.suite_perturb import Perturbation, plan
from pytest_llmtrace.checks.suite_schema import Schema, read_schema
from pytest_llmtrace.checks.suite_sql import Mentions, choice_ties_queries, limit_of, mentions, order_keys_query
from pytest_llmtrace.core.errors import LLMTraceError
from pytest_llmtrace.services.pg_suite import SuiteClone, SuiteClones

T = TypeVar("T")
MAX_CLONES = 24  # clones a builder keeps between verdicts (a suite holds 3 to 5)
_CONNECTION_ERRORS = ("cannot connect to the session database", "the connection to the session database was lost")


class SuiteError(LLMTraceError):
    """The suite's databases could not be read (the server refused a connection): no verdict can be given."""


SUITE_VERSION = "1"
WORKERS = 2  # databases built and queried at once
ALWAYS_KEPT = ("seed", "all perturbations", "rows mixed, duplicated, deleted; NULLs")


@dataclass(frozen=True)
class SuiteDatabase:
    label: str
    perturbations: tuple[Perturbation, ...]
    changed_rows: int
    order_free: bool = False  # the gold query's ORDER BY ties here: rows are compared as a bag


@dataclass(frozen=True)
class Suite:
    key: str
    databases: tuple[SuiteDatabase, ...]
    build_ms: float
    mutants: int = 0
    mutants_killed: int = 0
    generated: int = 0  # databases made before distillation

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": SUITE_VERSION,
                "key": self.key,
                "build_ms": round(self.build_ms, 1),
                "mutants": self.mutants,
                "mutants_killed": self.mutants_killed,
                "generated": self.generated,
                "databases": [
                    {
                        "label": d.label,
                        "changed_rows": d.changed_rows,
                        "order_free": d.order_free,
                        "perturbations": [list(p) for p in d.perturbations],
                    }
                    for d in self.databases
                ],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Suite | None:
        try:
            data = json.loads(text)
            if data.get("version") != SUITE_VERSION:
                return None
            databases = tuple(
                SuiteDatabase(
                    str(d["label"]),
                    tuple(tuple(str(s) for s in p) for p in d["perturbations"]),
                    int(d["changed_rows"]),
                    bool(d.get("order_free", False)),
                )
                for d in data["databases"]
            )
            return cls(
                str(data["key"]),
                databases,
                float(data["build_ms"]),
                int(data["mutants"]),
                int(data["mutants_killed"]),
                int(data.get("generated", 0)),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def _read(fn: Callable[..., T], sql: str, schema: Schema | None, default: T) -> T:
    """What sqlglot reads from ``sql``, or ``default`` when it breaks on it: a query it misreads still gets a suite
    (the generic perturbations), never an error in place of a verdict."""
    try:
        return fn(sql, schema) if schema is not None else fn(sql)
    except Exception:  # sqlglot raises many types on text it cannot handle
        return default


_CTID = re.compile(r"^\(\d{1,10},\d{1,5}\)$")


def _row_id(value: object) -> bool:
    """An integer key, or a ctid's text: what a perturbation's WHERE may hold as a literal."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and bool(_CTID.match(value))
    )


@dataclass
class _Built:
    label: str
    clone: SuiteClone
    gold: SqlOutcome | None = None
    kills: set[int] = field(default_factory=set)
    order_free: bool = False


class SuiteBuilder:
    """Suites for one seed: clones made through ``clones``, queries run as the reader with ``timeout_ms`` each.

    ``seed_url`` is the reader's DSN of an unperturbed clone (the session's own database): the schema, the
    constants' values and the rows the queries read come from there. Clones built here are kept until ``close``.
    """

    def __init__(
        self,
        clones: SuiteClones,
        seed_url: str,
        seed_digest: str,
        *,
        timeout_ms: int = 5000,
        cache_dir: Path | None = None,
    ) -> None:
        self.clones = clones
        self.seed_url = seed_url
        self.seed_digest = seed_digest
        self.timeout_ms = timeout_ms
        self.cache_dir = cache_dir
        self._schema: Schema | None = None
        self._suites: dict[str, Suite] = {}
        self._urls: dict[tuple[Perturbation, ...], SuiteClone] = {}
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Make no more clones and run no more queries (the case's deadline passed: ``pg_deadline``'s cancel). The
        case walks away from the thread that builds; this makes that thread stop at its next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _go_on(self) -> None:
        if self._cancelled.is_set():
            raise SuiteError("cancelled at the case's deadline: no more suite databases are made or queried")

    def make_clone(self, perturbations: Sequence[Perturbation]) -> SuiteClone:
        self._go_on()
        clone = self.clones.build(perturbations)
        if self._cancelled.is_set():  # cancelled while it was being made: it is not used
            self.drop(clone)
            self._go_on()
        return clone

    @property
    def schema(self) -> Schema:
        if self._schema is None:
            self._schema = read_schema(self.seed_url, self.timeout_ms)
        return self._schema

    def run(self, url: str, sql: str) -> SqlOutcome:
        """``sql`` as the reader on ``url``; a connection that cannot be made raises: that is the server's state, and
        read as a failing query it would drop a database from the suite (or skip it in a verdict) unnoticed."""
        self._go_on()
        try:
            outcome = execute_untrusted(url, sql, self.timeout_ms)
        except Exception as exc:  # the session ended under the query (psycopg's OperationalError)
            if self._cancelled.is_set():  # by the case's deadline, whose watchdog ends (or kills) the backend
                raise SuiteError("cancelled at the case's deadline: the query's session was ended") from exc
            raise
        if outcome.error is not None and outcome.error.startswith(_CONNECTION_ERRORS):
            raise SuiteError(outcome.error)
        return outcome

    def release(self) -> None:
        """Close the reader's idle connections to this builder's clones (a suite's databases are many: kept open,
        their connections would use up the server's connection slots), and drop the clones of the oldest suites
        past ``MAX_CLONES`` (their statements rebuild them when needed)."""
        for clone in self._urls.values():
            READERS.close(clone.reader_url)
        while len(self._urls) > MAX_CLONES:
            oldest = next(iter(self._urls))
            self.drop(self._urls.pop(oldest))

    def key(self, gold: str, candidate: str | None = None) -> str:
        digest = hashlib.sha256(f"{SUITE_VERSION}\0{self.seed_digest}\0{gold.strip()}".encode())
        if candidate is not None:
            extra = sorted(
                {(c.table, c.column, c.text) for c in _read(mentions, candidate, self.schema, Mentions()).constants}
            )
            digest.update(repr(extra).encode())
        return digest.hexdigest()[:24]

    def suite(self, gold: str, candidate: str | None = None) -> Suite:
        """The suite of ``gold`` (with the constants ``candidate`` mentions too): from memory, the cache, or built."""
        key = self.key(gold, candidate)
        suite = self._suites.get(key)
        if suite is None and self.cache_dir is not None:
            path = self.cache_dir / f"{key}.json"
            if path.is_file():
                suite = Suite.from_json(path.read_text(encoding="utf-8"))
        if suite is None:
            suite = self._build(key, gold, candidate)
            if self.cache_dir is not None:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                tmp = self.cache_dir / f".{key}.tmp"
                tmp.write_text(suite.to_json(), encoding="utf-8")
                tmp.replace(self.cache_dir / f"{key}.json")
        self._suites[key] = suite
        return suite

    def database(self, db: SuiteDatabase) -> SuiteClone:
        """The clone holding ``db``: built once per builder, then reused."""
        clone = self._urls.pop(db.perturbations, None)
        if clone is None:
            clone = self.make_clone(db.perturbations)
        self._urls[db.perturbations] = clone  # the most recently used last
        return clone

    def close(self) -> None:
        """Drop the clones this builder made (the seed's and other builders' stay: they may share ``clones``)."""
        clones, self._urls = list(self._urls.values()), {}
        for clone in clones:
            self.drop(clone)

    def drop(self, clone: SuiteClone) -> None:
        READERS.close(clone.reader_url)  # the reader's idle connections to it first: it is about to go
        self.clones.drop(clone.name)

    # -- building ---------------------------------------------------------------------------------------------------

    def _build(self, key: str, gold: str, candidate: str | None) -> Suite:
        started = time.perf_counter()
        schema = self.schema
        found = _read(mentions, gold, schema, Mentions())
        if candidate is not None:
            found.add(_read(mentions, candidate, schema, Mentions()))
        values = self._values(found)
        witnesses = self._witnesses(found)
        planned = plan(schema, found, values, witnesses)
        ordered_keys = _read(order_keys_query, gold, None, None)
        limit = _read(limit_of, gold, None, None)
        choices: list[str] = _read(choice_ties_queries, gold, None, [])

        def make(item: tuple[str, list[Perturbation]]) -> _Built | None:
            label, perturbations = item
            clone = self.make_clone(perturbations)
            if perturbations and not clone.applied:
                self.drop(clone)
                return None
            entry = _Built(label, clone, self.run(clone.reader_url, gold))
            gold_ok = entry.gold is not None and entry.gold.ok
            ties = bool(gold_ok and ordered_keys and self._ties(clone.reader_url, ordered_keys))
            undetermined = self._undetermined(clone.reader_url, limit, ordered_keys, ties)
            if label != "seed" and (not gold_ok or undetermined or self.choice_ties(clone.reader_url, choices)):
                self.drop(clone)
                return None
            entry.order_free = ties
            return entry

        with ThreadPoolExecutor(WORKERS) as pool:  # Postgres copies and queries on both cores
            built = [b for b in pool.map(make, planned.databases) if b is not None]
        candidates: list[str] = _read(mutants, gold, None, [])
        # the candidate too: the databases that tell it from the gold query are the ones its verdict needs
        judged = [*candidates, candidate] if candidate is not None and candidate.strip() != gold.strip() else candidates

        def kills(entry: _Built) -> None:
            if entry.gold is None or not entry.gold.ok:
                return
            order = None if entry.order_free else gold
            for index, mutant in enumerate(judged):
                outcome = self.run(entry.clone.reader_url, mutant)
                if outcome.ok and compare_results(entry.gold.rows, outcome.rows, "bag", golden_sql=order) is not None:
                    entry.kills.add(index)

        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(kills, built))
        kept = self._distill(built)
        for entry in built:
            if entry not in kept:
                self.drop(entry.clone)
        databases = []
        for entry in kept:
            db = SuiteDatabase(entry.label, entry.clone.applied, entry.clone.changed_rows, entry.order_free)
            self._urls.setdefault(db.perturbations, entry.clone)
            databases.append(db)
        killed = (set().union(*(e.kills for e in built)) if built else set()) - {len(candidates)}
        return Suite(
            key,
            tuple(databases),
            (time.perf_counter() - started) * 1000,
            mutants=len(candidates),
            mutants_killed=len(killed),
            generated=len(planned.databases),
        )

    @staticmethod
    def _distill(built: Sequence[_Built]) -> list[_Built]:
        """The seed and the broad databases, then greedily the one that kills most mutants not yet killed."""
        kept = [b for b in built if b.label in ALWAYS_KEPT]
        killed: set[int] = set().union(*(b.kills for b in kept)) if kept else set()
        rest = [b for b in built if b not in kept]
        while rest:
            best = max(rest, key=lambda b: (len(b.kills - killed), -b.clone.changed_rows))
            if not best.kills - killed:
                break
            kept.append(best)
            killed |= best.kills
            rest.remove(best)
        return kept

    def _values(self, found: Mentions) -> dict[str, str]:
        """Each constant's text: literals as written, expressions (``now() - interval '30 days'``) as the reader
        evaluates them on the seed."""
        values: dict[str, str] = {}
        for constant in found.constants:
            if constant.text in values:
                continue
            if constant.literal is not None:
                values[constant.text] = constant.literal
                continue
            outcome = self.run(self.seed_url, f"SELECT ({constant.text})::text")
            if outcome.ok and outcome.rows and outcome.rows[0][0] is not None:
                values[constant.text] = str(outcome.rows[0][0])
        return values

    def _witnesses(self, found: Mentions) -> dict[str, list[int | str]]:
        keys: dict[str, list[int | str]] = {}
        for table, _, query in found.witnesses:
            outcome = self.run(self.seed_url, query)
            if not outcome.ok:
                continue
            have = keys.setdefault(table, [])
            have += [row[0] for row in outcome.rows if _row_id(row[0]) and row[0] not in have][:3]
        return keys

    def _undetermined(self, url: str, limit: tuple[int, str] | None, ordered_keys: str | None, ties: bool) -> bool:
        """Whether the data leaves the gold query's rows undetermined here: a LIMIT cutting through tied ORDER BY
        keys, or (keys unknown: no ORDER BY, a UNION) a LIMIT below the number of rows there are."""
        if limit is None:
            return False
        if ordered_keys is not None:
            return ties
        outcome = self.run(url, f"SELECT count(*) FROM ({limit[1]}) AS llmtrace_unlimited")
        return not outcome.ok or not outcome.rows or int(outcome.rows[0][0]) > limit[0]

    def choice_ties(self, url: str, queries: Sequence[str]) -> bool:
        """Whether a DISTINCT ON or a window function picks among tied rows here (``choice_ties_queries``): then
        the data does not decide which, and a true rewrite may pick another. A check that fails counts as a tie."""
        for query in queries:
            outcome = self.run(url, query)
            if not outcome.ok or outcome.rows:
                return True
        return False

    def _ties(self, url: str, keys_query: str) -> bool:
        """Whether two adjacent rows of the ordered gold result share their ORDER BY keys (for a LIMIT, anywhere
        up to one past it): then the data does not decide its rows or their order."""
        outcome = self.run(url, keys_query)
        if not outcome.ok:
            return True
        rows: list[Any] = list(outcome.rows)
        return any(rows[i] == rows[i + 1] for i in range(len(rows) - 1))
