"""What ``llmtrace capture`` keeps: the filters, the deterministic sample and the dedupe key, checked before any
request, because a typo must not cost a long listing of a production project."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields

from pytest_llmtrace.core.errors import LLMTraceError, did_you_mean, whole_number
from pytest_llmtrace.trace.model import Trace

DEDUPE_FIELDS = ("question", "sql")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TRACE_ID = re.compile(r"^[0-9a-fA-F]{32}$")
_TIME_HELP = "a duration back from now like 30m, 24h or 7d, or an ISO 8601 time like 2024-05-01T12:00:00Z"


class CaptureError(LLMTraceError):
    """A capture that cannot go on; the message is one line that names the fix."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage  # a bad option (exit status 2) rather than a server problem (exit status 1)


@dataclass(frozen=True)
class Filters:
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    errors_only: bool = False
    root_names: tuple[str, ...] = ()
    sample: float | None = None
    seed: int = 0
    limit: int | None = None
    trace_ids: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args: argparse.Namespace, now: dt.datetime | None = None) -> Filters:
        """The filter options of ``llmtrace capture``: their argparse ``dest`` is the field's name, so an option added
        here and to the parser cannot be forgotten in between."""
        return parse_filters(now=now, **{f.name: getattr(args, f.name) for f in fields(cls)})


def parse_time(text: str, option: str, now: dt.datetime) -> dt.datetime:
    """``24h`` (back from ``now``) or an ISO 8601 time, read as UTC when it has no offset."""
    value = text.strip()
    match = _DURATION.match(value.lower())
    if match:
        return now - dt.timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])
    try:
        parsed = dt.datetime.fromisoformat(re.sub(r"[Zz]$", "+00:00", value))
    except ValueError:
        raise CaptureError(f"{option} {text!r}: expected {_TIME_HELP}", usage=True) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.timezone.utc)


def parse_filters(
    *,
    since: str | None = None,
    until: str | None = None,
    errors_only: bool = False,
    root_names: Sequence[str] = (),
    sample: str | float | None = None,
    seed: int | str = 0,
    limit: int | str | None = None,
    trace_ids: Sequence[str] = (),
    now: dt.datetime | None = None,
) -> Filters:
    now = now or dt.datetime.now(dt.timezone.utc)
    start = parse_time(since, "--since", now) if since else None
    end = parse_time(until, "--until", now) if until else None
    if start is not None and end is not None and start >= end:
        raise CaptureError(
            f"--since {since!r} ({start:%Y-%m-%d %H:%M:%S} UTC) is not before --until {until!r} "
            f"({end:%Y-%m-%d %H:%M:%S} UTC); fix: swap them or widen the window",
            usage=True,
        )
    fraction = None
    if sample is not None:
        try:
            fraction = float(sample)
        except ValueError:
            fraction = -1.0
        if not 0 < fraction <= 1:
            raise CaptureError(f"--sample {sample!r}: expected a fraction above 0 and at most 1, like 0.1", usage=True)
    ids = []
    for trace_id in trace_ids:
        if not _TRACE_ID.match(trace_id.strip()):
            raise CaptureError(
                f"--trace-id {trace_id!r}: expected 32 hex digits, as Phoenix shows trace ids", usage=True
            )
        ids.append(trace_id.strip().lower())
    names = tuple(n for n in root_names if n)
    count = option_integer(limit, "--limit", minimum=1) if limit is not None else None
    seed = option_integer(seed, "--seed", minimum=None)
    return Filters(start, end, errors_only, names, fraction, seed, count, tuple(dict.fromkeys(ids)))


def option_integer(text: int | str, option: str, *, minimum: int | None) -> int:
    """A whole-number option of ``llmtrace capture``, checked before any request is made."""
    value = whole_number(text)
    if value is None:
        raise CaptureError(f"{option} {text!r}: expected a whole number", usage=True)
    if minimum is not None and value < minimum:
        raise CaptureError(f"{option} {text!r}: expected a whole number of at least {minimum}", usage=True)
    return value


def sampled(trace_id: str, fraction: float, seed: int) -> bool:
    """Whether a trace is in the sample: the same answer for the same trace id and seed, whatever else is listed,
    so a sample taken again next week keeps the traces it kept and adds only new ones."""
    digest = hashlib.sha256(f"{seed}:{trace_id.lower()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def parse_dedupe(text: str) -> tuple[str, ...]:
    """``question,sql`` (the default), ``question``, ``sql`` or ``none`` (an empty tuple)."""
    if text.strip().lower() == "none":
        return ()
    fields = tuple(f.strip().lower() for f in text.split(",") if f.strip())
    for name in fields:
        if name not in DEDUPE_FIELDS:
            hint = did_you_mean(name, (*DEDUPE_FIELDS, "none"))
            raise CaptureError(
                f"--dedupe {text!r}: {name!r} is not one of question, sql, none" + (f"; {hint}" if hint else ""),
                usage=True,
            )
    if not fields:
        raise CaptureError(f"--dedupe {text!r}: expected question,sql, question, sql or none", usage=True)
    return tuple(dict.fromkeys(fields))


def dedupe_key(trace: Trace, fields: Sequence[str]) -> tuple[str, ...] | None:
    """The normalized question and/or SQL; ``None`` when the trace has none of them (it is never a duplicate).

    The question ignores case, spacing and trailing ``?``/``.``/``!``; the SQL ignores spacing and trailing
    semicolons, but not case, because ``'SMB'`` and ``'smb'`` select different rows. Run on redacted traces, two
    questions that differ only in an email address are duplicates: they make the same regression case, so the
    placeholders' keyed hashes are left out (``redact.unkeyed``).
    """
    from pytest_llmtrace.checks.runner import sql_of  # the SQL a golden case replays: one definition for both
    from pytest_llmtrace.sources.placeholders import unkeyed

    parts = []
    for name in fields:
        if name == "question":
            text = " ".join(unkeyed(trace.question().text or "").casefold().split()).rstrip("?.! ")  # any convention
        else:
            text = " ".join(unkeyed(sql_of(trace) or "").split()).rstrip("; ")
        parts.append(text)
    return tuple(parts) if any(parts) else None
