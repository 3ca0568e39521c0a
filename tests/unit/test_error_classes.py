"""Every exception the package raises on purpose is an ``LLMTraceError``, so a caller can catch them all at once.

Not ``Exception``s are left out on purpose: ``RunStopped`` is a ``KeyboardInterrupt`` so that no ``except Exception``
swallows a SIGTERM.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest_llmtrace
from pytest_llmtrace.core.errors import LLMTraceError


def _exception_classes() -> dict[str, type[Exception]]:
    found: dict[str, type[Exception]] = {}
    for info in pkgutil.walk_packages(pytest_llmtrace.__path__, "pytest_llmtrace."):
        if info.name == "pytest_llmtrace.__main__":
            continue  # runs the command line
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, Exception)
                and not issubclass(value, Warning)
                and value.__module__ == module.__name__
            ):
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_exception_class_of_the_package_is_an_llmtrace_error() -> None:
    classes = _exception_classes()
    assert "pytest_llmtrace.results.gate.GateError" in classes  # the walk sees the package
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, LLMTraceError))
    assert outside == [], outside
