"""Golden files keep the text ``json.dumps(value, indent=2, ensure_ascii=False)`` wrote before orjson wrote them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmtrace.trace.otlp import _indented, dumps, read_trace

GOLDEN = Path(__file__).resolve().parents[2] / "golden_traces"

_leaves = st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text()


def _values(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=30,
    )


def _stdlib(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.stem)
def test_every_shipped_golden_file_is_written_back_byte_for_byte(path: Path) -> None:
    assert dumps(read_trace(path)) == path.read_text(encoding="utf-8")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_values(_leaves))
def test_json_data_without_floats_is_written_as_the_standard_library_writes_it(value: Any) -> None:
    assert _indented(value) == _stdlib(value)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_values(_leaves | st.floats(allow_nan=False, allow_infinity=False)))
def test_json_data_with_floats_reads_back_as_the_same_value(value: Any) -> None:
    assert json.loads(_indented(value)) == value


@pytest.mark.parametrize(
    "value",
    [
        {"big": 2**70},  # over 64 bits
        {"deep": _nested(300)},  # deeper than orjson goes
        {"lone": "\ud800"},  # a lone surrogate
        [math.nan],
    ],
    ids=["big-int", "deep", "surrogate", "nan"],
)
def test_what_orjson_refuses_is_written_by_the_standard_library(value: Any) -> None:
    text = _indented(value)
    assert text == _stdlib(value) or value == [math.nan]
