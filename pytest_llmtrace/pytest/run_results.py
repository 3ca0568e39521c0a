"""The run's results: every case's outcome collected (across xdist workers), written as ``results.json``,
``summary.md`` and ``report.html``, and judged by the release gate once at session end.

``results.json`` is the one source every report is made from; its schema is docs/results-schema.md and it carries
``schema_version``. A case that ended without an outcome (a setup error, a skip, a crash before the checks) is kept
as a failed case with its error, so the gate stays fail-closed and a broken case cannot vanish from the totals.
The runs of a case repeated by ``--llmtrace-repeat`` are folded into that one case on the controller
(``results.repeats``), after the workers' cases are merged, so every total and gate counts a case once.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, cast

import pytest

from pytest_llmtrace.checks.outcome import CaseOutcome, Mode
from pytest_llmtrace.core import settings as session_settings
from pytest_llmtrace.core.errors import LLMTraceError, first_line, whole_number
from pytest_llmtrace.core.inert import one_line
from pytest_llmtrace.core.settings import SettingSpec, declare
from pytest_llmtrace.core.url_secrets import redact_text, redact_url
from pytest_llmtrace.modelapi.backend import normalize_model_name
from pytest_llmtrace.modelapi.modelfile import ModelfileError, parse_modelfile
from pytest_llmtrace.pytest import golden, metrics_out
from pytest_llmtrace.pytest import service_session as services
from pytest_llmtrace.pytest.failing import OUTCOMES_KEY
from pytest_llmtrace.pytest.replay_config import get_config
from pytest_llmtrace.pytest.run_metadata import configured_phoenix, run_metadata
from pytest_llmtrace.pytest.run_state import RESULTS_KEY, RunResults
from pytest_llmtrace.results import gate, llm_report
from pytest_llmtrace.results import model_digests as models
from pytest_llmtrace.results import repeats as runs
from pytest_llmtrace.results.case_record import CaseRecord, as_case
from pytest_llmtrace.results.report_files import write_reports
from pytest_llmtrace.sources.capture.golden_dir import PROVENANCE
from pytest_llmtrace.trace.model import Trace

RESULTS_SCHEMA_VERSION = gate.RESULTS_SCHEMA_VERSION
_WORKER_KEY = "llmtrace_cases"

REPORT_SETTINGS: tuple[SettingSpec, ...] = declare(
    SettingSpec(
        "report_dir", "Write results.json, summary.md and report.html into this folder at session end.", "", env=False
    ),
    SettingSpec(
        "baseline",
        "A previous results.json: defines the `regressions` gate metric and the reports' was / now columns.",
        "",
        env=False,
    ),
    SettingSpec("shard", "K/N: run only the K-th of N stable shares of the cases (a hash of the node id).", ""),
    SettingSpec(
        "slo",
        "The SLO the error budget is measured against, e.g. 'sql_success_rate >= 0.95': the gate metric "
        "error_budget_remaining and the metrics' llmtrace_error_budget_remaining.",
        "",
    ),
)
_GATE_HELP = (
    f"Release gate, e.g. '{gate.EXAMPLE}'; repeatable, all must hold (ini llmtrace_gate: one per line). "
    f"Violated: exit status {gate.GATE_EXIT_STATUS}."
)


_ERROR_KEY = pytest.StashKey[str]()


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmtrace")
    # the short spelling the issue asks for; --llmtrace-report-dir (from the ini key's name) sets the same value
    group.addoption("--llmtrace-report", dest="llmtrace_report_dir", metavar="DIR", help=REPORT_SETTINGS[0].help)
    group.addoption(
        "--llmtrace-gate", dest="llmtrace_gate", action="append", default=[], metavar="EXPR", help=_GATE_HELP
    )
    parser.addini("llmtrace_gate", _GATE_HELP, type="linelist", default=[])


def _shard(text: str) -> tuple[int, int] | None:
    if not text:
        return None
    k_text, _, n_text = text.partition("/")
    k, n = whole_number(k_text), whole_number(n_text)
    if k is None or n is None or not 1 <= k <= n:
        raise pytest.UsageError(f"--llmtrace-shard {text!r}: use K/N with 1 <= K <= N, e.g. 2/4")
    return k, n


def configure(config: pytest.Config) -> None:
    settings = session_settings.of(config)
    expressions = [*config.getoption("llmtrace_gate", default=[]), *config.getini("llmtrace_gate")]
    try:
        rules = [gate.parse(e) for e in expressions if e.strip()]
    except gate.GateError as exc:
        raise pytest.UsageError(str(exc)) from None
    try:
        slo = gate.parse_slo(settings["slo"]) if settings["slo"] else None
    except gate.GateError as exc:
        raise pytest.UsageError(f"llmtrace_slo: {exc}") from None
    if slo is None and any(r.metric == "error_budget_remaining" for r in rules):
        raise pytest.UsageError(
            "gate 'error_budget_remaining' needs an SLO: --llmtrace-slo 'sql_success_rate >= 0.95' (ini llmtrace_slo)"
        )
    baseline = None
    if settings["baseline"]:
        try:
            baseline = gate.load_cases(config.rootpath / settings["baseline"])
        except ValueError as exc:
            raise pytest.UsageError(f"--llmtrace-baseline: {exc}") from None
    elif any(r.metric == "regressions" for r in rules):
        raise pytest.UsageError("gate 'regressions' needs --llmtrace-baseline PATH (a previous results.json)")
    report_dir = config.rootpath / settings["report_dir"] if settings["report_dir"] else None
    replay = get_config(config)
    config.stash[RESULTS_KEY] = RunResults(
        report_dir,
        rules,
        baseline,
        _shard(settings["shard"]),
        replay.mode,
        replay.repeat,
        replay.min_pass_rate,
        slo=slo,
    )


def shard_of(node_id: str, count: int) -> int:
    """0-based shard of a case: sha256 of its id, so adding a case never moves another."""
    return int.from_bytes(hashlib.sha256(node_id.encode()).digest()[:8], "big") % count


def select_shard(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the K-th share; every run of a repeated case goes with its case (the hash of the case's id, not a run's)."""
    state = config.stash.get(RESULTS_KEY, None)
    if state is None or state.shard is None:
        return
    k, n = state.shard
    mine = [shard_of(golden.case_nodeid(i), n) == k - 1 for i in items]
    config.hook.pytest_deselected(items=[i for i, keep in zip(items, mine, strict=True) if not keep])
    items[:] = [i for i, keep in zip(items, mine, strict=True) if keep]


