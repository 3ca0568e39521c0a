"""Near-miss mutants of a gold query, made with sqlglot: the databases that tell the gold query from them are the
ones a suite keeps (Zhong, Yu & Klein 2020), because a wrong candidate is most often one of these."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pytest_llmtrace.checks.suite_sql import parse

MAX_MUTANTS = 60


def mutants(sql: str) -> list[str]:
    """Near misses of ``sql``: each differs from it in one place. The databases that tell the gold query from its
    mutants are the ones a suite keeps, because a wrong candidate is most often one of these."""
    tree = parse(sql)
    if tree is None:
        return []
    original = tree.sql(dialect="postgres")
    out: list[str] = []
    for mutate in _MUTATIONS:
        for mutated in mutate(tree):
            text = mutated.sql(dialect="postgres")
            if text != original and text not in out:
                out.append(text)
            if len(out) >= MAX_MUTANTS:
                return out
    return out


_REMOVE = object()


def _variants(tree: Any, kinds: tuple[type, ...], replacements: Callable[[Any], list[Any]]) -> Iterator[Any]:
    """For each node of ``kinds``, and each of its ``replacements`` (new nodes, or ``_REMOVE``), a copy of the tree
    with that one node replaced."""
    for i, node in enumerate(list(tree.find_all(*kinds))):
        for replacement in replacements(node):
            copy = tree.copy()
            target = list(copy.find_all(*kinds))[i]
            if target is copy:  # the root itself
                yield replacement
                continue
            if replacement is _REMOVE:
                target.pop()
            else:
                target.replace(replacement)
            yield copy


def _comparisons(tree: Any) -> Iterator[Any]:
    from sqlglot import exp

    ops = (exp.GT, exp.GTE, exp.LT, exp.LTE, exp.EQ, exp.NEQ)

    def swapped(node: Any) -> list[Any]:
        if isinstance(node.this, exp.Column) and isinstance(node.expression, exp.Column):
            return []  # join conditions: a swapped operator there is not a near miss
        return [op(this=node.this.copy(), expression=node.expression.copy()) for op in ops if op is not type(node)]

    yield from _variants(tree, ops, swapped)


def _dropped_predicates(tree: Any) -> Iterator[Any]:
    from sqlglot import exp

    yield from _variants(tree, (exp.And,), lambda node: [node.this.copy(), node.expression.copy()])
    yield from _variants(tree, (exp.Where,), lambda node: [_REMOVE])


def _joins(tree: Any) -> Iterator[Any]:
    from sqlglot import exp

    def others(node: Any) -> list[Any]:
        side = (node.args.get("side") or "").upper()
        out = []
        for new in ("", "LEFT", "RIGHT", "FULL"):
            if new != side and (new or node.args.get("on") is not None):
                changed = node.copy()
                changed.set("side", new or None)
                changed.set("kind", None)
                out.append(changed)
        return out

    yield from _variants(tree, (exp.Join,), others)


def _distinct(tree: Any) -> Iterator[Any]:
    from sqlglot import exp

    def toggled(node: Any) -> list[Any]:
        changed = node.copy()
        changed.set("distinct", None if node.args.get("distinct") else exp.Distinct())
        return [changed]

    yield from _variants(tree, (exp.Select,), toggled)


def _likes(tree: Any) -> Iterator[Any]:
    from sqlglot import exp

    def other(node: Any) -> list[Any]:
        kind = exp.ILike if isinstance(node, exp.Like) else exp.Like
        return [kind(this=node.this.copy(), expression=node.expression.copy())]

    yield from _variants(tree, (exp.Like, exp.ILike), other)


def _aggregates(tree: Any) -> Iterator[Any]:
    from sqlglot import exp

    swaps: dict[type, tuple[type, ...]] = {
        exp.Count: (exp.Sum,),
        exp.Sum: (exp.Count, exp.Avg),
        exp.Avg: (exp.Sum,),
        exp.Max: (exp.Min,),
        exp.Min: (exp.Max,),
    }

    def others(node: Any) -> list[Any]:
        inner = node.this
        out = [k(this=inner.copy()) for k in swaps[type(node)] if not isinstance(inner, exp.Star) or k is exp.Count]
        if isinstance(node, exp.Count) and isinstance(inner, exp.Distinct) and inner.expressions:
            out.append(exp.Count(this=inner.expressions[0].copy()))
        elif isinstance(node, exp.Count) and inner is not None and not isinstance(inner, exp.Star):
            out.append(exp.Count(this=exp.Distinct(expressions=[inner.copy()])))
        return out

    yield from _variants(tree, tuple(swaps), others)


def _shifted_numbers(tree: Any) -> Iterator[Any]:
    from sqlglot import exp

    def shifted(node: Any) -> list[Any]:
        if node.is_string or isinstance(node.parent, (exp.Limit, exp.Offset, exp.Ordered, exp.Group)):
            return []
        try:
            value = float(node.this)
        except ValueError:
            return []
        numbers = (value - 1, value + 1)
        return [exp.Literal.number(int(n) if n.is_integer() else n) for n in numbers]

    yield from _variants(tree, (exp.Literal,), shifted)


_MUTATIONS: tuple[Callable[[Any], Iterator[Any]], ...] = (
    _comparisons,
    _dropped_predicates,
    _joins,
    _distinct,
    _likes,
    _aggregates,
    _shifted_numbers,
)
