"""The project's redaction key: what makes one value the same placeholder in every capture, import and export.

Placeholders are a keyed hash (HMAC-SHA256) of the value, so a customer's address is ``<EMAIL:3f9a1c2b>`` in every
golden file and in Phoenix, whichever trace or run it came from. The key must be secret: emails and phone numbers
are few enough to hash them all, so with a public key (or a plain hash) a placeholder would give its value back.
It lives in the project, next to the golden files' repository but never in it: ``.llmtrace/redaction.key`` is
created on first use (0600) with a ``.gitignore`` beside it that keeps it out of git. Teams that want the same
placeholders on every machine share the file out of band and point ``LLMTRACE_REDACTION_KEY`` (or the
``--redaction-key`` flag, or the ``llmtrace_redaction_key`` ini setting) at it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pytest_llmtrace.core.errors import LLMTraceError
from pytest_llmtrace.core.settings import env_var

KEY_ENV = env_var("redaction_key")  # the pytest setting's variable, read by `llmtrace capture`/`import` too
DEFAULT_KEY_PATH = Path(".llmtrace") / "redaction.key"
_KEY_BYTES = 32
_ROOT_MARKERS = (".git", "pyproject.toml", "pytest.ini", "tox.ini", "setup.cfg")


class RedactionKeyError(LLMTraceError):
    """The key file cannot be read or made (a directory in the way, no permission, not a key)."""


def project_dir(start: Path) -> Path | None:
    """The project a directory belongs to: the nearest ancestor with a ``.git`` or a pytest config file (pytest's
    own rootdir markers); None outside any project."""
    start = start.resolve()
    for directory in (start, *start.parents):
        if any((directory / marker).exists() for marker in _ROOT_MARKERS):
            return directory
    return None


def load_or_create(path: Path) -> bytes:
    """The key in ``path``; a new random one written there (0600, git-ignored) when there is none yet."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return _create(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise RedactionKeyError(f"{path}: cannot read the redaction key ({exc}); fix: make it readable") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise RedactionKeyError(
            f"{path}: not a redaction key (expected at least 32 hex digits); fix: delete it to have a new one "
            "made (placeholders then change) or restore the team's copy"
        )
    return key


def _create(path: Path) -> bytes:
    key = secrets.token_bytes(_KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _ignore_in_git(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs, or placeholders would differ
        return load_or_create(path)
    except OSError as exc:
        raise RedactionKeyError(f"{path}: cannot create the redaction key ({exc}); fix: set {KEY_ENV}") from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key.hex() + "\n")
    return key


def _ignore_in_git(path: Path) -> None:
    """A ``.gitignore`` beside the key that names it, so ``git add .`` cannot commit it."""
    ignore = path.parent / ".gitignore"
    line = "/" + path.name
    try:
        existing = ignore.read_text(encoding="utf-8")
    except FileNotFoundError:
        existing = None
    if existing is None:
        ignore.write_text(f"# the redaction key of pytest-llmtrace: secret, never commit it\n{line}\n", "utf-8")
    elif line not in existing.splitlines() and path.name not in existing.splitlines():
        ignore.write_text(existing + ("" if existing.endswith("\n") or not existing else "\n") + line + "\n", "utf-8")
