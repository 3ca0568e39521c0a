"""The semantic suite's pure parts: what a query mentions, its mutants, the perturbations' values, the gate metric.

Verdicts need Postgres (tests/services/test_semantic_suite.py); these parts decide only what to perturb and how a
verdict is reported, so they are checked without a server.
"""

from __future__ import annotations

import pytest

from pytest_llmtrace.checks.outcome import CaseOutcome, CheckResult
from pytest_llmtrace.checks.semantic import Counterexample, Verdict, check_semantic, same_sql
from pytest_llmtrace.checks.suite_build import Suite, SuiteDatabase
from pytest_llmtrace.checks.suite_mutants import mutants
from pytest_llmtrace.checks.suite_perturb import copy_rows, delete_rows, edge_values, plan
from pytest_llmtrace.checks.suite_schema import Column, ForeignKey, Schema, Table, quote_literal
from pytest_llmtrace.checks.suite_sql import choice_ties_queries, limit_of, mentions, order_keys_query
from pytest_llmtrace.results import gate
from pytest_llmtrace.results.case_record import as_case


def _schema() -> Schema:
    customers = Table(
        "public",
        "customers",
        [
            Column("id", "integer", "N", True, False),
            Column("email", "text", "S", True, False),
            Column("tier", "text", "S", True, False),
            Column("note", "text", "S", False, False),
        ],
        primary_key=("id",),
        uniques=[("email",)],
        rows=300,
        max_key=300,
    )
    orders = Table(
        "public",
        "orders",
        [
            Column("id", "integer", "N", True, False),
            Column("customer_id", "integer", "N", True, False),
            Column("amount", "numeric(12,2)", "N", True, False),
            Column("ordered_at", "timestamp with time zone", "D", True, False),
        ],
        primary_key=("id",),
        foreign_keys=[ForeignKey(("customer_id",), customers.qualified, ("id",))],
        rows=3000,
        max_key=3000,
    )
    return Schema({t.qualified: t for t in (customers, orders)})


def test_mentions_find_tables_columns_constants_and_rows_read() -> None:
    found = mentions(
        "SELECT c.tier, count(*) FROM customers c JOIN orders o ON o.customer_id = c.id "
        "WHERE o.amount >= 1000 AND o.ordered_at > now() - interval '30 days' AND c.tier ILIKE 'ent%' GROUP BY 1",
        _schema(),
    )
    assert found.tables == {'"public"."customers"', '"public"."orders"'}
    constants = {(c.column, c.text, c.literal, c.like) for c in found.constants}
    assert ("amount", "1000", "1000", False) in constants
    assert ("tier", "'ent%'", "ent%", True) in constants
    assert any(c.column == "ordered_at" and c.literal is None and "INTERVAL" in c.text for c in found.constants)
    tables = {w[0] for w in found.witnesses}
    assert tables == {'"public"."customers"', '"public"."orders"'}
    assert all(w[2].startswith("SELECT k FROM (SELECT DISTINCT") for w in found.witnesses)


def test_an_unparsable_query_mentions_nothing() -> None:
    assert mentions("SELEC nothing FROM", _schema()).tables == set()
    assert mutants("SELEC nothing FROM") == []


def test_mutants_swap_operators_drop_predicates_and_change_joins_distinct_like_and_aggregates() -> None:
    found = mutants(
        "SELECT DISTINCT c.tier, max(o.amount) FROM customers c JOIN orders o ON o.customer_id = c.id "
        "WHERE o.amount >= 1000 AND c.tier LIKE 'E%' GROUP BY c.tier"
    )
    text = "\n".join(found)
    assert "o.amount > 1000" in text
    assert "o.amount < 1000" in text
    assert "LEFT JOIN" in text
    assert "MIN(o.amount)" in text
    assert "ILIKE 'E%'" in text
    assert any(m.startswith("SELECT c.tier") for m in found)  # DISTINCT dropped
    assert "o.amount >= 999" in text
    assert any("WHERE" not in m for m in found)
    assert all("o.customer_id = c.id" in m for m in found if "JOIN" in m)  # join conditions are not swapped


