"""The service under test over a session: its settings, the OTLP receiver its spans come back to, and the callable
golden cases (and hand-written tests) ask it through.

With ``llmtrace_app_command`` or ``llmtrace_app_url`` set, the ``llmtrace_app`` fixture returns ``ServiceCaller``
instead of importing ``llmtrace_target``: each case's question goes to the service as an HTTP request carrying a
``traceparent`` made for the case, the spans the service exports come back over OTLP, and ``services.span_router``
hands the case's spans to the test's recording. From there on nothing differs from an in-process app: ``llm_trace``
shows the spans, replay serves the model's answers over the same Ollama API, and every check judges them.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import pytest

from pytest_llmtrace.core import settings as session_settings
from pytest_llmtrace.core.errors import LLMTraceError, whole_number
from pytest_llmtrace.core.settings import SettingSpec, declare
from pytest_llmtrace.pytest.sdk_endpoints import spans_of_runs
from pytest_llmtrace.services.app_request import DEFAULT_REQUEST, RequestTemplate, TemplateError
from pytest_llmtrace.services.app_service import AppService, ServiceAnswered, ServiceError, parse_command, parse_ready
from pytest_llmtrace.services.otlp_grpc import INSTALL_HINT as GRPC_INSTALL_HINT
from pytest_llmtrace.services.otlp_receiver import OtlpReceiver
from pytest_llmtrace.services.span_router import ATTRIBUTIONS, Attribution, SpanRouter, app_subtree, describe

if TYPE_CHECKING:
    from pytest_llmtrace.pytest.recorder import Recorder, TestWindow
    from pytest_llmtrace.services.run_records import RunRecord
    from pytest_llmtrace.trace.model import Trace

# Milliseconds between a service's span batches (OTEL_BSP_SCHEDULE_DELAY) for services the run starts: spans arrive
# right after the answer, so a case waits milliseconds for its trace, not the SDK's default 5 s.
BATCH_DELAY_MS = "10"

APP_SETTINGS: tuple[SettingSpec, ...] = declare(
    SettingSpec(
        "app_command",
        "The service under test, started once per session (per xdist worker) in the rootdir: a command line, no "
        "shell, with {port} replaced by a free loopback port, e.g. 'uvicorn server:app --host 127.0.0.1 --port "
        "{port}'. Golden cases then ask it over HTTP instead of calling llmtrace_target.",
        "",
    ),
    SettingSpec(
        "app_url",
        "A service under test that is already running (staging): golden cases ask it at this URL; point its OTLP "
        "exporter at the receiver the report header prints.",
        "",
        allow_url=("http", "https"),
    ),
    SettingSpec(
        "app_image",
        "The service under test from a container image (testcontainers), on the host's network so it reaches the "
        "session's loopback services; it gets its port in PORT and the plugin's variables only.",
        "",
    ),
    SettingSpec("app_port", "The port the app image's service listens on (empty: a free port, given in PORT).", ""),
    SettingSpec(
        "app_ready",
        "When the started service is ready: 'GET /path' answering 2xx, or empty for its port opening.",
        "",
    ),
    SettingSpec(
        "app_request",
        "How a case asks the service: METHOD /path and a JSON body template; {question}, {user_id}, {session_id} or "
        "any root span attribute by name are substituted as JSON string values.",
        DEFAULT_REQUEST,
    ),
    SettingSpec(
        "app_headers", "Headers sent with each request, 'Name: value' lines.", "", env=False, ini_type="linelist"
    ),
    SettingSpec("app_start_timeout_s", "Seconds the started service has to become ready.", "60"),
    SettingSpec(
        "app_span_wait_s",
        "Seconds a case waits after the service's answer for its root span to arrive over OTLP.",
        "10",
    ),
    SettingSpec(
        "app_attribution",
        "Which received spans are a case's: auto (by the traceparent's trace id, else by the case's time window), "
        "traceparent, or window.",
        "auto",
        choices=ATTRIBUTIONS,
    ),
    SettingSpec(
        "otlp_grpc",
        "yes: the receiver also serves OTLP/gRPC (needs the grpc extra), and a started service is told to export over "
        "it (OTEL_EXPORTER_OTLP_PROTOCOL=grpc).",
        "no",
        choices=("yes", "no"),
    ),
    SettingSpec(
        "otlp_port",
        "The OTLP/HTTP receiver's loopback port (0: a free one); fix it for a running service's exporter.",
        "0",
    ),
)


class NoSpans(ServiceError):
    """The service answered, but none of its spans arrived for the case."""


@dataclass
class AppSession:
    """One session's service, receiver and router; started on first use."""

    service: AppService
    template: RequestTemplate
    router: SpanRouter
    receiver: OtlpReceiver
    span_wait_s: float
    origins: dict[str, str]
    app_db_owner: bool
    receiver_started: bool = False
    wrapper_spans: int = 0  # the service framework's spans around the golden root, left out of cases
    env_started: bool = False

    def start_receiver(self) -> None:
        if not self.receiver_started:
            self.receiver.start()
            self.receiver_started = True

    def start(self, db_url: str, ollama_url: str) -> None:
        """The receiver, then the service with its environment pointed at this session's services."""
        self.start_receiver()
        if self.env_started:
            return
        env = dict(os.environ)  # everything else passes through
        grpc = self.receiver.grpc_endpoint
        env.update(
            DB_URI=db_url,
            OLLAMA_HOST=ollama_url,
            PHOENIX_COLLECTOR_ENDPOINT=self.receiver.endpoint,
            OTEL_EXPORTER_OTLP_ENDPOINT=grpc or self.receiver.endpoint,
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=grpc or self.receiver.traces_url,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc" if grpc else "http/protobuf",
            OTEL_BSP_SCHEDULE_DELAY=BATCH_DELAY_MS,
            **self.receiver.sdk_environment(),  # Langfuse's and LangSmith's SDKs: here, never their servers
        )
        self.env_started = True
        self.service.start(env)

    def close(self) -> None:
        self.service.stop()
        if self.receiver_started:
            self.receiver.stop()
            self.receiver_started = False

    def no_spans(self, wait_s: float) -> str:
        stats = self.receiver.stats
        causes = [
            f"the service's exporter is not pointed at the receiver (it gets OTEL_EXPORTER_OTLP_ENDPOINT="
            f"{self.receiver.endpoint}; an exporter configured in code must use it)",
            f"the exporter's batch delay is longer than the wait (it gets OTEL_BSP_SCHEDULE_DELAY={BATCH_DELAY_MS}; "
            "a service that sets its own delay, or a running one, needs a longer llmtrace_app_span_wait_s)",
        ]
        if self.router.attribution == "traceparent":
            causes.append(
                "the service does not continue the traceparent it is sent (llmtrace_app_attribution=auto "
                "falls back to the case's time window)"
            )
        else:
            causes.append("the service does not continue the traceparent it is sent while cases overlap")
        if stats.refused:
            causes.insert(0, f"{stats.refused} OTLP payload(s) were refused; the last: {stats.reasons[-1]}")
        lines = [
            f"no span arrived from the service for this case within {wait_s:g} s of its answer "
            f"(llmtrace_app_span_wait_s; the receiver has accepted {stats.spans} span(s) in {stats.payloads} "
            "payload(s) this session). Likely causes:"
        ]
        lines += [f"  - {cause}" for cause in causes]
        return "\n".join(lines)


