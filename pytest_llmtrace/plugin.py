"""pytest hooks only; the work is done in the modules these hooks call."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmtrace.core import settings
from pytest_llmtrace.core.inert import one_line
from pytest_llmtrace.pytest import app_session, fixtures, golden, recording, replay_config, sdk_endpoints
from pytest_llmtrace.pytest import export_hooks as export
from pytest_llmtrace.pytest import run_results as results
from pytest_llmtrace.pytest import service_session as services


def pytest_addoption(parser: pytest.Parser) -> None:
    """Every setting each layer declared (importing the layers above declared them), then the few extra spellings."""
    settings.add_options(parser)
    results.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    settings.configure(config)  # once: every layer reads its knobs from here
    recording.configure(config)
    replay_config.configure(config)
    results.configure(config)
    export.configure(config)
    services.configure(config, replay=replay_config.get_config(config).mode == "replay")
    app_session.configure(config, services.get_manager(config).context.record)
    sdk_endpoints.configure(config)
    config.pluginmanager.register(fixtures, "llmtrace-fixtures")


def pytest_unconfigure(config: pytest.Config) -> None:
    """After every session fixture is torn down: stop the services this run started."""
    sdk_endpoints.unconfigure(config)
    app_session.unconfigure(config)
    services.unconfigure(config)
    recording.unconfigure(config)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Each line made inert for the terminal: settings and service errors are shown as given."""
    return [
        one_line(line)
        for line in (
            recording.report_header(config),
            *replay_config.report_header(config),
            *services.report_header(config),
            *app_session.report_header(config),
            *sdk_endpoints.report_header(config),
            *export.report_header(config),
        )
    ]


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> list[str]:
    """What the header can only say once the golden files are read: cases whose SQL is the model's answer."""
    if hasattr(config, "workerinput"):  # an xdist worker's header is never shown: its traces stay unread until run
        return []
    return [one_line(line) for line in golden.sql_source_lines(items)]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """First, so spans ended while fixtures are set up belong to the test too."""
    recording.start_test(item, install_provider=not golden.is_golden_item(item))
    export.start_test(item)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """Last, after every fixture finalizer has run and had its chance to end its spans."""
    recording.finish_test(item)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    replay_config.validate_markers(config, items)
    results.select_shard(config, items)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """Each golden trace file under llmtrace_golden_dir is one test item."""
    if golden.is_golden_file(parent.config, file_path):
        return golden.GoldenFile.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    results.record(item, report, phoenix_url=export.record(item, report))
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Export first: its bounded flush ends before the reports are written."""
    export.sessionfinish(session)
    results.sessionfinish(session)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: hand each worker what the whole run shares."""
    export.configure_node(node)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist controller: a worker finished; merge its cases."""
    results.testnodedown(node)
    export.testnodedown(node)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    results.terminal_summary(terminalreporter, config)
    app_session.terminal_summary(terminalreporter, config)
    export.terminal_summary(terminalreporter, config)