def record(item: pytest.Item, report: pytest.TestReport, phoenix_url: str | None = None) -> None:
    """After each phase: remember the first error; after teardown, keep the item's outcomes (or a failed stand-in).

    ``phoenix_url``: the test's trace in Phoenix's UI when ``--llmtrace-phoenix-export`` sent it.
    """
    state = item.config.stash.get(RESULTS_KEY, None)
    if state is None:
        return
    if (report.failed or report.skipped) and _ERROR_KEY not in item.stash:
        kind = "skipped" if report.skipped else f"{report.when} failed"
        item.stash[_ERROR_KEY] = f"{kind}: {_first_line(report)}"
    if report.when != "teardown":
        return
    outcomes = item.stash.get(OUTCOMES_KEY, [])
    report.user_properties.extend(junit_properties(outcomes))
    error = item.stash.get(_ERROR_KEY, None)
    case = item.stash.get(golden.CASE_KEY, None)
    found = [_case(o.to_dict(), item, phoenix_url) for o in outcomes]
    if case is not None and not outcomes:
        found.append(_stand_in(item, state.mode, error or "the case ended without an outcome", phoenix_url))
    elif error and not error.startswith("skipped") and all(o.passed for o in outcomes):
        state.other_failures += 1  # failed for a reason no outcome records: a met gate must not excuse it
    if case is not None and case.trace is not None:
        _read_golden(state, case.trace, found)
        if state.mode != "replay" and state.live_models is None:
            state.live_models = _ask_server(item.config, state.mode)
    if case is not None:
        case.release()  # the case is done with its trace: a long run does not keep every trace it replayed
    if OUTCOMES_KEY in item.stash:  # read into ``found``: the item lives until the session ends, its outcomes need not
        del item.stash[OUTCOMES_KEY]
    repeat = item.stash.get(golden.REPEAT_KEY, None)
    for data in found:
        if repeat is not None:
            data[runs.REPEAT_FIELD] = {"run": repeat[0], "of": repeat[1], "case_nodeid": golden.case_nodeid(item)}
        runs.keep(state.cases, data)


