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

Placeholders are ``<EMAIL:3f9a1c2b>``, ``<PHONE:...>``, ...: a keyed hash (HMAC-SHA256, first 8 hex digits) of the
kind and the value, with the project's secret key (``redaction_key``). So one customer is one placeholder in every
trace, every file, every later capture or import and in the Phoenix export, while nobody without the key can hash
candidate addresses to find out whose a placeholder is. They hold no quote or backslash, so they stay valid inside
SQL and JSON string literals: ``WHERE email = 'jane@acme.io'`` becomes ``WHERE email = '<EMAIL:3f9a1c2b>'``. IP
addresses become documentation addresses instead (``192.0.2.1``, ``2001:db8::3f9a:1c2b``, RFC 5737/3849), which stay
valid where SQL casts them to ``inet``; addresses in those ranges, loopback and unspecified ones are never treated as
personal. ``detectors`` recognises what the patterns here do not: more keys (by ``detect-secrets``), IBANs and SSNs
(by ``python-stdnum``), national phone formats and person names by their context.
Redacting a redacted trace changes nothing.

Only strings are redacted: integer and float attributes (token counts, row counts) are left alone.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
import secrets
from collections import Counter
from collections.abc import Iterable, Sequence

from pytest_llmtrace.sources import detectors, person_names
from pytest_llmtrace.sources.placeholders import PLACEHOLDER, Found, TraceMap
from pytest_llmtrace.trace.model import Span, Trace
from pytest_llmtrace.trace.secrets import redact_spans, redact_trace
from pytest_llmtrace.trace.walk import Attributes, map_span, map_strings, span_strings

# Kinds in priority order: where two matches overlap in one string, the earlier kind wins.
KINDS = (
    "value",
    "pattern",
    "private_key",
    "jwt",
    "api_key",
    "token",
    "password",
    "email",
    "iban",
    "card",
    "ssn",
    "ipv6",
    "ipv4",
    "phone",
    "person",
    "credential",  # found by attribute name (trace.secrets), not by a pattern
)

# Any script (josé@exämple.de, 张伟@例子.中国), and written URL-encoded (jane%40example.com) as in a logged URL.
_EMAIL = re.compile(
    r"(?<![\w.%+-])[^\W_][\w.%+-]*(?:@|%40)(?:[^\W_](?:[\w-]*[^\W_])?\.)+(?:[^\W\d_]{2,}|xn--[a-z0-9-]+)(?![\w-])"
)
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
# spaces, dashes or dots; the Luhn check below keeps ids and amounts that only look like one.
_CARD = re.compile(r"(?<![\w.+-])[2-6]\d{3}(?:[ .-]?\d){9,15}(?![\w]|[.,]\d)")
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
_CACHE_LIMIT = 50_000
_PRIORITY = {kind: index for index, kind in enumerate(KINDS)}
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


