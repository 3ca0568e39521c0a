"""Golden trace files as pytest items: collection, and the replay (or recording) of one case up to its outcome.

Each file under the golden directory becomes one item whose id is the file stem, so ``-k``, ``-m``, ``--lf``, ``-x``
and xdist treat captured production traffic like any other test. An item is a ``pytest.Function`` over
``run_golden_case``: fixtures, markers and reports behave exactly as for a test function.

The path of one case: ``GoldenFile.collect`` makes its item (the trace is read when the case first needs it; a
malformed file still becomes an item, which fails saying why) -> ``run_golden_case`` starts the services through
the ``llmtrace_app`` fixture, points the Ollama API at a ``ReplayBackend`` serving the recorded answers (replay
mode), asks the app the recorded question, and collects the recorded spans, on virtual time when replaying
(``trace.virtual``: each replayed call lasts its recorded duration) -> ``runner.run_checks`` gives the
``CaseOutcome`` -> ``failing.conclude`` keeps it on the item and fails the test with ``checks.report``'s text unless
it passed.
"""

from __future__ import annotations

import fnmatch
import inspect
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_llmtrace.checks.budgets import replayed_latencies_ms
from pytest_llmtrace.checks.check_settings import options_for
from pytest_llmtrace.checks.options import CheckOptions
from pytest_llmtrace.checks.outcome import CaseOutcome, CheckResult, ReplayMiss
from pytest_llmtrace.checks.runner import CaseInput, run_held, sql_of
from pytest_llmtrace.checks.snapshot import SNAPSHOT_NAME_KEY, OutcomeSnapshot
from pytest_llmtrace.checks.timeline import waterfall_of
from pytest_llmtrace.core.errors import TraceFormatError
from pytest_llmtrace.modelapi import stream_log
from pytest_llmtrace.modelapi.replay import ReplayBackend
from pytest_llmtrace.pytest import service_session as services
from pytest_llmtrace.pytest.failing import conclude, fail
from pytest_llmtrace.pytest.recording import TestRecording, get_recorder
from pytest_llmtrace.pytest.replay_config import ReplayConfig, get_config
from pytest_llmtrace.pytest.semantic_session import semantic_judge
from pytest_llmtrace.services.case_bounds import Abandoned
from pytest_llmtrace.services.pg_deadline import Deadline
from pytest_llmtrace.services.postgres import PostgresDatabase
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.otlp import read_trace, write_trace
from pytest_llmtrace.trace.stream_timing import with_front_timings
from pytest_llmtrace.trace.virtual import virtualize

# An app (or the callable an overridden llmtrace_app returns) with a parameter of this name gets the golden Trace too.
TRACE_PARAMETER = "trace"


class GoldenCase:
    """A golden file as collected: its trace, or why it could not be read, read when first asked for.

    Not at collection: each xdist worker collects every file, and reads only the traces of the cases it runs (a
    serial run's header reads them all once collected). ``release`` forgets the trace once its case is recorded;
    asked again, it is read again.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._read: tuple[Trace | None, TraceFormatError | None] | None = None

    @property
    def trace(self) -> Trace | None:
        return self._load()[0]

    @property
    def error(self) -> TraceFormatError | None:
        return self._load()[1]

    def _load(self) -> tuple[Trace | None, TraceFormatError | None]:
        if self._read is None:
            try:
                self._read = (read_trace(self.path, max_bytes=self.max_bytes), None)
            except TraceFormatError as exc:
                self._read = (None, exc)
        return self._read

    def release(self) -> None:
        self._read = None


CASE_KEY = pytest.StashKey[GoldenCase]()
# (run, runs) of an item that is one of --llmtrace-repeat's runs of its case; absent when each case runs once.
REPEAT_KEY = pytest.StashKey[tuple[int, int]]()


def is_golden_file(config: pytest.Config, file_path: Path) -> bool:
    golden_dir = get_config(config).golden_dir
    return (
        file_path.suffix == ".json"
        and file_path.resolve().is_relative_to(golden_dir)
        and "__snapshots__" not in file_path.parts
    )


def is_golden_item(item: pytest.Item) -> bool:
    return CASE_KEY in item.stash


class GoldenItem(pytest.Function):
    """A ``pytest.Function`` over ``run_golden_case`` that reports the golden file, not the runner's source."""

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"golden case {self.name}"