_KEY = pytest.StashKey[AppSession]()


def configure(config: pytest.Config, record: RunRecord | None) -> None:
    """Check the service settings now (a bad template is a UsageError before any case), and start the receiver
    at once for a running service, whose exporter needs its address from the report header."""
    s = session_settings.of(config)
    command, url, image = s["app_command"], s["app_url"], s["app_image"]
    given = [name for name in ("app_command", "app_url", "app_image") if s[name]]
    if not given:
        return
    if len(given) > 1:
        raise pytest.UsageError(
            f"{' and '.join(s.values[name].origin for name in given)} are all set: start a service by command or "
            "from an image, or use a running one; one of them"
        )
    app_port = whole_number(s["app_port"]) if s["app_port"] else None
    if s["app_port"] and not app_port:
        raise pytest.UsageError(f"{s.values['app_port'].origin}: expected a port number, got {s['app_port']!r}")
    argv = s.parsed("app_command", parse_command) if command else None
    ready = s.parsed("app_ready", parse_ready)
    template = s.parsed("app_request", lambda text: RequestTemplate.parse(text, s["app_headers"]), TemplateError)
    numbers = {}
    for name in ("app_start_timeout_s", "app_span_wait_s", "otlp_port"):
        try:
            numbers[name] = float(s[name])
        except ValueError:
            numbers[name] = -1.0
        if numbers[name] < 0 or (name == "otlp_port" and whole_number(s[name]) is None and s[name] != "0"):
            raise pytest.UsageError(f"{s.values[name].origin}: expected a number, got {s[name]!r}")
    router = SpanRouter(cast("Attribution", s["app_attribution"]))
    grpc_port = 0 if s["otlp_grpc"] == "yes" else None
    if grpc_port is not None and importlib.util.find_spec("grpc") is None:
        raise pytest.UsageError(f"{s.values['otlp_grpc'].origin}: OTLP/gRPC needs grpcio; {GRPC_INSTALL_HINT}")
    receiver = OtlpReceiver(
        port=int(numbers["otlp_port"]),
        on_spans=router.deliver,
        grpc_port=grpc_port,
        on_runs=lambda runs: router.deliver(spans_of_runs(runs)[0]),  # LangSmith's default mode
    )
    service: AppService
    if image:
        from pytest_llmtrace.services.app_container import AppContainer

        service = AppContainer(
            image=image,
            port=app_port,
            ready_path=ready,
            cwd=config.rootpath,
            start_timeout_s=numbers["app_start_timeout_s"],
            record=record,
        )
    else:
        service = AppService(
            argv=argv,
            url=url or None,
            ready_path=ready,
            cwd=config.rootpath,
            start_timeout_s=numbers["app_start_timeout_s"],
            record=record,
        )
    origins = {name: f"{s.values[name].source}" for name in ("app_ready", "app_request", "app_attribution")}
    origins["service"] = s.values[given[0]].source
    session = AppSession(
        service, template, router, receiver, numbers["app_span_wait_s"], origins, s["app_db"] == "owner"
    )
    if url:
        try:
            session.start_receiver()
        except OSError as exc:
            raise pytest.UsageError(f"{s.values['otlp_port'].origin}: cannot listen on it: {exc}") from None
        except LLMTraceError as exc:  # no grpcio
            raise pytest.UsageError(f"{s.values['otlp_grpc'].origin}: {exc}") from None
    config.stash[_KEY] = session


