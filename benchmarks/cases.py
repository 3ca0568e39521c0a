"""Generated golden cases for the benchmarks: many different questions and SQL answers over company_db.

The 23 shipped cases are too few to time per-case costs, and copies of one case would flatter every cache (one
prompt, one plan, one result). These are made from templates crossed with the data's own values (tiers, regions,
countries, categories, statuses, years, months, limits), so every case asks a different question, gets a different
SQL text, reads a different plan and returns a different result. One case in fifty answers with SQL that fails (an
unknown column), as model answers sometimes do, so the failing path is timed too. The same ``seed`` and ``count``
always give the same cases.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["generate", "write_cases"]

TIERS = ("SMB", "Mid-Market", "Enterprise")
REGIONS = ("NA", "EMEA", "APAC")
COUNTRIES = ("US", "CA", "MX", "GB", "DE", "FR", "NL", "JP", "AU", "SG", "IN")
CATEGORIES = ("Platform", "Add-on", "Services", "Support")
STATUSES = ("paid", "pending", "refunded", "cancelled")
YEARS = (2023, 2024)
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")  # fmt: skip

Template = Callable[[random.Random], tuple[str, str, str]]  # -> (slug, question, sql)


def _revenue_by(rng: random.Random) -> tuple[str, str, str]:
    group = rng.choice(("region", "tier", "country"))
    year = rng.choice(YEARS)
    tier = rng.choice((None, *TIERS))
    where = f" AND c.tier = '{tier}'" if tier and group != "tier" else ""
    who = f"{tier} " if where else ""
    return (
        f"revenue_by_{group}_{year}",
        f"What was {who}revenue by {group} in {year}?",
        f"SELECT c.{group}, sum(o.amount) AS revenue FROM orders o JOIN customers c ON c.id = o.customer_id "
        f"WHERE o.status = 'paid' AND o.ordered_at >= '{year}-01-01' AND o.ordered_at < '{year + 1}-01-01'{where} "
        f"GROUP BY c.{group} ORDER BY revenue DESC;",
    )


def _orders_in_month(rng: random.Random) -> tuple[str, str, str]:
    status, year, month = rng.choice(STATUSES), rng.choice(YEARS), rng.randrange(12)
    tier = rng.choice((None, *TIERS))
    end = f"{year + 1}-01-01" if month == 11 else f"{year}-{month + 2:02d}-01"
    join = " o JOIN customers c ON c.id = o.customer_id" if tier else " o"
    where = f" AND c.tier = '{tier}'" if tier else ""
    return (
        f"{status}_orders_{tier or 'all'}_{year}_{month + 1:02d}".lower().replace("-", "_"),
        f"How many {status} orders{f' from {tier} customers' if tier else ''} were there in {MONTHS[month]} {year}, "
        "and worth how much?",
        f"SELECT count(*) AS orders, coalesce(sum(o.amount), 0) AS amount FROM orders{join} "
        f"WHERE o.status = '{status}' AND o.ordered_at >= '{year}-{month + 1:02d}-01' AND o.ordered_at < '{end}'"
        f"{where};",
    )


def _top_customers(rng: random.Random) -> tuple[str, str, str]:
    k, year = rng.randint(3, 15), rng.choice(YEARS)
    column, value = rng.choice([("region", r) for r in REGIONS] + [("tier", t) for t in TIERS])
    return (
        f"top_{k}_customers_{value}_{year}".lower().replace("-", "_"),
        f"Who were our top {k} {value} customers by revenue in {year}?",
        f"SELECT c.name, c.country, sum(o.amount) AS revenue FROM customers c JOIN orders o ON o.customer_id = c.id "
        f"WHERE o.status = 'paid' AND c.{column} = '{value}' AND o.ordered_at >= '{year}-01-01' "
        f"AND o.ordered_at < '{year + 1}-01-01' GROUP BY c.name, c.country ORDER BY revenue DESC LIMIT {k};",
    )


def _customers_in(rng: random.Random) -> tuple[str, str, str]:
    tier, country = rng.choice(TIERS), rng.choice(COUNTRIES)
    year, since = rng.choice((2022, 2023, 2024)), rng.choice((True, False))
    when, op = ("in {} or later", ">=") if since else ("before {}", "<")
    return (
        f"{tier}_customers_{country}_{'since' if since else 'before'}_{year}".lower().replace("-", "_"),
        f"List the {tier} customers in {country} who signed up {when.format(year)}.",
        f"SELECT name, email, signup_at FROM customers WHERE tier = '{tier}' AND country = '{country}' "
        f"AND signup_at {op} '{year}-01-01' ORDER BY signup_at;",
    )


def _average_order(rng: random.Random) -> tuple[str, str, str]:
    group, year = rng.choice(("tier", "region", "country")), rng.choice(YEARS)
    status, half = rng.choice(STATUSES), rng.choice((1, 2))
    start, end = (f"{year}-01-01", f"{year}-07-01") if half == 1 else (f"{year}-07-01", f"{year + 1}-01-01")
    return (
        f"average_{status}_order_by_{group}_{year}_h{half}",
        f"What was the average {status} order value per customer {group} in the {('first', 'second')[half - 1]} "
        f"half of {year}?",
        f"SELECT c.{group}, round(avg(o.amount), 2) AS avg_amount, count(*) AS orders FROM orders o "
        f"JOIN customers c ON c.id = o.customer_id WHERE o.status = '{status}' AND o.ordered_at >= '{start}' "
        f"AND o.ordered_at < '{end}' GROUP BY c.{group} ORDER BY avg_amount DESC;",
    )


def _products_over(rng: random.Random) -> tuple[str, str, str]:
    category, price = rng.choice(CATEGORIES), rng.choice((0, 500, 1000, 2000, 4000))
    return (
        f"{category}_products_over_{price}".lower().replace("-", "_"),
        f"Which {category} products list for more than ${price}?",
        f"SELECT sku, name, list_price, active FROM products WHERE category = '{category}' AND list_price > {price} "
        "ORDER BY list_price DESC;",
    )


def _units_by_product(rng: random.Random) -> tuple[str, str, str]:
    category, year = rng.choice(CATEGORIES), rng.choice(YEARS)
    tier = rng.choice(TIERS)
    return (
        f"units_{category}_{tier}_{year}".lower().replace("-", "_"),
        f"How many units of each {category} product did {tier} customers buy in {year}?",
        "SELECT p.name, sum(oi.quantity) AS units FROM order_items oi JOIN products p ON p.id = oi.product_id "
        "JOIN orders o ON o.id = oi.order_id JOIN customers c ON c.id = o.customer_id "
        f"WHERE p.category = '{category}' AND c.tier = '{tier}' AND o.ordered_at >= '{year}-01-01' "
        f"AND o.ordered_at < '{year + 1}-01-01' GROUP BY p.name ORDER BY units DESC;",
    )


def _big_orders(rng: random.Random) -> tuple[str, str, str]:
    amount, year, month = rng.choice((2000, 5000, 10000, 20000, 50000)), rng.choice(YEARS), rng.randrange(12)
    region = rng.choice((None, *REGIONS))
    end = f"{year + 1}-01-01" if month == 11 else f"{year}-{month + 2:02d}-01"
    where = f" AND c.region = '{region}'" if region else ""
    return (
        f"orders_over_{amount}_{region or 'all'}_{year}_{month + 1:02d}",
        f"Show the orders over ${amount}{f' from {region}' if region else ''} placed in {MONTHS[month]} {year}, "
        "largest first.",
        f"SELECT o.id, c.name, o.amount, o.status FROM orders o JOIN customers c ON c.id = o.customer_id "
        f"WHERE o.amount > {amount} AND o.ordered_at >= '{year}-{month + 1:02d}-01' AND o.ordered_at < '{end}'"
        f"{where} ORDER BY o.amount DESC LIMIT 20;",
    )


def _discounts(rng: random.Random) -> tuple[str, str, str]:
    category, year = rng.choice(CATEGORIES), rng.choice(YEARS)
    return (
        f"discount_{category}_{year}".lower().replace("-", "_"),
        f"What average discount did we give on {category} products in {year}?",
        "SELECT p.name, round(avg(oi.discount) * 100, 1) AS avg_discount_pct FROM order_items oi "
        "JOIN products p ON p.id = oi.product_id JOIN orders o ON o.id = oi.order_id "
        f"WHERE p.category = '{category}' AND o.ordered_at >= '{year}-01-01' AND o.ordered_at < '{year + 1}-01-01' "
        "GROUP BY p.name ORDER BY avg_discount_pct DESC;",
    )


def _monthly(rng: random.Random) -> tuple[str, str, str]:
    region, year = rng.choice(REGIONS), rng.choice(YEARS)
    return (
        f"monthly_revenue_{region}_{year}",
        f"Show monthly revenue from {region} customers for {year}.",
        "SELECT date_trunc('month', o.ordered_at) AS month, sum(o.amount) AS revenue FROM orders o "
        f"JOIN customers c ON c.id = o.customer_id WHERE o.status = 'paid' AND c.region = '{region}' "
        f"AND o.ordered_at >= '{year}-01-01' AND o.ordered_at < '{year + 1}-01-01' GROUP BY month ORDER BY month;",
    )


def _customer_history(rng: random.Random) -> tuple[str, str, str]:
    customer, year = rng.randint(1, 300), rng.choice(YEARS)
    return (
        f"orders_of_customer_{customer}_{year}",
        f"What did customer {customer} order in {year}?",
        "SELECT o.id, o.ordered_at, o.status, p.name, oi.quantity FROM orders o "
        "JOIN order_items oi ON oi.order_id = o.id JOIN products p ON p.id = oi.product_id "
        f"WHERE o.customer_id = {customer} AND o.ordered_at >= '{year}-01-01' AND o.ordered_at < '{year + 1}-01-01' "
        "ORDER BY o.ordered_at, p.name;",
    )


def _unknown_column(rng: random.Random) -> tuple[str, str, str]:
    region, column = rng.choice(REGIONS), rng.choice(("segment", "industry", "vertical", "size"))
    year = rng.choice(YEARS)
    return (
        f"error_{column}_{region}_{year}",
        f"What was the revenue per customer {column} in {region} in {year}?",
        f"SELECT c.{column}, sum(o.amount) AS revenue FROM orders o JOIN customers c ON c.id = o.customer_id "
        f"WHERE c.region = '{region}' AND o.ordered_at >= '{year}-01-01' AND o.ordered_at < '{year + 1}-01-01' "
        f"GROUP BY c.{column};",
    )


TEMPLATES: tuple[Template, ...] = (
    _revenue_by,
    _orders_in_month,
    _top_customers,
    _customers_in,
    _average_order,
    _products_over,
    _units_by_product,
    _big_orders,
    _discounts,
    _monthly,
    _customer_history,
)


def generate(count: int, seed: int = 10) -> list[dict[str, Any]]:
    """``count`` cases with distinct questions: ``{name, question, answer}`` as ``fixtures/golden_cases.json`` has."""
    rng = random.Random(seed)
    cases: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _ in range(count * 50):
        template = _unknown_column if len(cases) % 50 == 49 else rng.choice(TEMPLATES)
        slug, question, sql = template(rng)
        if question in seen:
            continue
        seen.add(question)
        cases.append({"name": f"c{len(cases):04d}_{slug}", "question": question, "answer": sql})
        if len(cases) == count:
            return cases
    raise ValueError(f"the templates cannot make {count} distinct questions (made {len(cases)})")


def write_cases(count: int, path: Path, seed: int = 10) -> Path:
    path.write_text(json.dumps({"cases": generate(count, seed)}, indent=1), encoding="utf-8")
    return path
