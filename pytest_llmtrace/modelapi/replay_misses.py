"""The near-miss report: a request that no recording answers, the recorded calls nearest to it, and the prompt diff.

"Prompt changed" is only actionable when the test report shows what changed: ``Miss.explain`` is what a replayed
case fails with (``ReplayBackend.misses``), ranked by ``rank_prompts`` so a long trace costs milliseconds per miss.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from pytest_llmtrace.trace.views import LLMCall, Message

__all__ = ["MAX_CANDIDATES", "Candidate", "Miss", "format_prompt_diff", "prompt_text", "rank_prompts"]

MAX_CANDIDATES = 3
SHORTLIST = 10  # distinct recorded prompts that get the exact (slow) similarity on a miss


def _render_prompt(messages: Sequence[Message]) -> list[str]:
    """One block per message: a ``[role]`` header line, then the content's lines, blocks separated by a blank line."""
    lines: list[str] = []
    for i, message in enumerate(messages):
        if i:
            lines.append("")
        lines.append(f"[{message.role}]")
        lines.extend(message.content.split("\n"))
    return lines


def prompt_text(messages: Sequence[Message]) -> str:
    return "\n".join(_render_prompt(messages))


def format_prompt_diff(recorded: Sequence[Message], new: Sequence[Message]) -> str:
    """A unified diff from the recorded prompt to the new one; empty when they are the same text.

    Lines are kept whole however long: a changed schema line is only recognisable in full.
    """
    diff = difflib.unified_diff(
        _render_prompt(recorded), _render_prompt(new), "recorded prompt", "new prompt", lineterm=""
    )
    return "\n".join(diff)


def rank_prompts(recorded: Sequence[str], new: str) -> dict[str, float]:
    """Similarity (difflib ratio, 0..1) of ``new`` to the most similar distinct ``recorded`` prompts.

    The exact character-level ratio costs about 10 ms for two 1.3 kB prompts, too much to run against every call of
    a long trace on every miss; a line-level ratio and ``quick_ratio`` (both well under a millisecond) shortlist the
    prompts that get it. Junk detection is off for the exact ratio: on text over 200 characters it leaves every
    character making up more than 1% of the text (all the common letters) out of the matching.
    """
    distinct = list(dict.fromkeys(recorded))
    by_lines = difflib.SequenceMatcher(None, [], new.split("\n"), autojunk=False)
    by_chars = difflib.SequenceMatcher(None, "", new, autojunk=False)

    def cheap(text: str) -> tuple[float, float]:
        by_lines.set_seq1(text.split("\n"))
        by_chars.set_seq1(text)
        return by_lines.ratio(), by_chars.quick_ratio()

    shortlist = sorted(distinct, key=cheap, reverse=True)[:SHORTLIST]
    exact: dict[str, float] = {}
    for text in shortlist:
        by_chars.set_seq1(text)
        exact[text] = by_chars.ratio()
    return exact


@dataclass(frozen=True)
class Candidate:
    """A recorded call that came close to a request that matched nothing."""

    index: int  # position among the recorded calls, from 0
    call: LLMCall
    similarity: float  # difflib ratio of the rendered prompts, 0..1
    used: bool  # already answered an earlier request
    differs_in: tuple[str, ...]  # the configured matchers this call fails

    def describe(self) -> str:
        why = f"differs in {', '.join(self.differs_in)}" if self.differs_in else "already used"
        if self.used and self.differs_in:
            why += ", already used"
        return f"recorded call #{self.index} {self.call.span.name!r} (similarity {self.similarity:.2f}, {why})"


@dataclass(frozen=True)
class Miss:
    """A request no recorded call answered, with what the test report needs to show why."""

    model: str
    messages: tuple[Message, ...]
    route: str
    candidates: tuple[Candidate, ...]  # the nearest recorded calls, most similar first (at most 3)
    diff: str  # format_prompt_diff(nearest recorded prompt, this request's prompt); "" if there is no recording

    @property
    def nearest(self) -> LLMCall | None:
        return self.candidates[0].call if self.candidates else None

    def explain(self) -> str:
        """Several lines for a test failure: the request, the nearest recordings and the prompt diff."""
        lines = [f"no recorded LLM call matches the request to {self.model!r} on {self.route}"]
        if self.candidates:
            lines.append("nearest recordings:")
            lines.extend("  " + c.describe() for c in self.candidates)
        else:
            lines.append("the recording has no LLM calls")
        if self.diff:
            lines.extend(["prompt diff (recorded -> new):", self.diff])
        elif self.candidates:
            lines.append("the prompt is the same as the nearest recording's")
        return "\n".join(lines)