def get(config: pytest.Config) -> AppSession | None:
    return config.stash.get(_KEY, None)


def unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_KEY, None)
    if session is not None:
        del config.stash[_KEY]
        session.close()


def report_header(config: pytest.Config) -> list[str]:
    session = get(config)
    if session is None:
        return []
    o = session.origins
    where = session.receiver.traces_url if session.receiver_started else "a free loopback port, at the first case"
    if session.receiver.grpc_port is not None:
        grpc = session.receiver.grpc_endpoint or "a free port"
        where += f", and OTLP/gRPC at {grpc}"
    ready = f"GET {session.service.ready_path}" if session.service.ready_path else "its port opening"
    origin = o["service"]
    return [
        f"llmtrace app: {session.service.describe()} (from {origin}); "
        f"ready: {ready} (from {o['app_ready']}); request: {session.template} (from {o['app_request']})",
        f"llmtrace app spans: OTLP/HTTP receiver at {where}; a case's spans "
        f"{describe(session.router.attribution)} (from {o['app_attribution']})",
    ]


def terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    session = get(config)
    if session is None or not session.receiver_started:
        return
    by = session.router.cases_by
    stats = session.receiver.stats
    line = (
        f"llmtrace app: cases' spans by trace id: {by['trace id']}, by time window: {by['time window']}, none: "
        f"{by['none']}; spans of no case: {session.router.unattributed}; OTLP payloads accepted: {stats.payloads}, "
        f"refused: {stats.refused}; service starts: {session.service.starts}; framework spans around the golden "
        f"root left out: {session.wrapper_spans}"
    )
    terminalreporter.write_line(line)
    if stats.refused:
        terminalreporter.write_line(f"llmtrace app: last refused OTLP payload: {stats.reasons[-1]}")


class ServiceCaller:
    """What ``llmtrace_app`` returns with a service configured: called like an in-process app, with the question
    and ``trace=`` the golden trace; answers ``{"status": ..., "body": ...}``."""

    def __init__(self, session: AppSession, recorder: Recorder, window: TestWindow | None, timeout_s: float) -> None:
        self.session = session
        self.recorder = recorder
        self.window = window
        self.timeout_s = timeout_s

    def __call__(self, question: str, trace: Trace | None = None) -> dict[str, Any]:
        session = self.session
        values = session.template.values(question, trace.root.attributes if trace is not None and trace else {})
        session.service.ensure_running()  # a service that died in the last case starts again for this one
        case = session.router.begin()
        failure: ServiceAnswered | None = None
        try:
            status, body = session.service.send(session.template, values, case.traceparent, self.timeout_s)
        except ServiceAnswered as exc:  # its spans still count: an error span is what the checks look at
            failure, status, body = exc, 0, b""
        except ServiceError:
            session.router.abandon(case)
            raise
        collected = session.router.collect(case, wait_s=session.span_wait_s)
        spans = collected.spans
        if trace is not None and trace:
            spans, wrapped = app_subtree(spans, trace.root.name)
            session.wrapper_spans += wrapped
        if self.window is not None:
            self.recorder.receive(self.window, spans)
        if failure is not None:
            raise failure
        if not collected.spans:
            raise NoSpans(session.no_spans(session.span_wait_s))
        return {"status": status, "body": _body(body)}


def _body(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")


def start_for(session: AppSession, db_url: str, ollama_url: str) -> None:
    """Start the service for the session's fixtures; a start that fails fails the test with its log tail."""
    try:
        session.start(db_url, ollama_url)
    except OSError as exc:  # a fixed llmtrace_otlp_port taken (by another xdist worker, say)
        from pytest_llmtrace.pytest.failing import fail

        fail(
            f"the OTLP receiver cannot listen on port {session.receiver.port}: {exc} (llmtrace_otlp_port; 0 picks a "
            "free port, and each xdist worker needs its own)"
        )
    except LLMTraceError as exc:
        from pytest_llmtrace.pytest.failing import fail

        fail(str(exc))
