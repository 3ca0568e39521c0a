"""The edge where findings become pytest failures: the only place this package calls ``pytest.fail``.

Outcomes and environment problems fail with their message and no traceback (``pytrace=False``): the message names
what to fix, and a traceback into this plugin would only bury it.
"""

from __future__ import annotations

from dataclasses import replace
from types import TracebackType
from typing import NoReturn

import pytest

from pytest_llmtrace.checks.outcome import CaseOutcome
from pytest_llmtrace.checks.report import failure_message
from pytest_llmtrace.core.inert import escape_controls
from pytest_llmtrace.core.url_secrets import redact_text


def fail(message: str) -> NoReturn:
    """Fail the running test with ``message`` alone, its control characters escaped and URL secrets hidden.

    Raised ``from None``: called while an exception is being handled (in an ``except`` block or a ``__exit__``), a
    plain ``pytest.fail`` would print the caught error first, under "During handling of the above exception".
    """
    __tracebackhide__ = True
    # Messages quote span names, model SQL and service URLs: made inert for the terminal, and secrets hidden.
    raise pytest.fail.Exception(escape_controls(redact_text(message)), pytrace=False) from None


class fail_on:  # used like contextlib.suppress, so named like it
    """``with fail_on(SomeError): ...``: an expected error fails the test with its message, without a traceback.

    This replaces "catch, keep the message, call ``pytest.fail`` after the ``except`` block" wherever an error of
    the environment (a service that will not start, an app that will not import) should end the test readably.
    """

    def __init__(self, *errors: type[BaseException], prefix: str = "", suffix: str = "") -> None:
        self._errors = errors
        self._prefix = prefix
        self._suffix = suffix

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        __tracebackhide__ = True
        if exc is not None and isinstance(exc, self._errors):
            fail(f"{self._prefix}{exc}{self._suffix}")


OUTCOMES_KEY = pytest.StashKey[list[CaseOutcome]]()


def conclude(item: pytest.Item, outcome: CaseOutcome, *, title: str | None = None) -> None:
    """Keep ``outcome`` on the test item (reports read ``item.stash[OUTCOMES_KEY]``) and fail unless it passed.

    What is kept holds the first rows of the result only (``SqlOutcome.kept``). It lives until the teardown report,
    when ``run_results.record`` turns it into the run's case record and takes it off the item.
    """
    __tracebackhide__ = True
    kept = outcome if outcome.result is None else replace(outcome, result=outcome.result.kept())
    item.stash.setdefault(OUTCOMES_KEY, []).append(kept)
    if not outcome.passed:
        fail(failure_message(outcome, title=title))
