"""Which model answered: the model names seen in the cases' traces, and each one's digest when something real says it.

A digest is only ever copied from a source that states it, and ``source`` names that source:

- live and record mode, from the Ollama server the run used: its ``/api/tags`` listing (a real Ollama: the model's
  manifest digest); for the embedded backend, whose Ollama front answers ``/api/tags`` with a hash of the model's
  *name*, the sha256 of the GGUF file it loaded instead;
- replay mode, from an LLM span attribute of the golden traces whose name says it is a digest (``...digest...``),
  since the recording is the model that answers.

Otherwise ``digest`` is ``null`` and ``reason`` says why: a digest is never made up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pytest_llmtrace.modelapi.backend import normalize_model_name
from pytest_llmtrace.trace.model import Trace

LOOKUP_TIMEOUT_S = 5.0
_CHUNK = 1 << 20

# name (as Ollama normalizes it: ``qwen-sql-prod:latest``) -> (digest, source); or the reason there is none at all.
LiveDigests = tuple[dict[str, tuple[str, str]], str]


def trace_digests(trace: Trace) -> dict[str, tuple[str | None, str]]:
    """Each model a trace's LLM calls name -> (digest, the attribute it came from) or (None, "")."""
    found: dict[str, tuple[str | None, str]] = {}
    for call in trace.llm_calls:
        if not call.model:
            continue
        for key, value in sorted(call.span.attributes.items()):
            if "digest" in key.rsplit(".", 1)[-1].lower() and isinstance(value, str) and value.strip():
                found[call.model] = (value.strip(), key)
                break
        else:
            found.setdefault(call.model, (None, ""))
    return found


def ollama_tag_digests(url: str, *, timeout_s: float = LOOKUP_TIMEOUT_S) -> dict[str, str]:
    """``GET {url}/api/tags`` -> {normalized model name: digest}; raises ``httpx.HTTPError`` or ``ValueError``."""
    import httpx  # here, not at import: a run that asks no Ollama server does not pay for it (and rich)

    response = httpx.get(f"{url.rstrip('/')}/api/tags", timeout=timeout_s)
    response.raise_for_status()
    models = response.json().get("models")
    if not isinstance(models, list):
        raise ValueError("the answer has no 'models' list")
    return {
        normalize_model_name(str(m.get("name") or m.get("model"))): str(m["digest"])
        for m in models
        if isinstance(m, dict) and m.get("digest") and (m.get("name") or m.get("model"))
    }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def model_entries(
    names: Iterable[str],
    mode: str,
    recorded: Mapping[str, tuple[str | None, str]],
    live: LiveDigests | None,
) -> list[dict[str, Any]]:
    """``run.models`` of results.json: one entry per model name, sorted, each with a digest and its source or a
    reason. ``recorded`` is what the golden traces carry (``trace_digests``); ``live`` what the server said, or
    ``None`` when no server was asked."""
    entries = []
    for name in sorted(set(names)):
        digest: str | None = None
        source = reason = ""
        if mode == "replay":
            digest, key = recorded.get(name, (None, ""))
            if digest is not None:
                source = f"golden trace attribute {key}"
            else:
                reason = "replay: no LLM span attribute of the golden traces carries this model's digest"
        elif live is None:
            reason = f"{mode}: no Ollama server was used by this run's cases"
        else:
            by_name, why_not = live
            found = by_name.get(normalize_model_name(name))
            if found is not None:
                digest, source = found
            else:
                reason = why_not or f"{mode}: the Ollama server does not list {normalize_model_name(name)}"
        entry: dict[str, Any] = {"name": name, "digest": digest, "source": source or None}
        entry["reason"] = reason or None
        entries.append(entry)
    return entries
