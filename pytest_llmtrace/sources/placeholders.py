"""What a redacted value becomes: one keyed placeholder per value, the same in every trace made with the project's key.

``<EMAIL:3f9a1c2b>`` is a keyed hash (HMAC-SHA256, first 8 hex digits) of the kind and the value; IP addresses
become documentation addresses (RFC 5737/3849) so they stay valid where SQL casts them to ``inet``. ``unkeyed``
reduces placeholders to their kinds, for ``--dedupe``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
from dataclasses import dataclass

_LABELS = {"api_key": "API_KEY", "private_key": "PRIVATE_KEY"}
_DOC_V4_PREFIXES = ("192.0.2.", "198.51.100.", "203.0.113.")
# A placeholder redaction wrote (or the numbered ones of older versions): never a value to redact again.
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*(?::[0-9a-f]{8}|_\d+)>")
_KEYED = re.compile(r"<([A-Z][A-Z0-9_]*):[0-9a-f]{8}>")
_DOC_ADDRESS = re.compile(
    r"(?<![\w.:])(?:(?:192\.0\.2|198\.51\.100|203\.0\.113)\.\d{1,3}|2001:db8::[0-9a-f:]+)(?![\w:])"
)


def unkeyed(text: str) -> str:
    """The text with every placeholder reduced to its kind (``<EMAIL>``, ``<IP>``): two questions that differ only
    in which customer asked are one regression case to ``--dedupe``, as they were when placeholders were numbered."""
    if "<" in text:
        text = _KEYED.sub(r"<\1>", text)
    if "." in text or ":" in text:
        text = _DOC_ADDRESS.sub("<IP>", text)
    return text


@dataclass(frozen=True)
class Found:
    kind: str
    text: str  # exactly as it appears
    key: str  # what decides "the same value": emails ignore case, custom values are matched without case


@dataclass
class TraceMap:
    """The values found in what is being redacted (a trace, one test's spans, a string) and their placeholders."""

    secret: bytes
    by_text: dict[str, str] = dataclasses.field(default_factory=dict)  # text as it appears -> placeholder
    kinds: dict[str, str] = dataclasses.field(default_factory=dict)  # text -> kind
    owners: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)  # placeholder -> (kind, key)

    def add(self, found: Found) -> None:
        if found.text in self.by_text:
            return
        placeholder = self._placeholder(found.kind, found.key)
        self.by_text[found.text] = placeholder
        self.kinds[found.text] = found.kind
        escaped = json.dumps(found.text)[1:-1]  # the same value inside a JSON document (input.value of LLM spans)
        if escaped != found.text:
            self.by_text.setdefault(escaped, placeholder)
            self.kinds.setdefault(escaped, found.kind)

    def _placeholder(self, kind: str, key: str) -> str:
        """A keyed hash of the kind and the value; IPv4 addresses have only 762 documentation addresses to hash
        into, so one that another value of this map took moves to the next free one."""
        digest = hmac.new(self.secret, f"{kind}\0{key}".encode(), hashlib.sha256).digest()
        number = int.from_bytes(digest[:4], "big")
        for probe in range(3 * 254 if kind == "ipv4" else 1):
            placeholder = _placeholder(kind, number + probe)
            owner = self.owners.setdefault(placeholder, (kind, key))
            if owner == (kind, key):
                return placeholder
        return placeholder  # every documentation address taken: two values share one


def _placeholder(kind: str, number: int) -> str:
    if kind == "ipv4":
        slot = number % (3 * 254)
        return _DOC_V4_PREFIXES[slot // 254] + str(slot % 254 + 1)
    if kind == "ipv6":
        return f"2001:db8::{number >> 16:x}:{number & 0xFFFF:x}"
    return f"<{_LABELS.get(kind, kind.upper())}:{number:08x}>"
