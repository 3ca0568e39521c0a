"""The plugin's own queries kept out of the traces it records.

An app that auto-instruments its database driver (``opentelemetry-instrumentation-psycopg2``) instruments the whole
process, so the sandbox guard's and the watchdog's queries, made while a case's spans are recorded, would land in the
case's trace as root spans: spans the app never made, and as many as the guard's reads, which depend on what else ran
on the server. OpenTelemetry's instrumentations skip their work while the context holds the suppression key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from opentelemetry import context

# The key instrumentations check (``opentelemetry.instrumentation.utils.is_instrumentation_enabled``), and the plain
# string older ones read; the API keeps the first under a private name, but it is the contract they share.
_KEYS = (getattr(context, "_SUPPRESS_INSTRUMENTATION_KEY", "suppress_instrumentation"), "suppress_instrumentation")


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    ctx = context.get_current()
    for key in _KEYS:
        ctx = context.set_value(key, True, ctx)
    token = context.attach(ctx)
    try:
        yield
    finally:
        context.detach(token)
