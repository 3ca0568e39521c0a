"""Recall of redaction per kind on a labelled corpus, and its false positives on texts that must stay.

tests/data/redaction/corpus.jsonl holds texts as traces hold them, each with the values that must be redacted and
their kind (made by make_corpus.py beside it), and negatives that must come through unchanged: SQL, order ids,
prices, dates, UUIDs, company and product names. A value counts as redacted when the redacted text no longer
holds it. ``python tests/unit/test_redaction_recall.py`` prints the table.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from pathlib import Path

import pytest

from pytest_llmtrace.sources.redact import Redactor

CORPUS = Path(__file__).resolve().parents[1] / "data" / "redaction" / "corpus.jsonl"
# Secrets and cards must never get through; the rest are recognised by shape or context and may miss a few.
FLOORS = {"secret": 1.0, "card": 1.0, "email": 0.9, "phone": 0.9, "ssn": 0.9, "iban": 0.9, "ip": 0.9, "person": 0.9}
MAX_FALSE_POSITIVES = 0


def measure(redactor: Redactor | None = None) -> tuple[Counter[str], Counter[str], list[str], list[str]]:
    """Labelled values per kind, how many were redacted, the missed ones, and the negatives that were changed."""
    redactor = redactor or Redactor()
    total: Counter[str] = Counter()
    redacted: Counter[str] = Counter()
    missed: list[str] = []
    false_positives: list[str] = []
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        text: str = row["text"]
        out = redactor.text(text)
        if not row["spans"] and out != text:
            false_positives.append(f"{text!r} -> {out!r}")
        for span in row["spans"]:
            value = text[span["start"] : span["end"]]
            total[span["kind"]] += 1
            if value in out:
                missed.append(f"{span['kind']}: {value!r} in {text!r}")
            else:
                redacted[span["kind"]] += 1
    return total, redacted, missed, false_positives


@functools.cache
def measured() -> tuple[Counter[str], Counter[str], list[str], list[str]]:
    """``measure`` once for the tests below, which look at its parts."""
    return measure()


def table(redactor: Redactor | None = None) -> str:
    total, redacted, missed, false_positives = measure(redactor)
    lines = ["kind     values  redacted  recall  floor"]
    for kind in sorted(total):
        recall = redacted[kind] / total[kind]
        lines.append(f"{kind:<8} {total[kind]:>6}  {redacted[kind]:>8}  {recall:>6.3f}  {FLOORS.get(kind, 0):>5.2f}")
    negatives = sum(1 for line in CORPUS.read_text(encoding="utf-8").splitlines() if not json.loads(line)["spans"])
    lines.append(f"false positives: {len(false_positives)} of {negatives} negatives")
    lines += [f"  missed {m}" for m in missed] + [f"  changed {f}" for f in false_positives]
    return "\n".join(lines)


def test_the_corpus_has_enough_examples_of_each_kind() -> None:
    total, _, _, _ = measured()
    assert set(total) == set(FLOORS)
    assert min(total.values()) >= 20, total


@pytest.mark.parametrize("kind", sorted(FLOORS))
def test_recall_per_kind_meets_its_floor(kind: str) -> None:
    total, redacted, missed, _ = measured()
    recall = redacted[kind] / total[kind]
    assert recall >= FLOORS[kind], "\n".join(m for m in missed if m.startswith(kind + ":"))


def test_the_negatives_come_through_unchanged() -> None:
    _, _, _, false_positives = measured()
    assert len(false_positives) <= MAX_FALSE_POSITIVES, "\n".join(false_positives)


if __name__ == "__main__":
    print(table())
