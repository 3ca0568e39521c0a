"""Golden trace files as pytest items: collection, the replay of one case, and its checks.

Each file under the golden directory becomes one item whose id is the file stem, so ``-k``, ``-m``, ``--lf``, ``-x``
and xdist treat captured production traffic like any other test. An item is a ``pytest.Function`` over
``run_golden_case``: fixtures, markers and reports behave exactly as for a test function.
"""

from __future__ import annotations

import ast
import difflib
import fnmatch
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmtrace.errors import TraceFormatError
from pytest_llmtrace.settings import REPLAY_SETTINGS, Settings, resolve
from pytest_llmtrace.trace.otlp import read_trace, write_trace

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from pytest_llmtrace.checks.budgets import Violation
    from pytest_llmtrace.checks.sql import SqlOutcome
    from pytest_llmtrace.fixtures import TestRecording
    from pytest_llmtrace.services.postgres import PostgresDatabase
    from pytest_llmtrace.trace.model import Trace

CHECKS = ("sql", "results", "latency", "tokens", "snapshot")
KINDS = ("total", "LLM", "SQL", "CHAIN")
TOKEN_KINDS = ("prompt", "completion", "total")
MARKER = "llmtrace"
MARKER_HELP = (
    "llmtrace(checks=None, skip_checks=(), result_match=None, latency_budgets_ms=None, latency_tolerance=None, "
    "latency_floor_ms=None, "
    "token_tolerance=None, token_max=None, sql_timeout_ms=None): tune the checks of a golden case or of the "
    "llmtrace_check helpers"
)


# -- configuration --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckOptions:
    """Everything a case's checks depend on: the session's settings, then the case's ``llmtrace`` marker."""

    checks: frozenset[str] = frozenset(CHECKS)
    result_match: str = "bag"
    latency_budgets_ms: dict[str, float] = field(default_factory=dict)
    latency_tolerance: float = 1.5
    latency_floor_ms: float = 200.0
    token_tolerance: float = 0.10
    token_max: dict[str, int] = field(default_factory=dict)
    sql_timeout_ms: int = 5000

    def with_marker(self, mark: pytest.Mark, where: str) -> CheckOptions:
        """Apply ``@pytest.mark.llmtrace(...)``; unknown names and bad values name the marker and the near miss."""
        if mark.args:
            raise pytest.UsageError(f"{where}: llmtrace() takes keyword arguments only, got {mark.args!r}")
        allowed = ("checks", "skip_checks", *(f for f in self.__dataclass_fields__ if f != "checks"))
        changes: dict[str, Any] = {}
        for key, value in mark.kwargs.items():
            if key not in allowed:
                near = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise pytest.UsageError(
                    f"{where}: llmtrace() got an unknown argument {key!r}{hint} (valid: {', '.join(allowed)})"
                )
            if key in ("checks", "skip_checks"):
                names = _names(value, CHECKS, f"{where}: llmtrace({key}=...)")
                base = set(names) if key == "checks" else set(changes.get("checks", self.checks)) - set(names)
                changes["checks"] = frozenset(base)
            elif key == "result_match":
                _names([value], ("bag", "set", "ordered", "none"), f"{where}: llmtrace(result_match=...)")
                changes[key] = value
            elif key == "latency_budgets_ms":
                changes[key] = {**self.latency_budgets_ms, **_numbers(value, KINDS, f"{where}: {key}", float)}
            elif key == "token_max":
                changes[key] = {**self.token_max, **_numbers(value, TOKEN_KINDS, f"{where}: {key}", int)}
            elif key == "sql_timeout_ms":  # 0 would mean "no timeout" to Postgres: model SQL is never unbounded
                changes[key] = _number(value, f"{where}: {key}", int, minimum=1)
            else:
                changes[key] = _number(value, f"{where}: {key}", float)
        return replace(self, **changes)


