"""pytest-llmtrace: trace-based regression testing for LLM applications.

The public API: the trace model and its golden-file format, the errors users catch, the types the fixtures
return (for type hints in tests), and ``register_backend`` for a service backend of one's own.
"""

from pytest_llmtrace.core.errors import LLMTraceError, RecordingError, TraceFormatError, TraceFormatWarning
from pytest_llmtrace.pytest.checker import Checker
from pytest_llmtrace.pytest.recording import TestRecording
from pytest_llmtrace.services.backends import BackendContext, ServiceBackend, register_backend
from pytest_llmtrace.services.base import Endpoint, ServiceStartError
from pytest_llmtrace.services.postgres import PostgresDatabase
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.otlp import read_trace, write_trace
from pytest_llmtrace.trace.span import Span, Status
from pytest_llmtrace.trace.views import LLMCall, Message, SqlStatement

__all__ = [
    "BackendContext",
    "Checker",
    "Endpoint",
    "LLMCall",
    "LLMTraceError",
    "Message",
    "PostgresDatabase",
    "RecordingError",
    "ServiceBackend",
    "ServiceStartError",
    "Span",
    "SqlStatement",
    "Status",
    "TestRecording",
    "Trace",
    "TraceFormatError",
    "TraceFormatWarning",
    "read_trace",
    "register_backend",
    "write_trace",
]
