"""The run's export to Phoenix: settings, the lazily made exporter, and what each test hands it.

Nothing here runs unless export is asked for: with it off, each hook returns after one attribute read. With it on,
Phoenix is reached at the first test that recorded spans (started then, when it is the embedded one), and the
exporter is made there: an OTLP/HTTP protobuf exporter behind a ``BatchSpanProcessor``, whose thread sends while
the tests go on. The session end sends what is left within ``FLUSH_TIMEOUT_S`` and then the verdict annotations.

A Phoenix that cannot be reached gives one warning, naming the URL and the fix, and export stops for the run: a
test never fails because of it.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmtrace.core import settings as session_settings
from pytest_llmtrace.core.errors import LLMTraceError
from pytest_llmtrace.core.settings import Settings, SettingSpec, declare
from pytest_llmtrace.pytest import service_session as services
from pytest_llmtrace.pytest.failing import OUTCOMES_KEY
from pytest_llmtrace.pytest.run_metadata import git_revision
from pytest_llmtrace.sinks import naming
from pytest_llmtrace.sources.redaction_key import DEFAULT_KEY_PATH

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from pytest_llmtrace.pytest.recorder import TestWindow
    from pytest_llmtrace.sinks.phoenix_rest import PhoenixRest
    from pytest_llmtrace.sinks.sender import CountingExporter
    from pytest_llmtrace.sinks.spans import RunAttributes
    from pytest_llmtrace.sources.redact import Redactor

FLUSH_TIMEOUT_S = 30.0  # the most the session end waits for queued spans: BatchSpanProcessor.shutdown's own bound
_ON = ("yes", "true")
WORKER_KEY = "llmtrace_phoenix_export"  # in xdist's workerinput and workeroutput

EXPORT_SETTINGS: tuple[SettingSpec, ...] = declare(
    SettingSpec(
        "phoenix_export",
        "yes: send each test's spans to Phoenix (the llmtrace_phoenix backend) with its verdict as an annotation.",
        "no",
        choices=("yes", "no", "true", "false"),
        flag=True,
    ),
    SettingSpec(
        "phoenix_project",
        "Phoenix project the run's traces go to; default: llmtrace-<UTC time>-<short git revision>, one per run.",
        "",
    ),
    SettingSpec(
        "phoenix_export_redact",
        "no: send spans to Phoenix with personal data (emails, names, card numbers, keys by their shape) as the app "
        "recorded them; credentials found by attribute name are redacted regardless.",
        "yes",
        choices=("yes", "no", "true", "false"),
    ),
    SettingSpec(
        "redaction_key",
        "File with the project's secret placeholder key (made on first use, git-ignored), shared with `llmtrace "
        "capture`/`import`, so a value has the same placeholder in Phoenix as in the golden files.",
        str(DEFAULT_KEY_PATH),
    ),
)


def _redactor(config: pytest.Config, settings: Settings) -> Redactor | None:
    """The redaction the export applies, keyed by the project's key file (relative paths: to the rootdir)."""
    if settings["phoenix_export_redact"] not in _ON:
        return None
    from pytest_llmtrace.sources.redact import Redactor
    from pytest_llmtrace.sources.redaction_key import RedactionKeyError, load_or_create

    path = config.rootpath / settings["redaction_key"]
    try:
        return Redactor(key=load_or_create(path))
    except RedactionKeyError as exc:
        origin = settings.values["redaction_key"].origin
        raise pytest.UsageError(f"{origin}: {exc}") from None


class PhoenixExportWarning(UserWarning):
    """Export to Phoenix failed or stopped; the tests' verdicts are not affected."""


@dataclass
class _Connection:
    url: str  # Phoenix's base URL, without credentials
    project_id: str
    rest: PhoenixRest
    counter: CountingExporter
    processor: BatchSpanProcessor


