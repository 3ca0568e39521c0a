"""The pytest glue: fixtures, golden items, ``llmtrace_check``, the span recording, the verdict edge, and
the services, the run's results and the Phoenix export as the hooks see them."""
