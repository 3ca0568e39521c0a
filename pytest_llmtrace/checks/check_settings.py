"""The checks' knobs as pytest sees them: ini settings and the ``llmtrace`` marker, generated from ``CheckOptions``.

The ini keys' defaults and help and the marker's help line are derived from ``CheckOptions``' fields, so a default
or a new knob is added there once and cannot drift between the ini file, the marker and the ``llmtrace_check``
helpers. Marks are applied per test here (``options_for``), and all of them once at collection (``validate_marks``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any

import pytest

from pytest_llmtrace.checks.names import CHECKS
from pytest_llmtrace.checks.options import MARKER_ARGUMENTS, CheckOptions
from pytest_llmtrace.core.errors import number_text
from pytest_llmtrace.core.settings import SettingSpec, declare

MARKER = "llmtrace"


def _ini_text(value: Any) -> str:
    """A default as the ini would spell it, so ``--help`` shows what ``CheckOptions()`` really holds."""
    if value is None:
        return "auto"
    if isinstance(value, frozenset):
        return " ".join(name for name in CHECKS if name in value)
    if isinstance(value, Mapping):
        return " ".join(f"{k}={number_text(v)}" for k, v in value.items())
    if isinstance(value, (int, float)):
        return number_text(value)
    return str(value)


_DEFAULTS = CheckOptions()

# The ini keys, options and env variables of the check knobs: llmtrace_<field name>.
CHECK_SETTINGS: tuple[SettingSpec, ...] = declare(
    *(
        SettingSpec(
            f.name,
            f.metadata["knob"].help,
            _ini_text(getattr(_DEFAULTS, f.name)),
            choices=f.metadata["knob"].choices,
            env=f.metadata["knob"].env,
        )
        for f in fields(CheckOptions)
    )
)

MARKER_HELP = (
    f"{MARKER}("
    + ", ".join(f"{name}={'()' if name == 'skip_checks' else 'None'}" for name in MARKER_ARGUMENTS)
    + "): tune the checks of a golden case or of the llmtrace_check helpers (None: the session's setting)"
)


def options_for(item: pytest.Item, base: CheckOptions) -> CheckOptions:
    """``base`` with the item's ``llmtrace`` marks applied, the closest mark last (it wins)."""
    options = base
    for mark in reversed(list(item.iter_markers(MARKER))):
        options = options.with_marker(mark, item.nodeid)
    return options


def validate_marks(items: Iterable[pytest.Item], base: CheckOptions) -> None:
    """Apply every ``llmtrace`` mark once, at collection: a typo stops the run with its location, not mid-run."""
    for item in items:
        options_for(item, base)
