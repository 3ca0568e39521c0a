"""``result_match = suite`` in a session: one suite builder per session database, made on the first case that needs
it (a case whose SQL is unchanged never does), with its suites cached under pytest's cache directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_llmtrace.checks.semantic import Verdict, judge
from pytest_llmtrace.checks.suite_build import SuiteBuilder
from pytest_llmtrace.services.manager import ServiceManager
from pytest_llmtrace.services.pg_deadline import Deadline
from pytest_llmtrace.services.postgres import PostgresDatabase

_BUILDERS = pytest.StashKey[dict[str, SuiteBuilder]]()
CACHE_FOLDER = "llmtrace-suites"


def semantic_judge(
    config: pytest.Config,
    manager: ServiceManager,
    database: PostgresDatabase,
    timeout_ms: int,
    deadline: Deadline | None = None,
) -> Callable[[str, str], Verdict]:
    """``judge`` on the session's suites, each query under ``timeout_ms`` (the case's ``sql_timeout_ms``).

    At the case's ``deadline`` the watchdog ends the reader's queries in the suite's clones as anywhere, and the
    case walks away from the thread judging; the builder is cancelled then (it makes and queries nothing more) and
    the next case gets a new one."""

    def run(gold: str, candidate: str) -> Verdict:
        builders = config.stash.setdefault(_BUILDERS, {})
        builder = builders.get(database.database)
        if builder is None:
            clones = manager.suite_clones(database)
            seed = clones.build(())  # the seed as loaded: the session's own clone may hold a test's rows
            cache = config.cache
            cache_dir = Path(cache.mkdir(CACHE_FOLDER)) if cache is not None else None
            builder = SuiteBuilder(clones, seed.reader_url, database.template, cache_dir=cache_dir)
            builders[database.database] = builder
        builder.timeout_ms = timeout_ms
        if deadline is not None:
            used = builder

            def cancel() -> None:
                used.cancel()
                if builders.get(database.database) is used:
                    del builders[database.database]

            deadline.cancel = (*deadline.cancel, cancel)
        return judge(builder, gold, candidate)

    return run
