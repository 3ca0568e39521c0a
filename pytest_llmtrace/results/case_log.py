"""The run's case records while it runs: each kept as compressed JSON, and read back one at a time.

A run keeps every case's record until its end, where results.json, the gates, the metrics and the terminal's summary
read them. As Python dicts a replayed case's record was about 25 KB (its checks' measurements, its waterfalls, its
first rows), so a thousand cases held 25 MB and a hundred thousand would hold gigabytes; as JSON it is about 9 KB,
compressed about 2 KB. The record is JSON already, written as results.json is (``default=str``), and xdist's workers
hand theirs to the controller as JSON too, so reading one back gives what a reader of results.json or a
controller got before. Records are never changed once kept (``repeats.fold_log`` folds copies).

Beside each record its ``CaseKey``: what the end of the run sorts and picks by, so that putting the cases in order
or finding the failed ones with a Phoenix link reads no record.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple, overload

import orjson

from pytest_llmtrace.results.case_record import CaseRecord, as_case

_LEVEL = 1  # zlib's fastest: 8.7 KB of a record's JSON -> 1.9 KB, in tens of microseconds


class CaseKey(NamedTuple):
    """A record's sort key (node id, case id), its verdict and Phoenix link, and for one run of a repeated case the
    node id of the case it is a run of (``None`` for a whole case)."""

    nodeid: str
    case_id: str
    verdict: str
    phoenix_url: str | None
    repeat_of: str | None

    @classmethod
    def of(cls, record: CaseRecord, repeat_of: str | None) -> CaseKey:
        url = record.get("phoenix_url")
        return cls(
            str(record.get("nodeid")),
            str(record.get("case_id")),
            str(record.get("verdict")),
            url if isinstance(url, str) else None,
            repeat_of,
        )


class CaseLog(Sequence[CaseRecord]):
    """A sequence of case records, each read anew from its compressed JSON when it is indexed or iterated."""

    def __init__(self) -> None:
        self._blobs: list[bytes] = []
        self.keys: list[CaseKey] = []

    def append(self, record: CaseRecord, *, repeat_of: str | None = None) -> None:
        self._blobs.append(zlib.compress(json.dumps(record, default=str).encode(), _LEVEL))
        self.keys.append(CaseKey.of(record, repeat_of))

    def move(self, other: CaseLog, index: int) -> None:
        """Take ``other``'s record at ``index`` as it is, without reading it."""
        self._blobs.append(other._blobs[index])
        self.keys.append(other.keys[index])

    def hand_over(self) -> list[tuple[str, list[Any]]]:
        """Each record's JSON text and key, for an xdist worker's hand-over: the controller ``take``s them unparsed."""
        return [(zlib.decompress(blob).decode(), list(key)) for blob, key in zip(self._blobs, self.keys, strict=True)]

    def take(self, handed: Iterable[Sequence[Any]]) -> None:
        """Records as a worker's ``hand_over`` gave them (through JSON: a key comes as a list)."""
        for text, key in handed:
            self._blobs.append(zlib.compress(str(text).encode(), _LEVEL))
            self.keys.append(CaseKey(*key))

    def __len__(self) -> int:
        return len(self._blobs)

    @overload
    def __getitem__(self, index: int) -> CaseRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[CaseRecord]: ...

    def __getitem__(self, index: int | slice) -> CaseRecord | list[CaseRecord]:
        if isinstance(index, slice):
            return [_read(blob) for blob in self._blobs[index]]
        return _read(self._blobs[index])

    def __iter__(self) -> Iterator[CaseRecord]:
        for blob in self._blobs:
            yield _read(blob)

    def __repr__(self) -> str:
        return f"CaseLog({len(self)} cases)"


def _read(blob: bytes) -> CaseRecord:
    text = zlib.decompress(blob)
    try:
        return as_case(orjson.loads(text))  # twice as fast as json's reader
    except orjson.JSONDecodeError:  # what json writes and orjson does not read: NaN, Infinity, a 65-bit integer
        return as_case(json.loads(text))