class GoldenFile(pytest.File):
    """One golden trace file; yields one item named after the file, even when the file cannot be read."""

    def collect(self) -> Iterator[pytest.Item]:
        config = get_config(self.config)
        case = GoldenCase(self.path, config.max_trace_bytes)
        stem = self.path.stem
        for run in range(1, config.repeat + 1):
            # --llmtrace-repeat N: N items named like parametrized tests, case[1/N] ... case[N/N], sharing the case's
            # snapshot; pytest/run_results.py folds their outcomes back into one case.
            name = stem if config.repeat == 1 else f"{stem}[{run}/{config.repeat}]"
            item = GoldenItem.from_parent(self, name=name, callobj=run_golden_case)
            item.stash[CASE_KEY] = case
            if config.repeat > 1:
                item.stash[REPEAT_KEY] = (run, config.repeat)
                item.stash[SNAPSHOT_NAME_KEY] = stem
            for pattern, mark in config.case_marks:
                if fnmatch.fnmatchcase(stem, pattern):
                    item.add_marker(mark)
            yield item


def case_nodeid(item: pytest.Item) -> str:
    """The node id of the case an item runs: a repeated run's id without its ``[k/N]``, so shards keep every run of a
    case together and the runs fold into one case."""
    if REPEAT_KEY not in item.stash:
        return item.nodeid
    return item.nodeid.rsplit("[", 1)[0]


def run_golden_case(request: pytest.FixtureRequest, llm_trace: TestRecording) -> None:
    """Replay one captured request through the current app and check what it did now against what it did then."""
    started = time.perf_counter()
    options = options_for(request.node, get_config(request.config).options)
    snapshot = OutcomeSnapshot.of(request, options)
    try:
        outcome = _replay_case(request, llm_trace, options, snapshot, started)
    finally:
        if not snapshot.asserted:
            snapshot.keep()
    conclude(request.node, outcome, title=f"golden case {request.node.name}")


def _replay_case(
    request: pytest.FixtureRequest,
    llm_trace: TestRecording,
    options: CheckOptions,
    snapshot: OutcomeSnapshot,
    started: float,
) -> CaseOutcome:
    case = request.node.stash[CASE_KEY]
    if case.error is not None:
        fail(f"cannot replay this golden trace: {case.error}")
    assert case.trace is not None, "a case without an error has a trace"
    golden = case.trace
    config = get_config(request.config)
    found = golden.question(config.question)
    if found.text is None:
        fail(f"{case.path}: {found.explain()}")
    question = found.text
    llmtrace_app: Callable[..., Any] = request.getfixturevalue("llmtrace_app")  # starts the services
    # Only now is the app imported: record from the provider it installed, or install ours if it installed none.
    get_recorder(request.config).ensure_global()
    database: PostgresDatabase = request.getfixturevalue("llmtrace_postgres")
    manager = services.get_manager(request.config)
    deadline = Deadline.of(options)
    deadline.phase = "the app's request"
    replay = _replay_backend(request, golden, config, deadline.seconds) if config.mode == "replay" else None
    if replay is not None:
        deadline.cancel = (replay.cancel,)
    guard = manager.guard(database)

    def prepare() -> CaseInput | None:
        """The app's request, then the checks' input: run inside the guard, under the case's deadline (the app's
        first import, above, is not part of it)."""
        nonlocal golden
        app_error: str | None = None
        app_started = time.perf_counter()
        asked_ns = time.time_ns()  # the spans' clock: the front's timings of this case's model calls come after it
        if replay is not None:
            manager.replay_switch.use(replay)
        try:  # in a thread the case walks away from at its deadline (services.case_bounds)
            deadline.call(lambda: ask_app(llmtrace_app, question, golden), "the app's request")
        except Abandoned:
            pass  # the deadline's finding says so
        except Exception as exc:  # the app's failure is the finding, reported with the checks
            app_error = f"{type(exc).__name__}: {exc}"
        finally:
            if replay is not None:
                manager.replay_switch.use(None)
        app_ms = (time.perf_counter() - app_started) * 1000
        # The checks re-execute the SQL up to 2 + latency_retries times, each under the statement timeout: bounded
        # already, so their time is added to the deadline rather than taken from the app's.
        checks_s = (2 + options.latency_retries) * options.sql_timeout_ms / 1000
        why = "for the checks: (2 + llmtrace_latency_retries) x llmtrace_sql_timeout_ms"
        guard.watchdog.extend(deadline, checks_s, why, phase="the checks")
        if deadline.fired:  # past it, the checks would run the runaway statement again
            return None
        # each model call's TTFT and chunk times, as the model front measured them, on the LLM span around it
        now = with_front_timings(llm_trace.trace, stream_log.recent(asked_ns))
        stream_log.forget_before(asked_ns)  # what came before this case is no later case's
        deadline.checking = sql_of(now)
        replayed_ms, replayed_spans_ns = None, None
        if replay is not None:  # the recorded durations in place of the instant answers; the rest as measured
            virtual = virtualize(now, replay.answers)
            now, replayed_ms, replayed_spans_ns = virtual.trace, replayed_latencies_ms(virtual), virtual.replayed_ns
        if config.mode == "record":
            write_trace(now, case.path)
            golden = now  # the new recording is the reference from now on; absolute budgets still apply
        return CaseInput(
            now,
            options=options,
            case_id=case.path.stem,  # the item name, without [k/N] for the runs of a repeated case
            mode=config.mode,
            golden=golden,
            file=str(case.path),
            database=database.reader_url,
            snapshot=snapshot,
            update_snapshots=bool(request.config.getoption("update_snapshots", False)),
            app_error=app_error,
            replay_misses=[] if replay is None else _misses(replay),
            app_ms=app_ms,
            started=started,
            replayed_ms=replayed_ms,
            replayed_spans_ns=replayed_spans_ns,
            semantic=semantic_judge(request.config, manager, database, options.sql_timeout_ms, deadline)
            if options.result_match == "suite"
            else None,
        )

    def fallback(findings: tuple[CheckResult, ...]) -> CaseOutcome:
        """Past the deadline: the app's error then is its connection being ended, and the timeout says so."""
        return CaseOutcome(
            case.path.stem,
            config.mode,
            str(case.path),
            findings,
            sql=sql_of(llm_trace.trace),
            golden_sql=None,
            waterfall=waterfall_of(llm_trace.trace),  # wall clock: which span was still running, for how long
            golden_waterfall=waterfall_of(golden),
        )

    outcome = run_held(guard, deadline, prepare, fallback)
    return replace(outcome, question=question, question_source=str(found.source))