def test_order_keys_and_limit_are_read_for_ties() -> None:
    keys = order_keys_query(
        "SELECT customer_id, sum(amount) AS total FROM orders GROUP BY 1 ORDER BY total DESC LIMIT 5"
    )
    assert keys == ("SELECT SUM(amount) AS k0 FROM orders GROUP BY 1 ORDER BY k0 DESC LIMIT 6")
    assert order_keys_query("SELECT id FROM orders") is None
    assert limit_of("SELECT id FROM orders LIMIT 3") == (3, "SELECT id FROM orders")
    assert limit_of("SELECT id FROM orders") is None


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        (Column("amount", "numeric(12,2)", "N", True, False), "1000", "('1000'::numeric - 0.01)"),
        (
            Column("at", "timestamp with time zone", "D", True, False),
            "2024-12-31",
            "(date_trunc('day', '2024-12-31'::timestamptz) + interval '1 day' - interval '1 microsecond')",
        ),
        (Column("at", "timestamp without time zone", "D", True, False), "2024", "make_timestamp(2024, 1, 1, 0, 0, 0)"),
        (Column("name", "text", "S", True, False), "Acme%", "'AcmeZq'"),
        (Column("name", "text", "S", True, False), "O'Hare", "'o''hare'"),
    ],
)
def test_edge_values_around_a_constant(column: Column, value: str, expected: str) -> None:
    assert any(expected in v for v in edge_values(column, value, like="%" in value))


def test_quote_literal_is_safe_whatever_standard_conforming_strings_says() -> None:
    assert quote_literal("a'b") == "'a''b'"
    assert quote_literal("a\\'; DROP TABLE x; --") == "E'a\\\\''; DROP TABLE x; --'"


def test_copies_take_keys_past_the_range_and_their_child_rows_along() -> None:
    schema = _schema()
    customers = schema.tables['"public"."customers"']
    statements = copy_rows(schema, customers, [7], 2, {"tier": "'SMB'"})
    assert statements[0].startswith('INSERT INTO "public"."customers"')
    assert '"id" + 2000' in statements[0]
    assert "\"email\" || '~2'" in statements[0]
    assert "'SMB'" in statements[0]
    assert statements[1].startswith('INSERT INTO "public"."orders"')
    assert '"customer_id" + 2000' in statements[1]
    deleted = delete_rows(schema, customers, '"id" = 7')
    assert deleted[0].startswith('DELETE FROM "public"."orders"')
    assert deleted[-1].startswith('DELETE FROM "public"."customers"')


def test_plan_holds_the_seed_broad_and_targeted_databases() -> None:
    schema = _schema()
    found = mentions("SELECT count(*) FROM orders WHERE amount >= 1000", schema)
    planned = plan(schema, found, {"1000": "1000"}, {'"public"."orders"': [3, 4, 5]})
    labels = [label for label, _ in planned.databases]
    assert labels[0] == "seed"
    assert planned.databases[0][1] == []
    assert "all perturbations" in labels
    assert "orders empty" in labels
    assert "orders: one row" in labels
    everything = dict(planned.databases)["all perturbations"]
    assert any("'1000'::numeric" in s for p in everything for s in p)


def test_same_sql_ignores_whitespace_and_a_trailing_semicolon() -> None:
    assert same_sql("SELECT 1\n FROM t;", "SELECT 1 FROM t")
    assert not same_sql("SELECT 1 FROM t", "SELECT 2 FROM t")


