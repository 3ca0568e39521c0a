"""URLs and DSNs made safe to print: they end up in report headers, failure messages, CI logs and junit.xml.

The lowest layer, beside ``inert``: settings, services, capture and the reports all print URLs, and each must hide
the same secrets the same way.
"""

from __future__ import annotations

import re
from urllib.parse import unquote


def redact_url(url: str) -> str:
    """The URL or DSN with its secrets hidden: URLs end up in report headers, failure messages, CI logs and junit.xml.

    Taken apart by hand, not by ``urllib``: a password typed raw (``/``, ``@``, ``?``, ``#``, ``%`` unencoded) makes
    ``urlsplit`` end the user part early and print the password as host, path or query. Here the user part runs to
    the last ``@`` that a host follows, so whatever the password holds is hidden; a user part without a password is
    kept for Postgres (a role name) and hidden for other schemes (``https://TOKEN@host``). Query parameters named
    like a secret (``password``, ``sslpassword``, ``api_key``, ``token``...) are hidden, and so are the secrets of a
    libpq keyword DSN (``host=db password=...``).
    """
    text = str(url)
    scheme = _SCHEME.match(text)
    if scheme is None:
        return _KEYWORD_SECRET.sub(r"\1***", text)
    head, rest = scheme.group(0), text[scheme.end() :]
    at = _userinfo_end(rest)
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        shown = f"{user}:***" if colon else user if scheme.group(1).lower() in _ROLE_SCHEMES else "***"
        rest = shown + rest[at:]
    return head + _redact_query(rest)


def redact_text(text: str, *urls: str) -> str:
    """``text`` (an error, a log line, a message) with every URL or DSN secret in it hidden, as ``redact_url`` does.

    Drivers echo parts of a URL they could not parse (libpq: ``invalid integer value "pa" for connection option
    "port"`` when a raw ``/`` ends the user part early), so the secrets of ``urls`` (the URLs the text may be about)
    are also hidden wherever they or a piece of them (split at URL delimiters, three characters or more) appear.
    """
    out = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), str(text))
    if "=" in out:
        out = _KEYWORD_SECRET.sub(r"\1***", out)
    for secret in sorted({piece for url in urls for piece in url_secrets(url)}, key=len, reverse=True):
        out = out.replace(secret, "***")
    return out


def url_secrets(url: str) -> list[str]:
    """The secrets a URL or DSN carries (its password, secret query values, keyword values), raw and decoded, and
    their pieces between URL delimiters: what must not appear in anything printed about it."""
    found: list[str] = []
    text = str(url)
    scheme = _SCHEME.match(text)
    if scheme is not None:
        rest = text[scheme.end() :]
        at = _userinfo_end(rest)
        if at >= 0:
            user, colon, password = rest[:at].partition(":")
            found.append(password if colon else "" if scheme.group(1).lower() in _ROLE_SCHEMES else user)
        found += [m.group(2) for m in _QUERY_SECRET.finditer(rest)]
    found += [m.group(2) for m in _KEYWORD_SECRET.finditer(text)]
    pieces: set[str] = set()
    for secret in filter(None, found):
        for form in (secret, unquote(secret), secret.strip("'")):
            pieces.add(form)
            pieces.update(p for p in _DELIMITERS.split(form) if len(p) >= 3)
    return sorted((p for p in pieces if p and p != "***"), key=len, reverse=True)


def _userinfo_end(rest: str) -> int:
    """Index of the ``@`` that ends the user part of ``rest`` (a URL after its scheme), or -1: the last ``@`` that a
    host (up to ``/``, ``?``, ``#`` or the end) follows."""
    at = rest.rfind("@")
    while at >= 0:
        if _HOST.match(rest, at + 1):
            return at
        at = rest.rfind("@", 0, at)
    return -1


def _redact_query(rest: str) -> str:
    return _QUERY_SECRET.sub(r"\1***", rest) if "=" in rest else rest


_SCHEME = re.compile(r"([a-z][a-z0-9+.-]*):(?://)?", re.IGNORECASE)
_ROLE_SCHEMES = frozenset({"postgresql", "postgres"})  # a user part alone is a role name, not a secret
_HOST = re.compile(r"[A-Za-z0-9._~\-\[\]:%]*(?=[/?#]|$)")
_SECRET_NAME = r"[A-Za-z0-9_.\-]*(?:pass|pwd|secret|token|key|auth|signature|sig|credential)[A-Za-z0-9_.\-]*"
# a query value runs to the next "&" (a raw "#" in a password must not end it early)
_QUERY_SECRET = re.compile(r"([?&;]" + _SECRET_NAME + r"=)([^&\s]*)", re.IGNORECASE)
# libpq keyword DSNs: key = value, the value bare or single-quoted with backslash escapes
_KEYWORD_SECRET = re.compile(r"((?<![\w.])(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s]*)", re.IGNORECASE)
_URL_IN_TEXT = re.compile(r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://[^\s]+")
_DELIMITERS = re.compile(r"[/?#@:&=%;]")


def split_userinfo(url: str) -> tuple[str, str | None]:
    """``url`` without its user part, and that user part (``user:password``, still percent-encoded) or None; found
    as ``redact_url`` finds it, so a raw ``/`` or ``@`` in the password leaves no piece of it as host or path."""
    text = str(url).strip()
    scheme = _SCHEME.match(text)
    if scheme is None or not scheme.group(0).endswith("//"):
        return text, None
    rest = text[scheme.end() :]
    at = _userinfo_end(rest)
    if at < 0:
        return text, None
    return text[: scheme.end()] + rest[at + 1 :], rest[:at]


def without_userinfo(url: str) -> str:
    """``url`` without its user part (user and password)."""
    return split_userinfo(url)[0]
