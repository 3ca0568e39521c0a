"""The semantic test suite's rows for ``benchmarks/run.py``: what ``llmtrace_result_match = suite`` costs.

- semantic_suite: building the suite of a new gold query (clones, perturbations, the gold query and its mutants on
  each, distillation), median over a few gold queries of the reference schema, no cache; target <= 10 s on 2 cores.
  The baseline is running the gold query once on the seed, as the one-database results check does.
- semantic_unchanged: what a case whose SQL text is unchanged pays under ``suite`` (the text comparison; no
  database is touched), per case; target <= 50 ms.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.harness import FIXTURES, median

GOLDS = (
    "SELECT count(*) FROM orders WHERE amount >= 1000",
    "SELECT c.name, sum(o.amount) AS total FROM customers c JOIN orders o ON o.customer_id = c.id "
    "WHERE c.tier = 'Enterprise' GROUP BY c.name ORDER BY total DESC LIMIT 5",
    "SELECT count(*) FROM orders WHERE ordered_at >= '2024-07-01' AND ordered_at < '2024-10-01'",
)


def semantic_rows(admin_url: str, repeat: int, row: Any) -> list[Any]:
    """``row(name, plugin_s, baseline_s, ratio, target, met, note)`` for the two rows, on the server ``admin_url``."""
    from pytest_llmtrace.checks.execute import execute_untrusted
    from pytest_llmtrace.checks.semantic import same_sql
    from pytest_llmtrace.checks.suite_build import SuiteBuilder
    from pytest_llmtrace.services.pg_suite import suite_session

    files = sorted((FIXTURES / "company_db").glob("*.sql"))
    builds: list[float] = []
    once: list[float] = []
    sizes: list[int] = []
    with suite_session(admin_url, files) as (clones, seed_url, digest):
        for _ in range(repeat):
            for gold in GOLDS:
                builder = SuiteBuilder(clones, seed_url, digest)  # a new builder: nothing in memory, no cache dir
                started = time.perf_counter()
                suite = builder.suite(gold)
                builds.append(time.perf_counter() - started)
                sizes.append(len(suite.databases))
                builder.close()
                started = time.perf_counter()
                execute_untrusted(seed_url, gold, 5000)
                once.append(time.perf_counter() - started)
    build, base = median(builds), median(once)
    note = f"{min(sizes)}-{max(sizes)} databases kept per suite, {len(GOLDS)} gold queries"
    rows = [row("semantic_suite", build, base, build / base, "<= 10 s per suite", build <= 10.0, note)]
    cases = 10_000
    started = time.perf_counter()
    for _ in range(cases):
        same_sql(GOLDS[1], GOLDS[1] + ";")
    per_case = (time.perf_counter() - started) / cases
    rows.append(row("semantic_unchanged", per_case, per_case, 1.0, "<= 50 ms per case", per_case <= 0.05, "text only"))
    return rows