@dataclass(frozen=True)
class ReplayConfig:
    """The session's replay settings, parsed and validated once (bad values stop the run as usage errors)."""

    settings: Settings
    mode: str
    golden_dir: Path
    target: str
    speed: str
    match: tuple[str, ...]
    app_db: str
    options: CheckOptions
    case_marks: tuple[tuple[str, pytest.MarkDecorator], ...]

    @classmethod
    def from_config(cls, config: pytest.Config) -> ReplayConfig:
        s = resolve(config, REPLAY_SETTINGS)
        options = CheckOptions(
            checks=frozenset(_names(s["checks"].split(), CHECKS, "llmtrace_checks")),
            result_match=s["result_match"],
            latency_budgets_ms=_parse_pairs(s["latency_budgets_ms"], KINDS, "llmtrace_latency_budgets_ms", float),
            latency_tolerance=_number(s["latency_tolerance"], "llmtrace_latency_tolerance", float),
            latency_floor_ms=_number(s["latency_floor_ms"], "llmtrace_latency_floor_ms", float),
            token_tolerance=_number(s["token_tolerance"], "llmtrace_token_tolerance", float),
            token_max=_parse_pairs(s["token_max"], TOKEN_KINDS, "llmtrace_token_max", int),
            sql_timeout_ms=_number(s["sql_timeout_ms"], "llmtrace_sql_timeout_ms", int, minimum=1),
        )
        from pytest_llmtrace.ollama_api.replay import MATCHERS

        match = tuple(_names(s["replay_match"].split(), tuple(MATCHERS), "llmtrace_replay_match"))
        root = config.rootpath
        return cls(
            settings=s,
            mode=s["mode"],
            golden_dir=(root / s["golden_dir"]).resolve(),
            target=s["target"],
            speed=s["replay_speed"],
            match=match,
            app_db=s["app_db"],
            options=options,
            case_marks=tuple(_parse_case_marks(s["case_marks"])),
        )