class Redactor:
    """Redacts traces one at a time and counts, per kind, how many occurrences it replaced (never the values).

    ``patterns`` are extra regular expressions (their first group if they have one, else the whole match is the
    value); ``values`` are literal strings redacted wherever they appear, ignoring case; ``keep`` are values never
    redacted, for example a support address that the app's own system prompt holds (redacting it in the recorded
    prompt would make the replayed prompt differ from it). ``key`` is the project's redaction key
    (``redaction_key.load_or_create``); without one, a random key makes placeholders that hold only for this object.
    """

    def __init__(
        self,
        patterns: Iterable[str | re.Pattern[str]] = (),
        values: Iterable[str] = (),
        keep: Iterable[str] = (),
        *,
        key: bytes | None = None,
    ) -> None:
        self.patterns = tuple(re.compile(p) if isinstance(p, str) else p for p in patterns)
        self.values = tuple(v for v in values if v)
        self._values_re = (
            re.compile("|".join(re.escape(v) for v in sorted(self.values, key=len, reverse=True)), re.IGNORECASE)
            if self.values
            else None
        )
        self.keep = frozenset(keep)
        self._secret = key if key is not None else secrets.token_bytes(32)
        self.counts: Counter[str] = Counter()  # kind -> occurrences replaced, over every trace so far
        self.traces_redacted = 0
        self._cache: dict[str, tuple[Found, ...]] = {}

    # -- finding ---------------------------------------------------------------------------------------------------

    def find(self, text: str) -> tuple[Found, ...]:
        """The sensitive values in one string; cached, because prompts repeat in every trace of a capture."""
        cached = self._cache.get(text)
        if cached is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            cached = self._cache[text] = self._find(text)
        return cached

    def _find(self, text: str) -> tuple[Found, ...]:
        # What is taken: disjoint ranges, sorted, so the one range that can overlap a new one is found by bisection
        # (a hostile string with 10^5 matches must not cost 10^10 comparisons).
        starts: list[int] = []
        ends: list[int] = []
        found: list[tuple[int, Found]] = []

        def claim(kind: str, start: int, end: int, key: str | None = None) -> None:
            if end <= start:
                return
            before = bisect.bisect_left(starts, end) - 1  # the last taken range that starts before this one ends
            if before >= 0 and ends[before] > start:
                return
            value = text[start:end]
            if value in self.keep or PLACEHOLDER.fullmatch(value):
                return
            starts.insert(before + 1, start)
            ends.insert(before + 1, end)
            found.append((start, Found(kind, value, value if key is None else key)))

        if self._values_re is not None:
            for m in self._values_re.finditer(text):
                claim("value", m.start(), m.end(), m.group().casefold())
        for pattern in self.patterns:
            for m in pattern.finditer(text):
                group = 1 if m.re.groups else 0
                claim("pattern", m.start(group), m.end(group))
        if len(text) < 6:  # nothing below is this short
            found.sort(key=lambda item: item[0])
            return tuple(f for _, f in found)
        secrets_found = sorted(detectors.secrets(text), key=lambda hit: _PRIORITY[hit[0]])
        for kind, start, end, key in secrets_found:
            if kind == "private_key":
                claim(kind, start, end, key)
        if "eyJ" in text:
            for m in _JWT.finditer(text):
                claim("jwt", m.start(), m.end())
        if any(marker in text for marker in _API_KEY_MARKERS):
            for m in _API_KEY.finditer(text):
                claim("api_key", m.start(), m.end())
        for kind, start, end, key in secrets_found:
            claim(kind, start, end, key)
        lowered = text.lower() if "earer" in text or "EARER" in text else ""
        if "bearer" in lowered:
            for m in _TOKEN.finditer(text):
                claim("token", m.start(1), m.end(1))
        if "://" in text:
            for m in _PASSWORD.finditer(text):
                claim("password", m.start(1), m.end(1))
        if "@" in text or "%40" in text:
            for m in _EMAIL.finditer(text):
                claim("email", m.start(), m.end(), m.group().replace("%40", "@").casefold())
        if ":" in text:
            for m in _IPV6.finditer(text):
                if m.group().count(":") >= 2 and _personal_ip(m.group()):
                    claim("ipv6", m.start(), m.end(), str(ipaddress.ip_address(m.group())))
        if _DIGIT.search(text):
            for kind, start, end, key in detectors.ibans(text):
                claim(kind, start, end, key)
            for m in _CARD.finditer(text):
                digits = re.sub(r"[ .-]", "", m.group())
                if 13 <= len(digits) <= 19 and luhn_ok(digits):
                    claim("card", m.start(), m.end(), digits)
            for kind, start, end, key in detectors.ssns(text):
                claim(kind, start, end, key)
            if "." in text:
                for m in _IPV4.finditer(text):
                    if _personal_ip(m.group()):
                        claim("ipv4", m.start(), m.end())
            for m in _PHONE.finditer(text):
                digits = re.sub(r"\D", "", m.group())
                if 7 <= len(digits) <= 15:
                    claim("phone", m.start(), m.end(), digits.removeprefix("00"))
            for kind, start, end, key in detectors.phones(text):
                claim(kind, start, end, key)
        for kind, start, end, key in person_names.person_names(text):
            claim(kind, start, end, key)
        found.sort(key=lambda item: item[0])
        return tuple(f for _, f in found)

    def _collect(self, strings: Iterable[str], names: Iterable[str] = ()) -> TraceMap:
        """Both halves of the first pass: every value each string shows by itself, then every occurrence, in any
        string, of a person's name that something else revealed (a name key, a salutation, an email's local part)."""
        mapping = TraceMap(self._secret)
        strings = list(strings)
        known: dict[str, set[str]] = {}  # a name (any case) -> its spellings as written
        for name in names:
            if person_names.looks_like_name(name):
                known.setdefault(person_names.name_key(name), set()).add(name.strip())
        for string in strings:
            for found in self.find(string):
                mapping.add(found)
                if found.kind == "person":
                    known.setdefault(found.key, set()).add(found.text)
                elif found.kind == "email":
                    from_email = person_names.names_from_email(found.key.split("@", 1)[0])
                    if from_email is not None:
                        known.setdefault(from_email, set())
        kept = {person_names.name_key(k) for k in self.keep}
        known = {name: spellings for name, spellings in known.items() if name not in kept}
        if known:
            names_re = _names_pattern(known)
            for string in strings:
                for m in names_re.finditer(string):
                    if m.group() not in mapping.by_text and m.group() not in self.keep:
                        mapping.add(Found("person", m.group(), person_names.name_key(m.group())))
        return mapping

    # -- replacing -------------------------------------------------------------------------------------------------

    def text(self, text: str) -> str:
        """One string redacted on its own; for traces use ``trace``, which also learns names from attribute keys."""
        mapping = self._collect([text])
        return self._replace(text, mapping, _replacer(mapping), Counter())

    def trace(self, trace: Trace) -> Trace:
        """The trace with every sensitive value replaced by its placeholder; the same object if it holds none.

        Credentials that no value pattern can recognise (an ``Authorization`` header, an ``api_key`` attribute, a
        password in a connection URL) are found by their attribute names afterwards.
        """
        spans, changed = self._personal(trace.spans)
        if not changed:
            return self._credentials(trace, redacted=False)
        return self._credentials(Trace(spans, source=trace.source, warn_missing_parents=False), redacted=True)

    def spans(self, spans: Sequence[Span]) -> list[Span]:
        """Loose spans (one test's, maybe of several traces) as ``trace`` redacts a trace, credentials included."""
        redacted, changed = self._personal(spans)
        if changed:
            self.traces_redacted += 1
        return redact_spans(redacted)

    def _personal(self, spans: Sequence[Span]) -> tuple[list[Span], bool]:
        names: list[str] = []
        for span in spans:
            names += _named_people(span)
        mapping = self._collect((string for span in spans for string in span_strings(span)), names)
        if not mapping.by_text:
            return list(spans), False
        replacer = _replacer(mapping)
        counts: Counter[str] = Counter()

        def red(value: str) -> str:
            return self._replace(value, mapping, replacer, counts)

        redacted = [map_strings(span, red) for span in spans]
        self.counts.update(counts)
        return redacted, True

    def _credentials(self, trace: Trace, *, redacted: bool) -> Trace:
        """Then what no value pattern can recognise: credentials found by their attribute names (``trace.secrets``)."""
        credentials = redact_trace(trace)
        if credentials.count:
            self.counts["credential"] += credentials.count
        if redacted or credentials.count:
            self.traces_redacted += 1
        return credentials.trace

    @staticmethod
    def _replace(text: str, mapping: TraceMap, replacer: re.Pattern[str] | None, counts: Counter[str]) -> str:
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


