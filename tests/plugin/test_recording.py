"""The recorder as users meet it: each scenario runs in a fresh pytest process, because OpenTelemetry's global
TracerProvider can be set only once per process and every scenario is about who sets it.

Plugin autoloading is off in the inner runs (the plugin is loaded with ``-p``) so each run starts in a fraction of a
second; ``test_header_names_the_provider`` keeps one run on the real ``pytest11`` entry point.
"""

from __future__ import annotations

import pytest

INNER_PLUGIN = ("-p", "pytest_llmtrace.plugin", "-p", "no:cacheprovider")


@pytest.fixture(autouse=True)
def _fast_inner_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*INNER_PLUGIN, *args)


APP = """
from opentelemetry import trace

tracer = trace.get_tracer("app")
"""


def test_nested_spans_keep_their_parent_tree(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        APP
        + """
def test_tree(llm_trace):
    with tracer.start_as_current_span("agent"):
        with tracer.start_as_current_span("llm"):
            pass
        with tracer.start_as_current_span("sql"):
            with tracer.start_as_current_span("connect"):
                pass
    t = llm_trace.trace
    assert [(depth, s.name) for depth, s in t.walk()] == [(0, "agent"), (1, "llm"), (1, "sql"), (2, "connect")]
    assert t.parent(t.find_one("connect")) == t.find_one("sql")
    assert llm_trace.root.name == "agent"
    assert len(t.trace_ids) == 1
"""
    )
    result = run(pytester)
    result.assert_outcomes(passed=1)


def test_spans_ended_in_another_thread_belong_to_the_running_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        APP
        + """
import threading
from opentelemetry import context

def test_threads(llm_trace):
    with tracer.start_as_current_span("request"):
        ctx = context.get_current()
        started = tracer.start_span("handed-over")

        def work():
            token = context.attach(ctx)
            try:
                with tracer.start_as_current_span("worker"):
                    pass
            finally:
                context.detach(token)
            started.end()  # started on the test's thread, ended on this one

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    t = llm_trace.trace
    assert sorted(s.name for s in t.spans) == ["handed-over", "request", "worker"]
    assert t.parent(t.find_one("worker")).name == "request"
    assert llm_trace.open_spans == ()
"""
    )
    run(pytester).assert_outcomes(passed=1)


def test_two_tests_never_see_each_others_spans(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        APP
        + """
import threading

def test_one(llm_trace):
    with tracer.start_as_current_span("one"):
        pass
    assert [s.name for s in llm_trace.spans] == ["one"]

def test_between_without_fixture():
    tracer.start_span("unobserved").end()

def test_two(llm_trace):
    assert llm_trace.spans == ()
    with tracer.start_as_current_span("two"):
        pass
    assert [s.name for s in llm_trace.spans] == ["two"]
"""
    )
    run(pytester).assert_outcomes(passed=3)


def test_spans_of_fixtures_belong_to_the_test_and_clear_forgets_them(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        APP
        + """
import pytest

@pytest.fixture
def warmed_up():
    tracer.start_span("warm-up").end()

def test_fixture_spans(warmed_up, llm_trace):
    assert [s.name for s in llm_trace.spans] == ["warm-up"]
    llm_trace.clear()
    tracer.start_span("after-clear").end()
    assert [s.name for s in llm_trace.spans] == ["after-clear"]
"""
    )
    run(pytester).assert_outcomes(passed=1)


def test_print_shows_the_waterfall(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        APP
        + """
def test_print(llm_trace):
    with tracer.start_as_current_span("ask", attributes={"openinference.span.kind": "CHAIN"}):
        with tracer.start_as_current_span("ChatOllama", attributes={"openinference.span.kind": "LLM"}):
            pass
    print(llm_trace)
"""
    )
    result = run(pytester, "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*trace *  2 spans  * ms",
            "ask           CHAIN * ms  UNSET  |*",
            "  ChatOllama  LLM   * ms  UNSET  |*",
        ]
    )


def test_open_span_fails_the_test_at_teardown(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        APP
        + """
def test_leaks(llm_trace):
    tracer.start_span("stream-never-consumed")
    tracer.start_span("finished").end()
    assert [s.name for s in llm_trace.open_spans] == ["stream-never-consumed"]

def test_leak_without_fixture_is_not_our_business():
    tracer.start_span("ignored")
"""
    )
    result = run(pytester)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks*",
            "pytest-llmtrace: 1 span(s) started during this test were still open when it ended (a span that never"
            " ends is never exported; end it, or consume/close the stream that owns it):",
            "  - 'stream-never-consumed' (span *)",
            "(set llmtrace_open_spans = warn, or --llmtrace-open-spans=warn, to report this as a warning)",
        ]
    )
    result.stdout.no_fnmatch_line("*'finished'*")


def test_open_span_is_a_warning_when_configured(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        APP
        + """
def test_leaks(llm_trace):
    tracer.start_span("left-open")
"""
    )
    result = run(pytester, "-o", "llmtrace_open_spans=warn")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*OpenSpanWarning: pytest-llmtrace: 1 span(s) started during this test*"])


def test_bad_open_spans_setting_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = run(pytester, "-o", "llmtrace_open_spans=ignore")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*ini llmtrace_open_spans: 'ignore' is not a valid open_spans setting; use fail, warn.*"]
    )


