"""The recorder without pytest-in-pytest: private TracerProviders, never the process-global one."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider

from pytest_llmtrace.core.errors import RecordingError
from pytest_llmtrace.pytest.recorder import OverrideRefusedHandler, Recorder, describe_provider, open_spans_message


@pytest.fixture
def provider() -> TracerProvider:
    return TracerProvider()


@pytest.fixture
def recorder(provider: TracerProvider) -> Recorder:
    rec = Recorder()
    rec.attach(provider)
    return rec


def names(recorder: Recorder) -> list[str]:
    window = recorder.current
    assert window is not None
    return [s.name for s in recorder.trace(window)]


def test_spans_go_to_the_window_open_when_they_end(recorder: Recorder, provider: TracerProvider) -> None:
    tracer = provider.get_tracer("t")
    tracer.start_span("before any test").end()
    recorder.begin("a")
    started_in_a = tracer.start_span("crosses tests")
    tracer.start_span("in a").end()
    assert names(recorder) == ["crosses tests", "in a"]  # open spans are shown, marked open
    a = recorder.end()
    recorder.begin("b")
    started_in_a.end()
    assert names(recorder) == ["crosses tests"]
    b = recorder.end()
    assert a is not None
    assert b is not None
    assert [s.name for s in recorder.open_spans(a)] == ["crosses tests"]  # still open when a ended
    assert [s.name for s in recorder.trace(a).open_spans] == ["crosses tests"]  # a's trace shows it open, as then
    assert recorder.open_spans(b) == ()


def test_open_spans_are_marked_open_in_the_trace(recorder: Recorder, provider: TracerProvider) -> None:
    window = recorder.begin("t")
    with provider.get_tracer("t").start_as_current_span("outer"):
        snapshot = recorder.trace(window)
    assert [s.name for s in snapshot.open_spans] == ["outer"]
    assert recorder.trace(window).open_spans == ()


def test_span_ended_on_another_thread_is_recorded(recorder: Recorder, provider: TracerProvider) -> None:
    window = recorder.begin("t")
    span = provider.get_tracer("t").start_span("threaded")
    thread = threading.Thread(target=span.end)
    thread.start()
    thread.join()
    assert [s.name for s in recorder.trace(window)] == ["threaded"]
    assert recorder.open_spans(window) == ()


def test_clear_hides_earlier_spans_but_keeps_checking_open_ones(recorder: Recorder, provider: TracerProvider) -> None:
    tracer = provider.get_tracer("t")
    window = recorder.begin("t")
    tracer.start_span("done").end()
    running = tracer.start_span("running")
    recorder.clear(window)
    assert names(recorder) == []
    assert [s.name for s in recorder.open_spans(window)] == ["running"]
    running.end()
    assert names(recorder) == ["running"]


def test_attach_twice_records_each_span_once(recorder: Recorder, provider: TracerProvider) -> None:
    recorder.attach(provider)
    recorder.begin("t")
    provider.get_tracer("t").start_span("once").end()
    assert names(recorder) == ["once"]


def test_attach_keeps_the_apps_processors_and_skips_subclass_side_effects() -> None:
    class DroppingProvider(TracerProvider):
        """Like phoenix.otel's: the ordinary add_span_processor would drop the app's default exporter."""

        def add_span_processor(self, *args: Any, **kwargs: Any) -> None:
            raise AssertionError("the recorder must not go through the subclass's add_span_processor")

    app_exporter = InMemorySpanExporter()
    app_provider = DroppingProvider()
    TracerProvider.add_span_processor(app_provider, SimpleSpanProcessor(app_exporter))
    recorder = Recorder()
    recorder.attach(app_provider)
    recorder.begin("t")
    app_provider.get_tracer("t").start_span("both").end()
    assert names(recorder) == ["both"]
    assert [s.name for s in app_exporter.get_finished_spans()] == ["both"]
    assert recorder.is_attached(app_provider)


def test_attach_to_a_non_sdk_provider_says_why_it_cannot() -> None:
    with pytest.raises(RecordingError, match=r"is opentelemetry\.trace\.NoOpTracerProvider, not an OpenTelemetry SDK"):
        Recorder().attach(NoOpTracerProvider())  # type: ignore[arg-type]


def test_app_provider_shutdown_does_not_stop_recording_from_others(
    recorder: Recorder, provider: TracerProvider
) -> None:
    other = TracerProvider()
    recorder.attach(other)
    other.shutdown()
    recorder.begin("t")
    provider.get_tracer("t").start_span("still recorded").end()
    assert names(recorder) == ["still recorded"]


def test_closed_recorder_records_nothing(recorder: Recorder, provider: TracerProvider) -> None:
    window = recorder.begin("t")
    recorder.close()
    provider.get_tracer("t").start_span("late").end()
    assert recorder.trace(window).spans == ()
    assert recorder.current is None


def refused_record() -> logging.LogRecord:
    return logging.LogRecord(
        "opentelemetry.trace",
        logging.WARNING,
        __file__,
        1,
        "Overriding of current TracerProvider is not allowed",
        (),
        None,
    )


def test_refused_override_is_a_problem_until_the_provider_is_attached(recorder: Recorder) -> None:
    handler = OverrideRefusedHandler(recorder)
    handler.handle(refused_record())  # between tests: carried over to the next one
    window = recorder.begin("t")
    problem = recorder.problem(window)
    assert problem is not None
    assert "OpenTelemetry ignored it" in str(problem)
    recorder.attach(TracerProvider())
    assert recorder.problem(window) is None
    assert recorder.problem(recorder.begin("next")) is None


def test_other_log_lines_are_not_mistaken_for_a_refusal(recorder: Recorder) -> None:
    record = refused_record()
    record.msg = "something else"
    OverrideRefusedHandler(recorder).handle(record)
    assert recorder.problem(recorder.begin("t")) is None


def test_open_spans_message_names_each_span(recorder: Recorder, provider: TracerProvider) -> None:
    window = recorder.begin("t")
    span = provider.get_tracer("t").start_span("ChatOllama")
    message = open_spans_message(recorder.open_spans(window))
    assert message.startswith("pytest-llmtrace: 1 span(s) started during this test were still open")
    assert message.endswith(f"  - 'ChatOllama' (span {span.get_span_context().span_id:016x})")


def test_describe_provider_names_the_class_users_wrote() -> None:
    assert describe_provider(TracerProvider()) == "the application's opentelemetry.sdk.trace.TracerProvider"
    assert describe_provider(TracerProvider(), own=True) == "pytest-llmtrace's own SDK TracerProvider"
