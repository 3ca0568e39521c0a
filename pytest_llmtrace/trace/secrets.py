"""Credentials out of golden files: the small, fixed rule set ``llmtrace import`` and ``write_trace`` apply.

Golden files are committed to git and printed in failure messages, and production spans carry credentials: a
database instrumentation records ``db.connection_string``, an HTTP one records the ``Authorization`` header, a
LangChain span puts the client's ``api_key`` into ``llm.invocation_parameters``. This module removes credentials,
not personal data (emails, names, card numbers: that is the job of the PII redaction of ``llmtrace capture``).

The rules, applied to every span's attributes, resource and scope attributes, events and links (at any nesting),
and to span names, status messages and event names (the places ``trace.walk.map_span`` lists, which PII redaction
walks too). Unlike PII redaction, these rules read attribute keys rather than rewrite them: a key's name decides
whether its whole value is a credential (rule 1, which also replaces a whole nested mapping) or a connection string
(rule 3), and what was redacted is reported by dotted key path:

1. **Secret-named attributes**: the whole value is replaced when the key's last dotted part, lowercased with ``-``
   read as ``_``, is one of ``SECRET_KEYS`` or ends with one of ``SECRET_KEY_SUFFIXES``
   (``http.request.header.authorization``, ``metadata.openai_api_key``; not ``llm.token_count.total``).
2. **URL passwords** anywhere in a string: ``scheme://user:PASSWORD@host`` keeps the user, and a query parameter
   named in ``SECRET_QUERY_PARAMS`` (``?password=``, ``&sslpassword=``, ``?api_key=``) keeps its name.
3. **libpq keyword strings** (``host=db password=... dbname=shop``) in attributes whose key names a connection
   (``CONNECTION_KEY_WORDS``). Only there: elsewhere ``password = 'x'`` is as likely to be SQL, and changing the
   recorded SQL would change what the golden case replays.
4. **Token shapes** anywhere in a string: ``Bearer <token>`` (with a digit in it), OpenAI keys (``sk-...``), JWTs
   (Phoenix API keys are JWTs), and ``"api_key": "..."`` pairs inside JSON or Python-repr text.

Every match becomes ``REDACTED``. The rules are deterministic, so the same secret becomes the same text in the
question, the prompt and the answer, and a replay of the redacted trace still matches its own requests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pytest_llmtrace.trace.model import AttrValue, Span, Trace
from pytest_llmtrace.trace.walk import map_span

REDACTED = "***"
_PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*(?::[0-9a-f]{8}|_\d+)>")  # redact's, keyed or (older) numbered

SECRET_KEYS = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "api_key",
        "apikey",
        "x_api_key",
        "password",
        "passwd",
        "pwd",
        "sslpassword",
        "secret",
        "client_secret",
        "access_token",
        "refresh_token",
        "id_token",
        "auth_token",
        "token",
        "bearer",
        "private_key",
        "cookie",
        "set_cookie",
    }
)
# Names that end like a credential but hold a measurement (``gen_ai.server.time_to_first_token``, in seconds).
MEASUREMENT_KEYS = frozenset({"time_to_first_token", "time_per_output_token"})
SECRET_KEY_SUFFIXES = ("_api_key", "_apikey", "_password", "_secret", "_token", "_private_key")
SECRET_QUERY_PARAMS = (
    "password",
    "passwd",
    "pwd",
    "sslpassword",
    "api_key",
    "apikey",
    "api-key",
    "access_token",
    "auth_token",
    "token",
    "secret",
    "client_secret",
)
CONNECTION_KEY_WORDS = ("connection_string", "connection", "dsn", "conn_str", "conninfo", "url", "uri")

_SECRET_NAMES = "|".join(re.escape(k) for k in sorted(SECRET_KEYS | {"api-key", "x-api-key"}, key=len, reverse=True))
# scheme://user:password@host: the password may hold '@' (unencoded, as people write it); the host may not.
# Each pattern starts where its run of characters starts (a lookbehind, not \b), so a failed match scans a run once:
# a 1 MB hostile attribute costs linear time, not quadratic.
_URL_PASSWORD = re.compile(
    r"(?P<head>(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://[^/?#\s:@]*:)[^/?#\s]*(?=@[^/?#\s@]*(?:[/?#\s]|$))"
)
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;](?:" + "|".join(re.escape(p) for p in SECRET_QUERY_PARAMS) + r")=)[^&#\s'\"]+", re.IGNORECASE
)
_KEYWORD_PASSWORD = re.compile(r"(?P<head>(?<![\w.])(?:ssl)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s'\"]+)", re.I)
# A bearer token has a digit somewhere: "Bearer responsibilities" in prose is left alone.
_BEARER = re.compile(r"(?P<head>\bBearer\s+)(?=[A-Za-z._~+/\-]*[0-9])[A-Za-z0-9._~+/\-]{8,}=*", re.IGNORECASE)
_OPENAI_KEY = re.compile(r"(?<![A-Za-z0-9_\-])sk-(?:proj-|svcacct-|admin-)?(?=[A-Za-z_\-]*[0-9])[A-Za-z0-9_\-]{20,}")
_JWT = re.compile(r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{4,}\.eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*")
_QUOTED_PAIR = re.compile(
    r"(?P<head>(?P<q>[\"'])(?:" + _SECRET_NAMES + r")(?P=q)\s*:\s*(?P<v>[\"']))(?:(?!(?P=v))[^\\]|\\.)*(?P=v)",
    re.IGNORECASE,
)


def _keep_head(match: re.Match[str]) -> str:
    tail = match.group("v") if "v" in match.groupdict() else ""
    secret = match.group()[len(match.group("head")) : len(match.group()) - len(tail or "")]
    if _PLACEHOLDER.fullmatch(secret.strip("'\"")):  # already replaced by the PII redaction: keep it consistent
        return match.group()
    return match.group("head") + REDACTED + (match.group("v") if "v" in match.groupdict() else "")


def redact_url_password(url: str) -> str:
    """``postgresql://app:s3cret@db/shop?sslpassword=x`` -> ``postgresql://app:***@db/shop?sslpassword=***``.

    Works on a URL alone or on text that contains URLs; text without a URL password comes back unchanged.
    """
    if "://" in url:
        url = _URL_PASSWORD.sub(_keep_head, url)
    return _QUERY_SECRET.sub(_keep_head, url) if "=" in url else url


def redact_text(text: str, *, connection: bool = False) -> str:
    """Rules 2 to 4 on one string; ``connection`` adds rule 3 (libpq ``password=`` keywords)."""
    if len(text) < 8:  # no rule matches anything this short
        return text
    # Each pattern runs only when its anchor is in the text: most strings are prose or SQL that hold none.
    text = redact_url_password(text)
    if connection and "=" in text:
        text = _KEYWORD_PASSWORD.sub(_keep_head, text)
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(_keep_head, text)
    if "sk-" in text:
        text = _OPENAI_KEY.sub(REDACTED, text)
    if "eyJ" in text:
        text = _JWT.sub(REDACTED, text)
    if ":" in text and ('"' in text or "'" in text):
        text = _QUOTED_PAIR.sub(_keep_head, text)
    return text


def is_secret_key(key: str) -> bool:
    """Rule 1: the attribute's name says its value is a credential."""
    last = key.rsplit(".", 1)[-1].lower().replace("-", "_")
    if last in MEASUREMENT_KEYS:
        return False
    return last in SECRET_KEYS or last.endswith(SECRET_KEY_SUFFIXES)


