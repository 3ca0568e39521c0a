"""Langfuse's and LangSmith's SDKs pointed at loopback for the whole run, so nothing they send leaves the machine and
what they send is recorded.

At configure, before test modules import the app (apps often make their SDK client at import time), a receiver on
loopback is started and the SDKs' own variables (``services.otlp_receiver.SDK_ENDPOINT_VARIABLES``: Langfuse's base
URL, LangSmith's endpoint) are pointed at it in ``os.environ``; unconfigure puts back what was there. A service under
test (``llmtrace_app_*``) gets the same variables pointed at the session's receiver (``pytest.app_session``).

What arrives lands in the test running at the time: LangSmith's runs (its default mode: run posts, not OpenTelemetry)
read by the run-export reader into spans; Langfuse's OTLP export, for an app whose Langfuse client has a
TracerProvider of its own (on the global provider, its spans are recorded already and are not added twice).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmtrace.core import settings as session_settings
from pytest_llmtrace.core.errors import TraceFormatError
from pytest_llmtrace.core.settings import SettingSpec, declare
from pytest_llmtrace.pytest import recording
from pytest_llmtrace.pytest.service_session import app_environment
from pytest_llmtrace.services.otlp_receiver import OtlpReceiver
from pytest_llmtrace.sources.langsmith_format import span_from_run
from pytest_llmtrace.trace.jsondoc import Doc

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from pytest_llmtrace.trace.model import Span

SDK_SETTINGS: tuple[SettingSpec, ...] = declare(
    SettingSpec(
        "sdk_local",
        "yes: point the Langfuse and LangSmith SDKs at a loopback endpoint of this run for the whole session "
        "(LANGFUSE_BASE_URL / LANGFUSE_HOST, LANGSMITH_ENDPOINT / LANGCHAIN_ENDPOINT), so nothing they send leaves "
        "the machine and their runs are recorded; no: leave their variables alone.",
        "yes",
        choices=("yes", "no"),
    ),
)

RUN_POSTS = "LangSmith run posts"


def spans_of_runs(runs: list[dict[str, Any]]) -> tuple[list[Span], int]:
    """The runs LangSmith's SDK posted, as the run-export reader reads them; and how many could not be read."""
    spans: list[Span] = []
    unread = 0
    for run in runs:
        try:
            spans.append(span_from_run(Doc(run, RUN_POSTS)))
        except TraceFormatError:
            unread += 1
    return spans, unread


class LocalSdkEndpoint:
    """The in-process app's endpoint: a receiver whose spans and runs go to the test running when they arrive."""

    def __init__(self, config: pytest.Config, origin: str) -> None:
        self.config = config
        self.origin = origin
        self.unread_runs = 0
        self.receiver = OtlpReceiver(on_spans=self._spans, on_runs=self._runs)
        self._environment: AbstractContextManager[None] | None = None

    def start(self) -> None:
        self.receiver.start()
        self._environment = app_environment(**self.receiver.sdk_environment())
        self._environment.__enter__()

    def stop(self) -> None:
        if self._environment is not None:
            self._environment.__exit__(None, None, None)
            self._environment = None
        self.receiver.stop()

    def _spans(self, spans: Any) -> None:
        recording.get_recorder(self.config).receive_current(spans)

    def _runs(self, runs: list[dict[str, Any]]) -> None:
        spans, unread = spans_of_runs(runs)
        self.unread_runs += unread
        recording.get_recorder(self.config).receive_current(spans)


_KEY = pytest.StashKey[LocalSdkEndpoint]()


def configure(config: pytest.Config) -> None:
    s = session_settings.of(config)
    if s["sdk_local"] != "yes":
        return
    endpoint = LocalSdkEndpoint(config, s.values["sdk_local"].source)
    try:
        endpoint.start()
    except OSError as exc:  # no loopback port at all: say so rather than let the SDKs reach production
        endpoint.stop()
        raise pytest.UsageError(
            f"cannot listen on loopback for the Langfuse / LangSmith SDKs: {exc} (llmtrace_sdk_local = no leaves "
            "their variables alone)"
        ) from None
    config.stash[_KEY] = endpoint


def get(config: pytest.Config) -> LocalSdkEndpoint | None:
    return config.stash.get(_KEY, None)


def unconfigure(config: pytest.Config) -> None:
    endpoint = config.stash.get(_KEY, None)
    if endpoint is not None:
        del config.stash[_KEY]
        endpoint.stop()


def report_header(config: pytest.Config) -> list[str]:
    endpoint = get(config)
    if endpoint is None:
        return []
    return [
        f"llmtrace sdks: Langfuse and LangSmith pointed at {endpoint.receiver.endpoint} (LANGFUSE_BASE_URL, "
        f"LANGSMITH_ENDPOINT; from {endpoint.origin}); what they send is recorded, nothing leaves the machine"
    ]
