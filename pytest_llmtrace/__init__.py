"""pytest-llmtrace: trace-based regression testing for LLM applications."""

from pytest_llmtrace.errors import LLMTraceError, RecordingError, TraceFormatError, TraceFormatWarning
from pytest_llmtrace.trace.model import LLMCall, Message, Span, SqlStatement, Status, Trace
from pytest_llmtrace.trace.otlp import read_trace, write_trace

__all__ = [
    "LLMCall",
    "LLMTraceError",
    "Message",
    "RecordingError",
    "Span",
    "SqlStatement",
    "Status",
    "Trace",
    "TraceFormatError",
    "TraceFormatWarning",
    "read_trace",
    "write_trace",
]