def test_verdicts_become_the_results_check_and_round_trip_a_suite() -> None:
    example = Counterexample("seed, reduced", ("UPDATE t SET a = 1",), 1, ((1,),), ((2,),), "golden 1 row, now 1 row")
    failed = check_semantic(Verdict("different", 3, counterexample=example))
    assert failed.status == "failed"
    assert failed.reason.startswith("semantic: different")
    assert "  UPDATE t SET a = 1;" in failed.details
    assert check_semantic(Verdict("equivalent", 3)).reason == "semantic: equivalent (3 databases)"
    suite = Suite("k", (SuiteDatabase("seed", (), 0), SuiteDatabase("x", (("UPDATE t SET a = 1",),), 1, True)), 12.5)
    assert Suite.from_json(suite.to_json()) == suite
    assert Suite.from_json("{}") is None


def _case(case_id: str, semantic: dict[str, object] | None) -> object:
    outcome = CaseOutcome(case_id=case_id, mode="replay", checks=(CheckResult("results", "passed"),), semantic=semantic)
    return as_case(outcome.to_dict())


def test_gate_semantic_match_rate_counts_judged_cases_fail_closed() -> None:
    cases = [
        _case("a", {"verdict": "equivalent", "databases": 0, "unchanged": True}),
        _case("b", {"verdict": "different", "databases": 3}),
        _case("c", None),
    ]
    (result,) = gate.evaluate([gate.parse("semantic_match_rate >= 0.9")], cases, None)  # type: ignore[arg-type]
    assert result.value == 0.5
    assert not result.passed
    assert result.cases == ("b",)
    (none,) = gate.evaluate([gate.parse("semantic_match_rate >= 0.9")], [cases[2]], None)  # type: ignore[list-item]
    assert none.value == 0.0


@pytest.mark.parametrize(
    ("sql", "keys", "values"),
    [
        (
            "SELECT DISTINCT ON (customer_id) customer_id, id FROM orders ORDER BY customer_id, ordered_at DESC",
            "GROUP BY k0, k1, k2",
            "count(DISTINCT ROW(v0, v1))",
        ),
        (  # a named window, in a derived table: the pick is the inner query's
            "SELECT id FROM (SELECT id, row_number() OVER w AS rn FROM orders WINDOW w AS (PARTITION BY customer_id "
            "ORDER BY amount)) AS t WHERE rn = 1",
            "GROUP BY k0, k1",
            "count(DISTINCT ROW(v0))",
        ),
        (  # what lag() reads is compared too: tied rows with other amounts give other previous amounts
            "SELECT customer_id, lag(amount) OVER (ORDER BY ordered_at) FROM orders",
            "GROUP BY k0",
            "count(DISTINCT ROW(v0, v1))",
        ),
    ],
)
def test_choice_ties_query_groups_by_the_picks_keys(sql: str, keys: str, values: str) -> None:
    (query,) = choice_ties_queries(sql)
    assert keys in query
    assert values in query


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id, rank() OVER (ORDER BY amount DESC) FROM orders",  # peers share a rank
        # peers summed at once by the default frame
        "SELECT id, sum(amount) OVER (PARTITION BY customer_id ORDER BY ordered_at) FROM orders",
        "SELECT DISTINCT customer_id FROM orders ORDER BY customer_id",
        "SELECT customer_id, max(amount) FROM orders GROUP BY 1",
    ],
)
def test_choice_ties_queries_leave_out_what_ties_cannot_change(sql: str) -> None:
    assert choice_ties_queries(sql) == []


def test_choice_ties_queries_without_keys_tie_every_row() -> None:
    """row_number() with no PARTITION BY or ORDER BY: all rows are peers, so two rows that differ are a tie; with a
    star the rows cannot be compared, and the pick is always called undecided."""
    (query,) = choice_ties_queries("SELECT id, row_number() OVER () FROM orders")
    assert "GROUP BY" not in query
    assert "HAVING count(DISTINCT ROW(v0)) > 1" in query
    assert choice_ties_queries("SELECT *, row_number() OVER (ORDER BY amount) FROM orders") == ["SELECT 1"]
