"""Person names without a language model (no NER model can be downloaded where this runs): a name is taken
where its context says it is one: a salutation or title (``Dear Jane``, ``Mr. Smith``), ``my name is``, a sign-off,
a key that names a person (``first_name``, ``customer_name``, ``customer.name``) in JSON, SQL or an attribute,
``customer Jane Doe``, ``I am Jane Doe``, and a ``first.last`` email local part. A name in running text without
such a cue (``orders of Jane Doe``) is found only when the same trace names it somewhere with a cue; otherwise
it stays: "of", "for" or "by" before two capitalised words name companies, places and products as often.

Each detector yields ``(kind, start, end, key)`` as ``detectors`` does: ``key`` is the name in any case, so both
spellings get one placeholder.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from pytest_llmtrace.sources.detectors import Hit

# Keys whose value is a person's name: the last dotted part of an attribute key, a JSON key or a SQL column.
NAME_KEYS = frozenset(
    {
        "first_name",
        "firstname",
        "given_name",
        "givenname",
        "last_name",
        "lastname",
        "surname",
        "family_name",
        "familyname",
        "full_name",
        "fullname",
        "customer_name",
        "client_name",
        "contact_name",
        "person_name",
        "patient_name",
        "employee_name",
        "owner_name",
        "holder_name",
        "cardholder",
        "cardholder_name",
        "card_holder",
        "account_holder",
        "recipient_name",
        "sender_name",
        "billing_name",
        "shipping_name",
        "author_name",
        "display_name",
        "customer",
        "contact",
        "person",
        "patient",
        "passenger",
    }
)
# ``name`` alone is too common (span, tool, service and column names): only under a key that names a person.
_PERSON_PARENTS = frozenset(
    {"customer", "user", "person", "contact", "client", "patient", "employee", "owner", "recipient", "sender", "author"}
)
_UPPER = "A-ZÀ-ÖØ-ÞĀĂĄĆČĎĐĒĖĘĚĞĢĪĮİĶĹĻĽŁŃŅŇŌŐŒŔŘŚŞŠŢŤŪŮŰŲŹŻŽ"
_WORD = rf"[{_UPPER}][^\W\d_]*(?:['’-][^\W\d_]+)*"
_PARTICLE = r"(?:van|von|de|der|den|da|di|du|la|le|del|ten|ter|bin|al)"
_NAME = rf"{_WORD}(?:[ \t]+(?:{_PARTICLE}[ \t]+)?{_WORD}){{0,3}}"
_TWO = rf"{_WORD}(?:[ \t]+(?:{_PARTICLE}[ \t]+)?{_WORD}){{1,3}}"
# The cues, searched in the lowercased text (a case-insensitive alternation would cost most of redaction's time).
# Strong cues: one word is enough. Weak cues ("I am", "customer"): a first and a last name.
_CUES = re.compile(
    r"\b(?:(?P<strong>(?:dear|hi|hello|hey|mr|mrs|ms|mx|miss|dr|prof|herr|frau|mme|mlle|sr|sra|sig)\.?"
    r"|my\s+name\s+is|regards,|sincerely,|thanks,|cheers,|best,)"
    r"|(?P<weak>i\s+am|i'm|this\s+is|customer|client|patient|called|named))(?=\s)"
)
_AFTER_STRONG = re.compile(rf"\s+(?P<n>{_NAME})")
_AFTER_WEAK = re.compile(rf"\s+(?P<n>{_TWO})")
# A key's value in JSON, SQL, Python or YAML-ish text: the key's last word is found first (in the lowercased text,
# by this alternation of literals, which the regex engine skips through fast), then the rest of the key before it.
_KEY_WORD = re.compile(r"(?:name|" + "|".join(sorted(NAME_KEYS, key=len, reverse=True)) + r")(?!\w)")
_VALUE_AFTER = re.compile(r"[\"'`]?\s*(?:=>|:=|[:=])\s*(?:N?'|\")(?P<n>[^\"'\n\\]{1,80})[\"']")
_NOT_NAMES = frozenset(
    {
        "sir",
        "madam",
        "customer",
        "customers",
        "team",
        "all",
        "support",
        "there",
        "world",
        "everyone",
        "user",
        "admin",
        "client",
        "friend",
        "colleague",
        "colleagues",
        "valued",
        "the",
        "a",
        "an",
        "this",
        "that",
        "your",
        "my",
        "our",
        "mr",
        "mrs",
        "ms",
        "mx",
        "miss",
        "dr",
        "prof",
        "herr",
        "frau",
        "mme",
        "mlle",
    }
)
_NAME_SHAPE = re.compile(rf"(?:{_WORD}|[^\W\d_]+)(?:[ \t]+(?:{_WORD}|[^\W\d_]+)){{0,3}}")
# Words that start a capitalised phrase that is not a name after a weak cue ("for New York", "of Customer Tiers").
_PLACE_OR_THING = frozenset(
    {
        "new",
        "north",
        "south",
        "east",
        "west",
        "san",
        "los",
        "las",
        "saint",
        "st",
        "united",
        "customer",
        "order",
        "orders",
        "product",
        "products",
        "total",
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
        "the",
        "select",
        "from",
        "where",
    }
)


def is_name_key(key: str) -> bool:
    """A key (dotted attribute key, JSON key, SQL column) whose value is a person's name."""
    parts = key.lower().replace("-", "_").split(".")
    last = parts[-1]
    if last in NAME_KEYS:
        return True
    return last == "name" and len(parts) > 1 and parts[-2] in _PERSON_PARENTS


