"""The checks' knobs, written down once: their defaults, their help, and the parsing of ini text and marker values.

The names the knobs take (checks, metrics, token kinds) are ``checks.names``. The ``llmtrace`` marker's arguments are
generated from ``CheckOptions``, and so are the ini keys' defaults and help and the marker's help line
(``check_settings``), so a default or a new knob is added in one place and cannot drift between the ini file, the
marker and the ``llmtrace_check`` helpers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, cast

import pytest

from pytest_llmtrace.checks.names import (
    CHECKS,
    LATENCY_METRICS,
    RESULT_MATCH,
    TOKEN_KINDS,
    CheckName,
    ResultMatch,
    UnknownName,
    canonical,
    canonical_metric,
    canonical_token_kind,
)
from pytest_llmtrace.core.errors import did_you_mean, number_text, whole_number
from pytest_llmtrace.core.settings import Settings

__all__ = [
    "DEADLINE_BUDGET_FACTOR",
    "DEFAULT_MAX_RESULT_BYTES",
    "DEFAULT_MAX_ROWS",
    "DEFAULT_SQL_TIMEOUT_MS",
    "MARKER_ARGUMENTS",
    "MAX_AUTO_DEADLINE_S",
    "CheckOptions",
    "number_text",
]

# The SQL check's limits (CheckOptions' defaults; checks.execute's too).
DEFAULT_SQL_TIMEOUT_MS = 5000
DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_RESULT_BYTES = 16 * 1024 * 1024


# -- parsing: one function per knob, for ini text and for marker values alike ------------------------------------------


def _usage(where: str, problem: str) -> pytest.UsageError:
    return pytest.UsageError(f"{where}: {problem}")


def _number(value: Any, where: str, kind: type[int] | type[float], minimum: float = 0) -> Any:
    if kind is int:  # counts and limits: the one whole-number parser
        number: float | None = whole_number(value)
    elif isinstance(value, bool):  # True is a number to Python, never one a user meant
        number = None
    else:
        try:
            number = kind(value)
        except (TypeError, ValueError):
            number = None
    if number is None:
        raise _usage(where, f"expected a {kind.__name__} number, got {value!r}")
    if number < minimum:
        raise _usage(where, f"expected a number >= {number_text(minimum)}, got {value!r}")
    return number


def _names(value: Any, choices: Sequence[str], what: str, where: str) -> list[str]:
    items = value.split() if isinstance(value, str) else list(value)
    try:
        return [canonical(item, choices, what) for item in items]
    except UnknownName as exc:
        raise _usage(where, str(exc)) from None


def _parse_checks(value: Any, where: str) -> frozenset[CheckName]:
    return frozenset(cast("list[CheckName]", _names(value, CHECKS, "check", where)))  # spelled as in CHECKS


def _parse_result_match(value: Any, where: str) -> ResultMatch:
    (name,) = _names([value], RESULT_MATCH, "result_match", where)
    return name  # type: ignore[return-value]  # one of RESULT_MATCH, checked above


def _mapping_parser(
    key: Callable[[object], str], kind: type[int] | type[float]
) -> Callable[[Any, str], dict[str, Any]]:
    """Parse ``NAME=NUMBER`` pairs (ini) or a dict (marker); a ``None`` value (marker) removes that entry."""

    def parse(value: Any, where: str) -> dict[str, Any]:
        if isinstance(value, str):
            pairs: list[tuple[str, Any]] = []
            for part in value.split():
                name, sep, number = part.partition("=")
                if not sep:
                    raise _usage(where, f"expected NAME=NUMBER pairs like 'total=1000', got {part!r}")
                pairs.append((name, number))
        elif isinstance(value, Mapping):
            pairs = list(value.items())
        else:
            raise _usage(where, f"expected a dict like {{'total': 1000}}, got {value!r}")
        parsed: dict[str, Any] = {}
        for name, number in pairs:
            try:
                canonical_name = key(name)
            except UnknownName as exc:
                raise _usage(where, str(exc)) from None
            parsed[canonical_name] = None if number is None else _number(number, f"{where}[{name!r}]", kind)
        return parsed

    return parse


def _prices(value: Any, where: str) -> dict[str, tuple[float, float]]:
    """``MODEL=INPUT/OUTPUT`` pairs (USD per 1,000 tokens; ``*`` for every other model), or a dict of pairs."""
    if isinstance(value, str):
        items: list[tuple[str, Any]] = []
        for part in value.split():
            name, sep, price = part.rpartition("=")
            if not sep or not name:
                raise _usage(
                    where,
                    f"expected MODEL=INPUT/OUTPUT (USD per 1,000 tokens), e.g. 'gpt-4o=0.0025/0.01', got {part!r}",
                )
            items.append((name, price))
    elif isinstance(value, Mapping):
        items = list(value.items())
    else:
        raise _usage(where, f"expected a dict like {{'gpt-4o': (0.0025, 0.01)}}, got {value!r}")
    prices: dict[str, tuple[float, float]] = {}
    for name, price in items:
        pair = price.split("/") if isinstance(price, str) else price
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise _usage(where, f"price of {name!r}: expected INPUT/OUTPUT per 1,000 tokens, got {price!r}")
        prices[str(name)] = (
            float(_number(pair[0], f"{where}[{name!r}] input", float)),
            float(_number(pair[1], f"{where}[{name!r}] output", float)),
        )
    return prices


def _float(value: Any, where: str) -> float:
    return float(_number(value, where, float))


def _count(value: Any, where: str) -> int:
    return int(_number(value, where, int))


def _positive(value: Any, where: str) -> int:
    return int(_number(value, where, int, minimum=1))


# The automatic case deadline: the total latency budget times this, within these bounds (seconds).
DEADLINE_BUDGET_FACTOR = 3.0
MAX_AUTO_DEADLINE_S = 60.0
MIN_AUTO_DEADLINE_S = 1.0


def _deadline(value: Any, where: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    number = float(_number(value, where, float))
    if number <= 0:
        raise _usage(where, f"expected 'auto' or a number of seconds > 0, got {value!r}")
    return number


def _timeout(value: Any, where: str) -> int:
    # 0 would mean "no timeout" to Postgres: model-written SQL is never run unbounded
    return int(_number(value, where, int, minimum=1))


@dataclass(frozen=True)
class _Knob:
    """How one ``CheckOptions`` field meets users: its ini help, its parser, and whether env may set it."""

    help: str
    parse: Callable[[Any, str], Any]
    choices: tuple[str, ...] = ()
    env: bool = False
    merge: bool = False  # a marker's mapping extends the session's instead of replacing it


def _meta(help: str, parse: Callable[[Any, str], Any], **more: Any) -> dict[str, _Knob]:
    return {"knob": _Knob(help, parse, **more)}


@dataclass(frozen=True)
class CheckOptions:
    """Everything a case's checks depend on; the defaults here are the defaults everywhere.

    Resolved from the session's settings (``from_settings``), then from each test's ``llmtrace`` marker
    (``with_marker``). Mapping keys are canonical (``LLM``, not ``llm``).
    """

    checks: frozenset[CheckName] = field(
        default=frozenset(CHECKS),
        metadata=_meta(f"Checks run on every golden case: {' '.join(CHECKS)}.", _parse_checks),
    )
    result_match: ResultMatch = field(
        default="bag",
        metadata=_meta(
            "How result rows are compared with the snapshot: bag (multiset; ordered when the golden SQL has a "
            "top-level ORDER BY), set (BIRD execution accuracy), ordered, none, or suite (when the SQL text changed: "
            "the SQL now against the golden SQL on a distilled test suite of databases derived from the seed).",
            _parse_result_match,
            choices=RESULT_MATCH,
            env=True,
        ),
    )
    latency_budgets_ms: dict[str, float] = field(
        default_factory=lambda: {"LLM": 5000.0, "total": 8000.0, "SQL": 1000.0},
        metadata=_meta(
            f"Absolute latency budgets in ms per metric (any letter case): {', '.join(LATENCY_METRICS)}; "
            "e.g. 'LLM=5000 total=8000 SQL=1000'.",
            _mapping_parser(canonical_metric, float),
            merge=True,
        ),
    )
    min_tokens_per_s: float = field(
        default=0.0,
        metadata=_meta(
            "The slowest rate a model call may stream at, in completion tokens per second after its first token "
            "(trace.stream_timing); 0: no minimum. A call that records no stream timing is not judged.",
            _float,
        ),
    )
    prices: dict[str, tuple[float, float]] = field(
        default_factory=dict,
        metadata=_meta(
            "USD per 1,000 input and output tokens per model, e.g. 'gpt-4o=0.0025/0.01 qwen-sql-prod=0.0002/0.0006' "
            "('*' prices every other model). A trace's own cost (gen_ai.usage.cost, Langfuse, LangSmith) wins; a "
            "model with tokens and no price fails its case.",
            _prices,
            merge=True,
        ),
    )
    latency_tolerance: float = field(
        default=1.5, metadata=_meta("Allowed slowdown relative to the golden durations.", _float)
    )
    latency_floor_ms: float = field(
        default=200.0,
        metadata=_meta(
            "Slowdowns smaller than this many ms are noise, whatever the ratio (a 2 ms span taking 40 ms is not a "
            "regression on a busy CI machine).",
            _float,
        ),
    )
    token_tolerance: float = field(
        default=0.10, metadata=_meta("Allowed relative change of token counts against the golden ones.", _float)
    )
    token_max: dict[str, int] = field(
        default_factory=dict,
        metadata=_meta(
            f"Absolute token maxima per kind ({', '.join(TOKEN_KINDS)}), e.g. 'prompt=4000 completion=512 total=4500'.",
            _mapping_parser(canonical_token_kind, int),
            merge=True,
        ),
    )
    sql_timeout_ms: int = field(
        default=DEFAULT_SQL_TIMEOUT_MS, metadata=_meta("statement_timeout for re-executing the app's SQL.", _timeout)
    )
    cost_tolerance: float = field(
        default=2.0,
        metadata=_meta(
            "The cost check fails when the SQL now reads more than this many times the golden SQL's shared buffers "
            "(hit + read; the planner's cost when a statement cannot run).",
            _float,
        ),
    )
    latency_retries: int = field(
        default=3,
        metadata=_meta(
            "When a SQL latency limit fails by at most 2x (a busy machine's noise), run the statement this many more "
            "times and judge the fastest; past 2x, or at the statement timeout, it is judged at once. 0: no re-runs.",
            _count,
        ),
    )
    max_rows: int = field(
        default=DEFAULT_MAX_ROWS,
        metadata=_meta(
            "The re-executed SQL fails when its result has more rows than this (fetched in batches).", _count
        ),
    )
    max_result_bytes: int = field(
        default=DEFAULT_MAX_RESULT_BYTES,
        metadata=_meta(
            "The re-executed SQL fails when its result is larger than this many bytes (as Postgres sends them).",
            _positive,
        ),
    )
    max_case_memory_mb: int = field(
        default=1024,
        metadata=_meta(
            "How much a golden case or llmtrace_check call may make the pytest process grow, in MB (the app's fetch "
            "of a huge result, the check's): past it the case fails with [memory] and its database sessions are ended.",
            _positive,
        ),
    )
    case_timeout_s: float | None = field(
        default=None,
        metadata=_meta(
            "Deadline of a golden case or llmtrace_check call, in seconds: past it the case's database sessions are "
            f"ended and it fails with [timeout]. auto: the total latency budget x {DEADLINE_BUDGET_FACTOR:g}, at most "
            f"{MAX_AUTO_DEADLINE_S:g} s.",
            _deadline,
        ),
    )

    @property
    def case_deadline_s(self) -> float:
        """The deadline of a case in seconds: ``case_timeout_s``, or derived from the total latency budget."""
        if self.case_timeout_s is not None:
            return self.case_timeout_s
        total = self.latency_budgets_ms.get("total")
        if total is None:
            return MAX_AUTO_DEADLINE_S
        return min(MAX_AUTO_DEADLINE_S, max(total * DEADLINE_BUDGET_FACTOR / 1000, MIN_AUTO_DEADLINE_S))

    @property
    def case_deadline_source(self) -> str:
        """Where ``case_deadline_s`` came from, for the ``[timeout]`` message."""
        if self.case_timeout_s is not None:
            return "llmtrace_case_timeout_s"
        return (
            f"llmtrace_case_timeout_s=auto: the total latency budget x {number_text(DEADLINE_BUDGET_FACTOR)}, at most "
            f"{number_text(MAX_AUTO_DEADLINE_S)} s"
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> CheckOptions:
        """The session's options from resolved settings; a bad value is a usage error naming the knob it came from."""
        changes: dict[str, Any] = {}
        for f in fields(cls):
            resolved = settings.values.get(f.name)
            if resolved is None or resolved.source == "default":
                continue  # the dataclass default is the default: its ini text is only derived from it
            changes[f.name] = _knob_of(f.name).parse(resolved.value, resolved.origin)
        return replace(cls(), **changes)

    def with_marker(self, mark: pytest.Mark, where: str) -> CheckOptions:
        """Apply ``@pytest.mark.llmtrace(...)``; unknown names and bad values name the marker and the near miss."""
        if mark.args:
            raise _usage(where, f"llmtrace() takes keyword arguments only, got {mark.args!r}")
        changes: dict[str, Any] = {}
        for key, value in mark.kwargs.items():
            if key not in MARKER_ARGUMENTS:
                hint = did_you_mean(key, MARKER_ARGUMENTS)
                hint = f"; {hint}" if hint else ""
                raise _usage(
                    where, f"llmtrace() got an unknown argument {key!r}{hint} (valid: {', '.join(MARKER_ARGUMENTS)})"
                )
            label = f"{where}: llmtrace({key}=...)"
            if key == "skip_checks":
                base = changes.get("checks", self.checks)
                changes["checks"] = frozenset(base - _parse_checks(value, label))
                continue
            knob = _knob_of(key)
            parsed = knob.parse(value, label)
            if knob.merge:
                parsed = {**changes.get(key, getattr(self, key)), **parsed}
                parsed = {k: v for k, v in parsed.items() if v is not None}
            changes[key] = parsed
        return replace(self, **changes)


def _knob_of(name: str) -> _Knob:
    knob: _Knob = next(f for f in fields(CheckOptions) if f.name == name).metadata["knob"]
    return knob


MARKER_ARGUMENTS: tuple[str, ...] = (
    "checks",
    "skip_checks",
    *(f.name for f in fields(CheckOptions) if f.name != "checks"),
)
