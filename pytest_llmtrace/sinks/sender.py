"""The OTLP side of export: Phoenix's ``/v1/traces`` over HTTP (protobuf, the one encoding Phoenix accepts there),
behind a ``BatchSpanProcessor`` whose thread sends while the tests go on.

Imported only once export is on: OpenTelemetry's OTLP exporter pulls in requests and the protobuf classes, tens of
milliseconds at every pytest start that would not send anything.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import requests
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from pytest_llmtrace.core.errors import LLMTraceError
from pytest_llmtrace.sinks.phoenix_rest import auth_headers

EXPORT_TIMEOUT_S = 10.0  # one OTLP request, its retries included
MAX_QUEUE = 100_000  # spans waiting to be sent; past it the oldest are dropped (and counted as not sent)
SCHEDULE_DELAY_MS = 1000  # a batch leaves at least once a second, so little is left for the session end


class RedirectNotFollowed(LLMTraceError):
    """A 3xx answer to the spans' POST: they were not stored where the key and the data were meant to go."""


def _refuse_redirects(response: requests.Response, *args: object, **kwargs: object) -> None:
    if response.is_redirect:
        raise RedirectNotFollowed(f"{response.status_code} redirect to another address: not followed")


def _no_redirects_session() -> requests.Session:
    """A session whose redirect answers are errors.

    The exporter already posts with ``allow_redirects=False``, so neither the spans nor the key follow a redirect;
    but it takes any status below 400 for success, and a redirect would count every span as sent while none was.
    """
    session = requests.Session()
    session.hooks["response"].append(_refuse_redirects)
    return session


class CountingExporter(SpanExporter):
    """The OTLP exporter, counting what Phoenix took and what it did not, for the one warning at the end."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.sent = 0
        self.failed = 0
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:  # an exporter bug must not stop the batch thread; counted as not sent
            result = SpanExportResult.FAILURE
        with self._lock:
            if result is SpanExportResult.SUCCESS:
                self.sent += len(spans)
            else:
                self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()


def batch_processor(base_url: str, api_key: str | None) -> tuple[BatchSpanProcessor, CountingExporter]:
    exporter = CountingExporter(
        OTLPSpanExporter(
            endpoint=base_url + "/v1/traces",
            headers=auth_headers(api_key),
            timeout=EXPORT_TIMEOUT_S,
            session=_no_redirects_session(),
        )
    )
    processor = BatchSpanProcessor(exporter, max_queue_size=MAX_QUEUE, schedule_delay_millis=SCHEDULE_DELAY_MS)
    return processor, exporter
