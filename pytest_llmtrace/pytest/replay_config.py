"""The session's golden-case settings: where the cases are, how they replay, and which marks they get.

Parsed and validated once at configure time, so a bad value stops the run as a usage error before any case starts.
The check knobs themselves (budgets, tolerances, ...) are ``options.CheckOptions``; this module adds the replay ones.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

import pytest

from pytest_llmtrace.checks.check_settings import CHECK_SETTINGS, MARKER_HELP, validate_marks
from pytest_llmtrace.checks.names import UnknownName, canonical
from pytest_llmtrace.checks.options import CheckOptions, number_text
from pytest_llmtrace.core import settings as session_settings
from pytest_llmtrace.core.errors import whole_number
from pytest_llmtrace.core.settings import Settings, SettingSpec, declare
from pytest_llmtrace.core.url_secrets import redact_url
from pytest_llmtrace.modelapi.replay import MATCHERS, SPEEDS
from pytest_llmtrace.trace.question import DEFAULT_SOURCES, QuestionSource, QuestionSourceError, parse_sources
from pytest_llmtrace.trace.safejson import DEFAULT_MAX_TRACE_BYTES

GoldenMode = Literal["replay", "live", "record"]

REPLAY_SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec(
        "mode",
        "replay: answer model calls from the golden traces; live: call the real model; record: live, then write the "
        "new answers into the golden files.",
        "replay",
        choices=get_args(GoldenMode),
    ),
    SettingSpec("golden_dir", "Folder of golden trace files, relative to the rootdir.", "golden_traces"),
    SettingSpec(
        "max_trace_bytes",
        "Golden trace files larger than this many bytes are refused (one failing case, not a run out of memory).",
        str(DEFAULT_MAX_TRACE_BYTES),
    ),
    SettingSpec(
        "target",
        "The app's entry point, 'package.module:function', called with the user question (and trace=the golden "
        "Trace when it has a parameter named trace).",
        "",
    ),
    SettingSpec(
        "question",
        "Where a golden trace keeps the question, in order, first text wins: input.value, "
        "traceloop.entity.input[:PATH], a root span attribute NAME[:JSON path], llm.last_user_message "
        "(see docs/conventions.md).",
        DEFAULT_SOURCES,
    ),
    SettingSpec(
        "replay_speed",
        "virtual: replayed model calls answer at once and count their recorded duration as their latency; recorded: "
        "they also make the app wait that long (apps whose behaviour depends on real waiting).",
        "virtual",
        choices=SPEEDS,
    ),
    SettingSpec(
        "replay_match",
        f"What a model request must match in the recording: {', '.join(MATCHERS)}.",
        "model messages",
        env=False,
    ),
    SettingSpec(
        "app_db",
        "readonly: the app's DB_URI logs in as the session's read-only role; owner: as the session's own role that "
        "owns the database (apps that write; never a superuser).",
        "readonly",
        choices=("readonly", "owner"),
    ),
    SettingSpec(
        "repeat",
        "Run each golden case N times (items case[1/N] ... case[N/N]; mainly for live mode): each run passes or "
        "fails on its own, and results.json, the reports and the gate count the case once, by its pass rate.",
        "1",
    ),
    SettingSpec(
        "min_pass_rate",
        "With --llmtrace-repeat: the share of a case's runs that must pass for the case to pass (1: every run).",
        "1",
    ),
    SettingSpec(
        "temp_file_limit_mb",
        "temp_file_limit of the session's database roles, in MB: a sort or hash that spills more fails (53400) "
        "instead of filling the disk. Set by the admin login; the roles cannot lift it.",
        "1024",
    ),
    *CHECK_SETTINGS,
    SettingSpec(
        "case_marks",
        "Marks for golden cases: lines of '<case glob>: <mark>', e.g. 'error_*: xfail(reason=\"fails in prod\")'.",
        "",
        env=False,
        ini_type="linelist",
    ),
)
declare(*(spec for spec in REPLAY_SETTINGS if spec not in CHECK_SETTINGS))  # the checks declare their own


@dataclass(frozen=True)
class ReplayConfig:
    """The session's replay settings, parsed and validated once (bad values stop the run as usage errors)."""

    settings: Settings
    mode: GoldenMode
    golden_dir: Path
    max_trace_bytes: int
    target: str
    question: tuple[QuestionSource, ...]  # where each case's question is, first text wins
    speed: str  # virtual | recorded
    match: tuple[str, ...]  # replay matcher names
    app_db: str  # readonly | owner
    temp_file_limit_mb: int
    options: CheckOptions
    case_marks: tuple[tuple[str, pytest.MarkDecorator], ...]
    repeat: int = 1  # runs of each golden case
    min_pass_rate: float = 1.0  # the share of a repeated case's runs that must pass

    @classmethod
    def from_config(cls, config: pytest.Config) -> ReplayConfig:
        s = session_settings.of(config)
        match = s.parsed(
            "replay_match",
            lambda text: tuple(canonical(name, tuple(MATCHERS), "replay matcher") for name in text.split()),
            UnknownName,
        )
        question = s.parsed("question", parse_sources, QuestionSourceError)
        return cls(
            settings=s,
            mode=cast("GoldenMode", s["mode"]),  # one of the mode setting's choices, validated by resolve()
            golden_dir=(config.rootpath / s["golden_dir"]).resolve(),
            max_trace_bytes=_positive_int(s["max_trace_bytes"], s.values["max_trace_bytes"].origin, "bytes"),
            target=s["target"],
            question=question,
            speed=s["replay_speed"],
            match=match,
            app_db=s["app_db"],
            temp_file_limit_mb=_positive_int(s["temp_file_limit_mb"], s.values["temp_file_limit_mb"].origin, "MB"),
            options=CheckOptions.from_settings(s),
            case_marks=tuple(parse_case_marks(s["case_marks"])),
            repeat=repeat_of(s),
            min_pass_rate=pass_rate_floor(s["min_pass_rate"], s.values["min_pass_rate"].origin),
        )


