"""The redaction flags ``llmtrace capture`` and ``llmtrace import`` share, and the redactor they ask for."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from pytest_llmtrace.core.errors import LLMTraceError
from pytest_llmtrace.sources import redaction_key
from pytest_llmtrace.sources.redact import Redactor


class RedactionError(LLMTraceError):
    """A redaction flag that cannot work (a bad regular expression, ``--no-redact`` with patterns)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "redaction",
        "On by default: emails, phone numbers, card numbers (Luhn-checked), IBANs and US SSNs (checksums "
        "validated), API keys and tokens (detect-secrets' detectors, hf_, Basic auth, JWTs), passwords in URLs, IP "
        "addresses and person names where their context shows them are replaced before anything is written, each "
        "distinct value by one placeholder (<EMAIL:3f9a1c2b>, ...; IPs by documentation addresses) everywhere, so "
        "the redacted question still replays the redacted prompt. Placeholders are keyed hashes: the same value gets "
        "the same placeholder in every capture and import made with the same --redaction-key. Only kinds and counts "
        "are printed, never values.",
    )
    group.add_argument(
        "--redaction-key",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"the project's secret placeholder key, made on first use (default: ${redaction_key.KEY_ENV}, else "
        f"{redaction_key.DEFAULT_KEY_PATH} in the project that holds --out); keep it out of git and share it to get "
        "the same placeholders on other machines",
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
    try:
        key = redaction_key.load_or_create(key_path(args.redaction_key, args.out))
    except redaction_key.RedactionKeyError as exc:
        raise RedactionError(str(exc)) from None
    return Redactor(patterns, args.redact_value, args.keep_value, key=key)


def key_path(given: Path | None, out: Path) -> Path:
    """``--redaction-key``, else ``$LLMTRACE_REDACTION_KEY``, else ``.llmtrace/redaction.key`` in the project the
    output directory is in (its nearest ancestor with ``.git`` or a pytest config file), else beside the output
    directory (never inside it: the golden files may be copied or committed as a whole)."""
    if given is not None:
        return given
    env = os.environ.get(redaction_key.KEY_ENV, "").strip()
    if env:
        return Path(env)
    project = redaction_key.project_dir(_existing_ancestor(out))
    return (project or _existing_ancestor(out.resolve().parent)) / redaction_key.DEFAULT_KEY_PATH


def _existing_ancestor(path: Path) -> Path:
    path = path.resolve()
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path