def test_app_provider_installed_first_keeps_its_exporter(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

APP_EXPORTER = InMemorySpanExporter()
APP_PROVIDER = TracerProvider()
APP_PROVIDER.add_span_processor(SimpleSpanProcessor(APP_EXPORTER))
trace.set_tracer_provider(APP_PROVIDER)  # at import time, as applications do
"""
    )
    pytester.makepyfile(
        """
from opentelemetry import trace
from conftest import APP_EXPORTER, APP_PROVIDER

def test_both_see_spans(llm_trace, llmtrace_tracer_provider):
    assert llmtrace_tracer_provider is APP_PROVIDER
    trace.get_tracer("app").start_span("query").end()
    assert [s.name for s in llm_trace.spans] == ["query"]
    assert [s.name for s in APP_EXPORTER.get_finished_spans()] == ["query"]
"""
    )
    result = run(pytester)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["llmtrace: recording spans via the application's opentelemetry.sdk.trace.TracerProvider"]
    )


PHOENIX_CONFTEST = """
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from phoenix.otel import register

RECEIVED = []  # bodies of OTLP export requests: what a Phoenix server would have got


class Collector(BaseHTTPRequestHandler):
    def do_POST(self):
        RECEIVED.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


SERVER = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
threading.Thread(target=SERVER.serve_forever, daemon=True).start()
ENDPOINT = f"http://127.0.0.1:{SERVER.server_address[1]}/v1/traces"

# The application's own setup, at import time: phoenix.otel's default exporter, made the global provider.
APP_PROVIDER = register(endpoint=ENDPOINT, project_name="app", verbose=False)
"""


@pytest.mark.slow  # imports phoenix.otel in a fresh process
def test_phoenix_register_keeps_its_exporter(pytester: pytest.Pytester) -> None:
    """phoenix.otel drops its Phoenix exporter when a processor is added the ordinary way; the recorder must not."""
    pytester.makeconftest(PHOENIX_CONFTEST)
    pytester.makepyfile(
        """
from opentelemetry import trace
from phoenix.otel import register
from conftest import APP_PROVIDER, ENDPOINT, RECEIVED

def test_global_phoenix_provider(llm_trace, llmtrace_tracer_provider):
    assert llmtrace_tracer_provider is APP_PROVIDER
    trace.get_tracer("app").start_span("global-span").end()
    assert [s.name for s in llm_trace.spans] == ["global-span"]
    assert [path for path, body in RECEIVED if b"global-span" in body] == ["/v1/traces"]

def test_explicitly_attached_phoenix_provider(llm_trace):
    private = register(endpoint=ENDPOINT, project_name="other", set_global_tracer_provider=False, verbose=False)
    llm_trace.attach(private)
    private.get_tracer("app").start_span("private-span").end()
    assert [s.name for s in llm_trace.spans] == ["private-span"]
    assert [path for path, body in RECEIVED if b"private-span" in body] == ["/v1/traces"]
"""
    )
    result = run(pytester)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["llmtrace: recording spans via the application's phoenix.otel TracerProvider"])


@pytest.mark.parametrize(
    ("setup", "name"),
    [
        ("provider = trace.NoOpTracerProvider()", "opentelemetry.trace.NoOpTracerProvider"),
        (
            "class AppProxyProvider(trace.ProxyTracerProvider):\n    pass\nprovider = AppProxyProvider()",
            "conftest.AppProxyProvider",
        ),
    ],
    ids=["noop", "proxy-subclass"],
)
def test_non_sdk_provider_fails_tests_that_use_the_recording(pytester: pytest.Pytester, setup: str, name: str) -> None:
    pytester.makeconftest(f"from opentelemetry import trace\n{setup}\ntrace.set_tracer_provider(provider)\n")
    pytester.makepyfile(
        """
def test_uses_recording(llm_trace):
    pass

def test_does_not():
    pass
"""
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_uses_recording*",
            f"pytest-llmtrace cannot record spans: the global OpenTelemetry TracerProvider is {name},"
            " not an OpenTelemetry SDK TracerProvider *",
        ]
    )
    result.stdout.no_fnmatch_line("*ERROR at teardown*")


def test_provider_installed_too_late_fails_unless_attached(pytester: pytest.Pytester) -> None:
    """OpenTelemetry ignores a second set_tracer_provider with only a log line; the test must not pass empty."""
    pytester.makepyfile(
        """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

def test_first_installs_ours():
    pass

def test_app_sets_provider_late(llm_trace):
    late = TracerProvider()
    trace.set_tracer_provider(late)
    late.get_tracer("app").start_span("lost").end()

def test_app_sets_provider_late_then_attaches(llm_trace):
    late = TracerProvider()
    trace.set_tracer_provider(late)
    llm_trace.attach(late)
    late.get_tracer("app").start_span("kept").end()
    assert [s.name for s in llm_trace.spans] == ["kept"]
"""
    )
    result = run(pytester)
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_app_sets_provider_late*",
            "pytest-llmtrace cannot record this test's spans: the application called"
            " opentelemetry.trace.set_tracer_provider() after a global TracerProvider was already installed, *",
        ]
    )


def test_header_names_the_provider(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD")  # through the real pytest11 entry point this time
    pytester.makepyfile(APP + "\ndef test_it(llm_trace, llmtrace_tracer_provider):\n    assert llm_trace.spans == ()\n")
    result = pytester.runpytest_subprocess("-p", "no:phoenix", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["llmtrace: recording spans via pytest-llmtrace's own SDK TracerProvider (installed at the first test *)"]
    )
