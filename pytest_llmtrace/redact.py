"""Personal data and secrets out of a trace before it becomes a golden file committed to git.

A production trace holds what users typed: their email address, phone and card numbers, API keys pasted into a
question. ``llmtrace capture`` and ``llmtrace import`` redact every trace before anything is written, unless told
``--no-redact``.

Redaction must not break replay. The app replayed with the redacted question builds its prompt from that question,
so the recorded prompt must hold exactly the same redacted text; the model's recorded answer (the SQL) must say what
it said about the same value. So each distinct value gets one placeholder for the whole trace, wherever it appears:
the question, the prompt messages, the answer, the SQL, the output, every string attribute, event and status.
It works in two passes: the first finds every sensitive value anywhere in the trace (some are recognised only by
their context, like the token after ``Bearer``), the second replaces every occurrence of each found value everywhere.
Both passes walk the places ``trace.walk`` lists, the same as the credential rules of ``trace.secrets``, but unlike
those they treat attribute keys as text too (a user's email can be a metadata key) and ignore what a key says.

Placeholders are ``<EMAIL_1>``, ``<PHONE_2>``, ... numbered per kind in order of first appearance in the trace, so
the same trace always redacts to the same text. They hold no quote or backslash, so they stay valid inside SQL and
JSON string literals: ``WHERE email = 'jane@acme.io'`` becomes ``WHERE email = '<EMAIL_1>'``. IP addresses become
documentation addresses instead (``192.0.2.1``, ``2001:db8::1``, RFC 5737/3849), which stay valid where SQL casts
them to ``inet``; addresses in those ranges, loopback and unspecified ones are never treated as personal.
Redacting a redacted trace changes nothing.

Only strings are redacted: integer and float attributes (token counts, row counts) are left alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from pytest_llmtrace.errors import LLMTraceError
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.secrets import redact_trace
from pytest_llmtrace.trace.walk import map_strings, span_strings

__all__ = ["KINDS", "RedactionError", "Redactor", "add_arguments", "from_args", "luhn_ok"]

# Kinds in priority order: where two matches overlap in one string, the earlier kind wins.
KINDS = (
    "value",
    "pattern",
    "jwt",
    "api_key",
    "token",
    "password",
    "email",
    "card",
    "ipv6",
    "ipv4",
    "phone",
    "credential",  # found by attribute name (trace.secrets), not by a pattern
)
_LABELS = {"api_key": "API_KEY"}

_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![\w-])")
_JWT = re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_API_KEY = re.compile(
    r"(?<![\w-])(?:"
    r"sk-(?:proj-|svcacct-|admin-|ant-(?:api\d\d-)?)?[A-Za-z0-9_-]{20,}"  # OpenAI, Anthropic
    r"|(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}"  # GitHub
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key ids
    r"|AIza[0-9A-Za-z_-]{35}"  # Google
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack
    r")(?![\w-])"
)
_TOKEN = re.compile(r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]{8,}=*)")
_PASSWORD = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*:([^\s/@]+)@")
# Card numbers: 13-19 digits starting with 2-6 (the card networks' ranges), in groups of digits separated by single
# spaces or dashes; the Luhn check below keeps ids and amounts that only look like one.
_CARD = re.compile(r"(?<![\w.+-])[2-6]\d{3}(?:[ -]?\d){9,15}(?![\w]|[.,]\d)")
_IPV4 = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\w|\.\d)"
)
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:.])")
# Phones need a shape no id, amount or date has: a leading + or 00 (international), or the North American
# 3-3-4 groups with separators. Bare runs of digits are never phone numbers here: there are too many ids.
_PHONE = re.compile(
    r"(?<![\w+])(?:(?:\+|00)[1-9]\d{0,2}(?:[ .-]?\(?\d{1,4}\)?){2,5}"
    r"|(?:\(\d{3}\)\s?|\b\d{3}[ .-])\d{3}[ .-]\d{4})(?![\w]|[.,]\d)"
)
_DIGIT = re.compile(r"\d")

_DOC_NETS = tuple(
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)
_DOC_V4_PREFIXES = ("192.0.2.", "198.51.100.", "203.0.113.")
_CACHE_LIMIT = 50_000
_API_KEY_MARKERS = ("sk-", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "AKIA", "ASIA", "AIza", "xox")


def luhn_ok(digits: str) -> bool:
    """The check digit card numbers carry; about one random digit string in ten passes it."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        d = ord(char) - 48
        if index % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _personal_ip(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (address.is_loopback or address.is_unspecified or any(address in net for net in _DOC_NETS))


@dataclass(frozen=True)
class _Found:
    kind: str
    text: str  # exactly as it appears
    key: str  # what decides "the same value": emails ignore case, custom values are matched without case


@dataclass
class _TraceMap:
    """One trace's values and their placeholders, in order of first appearance."""

    placeholders: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)  # (kind, key) -> placeholder
    by_text: dict[str, str] = dataclasses.field(default_factory=dict)  # text as it appears -> placeholder
    kinds: dict[str, str] = dataclasses.field(default_factory=dict)  # text -> kind
    counts: Counter[str] = dataclasses.field(default_factory=Counter)  # kind -> distinct values

    def add(self, found: _Found) -> None:
        if found.text in self.by_text:
            return
        slot = (found.kind, found.key)
        placeholder = self.placeholders.get(slot)
        if placeholder is None:
            self.counts[found.kind] += 1
            placeholder = _placeholder(found.kind, self.counts[found.kind])
            self.placeholders[slot] = placeholder
        self.by_text[found.text] = placeholder
        self.kinds[found.text] = found.kind
        escaped = json.dumps(found.text)[1:-1]  # the same value inside a JSON document (input.value of LLM spans)
        if escaped != found.text:
            self.by_text.setdefault(escaped, placeholder)
            self.kinds.setdefault(escaped, found.kind)


