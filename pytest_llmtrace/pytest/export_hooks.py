"""Send each test's trace to Phoenix with its verdict: ``--llmtrace-phoenix-export`` (ini ``llmtrace_phoenix_export``).

The modules, by job: ``naming`` (the run's project name, the UI links), ``spans`` (what one test sends: redacted
spans, the run's attributes, the verdict annotation), ``phoenix_rest`` (the project and annotation calls),
``session`` (the lazily made exporter and the session's state). These functions are what the plugin's hooks call.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pytest_llmtrace.core.inert import one_line
from pytest_llmtrace.pytest.export_session import EXPORT_SETTINGS, WORKER_KEY, PhoenixExport, PhoenixExportWarning
from pytest_llmtrace.pytest.recorder import TestWindow
from pytest_llmtrace.pytest.recording import get_recorder

__all__ = [
    "EXPORT_SETTINGS",
    "PhoenixExportWarning",
    "configure",
    "configure_node",
    "get_state",
    "record",
    "report_header",
    "sessionfinish",
    "start_test",
    "terminal_summary",
    "testnodedown",
]

_KEY = pytest.StashKey[PhoenixExport]()
_WINDOW_KEY = pytest.StashKey[TestWindow]()


def configure(config: pytest.Config) -> None:
    config.stash[_KEY] = PhoenixExport.from_config(config)


def get_state(config: pytest.Config) -> PhoenixExport:
    return config.stash[_KEY]


def report_header(config: pytest.Config) -> list[str]:
    return [get_state(config).header()]


def configure_node(node: Any) -> None:
    """xdist controller: every worker exports into the one project this run named."""
    given = get_state(node.config).worker_input()
    if given is not None:
        node.workerinput[WORKER_KEY] = given


def start_test(item: pytest.Item) -> None:
    """Keep the test's recording window: the recorder forgets it when the test ends, before the report is made."""
    if not get_state(item.config).enabled:
        return
    window = get_recorder(item.config).current
    if window is not None:
        item.stash[_WINDOW_KEY] = window


def record(item: pytest.Item, report: pytest.TestReport) -> str | None:
    """After the teardown report: send the test's spans and verdict; the Phoenix link of its trace, if sent."""
    state = get_state(item.config)
    if not state.enabled or report.when != "teardown":
        return None
    return state.record(item, item.stash.get(_WINDOW_KEY, None))


def sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(_KEY, None)
    if state is None or not state.enabled:
        return
    state.finish()
    if hasattr(session.config, "workerinput"):
        session.config.workeroutput[WORKER_KEY] = state.worker_output()  # type: ignore[attr-defined]


def testnodedown(node: Any) -> None:
    state = node.config.stash.get(_KEY, None)
    payload = getattr(node, "workeroutput", {}).get(WORKER_KEY)
    if state is not None and payload:
        state.merge(json.loads(payload))


def terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(_KEY, None)
    if state is None or hasattr(config, "workerinput"):
        return
    line = state.summary_line()
    if line:
        terminalreporter.line(one_line(line))