def _names(values: Any, valid: tuple[str, ...], where: str) -> list[str]:
    items = [values] if isinstance(values, str) else list(values)
    for name in items:
        if name not in valid:
            near = difflib.get_close_matches(str(name), valid, n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise pytest.UsageError(f"{where}: {name!r} is not one of {', '.join(valid)}.{hint}")
    return [str(n) for n in items]


def _number(value: Any, where: str, kind: type[int] | type[float], minimum: float = 0) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise pytest.UsageError(f"{where}: expected a {kind.__name__} number, got {value!r}") from None
    if number < minimum:
        raise pytest.UsageError(f"{where}: expected a number >= {minimum:g}, got {value!r}")
    return number


def _numbers(value: Any, keys: tuple[str, ...], where: str, kind: type[int] | type[float]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise pytest.UsageError(f"{where}: expected a dict like {{{keys[0]!r}: 1000}}, got {value!r}")
    _names(list(value), keys, where)
    return {k: _number(v, f"{where}[{k!r}]", kind) for k, v in value.items()}


def _parse_pairs(text: str, keys: tuple[str, ...], where: str, kind: type[int] | type[float]) -> dict[str, Any]:
    pairs: dict[str, Any] = {}
    for part in text.split():
        name, sep, value = part.partition("=")
        if not sep:
            raise pytest.UsageError(f"{where}: expected NAME=NUMBER pairs like '{keys[0]}=1000', got {part!r}")
        _names([name], keys, where)
        pairs[name] = _number(value, f"{where} {name}", kind)
    return pairs


def _parse_case_marks(text: str) -> Iterator[tuple[str, pytest.MarkDecorator]]:
    """``<glob>: <mark>`` lines, where mark is ``name`` or ``name(key=literal, ...)``: parsed, never evaluated."""
    for line in text.splitlines():
        if not line.strip():
            continue
        pattern, sep, expression = line.partition(":")
        where = f"llmtrace_case_marks line {line.strip()!r}"
        if not sep or not pattern.strip() or not expression.strip():
            raise pytest.UsageError(f"{where}: expected '<case glob>: <mark>', e.g. 'error_*: xfail'")
        try:
            node = ast.parse(expression.strip(), mode="eval").body
        except SyntaxError:
            raise pytest.UsageError(f"{where}: {expression.strip()!r} is not a mark like xfail(reason='...')") from None
        if isinstance(node, ast.Name):
            name, kwargs, args = node.id, {}, []
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            try:
                args = [ast.literal_eval(a) for a in node.args]
                kwargs = {str(k.arg): ast.literal_eval(k.value) for k in node.keywords}
            except ValueError:
                raise pytest.UsageError(f"{where}: mark arguments must be literals (strings, numbers, True)") from None
            name = node.func.id
        else:
            raise pytest.UsageError(f"{where}: {expression.strip()!r} is not a mark like xfail(reason='...')")
        yield pattern.strip(), getattr(pytest.mark, name)(*args, **kwargs)


# -- collection -----------------------------------------------------------------------------------------------------

CONFIG_KEY = pytest.StashKey[ReplayConfig]()
CASE_KEY = pytest.StashKey["GoldenCase"]()


@dataclass(frozen=True)
class GoldenCase:
    path: Path
    trace: Trace | None
    error: TraceFormatError | None = None


def configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    config.stash[CONFIG_KEY] = ReplayConfig.from_config(config)


def get_config(config: pytest.Config) -> ReplayConfig:
    return config.stash[CONFIG_KEY]


def report_header(config: pytest.Config) -> str:
    """Mode, golden dir and target with where each came from: the first things to check when replay misbehaves."""
    replay = get_config(config)
    values = replay.settings.values
    parts = [f"{name}={values[name].value or '(unset)'} ({values[name].source})" for name in ("mode", "target")]
    parts.insert(1, f"golden_dir={replay.golden_dir} ({values['golden_dir'].source})")
    return "llmtrace golden cases: " + ", ".join(parts)


def is_golden_file(config: pytest.Config, file_path: Path) -> bool:
    golden_dir = get_config(config).golden_dir
    return (
        file_path.suffix == ".json"
        and file_path.resolve().is_relative_to(golden_dir)
        and "__snapshots__" not in file_path.parts
    )


def validate_markers(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Check every ``llmtrace`` mark once, at collection: a typo stops the run with its location, not mid-run."""
    base = get_config(config).options
    for item in items:
        options_for(item, base)


def is_golden_item(item: pytest.Item) -> bool:
    return CASE_KEY in item.stash


class GoldenItem(pytest.Function):
    """A ``pytest.Function`` over ``run_golden_case`` that reports the golden file, not the runner's source."""

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"golden case {self.name}"


class GoldenFile(pytest.File):
    """One golden trace file; yields one item named after the file, even when the file cannot be read."""

    def collect(self) -> Iterator[pytest.Item]:
        try:
            case = GoldenCase(self.path, read_trace(self.path))
        except TraceFormatError as exc:
            case = GoldenCase(self.path, None, exc)
        item = GoldenItem.from_parent(self, name=self.path.stem, callobj=run_golden_case)
        item.stash[CASE_KEY] = case
        config = get_config(self.config)
        for pattern, mark in config.case_marks:
            if fnmatch.fnmatchcase(self.path.stem, pattern):
                item.add_marker(mark)
        yield item


# -- running one case -----------------------------------------------------------------------------------------------


def run_golden_case(request: pytest.FixtureRequest, llm_trace: TestRecording) -> None:
    """Replay one captured request through the current app and check what it did now against what it did then."""
    options = options_for(request.node, get_config(request.config).options)
    snapshot = OutcomeSnapshot.of(request, options)
    try:
        _replay_case(request, llm_trace, options, snapshot)
    finally:
        if not snapshot.asserted:
            snapshot.keep()


@dataclass
class OutcomeSnapshot:
    """A test's outcome snapshot: the syrupy assertion, where its file is, and what it held before this run."""

    assertion: Any  # syrupy's SnapshotAssertion, with the OutcomeSnapshotExtension configured for this test
    path: Path
    stored: dict[str, Any] | None
    asserted: bool = False

    @classmethod
    def of(cls, request: pytest.FixtureRequest, options: CheckOptions) -> OutcomeSnapshot:
        from pytest_llmtrace.snapshot import OutcomeSnapshotExtension

        extension = OutcomeSnapshotExtension.configured(
            result_match=options.result_match,
            token_tolerance=options.token_tolerance,
            latency_tolerance=options.latency_tolerance,
            latency_floor_ms=options.latency_floor_ms,
        )
        assertion = request.getfixturevalue("snapshot").use_extension(extension)
        path = Path(extension.get_location(test_location=assertion.test_location, index=assertion.index))
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = None
        return cls(assertion, path, stored if isinstance(stored, dict) else None)

    def failures(self, data: dict[str, Any]) -> list[str]:
        """Compare ``data`` with the stored outcome (syrupy writes it instead under ``--snapshot-update``)."""
        self.asserted = True
        try:
            assert self.assertion == data
        except AssertionError:
            if self.stored is None:
                return [f"[snapshot] no snapshot at {self.path}: run with --snapshot-update to create it"]
            changes = self.assertion.extension.differences(self.stored, data)
            return [
                f"[snapshot] the outcome differs from {self.path} (--snapshot-update accepts it):\n"
                + _indent("\n".join(changes))
            ]
        return []

    def keep(self) -> None:
        """Tell syrupy the snapshot is still in use when the test could not reach its snapshot check.

        Otherwise ``--snapshot-update`` deletes the snapshot of every case that failed early (an app error, a
        malformed file) or runs without the snapshot check, as syrupy does for tests that never assert their
        snapshot. Asserting the stored outcome against itself marks it used and writes nothing.
        """
        if self.stored is not None:
            assert self.assertion == self.stored


def _replay_case(
    request: pytest.FixtureRequest, llm_trace: TestRecording, options: CheckOptions, snapshot: OutcomeSnapshot
) -> None:
    item = request.node
    case = item.stash[CASE_KEY]
    if case.error is not None:
        pytest.fail(f"cannot replay this golden trace: {case.error}", pytrace=False)
    assert case.trace is not None
    golden = case.trace
    config = get_config(request.config)
    question = golden.input
    if question is None:
        pytest.fail(
            f"{case.path}: the root span {golden.root.name!r} has no input.value, so there is no question to replay",
            pytrace=False,
        )
    llmtrace_app: Callable[[str], Any] = request.getfixturevalue("llmtrace_app")  # starts the services
    # Only now is the app imported: record from the provider it installed, or install ours if it installed none.
    from pytest_llmtrace.recording import get_recorder

    get_recorder(request.config).ensure_global()
    database: PostgresDatabase = request.getfixturevalue("llmtrace_postgres")
    replay = None
    if config.mode == "replay":
        from pytest_llmtrace.ollama_api.replay import ReplayBackend

        # Recordings from instrumentations that leave out llm.model_name answer to the model the app is set up for.
        fallback = (
            None if all(call.model for call in golden.llm_calls) else services_manager(request).settings["ollama_model"]
        )
        replay = ReplayBackend(golden, model=fallback, match=config.match, speed=config.speed)  # type: ignore[arg-type]
        services_manager(request).replay_switch.use(replay)
    app_error: str | None = None
    try:
        llmtrace_app(question)
    except Exception as exc:  # the app's failure is the finding, reported with the checks below
        app_error = f"{type(exc).__name__}: {exc}"
    finally:
        if replay is not None:
            services_manager(request).replay_switch.use(None)
    now = llm_trace.trace
    if config.mode == "record":
        write_trace(now, case.path)
        golden = now  # the new recording is the reference from now on; absolute budgets still apply

    failures: list[str] = []
    if app_error is not None:
        failures.append(f"[app] the app raised {app_error}")
    if replay is not None:
        failures.extend(_replay_failures(replay))
    sql, result = _run_sql(now, golden, database, options, failures)
    golden_sql = sql_of(golden)
    if "results" in options.checks and result is not None and result.ok:
        failures.extend(_result_failure(request, snapshot.stored, golden_sql, sql, result, options))
    if "latency" in options.checks:
        failures.extend(_latency_failures(golden, now, options))
    if "tokens" in options.checks:
        failures.extend(_token_failures(golden, now, options))
    if "snapshot" in options.checks:
        from pytest_llmtrace.snapshot import outcome

        failures.extend(snapshot.failures(outcome(now, sql, result)))
    if failures:
        header = f"golden case {item.name}: {len(failures)} check{'s' if len(failures) > 1 else ''} failed"
        pytest.fail("\n\n".join([header, *failures]), pytrace=False)


def services_manager(request: pytest.FixtureRequest) -> Any:
    from pytest_llmtrace.services import session

    return session.get_manager(request.config)


def options_for(item: pytest.Item, base: CheckOptions) -> CheckOptions:
    options = base
    for mark in reversed(list(item.iter_markers(MARKER))):  # closest mark applied last
        options = options.with_marker(mark, item.nodeid)
    return options


def sql_of(trace: Trace) -> str | None:
    """The SQL the app ran; without a SQL span, the model's answer with code fences stripped."""
    from pytest_llmtrace.checks.sql import strip_code_fences

    if trace.sql_statements:
        return trace.sql_statements[-1].text
    calls = trace.llm_calls
    if calls:
        return strip_code_fences(calls[-1].output_text) or None
    return None


def _replay_failures(replay: Any) -> list[str]:
    failures = []
    for miss in replay.misses:
        failures.append("[replay] prompt changed: " + _indent(miss.explain()).lstrip())
    for call in replay.unused():
        failures.append(
            f"[replay] recorded call never made: the app did not call {call.model or 'the model'} with the "
            f"recorded prompt ({len(call.input_messages)} messages)"
        )
    return failures


def _run_sql(
    now: Trace, golden: Trace, database: PostgresDatabase, options: CheckOptions, failures: list[str]
) -> tuple[str | None, SqlOutcome | None]:
    sql = sql_of(now)
    if sql is None:
        if "sql" in options.checks and sql_of(golden) is not None:
            failures.append("[sql] the app ran no SQL now (the golden trace did)")
        return None, None
    result = execute_untrusted(database.reader_url, sql, options.sql_timeout_ms)
    if "sql" in options.checks and not result.ok:
        failures.append(sql_failure(result, sql, sql_of(golden)))
    return sql, result


def execute_untrusted(dsn: str, sql: str, timeout_ms: int) -> SqlOutcome:
    """``execute_readonly``, with a failure to connect reported as an outcome like any SQL error.

    The read-only role may be refused by a user's server (pg_hba, a missing grant): the case should fail saying so,
    not end in psycopg2's traceback.
    """
    import psycopg2

    from pytest_llmtrace.checks.sql import SqlOutcome, execute_readonly

    try:
        return execute_readonly(dsn, sql, timeout_ms=timeout_ms)
    except psycopg2.Error as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return SqlOutcome(
            ok=False,
            columns=(),
            rows=(),
            row_count=0,
            truncated=False,
            error=f"cannot connect to the session database as the read-only role: {reason}",
            sqlstate=exc.pgcode,
            elapsed_ms=0.0,
        )


def sql_failure(result: SqlOutcome, sql: str, golden_sql: str | None = None) -> str:
    """The ``[sql]`` message: the error, its SQLSTATE when Postgres gave one, the SQL, and how it changed."""
    state = f" (SQLSTATE {result.sqlstate})" if result.sqlstate else ""
    return f"[sql] the SQL does not execute: {result.error}{state}\n" + _indent(sql) + _sql_diff(golden_sql, sql)


def _sql_diff(golden_sql: str | None, now_sql: str) -> str:
    if golden_sql is None or golden_sql.strip() == now_sql.strip():
        return ""
    diff = difflib.unified_diff(
        golden_sql.strip().splitlines(), now_sql.strip().splitlines(), "golden SQL", "SQL now", lineterm=""
    )
    return "\n" + _indent("\n".join(diff))


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _result_failure(
    request: pytest.FixtureRequest,
    stored: dict[str, Any] | None,
    golden_sql: str | None,
    sql: str | None,
    result: SqlOutcome,
    options: CheckOptions,
) -> list[str]:
    """Rows now vs the rows in the case's snapshot (what the golden SQL returned when the snapshot was taken)."""
    from pytest_llmtrace.checks.sql import compare_results, has_top_level_order_by

    if options.result_match == "none" or request.config.getoption("update_snapshots", False):
        return []
    golden_result = (stored or {}).get("result") or {}  # no snapshot yet: the snapshot check reports that
    if "rows" not in golden_result:
        return []
    rows = [list(r) for r in result.rows]
    diff = compare_results(
        golden_result["rows"],
        rows,
        options.result_match,  # type: ignore[arg-type]
        order_matters=bool(golden_sql and has_top_level_order_by(golden_sql)),
    )
    if diff is None:
        return []
    lines = [f"[results] the rows differ from the snapshot ({options.result_match}): {diff.summary}"]
    lines.extend("    " + line for line in diff.lines())
    if sql is not None:
        lines.append(_sql_diff(golden_sql, sql).rstrip())
    return ["\n".join(line for line in lines if line)]


def _latency_failures(golden: Trace, now: Trace, options: CheckOptions) -> list[str]:
    from pytest_llmtrace.checks.budgets import check_latency

    return _table(
        "latency",
        check_latency(
            golden,
            now,
            budgets_ms=options.latency_budgets_ms,
            tolerance=options.latency_tolerance,
            min_ms=options.latency_floor_ms,
        ),
    )


def _token_failures(golden: Trace, now: Trace, options: CheckOptions) -> list[str]:
    from pytest_llmtrace.checks.budgets import check_tokens

    violations = check_tokens(
        golden,
        now,
        tolerance=options.token_tolerance,
        max_prompt=options.token_max.get("prompt"),
        max_completion=options.token_max.get("completion"),
        max_total=options.token_max.get("total"),
    )
    return _table("tokens", violations)


def _table(check: str, violations: list[Violation]) -> list[str]:
    from pytest_llmtrace.checks.budgets import format_table

    if not violations:
        return []
    return [f"[{check}]\n" + _indent(format_table(violations))]


def budget_failures(violations: list[Violation]) -> list[str]:
    """Latency and token violations as the report shows them: one table per check."""
    return _table("latency", [v for v in violations if v.check == "latency"]) + _table(
        "tokens", [v for v in violations if v.check == "tokens"]
    )