def _placeholder(kind: str, n: int) -> str:
    if kind == "ipv4" and n <= 3 * 254:
        return _DOC_V4_PREFIXES[(n - 1) // 254] + str((n - 1) % 254 + 1)
    if kind == "ipv6":
        return f"2001:db8::{n:x}"
    return f"<{_LABELS.get(kind, kind.upper())}_{n}>"


class Redactor:
    """Redacts traces one at a time and counts, per kind, how many occurrences it replaced (never the values).

    ``patterns`` are extra regular expressions (their first group if they have one, else the whole match is the
    value); ``values`` are literal strings redacted wherever they appear, ignoring case; ``keep`` are values never
    redacted, for example a support address that the app's own system prompt holds (redacting it in the recorded
    prompt would make the replayed prompt differ from it).
    """

    def __init__(
        self, patterns: Iterable[str | re.Pattern[str]] = (), values: Iterable[str] = (), keep: Iterable[str] = ()
    ) -> None:
        self.patterns = tuple(re.compile(p) if isinstance(p, str) else p for p in patterns)
        self.values = tuple(v for v in values if v)
        self._values_re = (
            re.compile("|".join(re.escape(v) for v in sorted(self.values, key=len, reverse=True)), re.IGNORECASE)
            if self.values
            else None
        )
        self.keep = frozenset(keep)
        self.counts: Counter[str] = Counter()  # kind -> occurrences replaced, over every trace so far
        self.traces_redacted = 0
        self._cache: dict[str, tuple[_Found, ...]] = {}

    # -- finding ---------------------------------------------------------------------------------------------------

    def find(self, text: str) -> tuple[_Found, ...]:
        """The sensitive values in one string; cached, because prompts repeat in every trace of a capture."""
        cached = self._cache.get(text)
        if cached is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            cached = self._cache[text] = self._find(text)
        return cached

    def _find(self, text: str) -> tuple[_Found, ...]:
        taken: list[tuple[int, int]] = []
        found: list[tuple[int, _Found]] = []

        def claim(kind: str, start: int, end: int, key: str | None = None) -> None:
            if end <= start or any(start < e and s < end for s, e in taken):
                return
            value = text[start:end]
            if value in self.keep:
                return
            taken.append((start, end))
            found.append((start, _Found(kind, value, value if key is None else key)))

        if self._values_re is not None:
            for m in self._values_re.finditer(text):
                claim("value", m.start(), m.end(), m.group().casefold())
        for pattern in self.patterns:
            for m in pattern.finditer(text):
                group = 1 if m.re.groups else 0
                claim("pattern", m.start(group), m.end(group))
        if "eyJ" in text:
            for m in _JWT.finditer(text):
                claim("jwt", m.start(), m.end())
        if any(marker in text for marker in _API_KEY_MARKERS):
            for m in _API_KEY.finditer(text):
                claim("api_key", m.start(), m.end())
        lowered = text.lower() if "earer" in text or "EARER" in text else ""
        if "bearer" in lowered:
            for m in _TOKEN.finditer(text):
                claim("token", m.start(1), m.end(1))
        if "://" in text:
            for m in _PASSWORD.finditer(text):
                claim("password", m.start(1), m.end(1))
        if "@" in text:
            for m in _EMAIL.finditer(text):
                claim("email", m.start(), m.end(), m.group().lower())
        if ":" in text:
            for m in _IPV6.finditer(text):
                if m.group().count(":") >= 2 and _personal_ip(m.group()):
                    claim("ipv6", m.start(), m.end(), str(ipaddress.ip_address(m.group())))
        if _DIGIT.search(text):
            for m in _CARD.finditer(text):
                digits = re.sub(r"[ -]", "", m.group())
                if 13 <= len(digits) <= 19 and luhn_ok(digits):
                    claim("card", m.start(), m.end(), digits)
            if "." in text:
                for m in _IPV4.finditer(text):
                    if _personal_ip(m.group()):
                        claim("ipv4", m.start(), m.end())
            for m in _PHONE.finditer(text):
                digits = re.sub(r"\D", "", m.group())
                if 7 <= len(digits) <= 15:
                    claim("phone", m.start(), m.end(), digits.removeprefix("00"))
        found.sort(key=lambda item: item[0])
        return tuple(f for _, f in found)

    # -- replacing -------------------------------------------------------------------------------------------------

    def text(self, text: str) -> str:
        """One string redacted on its own (its values numbered from 1); for traces use ``trace``."""
        mapping = _TraceMap()
        for found in self.find(text):
            mapping.add(found)
        return self._replace(text, mapping, _replacer(mapping), Counter())

    def trace(self, trace: Trace) -> Trace:
        """The trace with every sensitive value replaced by its placeholder; the same object if it holds none.

        Credentials that no value pattern can recognise (an ``Authorization`` header, an ``api_key`` attribute, a
        password in a connection URL) are found by their attribute names afterwards.
        """
        mapping = _TraceMap()
        for string in _strings(trace):
            for found in self.find(string):
                mapping.add(found)
        if not mapping.by_text:
            return self._credentials(trace, redacted=False)
        replacer = _replacer(mapping)
        counts: Counter[str] = Counter()

        def red(value: str) -> str:
            return self._replace(value, mapping, replacer, counts)

        spans = [map_strings(span, red) for span in trace.spans]
        self.counts.update(counts)
        return self._credentials(Trace(spans, source=trace.source, warn_missing_parents=False), redacted=True)

    def _credentials(self, trace: Trace, *, redacted: bool) -> Trace:
        """Then what no value pattern can recognise: credentials found by their attribute names (``trace.secrets``)."""
        credentials = redact_trace(trace)
        if credentials.count:
            self.counts["credential"] += credentials.count
        if redacted or credentials.count:
            self.traces_redacted += 1
        return credentials.trace

    @staticmethod
    def _replace(text: str, mapping: _TraceMap, replacer: re.Pattern[str] | None, counts: Counter[str]) -> str:
        if replacer is None or not text:
            return text

        def sub(match: re.Match[str]) -> str:
            counts[mapping.kinds[match.group()]] += 1
            return mapping.by_text[match.group()]

        return replacer.sub(sub, text)

    def summary(self) -> str:
        """``redacted 5 values in 2 traces: 3 email, 2 phone``: kinds and counts, never a value."""
        if not self.counts:
            return "redacted nothing: no personal data or secrets found"
        total = sum(self.counts.values())
        parts = ", ".join(f"{self.counts[k]} {k}" for k in KINDS if self.counts[k])
        traces = f"{self.traces_redacted} trace" + ("s" if self.traces_redacted != 1 else "")
        return f"redacted {total} value{'s' if total != 1 else ''} in {traces}: {parts}"


def _replacer(mapping: _TraceMap) -> re.Pattern[str] | None:
    """One regex for every found value, longest first; word-like values only match as whole words (a 4-digit
    custom pattern match must not eat the middle of a longer number), custom literal values match anywhere."""
    if not mapping.by_text:
        return None
    parts = []
    for text in sorted(mapping.by_text, key=len, reverse=True):
        escaped = re.escape(text)
        if mapping.kinds[text] != "value":
            if text[:1].isalnum():
                escaped = r"(?<![A-Za-z0-9])" + escaped
            if text[-1:].isalnum():
                escaped += r"(?![A-Za-z0-9])"
        parts.append(escaped)
    return re.compile("|".join(parts))


def _strings(trace: Trace) -> Iterable[str]:
    """Every string of the trace, keys too, in a fixed order (placeholders are numbered by first appearance)."""
    for span in trace.spans:
        yield from span_strings(span)


# -- the command-line flags `llmtrace capture` and `llmtrace import` share ------------------------------------------


class RedactionError(LLMTraceError):
    """A redaction flag that cannot work (a bad regular expression, ``--no-redact`` with patterns)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "redaction",
        "On by default: emails, phone numbers, card numbers (Luhn-checked), API keys and bearer tokens (sk-, ghp_, "
        "AKIA, JWTs), passwords in URLs and IP addresses are replaced before anything is written, each distinct "
        "value by one placeholder (<EMAIL_1>, ...; IPs by documentation addresses) everywhere in its trace, so the "
        "redacted question still replays the redacted prompt. Only kinds and counts are printed, never values.",
    )
    group.add_argument(
        "--no-redact", action="store_true", help="write traces as they are, personal data included (must be explicit)"
    )
    group.add_argument(
        "--redact-pattern",
        action="append",
        default=[],
        metavar="REGEX",
        help="also redact what this Python regex matches (its first group, if it has one); repeatable",
    )
    group.add_argument(
        "--redact-value",
        action="append",
        default=[],
        metavar="TEXT",
        help="also redact this text wherever it appears, ignoring case (a customer or project name); repeatable",
    )
    group.add_argument(
        "--keep-value",
        action="append",
        default=[],
        metavar="TEXT",
        help="never redact this text, e.g. an address in the app's own system prompt, which replay must match "
        "verbatim; repeatable",
    )


def from_args(args: argparse.Namespace) -> Redactor | None:
    """The redactor the flags ask for; ``None`` for ``--no-redact``."""
    given = (("--redact-pattern", args.redact_pattern), ("--redact-value", args.redact_value))
    extra = [flag for flag, values in given if values]
    if args.no_redact:
        if extra:
            raise RedactionError(f"--no-redact and {extra[0]} contradict each other; fix: drop one of them")
        return None
    patterns = []
    for text in args.redact_pattern:
        try:
            pattern = re.compile(text)
        except re.error as exc:
            raise RedactionError(
                f"--redact-pattern {text!r} is not a valid regular expression: {exc.msg} at position {exc.pos}"
            ) from None
        if pattern.search(""):
            raise RedactionError(f"--redact-pattern {text!r} matches the empty string; fix: make it match something")
        patterns.append(pattern)
    return Redactor(patterns, args.redact_value, args.keep_value)
