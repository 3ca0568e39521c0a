"""Hostile and broken documents never crash a loader: each one is a trace or a ``TraceFormatError``.

Golden files and exports come from production, so every reader gets generated documents (see ``fuzzdocs.py``):
``read_trace``, ``import_file`` and ``load_traces`` for every format (OTLP JSON and JSONL, Phoenix REST, otlpv1 and
dataframe shapes, parquet) and the importer behind ``llmtrace import``. The only exception allowed is
``TraceFormatError``. Besides "no crash", each document checks that the loaders agree with each other and that every
file the importer writes reads back to the same text.

Reproducible: ``derandomize=True``, so every run generates the same documents. The count, time and outcomes are
printed (``pytest -s``); ``LLMTRACE_FUZZ_DOCUMENTS=100000`` runs a longer hunt. About a minute of CPU, hence ``slow``.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fuzzdocs
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from support import load_traces

from pytest_llmtrace.cli import INTERNAL_ERROR, import_sources, one_line
from pytest_llmtrace.core.errors import TraceFormatError
from pytest_llmtrace.trace.otlp import dumps, read_trace

# At least 10,000 documents in every run: 500 from the shrinkable strategies, the rest seeded, four an example.
DOCUMENTS = max(10_000, int(os.environ.get("LLMTRACE_FUZZ_DOCUMENTS", "0") or 0))
STRUCTURED = 500
SEEDED_EXAMPLES = -(-(DOCUMENTS - STRUCTURED) // fuzzdocs.BATCH)
MAX_BYTES = 1_000_000  # low, so the size limit is in play for the 100,000-level documents too
FUZZ_SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


# -- the shrinkable part: Hypothesis-native strategies (the rest is seeded, see fuzzdocs.py) --------------------------

texts = st.one_of(st.text(max_size=12), st.sampled_from(fuzzdocs.WEIRD_STRINGS))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=8,
)
fragments = st.sampled_from(fuzzdocs.RAW_FRAGMENTS)
times = st.one_of(st.sampled_from(["100", "200", 100, "0"]), scalars, fragments)


def ids(size: int) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(fuzzdocs.HEX_IDS_16 if size == 16 else fuzzdocs.HEX_IDS_8), scalars)


any_value = st.one_of(
    st.fixed_dictionaries({"stringValue": texts}),
    st.fixed_dictionaries({"intValue": st.one_of(scalars, fragments)}),
    st.fixed_dictionaries({"doubleValue": st.one_of(scalars, st.sampled_from(["NaN", "inf"]))}),
    st.fixed_dictionaries({"arrayValue": st.fixed_dictionaries({"values": st.lists(json_values, max_size=2)})}),
    json_values,
)
otlp_span = st.fixed_dictionaries(
    {
        "traceId": ids(16),
        "spanId": ids(8),
        "name": texts,
        "startTimeUnixNano": times,
        "endTimeUnixNano": times,
        "attributes": st.lists(st.fixed_dictionaries({"key": texts, "value": any_value}), max_size=2),
    },
    optional={"parentSpanId": ids(8), "status": st.fixed_dictionaries({"code": scalars}), "kind": scalars},
)
rest_span = st.fixed_dictionaries(
    {
        "name": texts,
        "context": st.fixed_dictionaries({"trace_id": ids(16), "span_id": ids(8)}),
        "span_kind": texts,
        "start_time": st.one_of(st.just("2026-11-23T17:57:35Z"), texts),
        "status_code": st.sampled_from(["OK", "ERROR", "bad"]),
        "attributes": st.dictionaries(texts, json_values, max_size=3),
    }
)
dataframe_record = st.fixed_dictionaries(
    {"context.span_id": ids(8), "context.trace_id": ids(16), "name": texts, "start_time": times},
    optional={"attributes.input": json_values, "attributes.input.value": scalars, "end_time": st.floats()},
)
structured_values = st.one_of(
    st.fixed_dictionaries(
        {
            "resourceSpans": st.lists(
                st.fixed_dictionaries(
                    {
                        "scopeSpans": st.lists(
                            st.fixed_dictionaries({"spans": st.lists(otlp_span, max_size=3)}), max_size=2
                        )
                    }
                ),
                min_size=1,
                max_size=2,
            )
        }
    ),
    st.fixed_dictionaries({"data": st.lists(st.one_of(rest_span, dataframe_record), max_size=3)}),
    st.lists(rest_span, min_size=1, max_size=2),
    dataframe_record,
    json_values,
)
structured_documents = st.one_of(
    st.builds(lambda v, i: fuzzdocs.to_bytes(fuzzdocs.encode(v, i)), structured_values, st.sampled_from([None, 2])),
    st.lists(structured_values, min_size=2, max_size=3).map(
        lambda vs: fuzzdocs.to_bytes("\n".join(fuzzdocs.encode(v) for v in vs))
    ),
    st.binary(max_size=48),
    st.binary(max_size=48).map(lambda b: b"PAR1" + b),
)


def outcome(load: Callable[[], Any]) -> Any:
    """The loader's result, or the ``TraceFormatError`` it raised; anything else propagates and fails the test."""
    try:
        return load()
    except TraceFormatError as exc:
        return exc