def repeat_of(s: Settings) -> int:
    """``llmtrace_repeat`` as a count: a whole number from 1, and 1 in record mode."""
    origin = s.values["repeat"].origin
    text = s["repeat"]
    number = whole_number(text) or 0
    if number < 1:
        raise pytest.UsageError(f"{origin}: expected how many times to run each golden case (1 or more), got {text!r}")
    if number > 1 and s["mode"] == "record":
        raise pytest.UsageError(
            f"{origin}={number} with mode record: each run would write the golden file again; record once, then "
            "repeat in live mode (--llmtrace-mode=live)"
        )
    return number


def pass_rate_floor(text: str, origin: str) -> float:
    """``llmtrace_min_pass_rate``: a share of runs in (0, 1]; 0 would pass a case that never passed."""
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not 0 < rate <= 1:
        raise pytest.UsageError(f"{origin}: expected a share of runs above 0 and at most 1 (e.g. 0.8), got {text!r}")
    return rate


def _positive_int(value: str, origin: str, unit: str) -> int:
    number = whole_number(value) or 0
    if number < 1:
        raise pytest.UsageError(f"{origin}: expected a positive whole number of {unit}, got {value!r}")
    return number


def parse_case_marks(text: str) -> Iterator[tuple[str, pytest.MarkDecorator]]:
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


CONFIG_KEY = pytest.StashKey[ReplayConfig]()


def configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    config.stash[CONFIG_KEY] = ReplayConfig.from_config(config)


def get_config(config: pytest.Config) -> ReplayConfig:
    return config.stash[CONFIG_KEY]


def report_header(config: pytest.Config) -> list[str]:
    """Mode, golden dir, target and question sources with where each came from: the first things to check when
    replay misbehaves."""
    replay = get_config(config)
    values = replay.settings.values
    parts = [f"{name}={values[name].value or '(unset)'} ({values[name].source})" for name in ("mode", "target")]
    service = next((name for name in _SERVICE_SETTINGS if name in values and values[name].value), None)
    if service is not None:  # cases ask the service, not an imported function (llmtrace_app: the service first)
        given = redact_url(values[service].value) if service == "app_url" else values[service].value
        parts[1] = f"target=the service {given} (llmtrace_{service}, {values[service].source})"
        if values["target"].value:
            parts[1] += f", not llmtrace_target={values['target'].value} ({values['target'].source})"
    parts.insert(1, f"golden_dir={replay.golden_dir} ({values['golden_dir'].source})")
    if replay.repeat > 1:
        parts += [f"{name}={values[name].value} ({values[name].source})" for name in ("repeat", "min_pass_rate")]
    sources = ", ".join(map(str, replay.question))
    shown = {name: values[name].value for name in _SANDBOX_SETTINGS}
    if replay.options.case_timeout_s is None:  # auto: what it comes to with the session's budget
        shown["case_timeout_s"] += f" = {number_text(replay.options.case_deadline_s)} s"
    limits = ", ".join(f"{name}={shown[name]} ({values[name].source})" for name in _SANDBOX_SETTINGS)
    return [
        "llmtrace golden cases: " + ", ".join(parts),
        f"llmtrace question: the first text from {sources} ({values['question'].source})",
        f"llmtrace sandbox: {limits}",
    ]


# The settings that make golden cases ask a service under test (pytest.app_session) instead of llmtrace_target.
_SERVICE_SETTINGS = ("app_command", "app_url", "app_image")

# The limits every case's SQL and app are held to, shown in the report header with where each came from.
_SANDBOX_SETTINGS = (
    "case_timeout_s",
    "max_case_memory_mb",
    "sql_timeout_ms",
    "max_rows",
    "max_result_bytes",
    "temp_file_limit_mb",
)


def validate_markers(config: pytest.Config, items: list[pytest.Item]) -> None:
    validate_marks(items, get_config(config).options)