def ask_app(app: Callable[..., Any], question: str, golden: Trace) -> Any:
    """Ask ``app`` the question; with ``trace=golden`` too when it has a parameter named ``trace``.

    The name, not the number of parameters, decides: apps often take more optional arguments (``user_id=None``)
    that must not receive a Trace. An app with several inputs reads them from the golden trace it is given.
    """
    try:
        parameter = inspect.signature(app).parameters.get(TRACE_PARAMETER)
    except (TypeError, ValueError):  # a callable without a signature (a builtin): the question only
        parameter = None
    if parameter is not None and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
        return app(question, **{TRACE_PARAMETER: golden})
    return app(question)


def _replay_backend(
    request: pytest.FixtureRequest, golden: Trace, config: ReplayConfig, deadline_s: float
) -> ReplayBackend:
    """Recorded durations count (and at recorded speed, wait) at most the case's deadline, with a warning."""
    # Recordings from instrumentations that leave out llm.model_name answer to the model the app is set up for.
    fallback = None
    if not all(call.model for call in golden.llm_calls):
        fallback = services.get_manager(request.config).settings["ollama_model"]
    return ReplayBackend(
        golden,
        model=fallback,
        match=config.match,
        speed=config.speed,  # type: ignore[arg-type]
        max_recorded_s=deadline_s,
    )


def _misses(replay: ReplayBackend) -> list[ReplayMiss]:
    misses = [ReplayMiss("prompt_changed", miss.explain()) for miss in replay.misses]
    misses.extend(
        ReplayMiss(
            "call_never_made",
            f"the app did not call {call.model or 'the model'} with the recorded prompt "
            f"({len(call.input_messages)} messages)",
        )
        for call in replay.unused()
    )
    return misses


def sql_source_lines(items: list[pytest.Item]) -> list[str]:
    """The header's note on golden cases whose trace has no SQL span but a model call: the SQL judged is the model's
    answer (``checks.runner.sql_of``). Per source, because it is a source's habit, not a case's: Langfuse's default
    export keeps only spans with GenAI attributes, so its traces usually have no DB span."""
    cases: dict[Path, Trace] = {}
    for item in items:
        case = item.stash.get(CASE_KEY, None)
        if case is not None and case.trace is not None:
            cases.setdefault(case.path, case.trace)
    answered: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for path, trace in cases.items():
        source = trace_source(trace)
        counts[source] = counts.get(source, 0) + 1
        if not trace.sql_statements and trace.llm_calls:
            answered.setdefault(source, []).append(path.name)
    lines = []
    for source, names in sorted(answered.items()):
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        lines.append(
            f"llmtrace golden sql: {len(names)} of {counts[source]} {source} golden case(s) have no DB span; the SQL "
            f"judged is the model's answer ({shown})"
        )
    return lines


def trace_source(trace: Trace) -> str:
    """Which tracer made the trace, by the attributes only it writes; else OpenTelemetry's."""
    for span in trace.spans:
        for key in span.attributes:
            if key.startswith("langfuse."):
                return "Langfuse"
            if key.startswith("langsmith."):
                return "LangSmith"
    return "OpenTelemetry"