@contextlib.contextmanager
def quiet() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        warnings.simplefilter("ignore")
        yield out, err


class Feeder:
    """Feeds one document to every loader and the importer; counts what happened."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.stats: Counter[str] = Counter()

    def __call__(self, data: bytes, kind: str) -> None:
        n = self.stats["documents"]
        self.stats["documents"] += 1
        self.stats[kind] += 1
        # A new file each time: truncating a file costs milliseconds on ext4, a new one microseconds.
        source = self.workdir / f"doc-{n}.json"
        out = self.workdir / f"out-{n}"
        source.write_bytes(data)
        try:
            self.check(source, out)
        finally:
            source.unlink()
            for written in out.glob("*") if out.exists() else ():
                written.unlink()
            if out.exists():
                out.rmdir()

    def check(self, source: Path, out: Path) -> None:
        # load_traces is import_file(...).traces, and import_sources calls import_file: all three run on each file.
        with quiet():
            single = outcome(lambda: read_trace(source, max_bytes=MAX_BYTES))
            imported = outcome(lambda: load_traces(source, max_bytes=MAX_BYTES))
        with quiet() as (_, err):
            code = import_sources([source], out, max_bytes=MAX_BYTES)
        lines = err.getvalue().splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        self.stats["read_trace: " + ("refused" if isinstance(single, TraceFormatError) else "a trace")] += 1
        self.stats["load_traces: " + ("refused" if isinstance(imported, TraceFormatError) else "traces")] += 1

        assert not any(INTERNAL_ERROR in line for line in errors)
        assert all(line.startswith(("error: ", "warning: ")) for line in lines), lines  # one line per message
        if not isinstance(single, TraceFormatError):  # a valid golden file imports as itself
            assert not isinstance(imported, TraceFormatError), imported
            assert [dumps(t) for t in imported] == [dumps(single)]
        if isinstance(imported, TraceFormatError):
            assert code == 1
            assert errors == [f"error: {one_line(str(imported))}"]
            assert errors[0].startswith(f"error: {source}: at ")
            return
        # Every file the importer wrote is a golden file that reads back to the same text.
        for written in out.glob("*.json"):
            with quiet():
                again = read_trace(written)
            assert dumps(again) == written.read_text(encoding="utf-8")
            self.stats["golden files written"] += 1
        if code != 0:  # only two traces that get one file name (same question, same id prefix) may fail
            assert all("import them into different directories" in line for line in errors), errors


@pytest.mark.slow
def test_loaders_and_importer_survive_generated_documents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The importer fsyncs each golden file before renaming it into place; that durability is not what this test is
    # about, and thousands of fsyncs on a busy disk would make it slow. Everything else runs as users run it.
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    feed = Feeder(tmp_path)

    @settings(FUZZ_SETTINGS, max_examples=STRUCTURED)
    @given(structured_documents)
    def structured(data: bytes) -> None:
        feed(data, "structured (Hypothesis strategies)")

    @settings(FUZZ_SETTINGS, max_examples=SEEDED_EXAMPLES)
    @given(fuzzdocs.seeded)
    def seeded(seed: int) -> None:
        for kind, document_seed in fuzzdocs.batch(seed):
            note(f"document: fuzzdocs.generate({kind!r}, {document_seed})")  # printed if this one fails
            feed(fuzzdocs.generate(kind, document_seed), "seeded: " + kind)

    started, cpu_started = time.perf_counter(), time.process_time()
    structured()
    seeded()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started

    stats = feed.stats
    print(f"\nfuzzed {stats['documents']:,} documents in {elapsed:.1f} s ({cpu:.1f} s of CPU)")
    for name, count in sorted(stats.items()):
        print(f"  {name}: {count:,}")
    assert stats["documents"] >= DOCUMENTS
    # The mix reaches deep into the loaders: each outcome happens often.
    for outcome_name in ("read_trace: a trace", "load_traces: traces", "read_trace: refused", "load_traces: refused"):
        assert stats[outcome_name] >= DOCUMENTS // 20, (outcome_name, stats)
    assert stats["golden files written"] >= DOCUMENTS // 20