def _read_golden(state: RunResults, trace: Trace, found: list[CaseRecord]) -> None:
    """What the golden trace tells about the run: its system prompts, its models, and where Phoenix keeps it."""
    for call in trace.llm_calls:
        for message in call.input_messages:
            if message.role == "system":
                state.prompt_hashes.add(hashlib.sha256(message.content.encode()).hexdigest())
    for name, (digest, key) in models.trace_digests(trace).items():
        if digest is not None or name not in state.recorded_models:
            state.recorded_models[name] = (digest, key)
    resource = trace.root.resource_attributes
    url, trace_id = resource.get(PROVENANCE + "phoenix_url"), resource.get(PROVENANCE + "trace_id")
    if isinstance(url, str) and isinstance(trace_id, str):
        project = resource.get(PROVENANCE + "project")
        for data in found:
            data["phoenix"] = {"url": redact_url(url), "project": project, "trace_id": trace_id}


def _ask_server(config: pytest.Config, mode: str) -> models.LiveDigests | None:
    """Live and record mode: the digests of the Ollama server the cases used, once the first case has started it."""
    manager = services.get_manager(config)
    if "ollama" not in manager.started:
        return None
    endpoint = manager.endpoint("ollama")
    model = normalize_model_name(manager.settings["ollama_model"])
    if endpoint.backend == "embedded":  # its /api/tags digest hashes the model's name: hash the weights instead
        try:
            gguf = parse_modelfile(manager.modelfile_path).from_path
            if gguf is None:
                return {}, f"{mode}: the Modelfile names no GGUF file, so the embedded model has no digest"
            source = f"sha256 of {gguf.name}, the GGUF the embedded backend loaded"
            return {model: (models.file_sha256(gguf), source)}, ""
        except (ModelfileError, OSError) as exc:
            return {}, f"{mode}: cannot hash the embedded backend's GGUF: {first_line(exc)}"
    import httpx  # only for a live Ollama's digests

    url = redact_url(endpoint.url)
    try:
        listed = models.ollama_tag_digests(endpoint.url)
    except (httpx.HTTPError, ValueError) as exc:
        return {}, f"{mode}: GET {url}/api/tags failed: {first_line(exc)}"
    source = f"/api/tags of the {endpoint.backend} Ollama at {url}"
    return {name: (digest, source) for name, digest in listed.items()}, ""


def junit_properties(outcomes: list[CaseOutcome]) -> list[tuple[str, object]]:
    """What ``--junitxml`` carries per case, so CI dashboards can chart it without reading results.json."""
    props: list[tuple[str, object]] = []
    for outcome in outcomes:
        sql, results = outcome.check("sql"), outcome.check("results")
        ok = outcome.app_error is None and not outcome.replay_misses
        props.append(("sql_ok", ok and sql is not None and sql.status == "passed"))
        props.append(("result_match", ok and results is not None and results.status == "passed"))
        props += [(f"latency_ms.{kind}", round(ms, 3)) for kind, ms in outcome.durations_ms.items()]
        props += [(f"tokens.{kind}", count) for kind, count in outcome.tokens.items()]
    return props


