"""Text made inert before it is shown: a span name, model SQL, a case id or a baseline's verdict comes from a file
or a model, and is printed to a terminal, written into Markdown that GitHub renders, or into HTML.

A terminal obeys escape sequences (ESC, CSI as C1 ``\\x9b``, OSC 8 links, title changes, cursor moves that hide
lines), and bidirectional overrides reorder what a reader sees (Trojan Source). ``escape_controls`` shows each such
character as its Python escape instead, so the text is still there to read but does nothing. (Markdown and HTML have
their own escaping, in ``results.summary.cell`` and ``results.html``, on top of this.)
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls; the bidi embeddings and overrides (U+202A-U+202E), the isolates (U+2066-U+2069),
# the implicit marks (U+200E, U+200F, U+061C) and the line and paragraph separators (U+2028, U+2029).
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escape_controls(text: object, keep: str = "\n\t") -> str:
    """``text`` with every control character except those in ``keep`` shown as an escape (``\\x1b``, ``\\u202e``).

    Multi-line output (a waterfall, a failure message) keeps its newlines and tabs; a one-line field passes
    ``keep=""``.
    """
    value = str(text)
    if not _CONTROLS.search(value):
        return value
    return _CONTROLS.sub(lambda m: m.group() if m.group() in keep else _escaped(m), value)


def one_line(text: object) -> str:
    """``text`` on one line: newlines, controls and every other character that prints nothing (``str.isprintable``
    says which: format characters such as the bidi controls, separators such as U+2028) as escapes."""
    value = str(text)
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in value)
