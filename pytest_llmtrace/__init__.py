"""pytest-llmtrace: trace-based regression testing for LLM applications.

The public API: the trace model and its golden-file format, the errors users catch, and the types the fixtures
return (for type hints in tests).
"""

from pytest_llmtrace.checker import Checker
from pytest_llmtrace.errors import LLMTraceError, RecordingError, TraceFormatError, TraceFormatWarning
from pytest_llmtrace.recording import TestRecording
from pytest_llmtrace.services.base import Endpoint, ServiceStartError
from pytest_llmtrace.services.session import PostgresDatabase
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.otlp import read_trace, write_trace
from pytest_llmtrace.trace.span import Span, Status
from pytest_llmtrace.trace.views import LLMCall, Message, SqlStatement

__all__ = [
    "Checker",
    "Endpoint",
    "LLMCall",
    "LLMTraceError",
    "Message",
    "PostgresDatabase",
    "RecordingError",
    "ServiceStartError",
    "Span",
    "SqlStatement",
    "Status",
    "TestRecording",
    "Trace",
    "TraceFormatError",
    "TraceFormatWarning",
    "read_trace",
    "write_trace",
]