def _is_placeholder(value: AttrValue) -> bool:
    """``<API_KEY:3f9a1c2b>``: what ``pytest_llmtrace.sources.redact`` writes in place of a value it recognised."""
    return isinstance(value, str) and _PLACEHOLDER.fullmatch(value) is not None


def _is_connection_key(key: str) -> bool:
    last = key.rsplit(".", 1)[-1].lower().replace("-", "_")
    return any(word in last for word in CONNECTION_KEY_WORDS)


@dataclass
class Redaction:
    """What was redacted, by attribute key or field name (never the values), for ``llmtrace import`` to report."""

    trace: Trace
    fields: dict[str, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(self.fields.values())


def redact_secrets(trace: Trace) -> Trace:
    """The trace with the rules above applied; the same object when there was nothing to redact."""
    return redact_trace(trace).trace


def redact_spans(spans: Iterable[Span]) -> list[Span]:
    """The rules on loose spans (several traces, or spans not checked as one trace yet)."""
    return [_redact_span(span, lambda name: None) for span in spans]


def redact_trace(trace: Trace) -> Redaction:
    """``redact_secrets`` plus a count of redacted values per attribute key, for a report that shows no values."""
    counts: dict[str, int] = {}

    def note(name: str) -> None:
        counts[name] = counts.get(name, 0) + 1

    spans = [_redact_span(span, note) for span in trace]
    if not counts:
        return Redaction(trace)
    redacted = Trace(spans, source=trace.source, warn_missing_parents=False)
    return Redaction(redacted, counts)


def _redact_span(span: Span, note: Callable[[str], None]) -> Span:
    def text(value: str, where: str) -> str:
        new = redact_text(value)
        if new != value:
            note(where)
        return new

    return map_span(span, text, lambda attributes: _redact_attributes(attributes, note))


def _redact_attributes(
    attributes: Mapping[str, AttrValue], note: Callable[[str], None], prefix: str = ""
) -> Mapping[str, AttrValue]:
    """The same mapping object when nothing changed, so callers can tell cheaply; ``note`` hears each changed key."""
    result: dict[str, AttrValue] = {}
    changed = False
    for key, value in attributes.items():
        full = prefix + key
        new: AttrValue
        if isinstance(value, dict) and not is_secret_key(key):
            inner = _redact_attributes(value, note, prefix=full + ".")
            changed = changed or inner is not value
            result[key] = dict(inner) if inner is not value else value
            continue
        if is_secret_key(key):  # a placeholder the PII redaction already put there stays, so it stays consistent
            new = value if value in ("", REDACTED) or _is_placeholder(value) else REDACTED
        else:
            new = _redact_value(value, connection=_is_connection_key(key))
        if not (new is value or (type(new) is type(value) and new == value)):
            changed = True
            note(full)
            result[key] = new
        else:
            result[key] = value
    return result if changed else attributes


def _redact_value(value: AttrValue, *, connection: bool) -> AttrValue:
    """A value under a key that names no secret: its strings, and the mappings inside a list (OTLP's arrays of
    key-value lists: a message list, a tool call's arguments), whose own keys decide again."""
    if isinstance(value, str):
        return redact_text(value, connection=connection)
    if isinstance(value, tuple):
        return tuple(_redact_value(v, connection=connection) for v in value)
    if isinstance(value, dict):  # the key holding the list is noted once, by the caller
        inner = _redact_attributes(value, lambda _where: None)
        return value if inner is value else dict(inner)
    return value
