"""Generators of broken and hostile trace documents for ``test_fuzz_loaders.py``.

Two kinds, because Hypothesis pays per draw:

- Hypothesis strategies (in ``test_fuzz_loaders.py``: skeletons of every format with wrong types, JSONL framing).
  Slow to draw (~10 ms a document) but shrinkable: a failure comes back as a small document.
- ``seeded`` (here): one Hypothesis-drawn seed drives ``random.Random`` through the same ideas at ~0.2 ms a
  document, four documents an example, which is what makes ten thousand documents affordable. A failure names the
  kind and seed of the document (``generate(kind, seed)`` gives it again).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from pytest_llmtrace.trace.safejson import MAX_DEPTH, MAX_NUMBER_CHARS

ROOT = Path(__file__).parent.parent.parent
PHOENIX = ROOT / "tests" / "data" / "phoenix"


def _first_trace(text: str) -> str:
    """A Phoenix page cut to its first trace's spans: a third of the size, and size is what each document costs."""
    page = json.loads(text)
    first = page["data"][0].get("context", page["data"][0]).get("trace_id")
    page["data"] = [s for s in page["data"] if s.get("context", s).get("trace_id") == first]
    return json.dumps(page)


SEED_TEXTS = {
    "rest": _first_trace((PHOENIX / "rest_spans.json").read_text(encoding="utf-8")),
    "otlpv1": _first_trace((PHOENIX / "spans_otlpv1.json").read_text(encoding="utf-8")),
    "traces": (PHOENIX / "traces_include_spans.json").read_text(encoding="utf-8"),
    "golden": (ROOT / "golden_traces" / "error_unknown_table.json").read_text(encoding="utf-8"),
    "golden2": (ROOT / "golden_traces" / "customers_by_tier.json").read_text(encoding="utf-8"),
}
DATAFRAME_JSONL = "\n".join((PHOENIX / "spans_dataframe.jsonl").read_text(encoding="utf-8").splitlines()[:3])
PARQUET = (PHOENIX / "spans_dataframe.parquet").read_bytes()
BYTE_SEEDS = [*(t.encode() for t in SEED_TEXTS.values()), DATAFRAME_JSONL.encode(), PARQUET]

WEIRD_STRINGS = [
    "",
    " ",
    "\u2028",
    "a\u2029b\x85c",
    "\x00",
    "\ufeff",
    "\u202e\u0644\u0627",
    "e\u0301",
    "\U0001f4a5" * 3,
    "\udcff",
    "\ud800",
    "\u0661\u0662\u0663",  # Arabic-Indic digits: int() takes them, the loaders must not
    "\u00b2",  # superscript two: str.isdigit() says yes, int() says no
    "NaN",
    "-Infinity",
    "inf",
    "0x10",
    "1e999",
    "-5",
    "9" * 25,
    "1" * 5000,
    "2026-11-23T17:57:35.004780+00:00",
    "2026-11-23T17:57:35Z",
    "\uff12\uff10\uff12\uff16-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999-23:59",
    "0000-01-01T00:00:00Z",
    "1970-01-01T00:00:00+99:99",
    "AAAAAAAAAAAAAAAA",
    "AAAAAAAAAAAAAAAAAAAAAA==",
    "0" * 16,
    "0" * 32,
    "f" * 32,
    "llm.input_messages." + "9" * 5000 + ".message.role",
    "llm.input_messages.\u00b2.message.role",
    "a.\u00b2",
    "a.b",
    "key\nwith newline",
    "x" * 2000,
    "postgresql://app:s3cret@db:5432/shop?sslpassword=hunter2",
    "Bearer abc123def456",
]
HEX_IDS_16 = ["0af7651916cd43dd8448eb211c80319c", "1bcf109c28b2f1db9f4ba242b348dbb0", "CvdlGRbNQ92ESOshHIAxnA=="]
HEX_IDS_8 = ["b7ad6b7169203331", "3eda0dd7882da166", "t61rcWkgMzE="]
KEYS = ["input.value", "output.value", "llm.token_count.prompt", "db.query.text", "a", "a.b", "metadata", "api_key"]