def _replacer(mapping: TraceMap) -> re.Pattern[str] | None:
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


def _names_pattern(names: dict[str, set[str]]) -> re.Pattern[str]:
    """Names learned anywhere in what is redacted, found wherever they appear: a full name in any case and spacing
    ("Jane Doe", "JANE  DOE"), a single word only as it was written where it was learned or with a capital (a first
    name "Will" must not take every "will" of a prompt, but a login "jdoe" under ``user.name`` is taken as it is)."""
    parts = []
    for name in sorted(names, key=len, reverse=True):
        words = name.split()
        if len(words) > 1:
            parts.append(r"(?i:" + r"\s+".join(re.escape(w) for w in words) + ")")
        else:
            forms = {*names[name], name[:1].upper() + name[1:]}
            parts += [re.escape(form) for form in sorted(forms, key=len, reverse=True)]
    return re.compile(r"(?<![\w@.%+-])(?:" + "|".join(parts) + r")(?![\w@-])")


def _named_people(span: Span) -> list[str]:
    """Attribute values whose key says they are a person's name (``customer.name``, ``metadata.first_name``)."""
    names: list[str] = []

    def visit(attributes: Attributes, prefix: str = "") -> Attributes:
        for key, value in attributes.items():
            if isinstance(value, dict):
                visit(value, prefix + key + ".")
            elif (
                isinstance(value, str)
                and person_names.is_name_key(prefix + key)
                and person_names.looks_like_name(value)
            ):
                names.append(value)
        return attributes

    map_span(span, lambda value, where: value, visit)
    return names