def _first_line(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    text = report.longreprtext.strip().splitlines()
    return text[-1] if text else "no message"


def _case(data: dict[str, Any], item: pytest.Item, phoenix_url: str | None) -> CaseRecord:
    case = as_case(data)
    if case["app_error"]:  # the app's exception: drivers put the DSN they were given into theirs
        case["app_error"] = redact_text(case["app_error"])
    case["verdict"] = "passed" if case["passed"] else "failed"
    case["nodeid"] = item.nodeid
    case["phoenix_url"] = phoenix_url
    return case


def _stand_in(item: pytest.Item, mode: str, error: str, phoenix_url: str | None) -> CaseRecord:
    """A case without an outcome, with every field an outcome has: reports and gates read one shape."""
    case_id = item.stash[golden.CASE_KEY].path.stem  # a repeated run's name without its [k/N]
    outcome = CaseOutcome(case_id, cast(Mode, mode), str(item.path), app_error=error)
    return as_case({**outcome.to_dict(), "verdict": "error", "nodeid": item.nodeid, "phoenix_url": phoenix_url})


def sessionfinish(session: pytest.Session) -> None:
    """Workers hand their cases to the controller; the controller (or a serial run) folds repeats, writes reports
    and gates."""
    config = session.config
    state = config.stash.get(RESULTS_KEY, None)
    if state is None:
        return
    if hasattr(config, "workerinput"):
        config.workeroutput[_WORKER_KEY] = json.dumps(  # type: ignore[attr-defined]
            {
                "cases": state.cases.hand_over(),  # the controller keeps them as they are
                "other_failures": state.other_failures,
                "prompt_hashes": sorted(state.prompt_hashes),
                "recorded_models": state.recorded_models,
                "live_models": state.live_models,
            }
        )
        return
    state.cases = runs.fold_log(state.cases, state.min_pass_rate)
    if state.rules:
        state.gate_results = gate.evaluate(state.rules, state.cases, state.baseline, state.slo)
    meta = run_metadata(config)
    if state.slo is not None:
        (budget,) = gate.evaluate([gate.parse("error_budget_remaining >= 0")], state.cases, slo=state.slo)
        state.error_budget = budget.value
        meta["slo"] = {"expression": str(state.slo), "error_budget_remaining": budget.value}
    metrics_out.write(config, state, meta)
    if state.report_dir is not None:
        try:
            write_reports(
                state.report_dir,
                state.cases,
                meta,
                state.gate_results,
                state.baseline,
                phoenix=configured_phoenix(config),
                root=config.rootpath,
            )
        except (LLMTraceError, OSError) as exc:
            state.report_error = str(exc)
    if int(session.exitstatus) not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return  # usage errors, interruptions and internal errors keep pytest's status
    if state.report_error is not None:  # the reports CI reads were asked for and are missing: never a green run
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        return
    if state.rules:
        if not all(r.passed for r in state.gate_results):
            session.exitstatus = gate.GATE_EXIT_STATUS
        elif state.other_failures == 0:
            session.exitstatus = pytest.ExitCode.OK  # failed cases are the gate's to judge, and it passed
    elif state.repeat > 1 and state.other_failures == 0 and all(k.verdict == "passed" for k in state.cases.keys):
        session.exitstatus = pytest.ExitCode.OK  # each failed run's case still reached llmtrace_min_pass_rate


def testnodedown(node: Any) -> None:
    """On the xdist controller: merge a finished worker's cases, so totals equal a serial run's."""
    state = node.config.stash.get(RESULTS_KEY, None)
    payload = getattr(node, "workeroutput", {}).get(_WORKER_KEY)
    if state is None or payload is None:
        return
    data = json.loads(payload)
    state.cases.take(data["cases"])  # this run's own workers: written by _case
    state.other_failures += data["other_failures"]
    state.prompt_hashes.update(data["prompt_hashes"])
    for name, (digest, key) in data.get("recorded_models", {}).items():
        if digest is not None or name not in state.recorded_models:
            state.recorded_models[name] = (digest, key)
    live = data.get("live_models")
    if live is not None and (state.live_models is None or not state.live_models[0]):
        state.live_models = ({n: (d, s) for n, (d, s) in live[0].items()}, live[1])


def terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(RESULTS_KEY, None)
    if state is None or hasattr(config, "workerinput"):
        return
    if state.repeat > 1 and any(len(c.get("runs") or ()) > 1 for c in state.cases):
        terminalreporter.section("llmtrace repeats")
        for line in runs.repeat_lines(state.cases, state.repeat, state.min_pass_rate):
            terminalreporter.line(one_line(line))
    usage = llm_report.terminal_lines(state.cases)
    if usage:
        terminalreporter.section("llmtrace model calls")
        for line in usage:
            terminalreporter.line(line)
    if state.error_budget is not None:
        terminalreporter.line(f"error budget remaining: {state.error_budget:.3f} of the SLO {state.slo}")
    if state.metrics_error is not None:
        terminalreporter.line(f"llmtrace metrics: not written: {one_line(state.metrics_error)}", red=True)
    if state.gate_results:
        terminalreporter.section("llmtrace gate")
        for result in state.gate_results:
            terminalreporter.line(gate.format_result(result), red=not result.passed, green=result.passed)
    keys = state.cases.keys  # read only the cases shown
    linked = [state.cases[i] for i, k in enumerate(keys) if k.verdict != "passed" and k.phoenix_url]
    if linked:
        terminalreporter.section("llmtrace failing cases in Phoenix")
        for case in linked:
            terminalreporter.line(one_line(f"{case['case_id']}: {redact_url(str(case['phoenix_url']))}"))
    if state.report_error is not None:
        terminalreporter.line(f"llmtrace report: not written: {one_line(state.report_error)}", red=True)
    elif state.report_dir is not None:
        page = state.report_dir / "report.html"
        here = config.invocation_params.dir
        shown = page.relative_to(here) if page.is_relative_to(here) else page  # as the user typed it, usually
        terminalreporter.line(f"llmtrace report: {shown} (results.json and summary.md beside it)")
