"""What ``redact`` recognises beyond its own few patterns: keys by maintained detectors, numbers by their checksums,
and phone numbers in national formats (person names by their context: ``person_names``).

- **Keys and tokens**: the regex detectors of ``detect-secrets`` (AWS, Stripe, GitLab, GitHub, Slack, SendGrid,
  Twilio, npm, PyPI, Azure, Discord, Telegram, Mailchimp, Square, Basic auth in URLs, ...), kept up to date by
  their maintainers; only what it lacks is written here (Hugging Face ``hf_`` tokens, Stripe test keys, an AWS
  secret key after ``aws_secret_access_key=`` without quotes, ``Authorization: Basic`` credentials, whole PEM
  private-key blocks). Its entropy and keyword detectors are not used: they flag SQL keywords, hashes and UUIDs.
- **IBANs and US SSNs** are taken only when ``python-stdnum`` validates them (IBAN mod-97 and the country's BBAN
  format; the SSN areas and groups never issued), so order ids and amounts of the same shape stay.
- **Phone numbers** in national formats: a trunk ``0`` and groups (``030 1234567``, ``06 12 34 56 78``,
  ``020 7946 0958``) with 9 to 12 digits and one kind of separator, which dates and times never have.
Each detector yields ``(kind, start, end, key)``: ``key`` decides "the same value" (a name in any case, an IBAN with
or without spaces), so both spellings get one placeholder.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Iterator
from typing import Any

Hit = tuple[str, int, int, str]  # kind, start, end, key

# -- keys and tokens ----------------------------------------------------------------------------------------------

# detect-secrets' regex detectors used here, by class name, each with the words one of which its patterns need: a
# pattern runs only on text that holds one (most strings are prose and SQL that hold none, and 30 patterns over
# every string would be most of a capture's time). A word with a capital is looked for as written, others in the
# lowercased text. Its entropy, keyword and public-IP detectors are not used.
_DETECT_SECRETS = (
    ("aws", "AWSKeyDetector", ("A3T", "ABIA", "ACCA", "AKIA", "ASIA", "aws")),
    ("azure_storage_key", "AzureStorageKeyDetector", ("accountkey=",)),
    ("basic_auth", "BasicAuthDetector", ("://",)),
    ("cloudant", "CloudantDetector", ("cloudant", "cl_", "cl-", "clapi", "clkey", "clpw", "clpass", "cltoken", "clou")),
    ("discord", "DiscordBotTokenDetector", (".",)),
    ("github_token", "GitHubTokenDetector", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
    ("gitlab_token", "GitLabTokenDetector", ("gl", "GR1348941")),
    ("ibm_cos_hmac", "IbmCosHmacDetector", ("secret",)),
    ("mailchimp", "MailchimpDetector", ("-us",)),
    ("openai", "OpenAIDetector", ("T3BlbkFJ",)),
    ("pypi_token", "PypiTokenDetector", ("pypi-",)),
    ("sendgrid", "SendGridDetector", ("SG.",)),
    ("slack", "SlackDetector", ("xox", "hooks.slack.com")),
    ("softlayer", "SoftlayerDetector", ("softlayer", "sl_", "sl-", "slapi", "slkey", "slpwd", "slpass", "sltoken")),
    ("square_oauth", "SquareOAuthDetector", ("sq0csp-",)),
    ("stripe", "StripeDetector", ("k_live_",)),
    ("telegram_token", "TelegramBotTokenDetector", (":",)),
    ("twilio", "TwilioKeyDetector", ("AC", "SK")),
)
_EIGHT_DIGITS = re.compile(r"\d{8}")
_TOKEN_CHAR = re.compile(r"[A-Za-z0-9_\-]")
_OWN_SECRETS: tuple[tuple[str, tuple[str, ...], re.Pattern[str]], ...] = (
    ("api_key", ("hf_",), re.compile(r"(?<![\w-])hf_[A-Za-z0-9]{30,}(?![\w-])")),  # Hugging Face
    # Stripe, of any length (detect-secrets' pattern stops after 24 characters) and test keys too
    ("api_key", ("k_live_", "k_test_"), re.compile(r"(?<![\w-])(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{10,}(?![\w-])")),
    ("api_key", ("glpat-",), re.compile(r"(?<![\w-])glpat-[A-Za-z0-9_\-]{20,}(?![\w-])")),  # GitLab, any length
    # npm: detect-secrets' own pattern (//.+/:_authToken=) backtracks quadratically on a long line of slashes
    ("api_key", ("_authtoken",), re.compile(r":_authToken=\s*(npm_[A-Za-z0-9]{36}|[A-Fa-f0-9-]{36})")),
    # An AWS secret access key has no prefix: 40 base64 characters near "aws" and "secret"/"key", quoted or not.
    (
        "api_key",
        ("aws",),
        re.compile(
            r"(?i)aws[\w.-]{0,20}?(?:secret|key|token)[\w.\-\"']{0,20}?\s*(?:[:=]|=>)\s*[\"']?"
            r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
        ),
    ),
    ("token", ("basic",), re.compile(r"(?i)\bbasic\s+([A-Za-z0-9+/]{6,}={0,2})(?![A-Za-z0-9+/=])")),  # Basic auth
    (
        "private_key",
        ("PRIVATE KEY",),
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----", re.S
        ),
    ),
)


@functools.lru_cache(maxsize=1)
def _detect_secrets_patterns() -> tuple[tuple[str, tuple[str, ...], re.Pattern[str]], ...]:
    try:
        import importlib

        plugins = [
            (getattr(importlib.import_module(f"detect_secrets.plugins.{module}"), name), anchors)
            for module, name, anchors in _DETECT_SECRETS
        ]
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ImportError(
            f"redaction needs detect-secrets ({exc}); fix: pip install detect-secrets (a dependency of "
            "pytest-llmtrace: reinstall it)"
        ) from exc
    kinds = {"BasicAuthDetector": "password"}
    return tuple(
        (kinds.get(plugin.__name__, "api_key"), anchors, pattern)
        for plugin, anchors in plugins
        for pattern in plugin.denylist
    )


@functools.lru_cache(maxsize=1)
def _anchor_patterns() -> tuple[re.Pattern[str], re.Pattern[str], dict[str, frozenset[str]]]:
    """Every anchor in one alternation each, for the lowercased text and for the text as written: two scans of a
    string tell which patterns can match it, instead of one scan per anchor. A lookahead finds them at every
    position, and an anchor found implies those inside it ("glpat-" holds "gl")."""
    anchors = {a for _, group, _ in (*_detect_secrets_patterns(), *_OWN_SECRETS) for a in group}
    lower = sorted((a for a in anchors if a == a.lower()), key=len, reverse=True)
    upper = sorted((a for a in anchors if a != a.lower()), key=len, reverse=True)
    implied = {a: frozenset(b for b in anchors if b in a) for a in anchors}
    return (
        re.compile("(?=(" + "|".join(map(re.escape, lower)) + "))"),
        re.compile("(?=(" + "|".join(map(re.escape, upper)) + "))"),
        implied,
    )


def secrets(text: str) -> Iterator[Hit]:
    """Keys, tokens and passwords in ``text``."""
    in_lower, as_written, implied = _anchor_patterns()
    found = set(in_lower.findall(text.lower())) | set(as_written.findall(text))
    if not found:
        return
    present = set().union(*(implied[a] for a in found))
    for kind, anchors, pattern in _detect_secrets_patterns():
        if present.isdisjoint(anchors):
            continue
        if anchors == (":",) and _EIGHT_DIGITS.search(text) is None:  # Telegram's bot id before the colon
            continue
        for m in pattern.finditer(text):
            # A pattern's first group is the secret when it ends the match (after its context, as in AWS's or
            # Basic auth's), not when it names a prefix (GitHub's "ghp"): then the whole match, run on to the
            # token's end.
            if m.re.groups and m.group(1) and m.start(1) > m.start() and m.end(1) >= m.end() - 2:
                start, end = m.start(1), m.end(1)
            else:
                start, end = m.start(), m.end()
                while end < len(text) and _TOKEN_CHAR.match(text, end):
                    end += 1
            yield kind, start, end, text[start:end]
    for kind, anchors, pattern in _OWN_SECRETS:
        if present.isdisjoint(anchors):
            continue
        for m in pattern.finditer(text):
            group = 1 if m.re.groups else 0
            if kind == "token" and not _basic_credentials(m.group(1)):
                continue
            yield kind, m.start(group), m.end(group), m.group(group)


def _basic_credentials(encoded: str) -> bool:
    """``Basic dXNlcjpwYXNz`` is ``user:pass``; "Basic authentication" in prose decodes to no such thing."""
    try:
        decoded = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in decoded and all(32 <= c < 127 for c in decoded)


# -- numbers with a checksum ----------------------------------------------------------------------------------------

_IBAN = re.compile(r"(?<![\w-])[A-Z]{2}\d{2}(?: ?[A-Za-z0-9]){11,30}(?![\w-])")
_SSN = re.compile(r"(?<![\w.+-])\d{3}([- ])\d{2}\1\d{4}(?![\w-]|[.,]\d)")


@functools.lru_cache(maxsize=1)
def _stdnum() -> tuple[Any, Any]:
    try:
        from stdnum import iban
        from stdnum.us import ssn
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ImportError(f"redaction needs python-stdnum ({exc}); fix: pip install python-stdnum") from exc
    return iban, ssn


def ibans(text: str) -> Iterator[Hit]:
    """IBANs whose mod-97 checksum and country format (python-stdnum) hold."""
    iban = _stdnum()[0]
    for m in _IBAN.finditer(text):
        candidate = m.group()
        while True:  # "DE89 3704 0044 0532 0130 00 AB": the IBAN, without the word after it
            compact = candidate.replace(" ", "").upper()
            if iban.is_valid(compact):
                yield "iban", m.start(), m.start() + len(candidate), compact
                break
            if " " not in candidate:
                break
            candidate = candidate.rsplit(" ", 1)[0]


def ssns(text: str) -> Iterator[Hit]:
    """US social security numbers in an area, group and serial that were ever issued (python-stdnum)."""
    ssn = _stdnum()[1]
    for m in _SSN.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if ssn.is_valid(digits):
            yield "ssn", m.start(), m.end(), digits


# -- phone numbers in national formats ------------------------------------------------------------------------------

_NATIONAL_PHONE = re.compile(r"(?<![\w+/.:,-])0[1-9]\d{0,3}(?:[ /-]\d{2,8}){1,4}(?![\w]|[.,:/-]\d)")


def phones(text: str) -> Iterator[Hit]:
    """``030 1234567``, ``06 12 34 56 78``, ``020 7946 0958``: a trunk 0, 9 to 12 digits, one kind of separator."""
    for m in _NATIONAL_PHONE.finditer(text):
        value = m.group()
        digits = re.sub(r"\D", "", value)
        if 9 <= len(digits) <= 12 and len(set(re.findall(r"[ /-]", value))) == 1:
            yield "phone", m.start(), m.end(), digits[1:]
