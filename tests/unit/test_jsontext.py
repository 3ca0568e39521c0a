"""The fast golden-file writer must write exactly what ``json.dumps(value, indent=2, ensure_ascii=False)`` writes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmtrace.trace.jsontext import dumps_indented
from pytest_llmtrace.trace.otlp import read_trace, trace_to_request

GOLDEN = Path(__file__).resolve().parents[2] / "golden_traces"

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def _stdlib(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(values)
def test_any_json_value_is_written_as_the_standard_library_writes_it(value: Any) -> None:
    assert dumps_indented(value) == _stdlib(value)


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.stem)
def test_every_golden_file_is_written_as_before(path: Path) -> None:
    document = trace_to_request(read_trace(path))
    assert dumps_indented(document) == _stdlib(document)


@pytest.mark.parametrize(
    "value",
    [
        {"a": (1, 2)},  # a tuple: json.dumps writes a list
        {1: "x", None: "y", 2.5: True},  # keys json.dumps turns into strings by its own rules
        [math.nan, math.inf, -math.inf, 1e100, -0.0],
        {"deep": _nested(80)},  # deeper than the fast writer goes
        {"ünïcode": '日本語\u2028\x00"\\'},
        True,
        "text",
    ],
)
def test_values_outside_plain_json_data_fall_back_to_the_standard_library(value: Any) -> None:
    assert dumps_indented(value) == _stdlib(value)


def test_a_cycle_is_refused_as_the_standard_library_refuses_it() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="Circular reference"):
        dumps_indented(cycle)
