"""The semantic verdict: the SQL now against the golden SQL on every database of the gold query's suite.

``equivalent (N databases)`` when the two return the same rows on each (the results check's row rule: bag, in order
when the gold orders its outer query, floats within the tolerance), else ``different`` with the smallest database
that tells them apart: the statements that make it from the seed (run them on a copy of the seed to reproduce it)
and the rows each query returned there. A candidate that fails on the seed is an ``error`` (the sql check says
why); one that fails only on a perturbed database is not called different there, since a true rewrite may divide
by a value the seed never holds.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Literal

from pytest_llmtrace.checks.equivalence import ResultDiff, compare_results
from pytest_llmtrace.checks.outcome import CheckResult
from pytest_llmtrace.checks.suite_build import Suite, SuiteBuilder, SuiteDatabase
from pytest_llmtrace.checks.suite_sql import choice_ties_queries

SHOWN_ROWS = 10
SHOWN_STATEMENTS = 20


@dataclass(frozen=True)
class Counterexample:
    label: str
    statements: tuple[str, ...]
    changed_rows: int
    gold_rows: tuple[tuple[Any, ...], ...]
    candidate_rows: tuple[tuple[Any, ...], ...]
    diff: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "database": self.label,
            "changed_rows": self.changed_rows,
            "statements": list(self.statements),
            "gold_rows": [list(r) for r in self.gold_rows[:SHOWN_ROWS]],
            "candidate_rows": [list(r) for r in self.candidate_rows[:SHOWN_ROWS]],
            "diff": self.diff,
        }

    def lines(self) -> list[str]:
        out = [f"counterexample: database {self.label!r}, {self.changed_rows} rows changed from the seed by:"]
        out += [f"  {s};" for s in self.statements[:SHOWN_STATEMENTS]]
        if len(self.statements) > SHOWN_STATEMENTS:
            out.append(f"  ... {len(self.statements) - SHOWN_STATEMENTS} more statements")
        for name, rows in (("golden SQL", self.gold_rows), ("SQL now", self.candidate_rows)):
            out.append(f"{name} returned {len(rows)} rows there:")
            out += [f"  {_row(r)}" for r in rows[:SHOWN_ROWS]]
            if len(rows) > SHOWN_ROWS:
                out.append(f"  ... {len(rows) - SHOWN_ROWS} more")
        out += self.diff.splitlines()
        return out


@dataclass(frozen=True)
class Verdict:
    verdict: Literal["equivalent", "different", "error"]
    databases: int
    build_ms: float = 0.0
    error: str | None = None
    counterexample: Counterexample | None = None
    skipped: tuple[str, ...] = field(default=())  # databases where the candidate failed or picked among ties

    @property
    def summary(self) -> str:
        if self.verdict == "equivalent":
            return f"equivalent ({self.databases} databases)"
        if self.verdict == "different":
            where = self.counterexample.label if self.counterexample else "?"
            return f"different (told apart on database {where!r} of {self.databases})"
        return f"error: {self.error}"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "verdict": self.verdict,
            "databases": self.databases,
            "build_ms": round(self.build_ms, 1),
        }
        if self.error:
            data["error"] = self.error
        if self.counterexample is not None:
            data["counterexample"] = self.counterexample.to_dict()
        if self.skipped:
            data["skipped"] = list(self.skipped)
        return data


def _row(row: tuple[Any, ...]) -> str:
    text = "(" + ", ".join("NULL" if v is None else repr(v) for v in row) + ")"
    return text if len(text) <= 160 else text[:157] + "..."


def same_sql(a: str, b: str) -> bool:
    """The same text but for whitespace and a trailing semicolon: no suite is needed to call them equivalent."""
    return " ".join(a.strip().rstrip(";").split()) == " ".join(b.strip().rstrip(";").split())


def judge(builder: SuiteBuilder, gold: str, candidate: str) -> Verdict:
    """The verdict of ``candidate`` against ``gold`` on ``gold``'s suite (built, or taken from the cache)."""
    try:
        return _judge(builder, gold, candidate)
    finally:
        builder.release()