@dataclass
class PhoenixExport:
    """The session's export state; ``enabled`` stays False for the whole run unless export was asked for."""

    settings: Settings
    enabled: bool = False
    run: RunAttributes | None = None
    connection: _Connection | None = None
    given_up: bool = False
    queued: int = 0
    tests: int = 0
    pending: list[dict[str, Any]] = field(default_factory=list)  # annotations, posted at the session end
    summary: dict[str, Any] = field(default_factory=dict)  # what the terminal summary prints (merged under xdist)
    redactor: Redactor | None = None  # None: credentials only (phoenix_export_redact = no)

    @classmethod
    def from_config(cls, config: pytest.Config) -> PhoenixExport:
        settings = session_settings.of(config)
        if settings["phoenix_export"] not in _ON:
            return cls(settings)
        from pytest_llmtrace.sinks.spans import RunAttributes  # with export on only, like everything it sends

        redactor = _redactor(config, settings)
        workerinput: dict[str, Any] = getattr(config, "workerinput", {})
        given: dict[str, Any] | None = workerinput.get(WORKER_KEY)
        if given is not None:  # an xdist worker: the controller named the run's project once for all workers
            run = RunAttributes(given["project"], given["revision"], workerinput.get("workerid"))
            return cls(settings, True, run, redactor=redactor)
        revision = git_revision(config.rootpath)
        project = settings["phoenix_project"]
        if project:
            problem = naming.check_project_name(project)
            if problem:
                origin = settings.values["phoenix_project"].origin
                raise pytest.UsageError(f"{origin} {project!r}: {problem}; fix: choose another name")
        else:
            project = naming.run_project_name(datetime.now(timezone.utc), revision)
        return cls(settings, True, RunAttributes(project, revision), redactor=redactor)

    def header(self) -> str:
        on = self.settings.values["phoenix_export"]
        line = f"llmtrace phoenix export: {on.value} ({on.source})"
        if self.run is not None:
            source = self.settings.values["phoenix_project"].source
            line += f", project {self.run.project} ({'generated' if source == 'default' else source})"
            red = self.settings.values["phoenix_export_redact"]
            line += f", redact {red.value} ({red.source})"
        return line

    def worker_input(self) -> dict[str, Any] | None:
        if self.run is None:
            return None
        return {"project": self.run.project, "revision": self.run.revision}

    # -- per test ---------------------------------------------------------------------------------------------------

    def record(self, item: pytest.Item, window: TestWindow | None) -> str | None:
        """Queue the test's spans and its verdict annotation; the Phoenix link of its (first) trace, if sent.

        Only sampled spans go: an unsampled one is a span the application chose not to export.
        """
        if window is None or self.given_up or self.run is None:
            return None
        spans = [s for s in window.finished if s.context is not None and s.context.trace_flags.sampled]
        if not spans:
            return None
        connection = self.connection or self._connect(item)
        if connection is None:
            return None
        try:
            return self._send(item, spans, connection)
        except Exception as exc:  # a span this code cannot convert must cost the export, never the test
            self._give_up(item, f"the spans of {item.nodeid} could not be prepared ({type(exc).__name__}: {exc})")
            return None

    def _send(self, item: pytest.Item, spans: list[ReadableSpan], connection: _Connection) -> str:
        from pytest_llmtrace.sinks.spans import hex_span_id, hex_trace_id, prepare, roots, verdict, verdict_annotations

        assert self.run is not None
        personal = self.redactor is not None
        for span in prepare(spans, self.run, item.nodeid, self.redactor, personal_data=personal):
            connection.processor.on_end(span)
        self.queued += len(spans)
        self.tests += 1
        top = roots(spans)
        outcomes = item.stash.get(OUTCOMES_KEY, [])
        if outcomes:
            judged = verdict(outcomes, self.redactor, personal_data=personal)
            self.pending += verdict_annotations([hex_span_id(s) for s in top], judged, item.nodeid)
        return naming.trace_url(connection.url, connection.project_id, hex_trace_id(top[0]))

    def _give_up(self, item: pytest.Item, why: str) -> None:
        """One warning for the run, on the test where export stopped; the tests go on as if it had never been on."""
        self.given_up = True
        item.warn(
            PhoenixExportWarning(
                f"pytest-llmtrace: export to Phoenix is off for this run: {why} (or run without "
                "--llmtrace-phoenix-export; the tests' verdicts do not depend on it)"
            )
        )

    def _connect(self, item: pytest.Item) -> _Connection | None:
        # The REST client and the OTLP exporter are imported here: a run that does not export never loads them.
        from pytest_llmtrace.sinks.phoenix_rest import API_KEY_ENV, PhoenixRest
        from pytest_llmtrace.sinks.sender import EXPORT_TIMEOUT_S, batch_processor

        assert self.run is not None
        api_key = os.environ.get(API_KEY_ENV) or None
        try:
            endpoint = services.get_manager(item.config).endpoint("phoenix")  # starts an embedded Phoenix now
            rest = PhoenixRest(endpoint.url, api_key=api_key, timeout=EXPORT_TIMEOUT_S)
            project_id = rest.project_id(self.run.project)
        except (LLMTraceError, pytest.UsageError) as exc:
            self._give_up(item, str(exc).replace("\n", "; "))
            return None
        processor, counter = batch_processor(rest.url, api_key)
        self.connection = _Connection(rest.url, project_id, rest, counter, processor)
        return self.connection

    # -- session end ------------------------------------------------------------------------------------------------

    def finish(self) -> None:
        """Send what is queued (bounded by ``FLUSH_TIMEOUT_S``), then the annotations; warn once about what failed."""
        connection = self.connection
        if connection is None or self.run is None:
            return
        connection.processor.shutdown()  # type: ignore[no-untyped-call]  # sends the rest, waits FLUSH_TIMEOUT_S at most
        lost = self.queued - connection.counter.sent
        problems = []
        if lost:
            problems.append(
                f"{lost} of {self.queued} spans did not reach Phoenix at {connection.url} within "
                f"{FLUSH_TIMEOUT_S:g} s (see the opentelemetry.exporter log lines); fix: check that Phoenix is up "
                "and not overloaded"
            )
        annotated = 0
        if self.pending:
            try:
                connection.rest.annotate(self.pending)
                annotated = len(self.pending)
            except LLMTraceError as exc:  # phoenix_rest.ExportError
                problems.append(f"the verdict annotations were not stored: {exc}")
        for problem in problems:
            warnings.warn(PhoenixExportWarning(f"pytest-llmtrace: {problem}"), stacklevel=1)
        self.summary = {
            "tests": self.tests,
            "spans": connection.counter.sent,
            "annotations": annotated,
            "project_url": naming.project_url(connection.url, connection.project_id),
        }

    def merge(self, other: dict[str, Any]) -> None:
        """A worker's summary, added to the controller's."""
        for key in ("tests", "spans", "annotations"):
            self.summary[key] = self.summary.get(key, 0) + int(other.get(key, 0))
        if other.get("project_url"):
            self.summary["project_url"] = other["project_url"]

    def summary_line(self) -> str | None:
        if self.run is None or not self.summary.get("project_url"):
            return None
        s = self.summary
        return (
            f"llmtrace phoenix export: {s['spans']} spans of {s['tests']} tests and {s['annotations']} verdict "
            f"annotations sent to project {self.run.project}: {s['project_url']}"
        )

    def worker_output(self) -> str:
        return json.dumps(self.summary)
