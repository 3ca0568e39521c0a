"""``llmtrace capture``: production traces from a Phoenix project into redacted, deduplicated golden files."""

from pytest_llmtrace.sources.capture.command import add_arguments, run

__all__ = ["add_arguments", "run"]
