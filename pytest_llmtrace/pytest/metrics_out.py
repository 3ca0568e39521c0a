"""``--llmtrace-metrics FILE``, ``--llmtrace-pushgateway URL`` and ``--llmtrace-otlp-metrics URL``: the run's metrics
for Prometheus (or an OTLP collector), at session end.

Written on the controller only (or by a serial run), from the merged cases, so under xdist each case counts once.
The file is the node exporter's textfile-collector format, written by ``prometheus_client.write_to_textfile``
(a temporary file renamed over the target, so the collector never reads half a file). The push goes to the
Pushgateway under job ``llmtrace``, grouped by the run's id, so runs do not overwrite each other's series.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_llmtrace.core import settings as session_settings
from pytest_llmtrace.core.errors import first_line
from pytest_llmtrace.core.settings import SettingSpec, declare
from pytest_llmtrace.core.url_secrets import redact_url
from pytest_llmtrace.pytest.run_state import RunResults
from pytest_llmtrace.results import otlp_metrics
from pytest_llmtrace.results.prom_metrics import RunCollector, registry_of

PUSH_JOB = "llmtrace"
PUSH_TIMEOUT_S = 10.0

METRICS_SETTINGS: tuple[SettingSpec, ...] = declare(
    SettingSpec(
        "metrics",
        "Write the run's Prometheus metrics to this file at session end (text format, atomically: for the node "
        "exporter's textfile collector).",
        "",
    ),
    SettingSpec(
        "pushgateway",
        f"Push the run's Prometheus metrics to this Pushgateway URL at session end (job {PUSH_JOB}, grouped by run).",
        "",
    ),
    SettingSpec(
        "otlp_metrics",
        "Send the run's metrics over OTLP/HTTP to this endpoint at session end, e.g. http://localhost:4318/v1/metrics.",
        "",
    ),
)


def write(config: pytest.Config, state: RunResults, meta: dict[str, Any]) -> None:
    """Write the file and push, as configured; a failure is kept in ``state.metrics_error`` for the summary."""
    settings = session_settings.of(config)
    target, gateway, otlp = settings["metrics"], settings["pushgateway"], settings["otlp_metrics"]
    if not target and not gateway and not otlp:
        return
    budget = None if state.slo is None or state.error_budget is None else (str(state.slo), state.error_budget)
    errors = []
    if otlp:
        try:
            otlp_metrics.send(otlp, state.cases, meta, state.gate_results, budget)
        except Exception as exc:  # the exporter's own errors, a refused connection: reported, the run goes on
            errors.append(f"OTLP to {redact_url(otlp)}: {first_line(exc)}")
    if not target and not gateway:
        state.metrics_error = "; ".join(errors) or None
        return
    registry = registry_of(RunCollector(state.cases, meta, state.gate_results, budget))
    from prometheus_client import push_to_gateway, write_to_textfile

    if target:
        path = config.rootpath / target
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_to_textfile(str(path), registry)
        except OSError as exc:
            errors.append(f"{path}: {first_line(exc)}")
    if gateway:
        try:
            push_to_gateway(
                gateway, job=PUSH_JOB, registry=registry, grouping_key={"run": state.run_id}, timeout=PUSH_TIMEOUT_S
            )
        except Exception as exc:  # urllib's URLError, HTTPError, a refused connection: the run still reports
            errors.append(f"push to {redact_url(gateway)}: {first_line(exc)}")
    state.metrics_error = "; ".join(errors) or None