def looks_like_name(value: str, *, words: int = 1) -> bool:
    """One to four words of letters (apostrophes and hyphens inside), at least ``words`` of them."""
    value = value.strip()
    if not (2 <= len(value) <= 80) or not _NAME_SHAPE.fullmatch(value):
        return False
    split = value.split()
    return len(split) >= words and split[0].casefold() not in _NOT_NAMES


def name_key(name: str) -> str:
    """The same person however the name is spelt in case and spacing."""
    return " ".join(name.split()).casefold()


def person_names(text: str) -> Iterator[Hit]:
    """Names that their context in ``text`` marks as names."""
    lowered = text.lower()
    if len(lowered) != len(text):  # a letter whose lowercase is longer ("İ"): keep the offsets the text's
        lowered = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
    for cue in _CUES.finditer(lowered):
        weak = cue.group("weak") is not None
        m = (_AFTER_WEAK if weak else _AFTER_STRONG).match(text, cue.end())
        if m is None:
            continue
        name = m.group("n")
        first = name.split()[0].casefold()
        if first in _NOT_NAMES or (weak and first in _PLACE_OR_THING):
            continue  # "Thanks, Mr. Okonkwo": "Mr" is no name, but the next cue
        yield "person", m.start("n"), m.end(), name_key(name)
    if "=" in text or ":" in text:
        for word in _KEY_WORD.finditer(lowered):
            start = word.start()
            while start > max(0, word.start() - 80) and (lowered[start - 1].isalnum() or lowered[start - 1] in "_."):
                start -= 1  # the whole key: "customer.name", "c.full_name"
            key = lowered[start : word.end()]
            # Not a bare "name": in query results it names companies and products as often as people.
            if not is_name_key(key):
                continue
            m = _VALUE_AFTER.match(text, word.end())
            if m is not None and looks_like_name(value := m.group("n")):
                start = m.start("n") + (len(value) - len(value.lstrip()))
                yield "person", start, start + len(value.strip()), name_key(value)


_LOCAL_NAME = re.compile(r"([^\W\d_]{2,})[._]([^\W\d_]{2,})")


def names_from_email(local_part: str) -> str | None:
    """``jane.doe`` -> ``jane doe``: the name an address is made of, to find it elsewhere in the trace."""
    m = _LOCAL_NAME.fullmatch(local_part)
    if m is None:
        return None
    return f"{m.group(1)} {m.group(2)}".casefold()