def _judge(builder: SuiteBuilder, gold: str, candidate: str) -> Verdict:
    suite = builder.suite(gold, candidate)
    differing: list[tuple[SuiteDatabase, Any, Any, ResultDiff]] = []
    skipped: list[str] = []
    choices: list[str] | None = None
    tied = 0

    def choice_queries() -> list[str]:
        """Either query's DISTINCT ON and window picks (the seed is kept even where the gold query's tie)."""
        nonlocal choices
        if choices is None:
            choices = []
            for sql in (gold, candidate):
                with contextlib.suppress(Exception):  # sqlglot raises many types on text it cannot read
                    choices += choice_ties_queries(sql)
        return choices

    for db in suite.databases:
        url = builder.database(db).reader_url
        gold_outcome = builder.run(url, gold)
        now = builder.run(url, candidate)
        if not gold_outcome.ok:
            skipped.append(db.label)
            continue
        if not now.ok:
            if db.label == "seed":
                return Verdict("error", len(suite.databases), suite.build_ms, error=f"the SQL now fails: {now.error}")
            skipped.append(db.label)
            continue
        order = None if db.order_free else gold
        diff = compare_results(gold_outcome.rows, now.rows, "bag", golden_sql=order)
        if diff is not None and builder.choice_ties(url, choice_queries()):
            skipped.append(db.label)  # a query picks among tied rows here: any pick answers the question
            tied += 1
        elif diff is not None:
            differing.append((db, gold_outcome, now, diff))
    counted = len(suite.databases) - len(skipped)
    if not differing and counted == 0 and tied:
        error = "on every database of its suite, a DISTINCT ON or window function picks among tied rows: no verdict"
        return Verdict("error", 0, suite.build_ms, error=error, skipped=tuple(skipped))
    if not differing and counted == 0:
        return Verdict("error", 0, suite.build_ms, error="the golden SQL fails on every database of its suite")
    if not differing:
        return Verdict("equivalent", counted, suite.build_ms, skipped=tuple(skipped))
    db, gold_outcome, now, diff = min(differing, key=lambda d: (d[0].changed_rows, len(d[0].perturbations)))
    example = _shrunk(builder, gold, candidate, db) or Counterexample(
        db.label,
        tuple(s for p in db.perturbations for s in p),
        db.changed_rows,
        tuple(gold_outcome.rows),
        tuple(now.rows),
        str(diff),
    )
    return Verdict("different", counted, suite.build_ms, counterexample=example, skipped=tuple(skipped))


def _shrunk(builder: SuiteBuilder, gold: str, candidate: str, db: SuiteDatabase) -> Counterexample | None:
    """A smaller database that still tells the two apart: halves of ``db``'s perturbations, bisected while one half
    alone still does (at most ``SHRINK_CLONES`` more clones, each dropped after)."""
    perturbations = list(db.perturbations)
    best: Counterexample | None = None
    for _ in range(SHRINK_CLONES):
        if len(perturbations) < 2:
            break
        half = len(perturbations) // 2
        for part in (perturbations[:half], perturbations[half:]):
            clone = builder.make_clone(part)
            try:
                g, n = builder.run(clone.reader_url, gold), builder.run(clone.reader_url, candidate)
                diff = compare_results(g.rows, n.rows, "bag", golden_sql=None if db.order_free else gold)
                if g.ok and n.ok and diff is not None and clone.applied:
                    statements = tuple(s for p in clone.applied for s in p)
                    label = f"{db.label}, reduced"
                    best = Counterexample(label, statements, clone.changed_rows, g.rows, n.rows, str(diff))
                    perturbations = list(clone.applied)
                    break
            finally:
                builder.drop(clone)
        else:
            break
    return best


SHRINK_CLONES = 8


def check_semantic(verdict: Verdict) -> CheckResult:
    """The results check under ``result_match = suite``."""
    if verdict.verdict == "equivalent":
        return CheckResult("results", "passed", f"semantic: {verdict.summary}")
    if verdict.verdict == "error":
        return CheckResult("results", "skipped", f"semantic: {verdict.summary}")
    details = tuple(verdict.counterexample.lines()) if verdict.counterexample else ()
    return CheckResult("results", "failed", f"semantic: {verdict.summary}", details=details)


__all__ = ["Counterexample", "Suite", "Verdict", "check_semantic", "judge", "same_sql"]