class Raw(str):
    """A JSON fragment written as is: deep nesting, a 5,000-digit number, a NaN literal, a surrogate escape."""


def nested(depth: int, kind: str) -> Raw:
    if kind == "[":
        return Raw("[" * depth + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


RAW_FRAGMENTS = [
    *(nested(d, k) for d in (MAX_DEPTH - 2, MAX_DEPTH, MAX_DEPTH + 1, 1_000, 100_000) for k in "[{"),
    *(Raw("1" * n) for n in (19, 20, 21, MAX_NUMBER_CHARS, MAX_NUMBER_CHARS + 1, 4_300, 4_301, 5_000)),
    *(Raw('"' + "1" * n + '"') for n in (20, 41, 5_000)),
    *(Raw("-" + "9" * n + ".5e3") for n in (50, 200, 5_000)),
    *(Raw(t) for t in ("NaN", "Infinity", "-Infinity", "1e999", "-1e400", "1e-400", "-0", "1E308", "0.0")),
    *(Raw(t) for t in ("18446744073709551616", "9223372036854775808", "-9223372036854775809", "1.5")),
    *(Raw(t) for t in ('"\\ud800"', '"\\udc00x"', '"\\ud83d\\ude00"', '"a\\u0000b"', '"\\u2028"')),
]


def encode(value: Any, indent: int | None = None, ascii_only: bool = True) -> str:
    """``json.dumps`` that writes ``Raw`` fragments verbatim (placeholders, then substitution)."""
    fragments: list[str] = []

    def swap(node: Any) -> Any:
        if isinstance(node, Raw):
            fragments.append(str(node))
            return f"\x00RAW{len(fragments) - 1}\x00"
        if isinstance(node, dict):
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        return node

    text = json.dumps(swap(value), indent=indent, ensure_ascii=ascii_only)
    for i, fragment in enumerate(fragments):
        text = text.replace(json.dumps(f"\x00RAW{i}\x00"), fragment)
    return text


def to_bytes(text: str) -> bytes:
    """UTF-8, with lone surrogates written as the (invalid) bytes they would have in CESU-8."""
    return text.encode("utf-8", "surrogatepass")


def nodes(value: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) pair, so a mutation can hit any place in a document."""
    found: list[tuple[Any, Any]] = []
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, child in node.items():
                found.append((node, key))
                stack.append(child)
        elif isinstance(node, list):
            for i, child in enumerate(node):
                found.append((node, i))
                stack.append(child)
    return found


# -- seeded generation ------------------------------------------------------------------------------------------------


def random_text(r: random.Random) -> str:
    roll = r.random()
    if roll < 0.5:
        return r.choice(WEIRD_STRINGS)
    if roll < 0.8:
        return "".join(chr(r.randrange(0x20, 0x7F)) for _ in range(r.randrange(12)))
    return "".join(chr(r.randrange(0x110000)) for _ in range(r.randrange(8)))  # surrogates and controls included


def random_scalar(r: random.Random) -> Any:
    return r.choice(
        [
            None,
            True,
            False,
            r.randrange(-(2**70), 2**70),
            r.randrange(-3, 300),
            r.uniform(-1e20, 1e20),
            r.choice([0.0, -0.0, 1e308, 5e-324, 0.5]),
            random_text(r),
            random_text(r),
            r.choice(RAW_FRAGMENTS),
        ]
    )


def random_value(r: random.Random, depth: int = 0) -> Any:
    if depth > 3 or r.random() < 0.55:
        return random_scalar(r)
    if r.random() < 0.5:
        return [random_value(r, depth + 1) for _ in range(r.randrange(4))]
    return {random_text(r) if r.random() < 0.5 else r.choice(KEYS): random_value(r, depth + 1) for _ in range(3)}


def mutate(r: random.Random, value: Any, rounds: int) -> Any:
    for _ in range(rounds):
        places = nodes(value)
        if not places:
            break
        container, key = r.choice(places)
        current = container[key]
        action = r.randrange(9)
        if action == 0:
            del container[key]
        elif action == 1 and isinstance(container, list):
            container.insert(key, json.loads(json.dumps(current)) if not isinstance(current, Raw) else current)
        elif action == 2:  # the same value as another type
            container[key] = r.choice([str(current)[:60], [current], {"v": current}, None, 7, -1, True, 1.5])
        elif action == 3 and isinstance(current, str):  # a string that is still a string
            container[key] = random_text(r)
        elif action == 4 and isinstance(current, (int, float)) and not isinstance(current, bool):
            container[key] = r.choice([current * 10 ** r.randrange(30), -current, current + 0.5, str(current)])
        elif action == 5:
            container[key] = r.choice(RAW_FRAGMENTS)
        elif action == 6 and isinstance(container, dict):
            container[random_text(r) if r.random() < 0.5 else r.choice(KEYS)] = random_value(r)
        else:
            container[key] = random_value(r)
    return value


def mutated_export(r: random.Random) -> bytes:
    name = r.choice([*SEED_TEXTS, "dataframe"])
    rounds = r.choice([1, 1, 1, 2, 3, 5])
    if name == "dataframe":
        lines = [
            mutate(r, json.loads(line), rounds) if r.random() < 0.5 else json.loads(line)
            for line in DATAFRAME_JSONL.splitlines()
        ]
        return to_bytes("\n".join(encode(line) for line in lines))
    text = encode(mutate(r, json.loads(SEED_TEXTS[name]), rounds), r.choice([None] * 9 + [2]), r.random() < 0.5)
    if r.random() < 0.1:
        text = text.replace('"name":', '"name": "dup", "name":', 1)  # a duplicate key
    return to_bytes(text)


def golden_variant(r: random.Random) -> bytes:
    """A real golden file with type-keeping changes (odd text, numbers in range, spans reordered or dropped): mostly
    still valid, so the whole path runs (trace model, redaction, file names from odd questions, the writer).
    """
    value = json.loads(SEED_TEXTS[r.choice(["golden", "golden2"])])
    strings = [(c, k) for c, k in nodes(value) if isinstance(c[k], str) and k not in ("traceId", "spanId", "key")]
    for container, key in r.sample(strings, min(len(strings), r.randrange(1, 4))):
        if not key.endswith("UnixNano"):
            container[key] = random_text(r) if r.random() < 0.7 else container[key] + r.choice(WEIRD_STRINGS)
        else:
            container[key] = str(r.randrange(0, 2**64))
    spans = value["resourceSpans"][0]["scopeSpans"][0]["spans"]
    if r.random() < 0.3:
        r.shuffle(spans)
    if r.random() < 0.2 and len(spans) > 1:
        del spans[r.randrange(1, len(spans))]
    return to_bytes(encode(value, r.choice([None, 2]), r.random() < 0.5))


def byte_mutation(r: random.Random) -> bytes:
    """Real files cut short, with bytes flipped, inserted or repeated: broken syntax, invalid UTF-8, bad parquet."""
    data = bytearray(r.choice(BYTE_SEEDS))
    for _ in range(r.randrange(1, 4)):
        at = r.randrange(len(data) + 1)
        action = r.randrange(5)
        if action == 0:
            del data[at:]
        elif action == 1 and at < len(data):
            data[at] ^= r.randrange(1, 256)
        elif action == 2:
            data[at:at] = bytes(r.randrange(256) for _ in range(r.randrange(1, 8)))
        elif action == 3:
            data[at:at] = data[at : at + r.randrange(1, 200)] * r.randrange(1, 4)
        else:
            data[at:at] = r.choice([b"\n", b"\r\n", b"\xef\xbb\xbf", b"\xed\xa0\x80", b"\xc0\xaf"])
    return bytes(data)


def maybe(r: random.Random, good: Any) -> Any:
    """Usually the right value (how usually is drawn per document); otherwise the wrong type or a hostile fragment."""
    return good if r.random() < getattr(r, "good", 0.85) else random_scalar(r)


def otlp_attributes(r: random.Random, depth: int = 0) -> list[Any]:
    makers: dict[str, Callable[[], Any]] = {
        "stringValue": lambda: random_text(r),
        "intValue": lambda: r.choice([str(r.randrange(-(2**64), 2**64)), r.randrange(100), "12"]),
        "doubleValue": lambda: r.choice([1.5, "NaN", "Infinity", "-inf", 3]),
        "boolValue": lambda: r.choice([True, False]),
        "bytesValue": lambda: r.choice(["AAE=", "zz", ""]),
        "arrayValue": lambda: {"values": [{"stringValue": "x"}, {"intValue": "1"}][: r.randrange(3)]},
        "kvlistValue": lambda: {"values": otlp_attributes(r, depth + 1) if depth < 3 else []},
    }
    out = []
    for _ in range(r.randrange(4)):
        kind = r.choice(list(makers))
        out.append({"key": maybe(r, r.choice(KEYS)), "value": maybe(r, {kind: maybe(r, makers[kind]())})})
    return out


def otlp_skeleton(r: random.Random) -> dict[str, Any]:
    spans = []
    for i in range(r.randrange(1, 5)):
        start = r.choice([100, 1_795_456_655_004_780_000, 2**64 - 1])
        span: dict[str, Any] = {
            "traceId": maybe(r, r.choice(HEX_IDS_16)),
            "spanId": maybe(r, r.choice(HEX_IDS_8) if r.random() < 0.3 else f"{i + 1:016x}"),
            "name": maybe(r, random_text(r)),
            "startTimeUnixNano": maybe(r, str(start)),
            "endTimeUnixNano": maybe(r, r.choice([str(start + 5), "0", start, float(start)])),
            "attributes": maybe(r, otlp_attributes(r)),
        }
        if i and r.random() < 0.8:
            span["parentSpanId"] = maybe(r, f"{r.randrange(1, i + 2):016x}")
        for key, good in [
            ("kind", r.randrange(6)),
            ("status", {"code": r.randrange(3), "message": random_text(r)}),
            ("events", [{"name": "exception", "timeUnixNano": str(start), "attributes": otlp_attributes(r)}]),
            ("links", [{"traceId": r.choice(HEX_IDS_16), "spanId": r.choice(HEX_IDS_8)}]),
            ("flags", r.choice([0, 256, 2**32])),
            ("droppedAttributesCount", r.randrange(3)),
        ]:
            if r.random() < 0.3:
                span[key] = maybe(r, good)
        spans.append(span)
    return {"resourceSpans": [{"resource": {"attributes": otlp_attributes(r)}, "scopeSpans": [{"spans": spans}]}]}


def phoenix_skeleton(r: random.Random) -> Any:
    trace_id, items = r.choice(HEX_IDS_16), []
    for i in range(r.randrange(1, 4)):
        span_id = f"{i + 1:016x}"
        shape = r.randrange(3)
        if shape == 0:
            item: dict[str, Any] = {
                "name": maybe(r, "root"),
                "context": maybe(r, {"trace_id": maybe(r, trace_id), "span_id": maybe(r, span_id)}),
                "span_kind": maybe(r, r.choice(["LLM", "CHAIN", "UNKNOWN"])),
                "parent_id": maybe(r, None if i == 0 else "0000000000000001"),
                "start_time": maybe(r, r.choice(["2026-11-23T17:57:35.004780+00:00", random_text(r)])),
                "end_time": maybe(r, "2026-11-23T17:57:36+00:00"),
                "status_code": maybe(r, "OK"),
                "attributes": maybe(r, {r.choice(KEYS): random_value(r) for _ in range(3)}),
                "events": maybe(r, []),
            }
        elif shape == 1:
            item = {
                "trace_id": maybe(r, trace_id),
                "span_id": maybe(r, span_id),
                "name": maybe(r, "root"),
                "start_time_unix_nano": maybe(r, r.choice([1.7e18, 100, "100"])),
                "end_time_unix_nano": maybe(r, r.choice([1.8e18, 200, None])),
                "status": maybe(r, {"code": 1, "message": None}),
                "attributes": maybe(
                    r,
                    [
                        {
                            "key": maybe(r, r.choice(KEYS)),
                            "value": maybe(
                                r,
                                {
                                    r.choice(
                                        [
                                            "string_value",
                                            "int_value",
                                            "double_value",
                                            "bool_value",
                                            "bytes_value",
                                            "array_value",
                                            "kvlist_value",
                                        ]
                                    ): random_value(r),
                                    "string_value": None,
                                },
                            ),
                        }
                        for _ in range(r.randrange(3))
                    ],
                ),
            }
        else:
            item = {
                "context.span_id": maybe(r, span_id),
                "context.trace_id": maybe(r, trace_id),
                "name": maybe(r, "root"),
                "start_time": maybe(r, r.choice([1_795_456_655_004, 1.7e9, "2026-11-23T17:57:35Z", 1e300])),
                "attributes." + r.choice(KEYS): random_value(r),
                "attributes.llm.token_count.prompt": maybe(r, 412.0),
            }
        items.append(item)
    roll = r.random()
    if roll < 0.4:
        return {"data": items, "next_cursor": r.choice([None, "abc"])}
    return items if roll < 0.8 else items[0]


def deep_or_huge(r: random.Random) -> bytes:
    """A real golden file with a nesting, number or Unicode fragment planted at a random node."""
    value = json.loads(SEED_TEXTS[r.choice(["golden", "golden2", "rest"])])
    container, key = r.choice(nodes(value))
    container[key] = r.choice(RAW_FRAGMENTS)
    return to_bytes(encode(value, r.choice([None] * 9 + [2])))


def framed(r: random.Random) -> bytes:
    """Skeletons and random JSON as one document, or several as JSONL (blank lines, CRLF, a BOM)."""
    r.good = r.choice([0.8, 0.95, 0.99, 1.0])  # type: ignore[attr-defined]
    makers: list[Callable[[random.Random], Any]] = [otlp_skeleton, phoenix_skeleton, otlp_skeleton, random_value]
    parts = [r.choice(makers)(r) for _ in range(r.choice([1, 1, 2, 3]))]
    if len(parts) == 1:
        text = encode(parts[0], r.choice([None] * 9 + [2]), r.random() < 0.7)
    else:
        text = r.choice(["\n", "\r\n", "\n\n"]).join(encode(p) for p in parts)
    if r.random() < 0.1:
        text = "\ufeff" + text
    return to_bytes(text)


SEEDED: dict[str, Callable[[random.Random], bytes]] = {
    "mutated export": mutated_export,
    "golden variant": golden_variant,
    "byte mutation": byte_mutation,
    "format skeleton": framed,
    "deep, huge or odd fragment": deep_or_huge,
    "random JSON": lambda r: to_bytes(encode(random_value(r))),
    "random bytes": lambda r: bytes(r.randrange(256) for _ in range(r.randrange(64))),
}
WEIGHTS = {
    "mutated export": 4,
    "golden variant": 2,
    "byte mutation": 2,
    "format skeleton": 4,
    "deep, huge or odd fragment": 2,
    "random JSON": 1,
    "random bytes": 1,
}
KINDS = [name for name, weight in WEIGHTS.items() for _ in range(weight)]
BATCH = 4  # documents per Hypothesis example: its per-example bookkeeping (~1 ms) would cost more than a document
seeded = st.integers(0, 2**64 - 1)


def generate(kind: str, seed: int) -> bytes:
    return SEEDED[kind](random.Random(seed))


def batch(seed: int) -> list[tuple[str, int]]:
    """The ``(kind, seed)`` of each document one example generates: ``generate(*pair)`` reproduces it alone."""
    r = random.Random(seed)
    return [(r.choice(KINDS), r.getrandbits(64)) for _ in range(BATCH)]
