"""SQL as text: the statement inside a model's answer, statement splitting, and whether the outer query is ordered.

Not a parser: just enough of PostgreSQL's lexical rules (standard and E'' strings, quoted identifiers, dollar
quoting, nested block comments) that a keyword or semicolon inside a literal or comment is never taken for SQL.

Nothing here decides what is safe to run: Postgres itself refuses a text that holds several statements (the checks
send SQL over the extended query protocol, see ``checks.execute``). The lexer serves messages and the results rules,
so where it cannot agree with Postgres (``standard_conforming_strings = off`` changes what a string is) it errs
towards counting more statements, never fewer.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Literal, NamedTuple

# A language tag is only taken as one when it is a known SQL tag or ends the fence line: in "```SELECT 1```" the first
# word is SQL, not a language.
_FENCE = re.compile(
    r"```[ \t]*(?:(?:sql|postgresql|postgres|pgsql|psql|plpgsql)\b|[\w+.-]*(?=[ \t]*\r?\n))?(.*?)```",
    re.DOTALL | re.IGNORECASE,
)
_OPEN_FENCE = re.compile(r"^\s*```[^\n]*\n?")


def strip_code_fences(text: str) -> str:
    """The SQL inside the first Markdown code fence, else the whole text, trimmed.

    Small models wrap SQL in fences despite being told not to, sometimes with a sentence around it. Taking the first
    fenced block matches what the reference gateway executes. An opening fence without a closing one (an answer cut
    off at the token limit) still loses its fence line, so the SQL is not rejected for a Markdown artifact.
    """
    match = _FENCE.search(text)
    if match:
        return match.group(1).strip()
    return _OPEN_FENCE.sub("", text, count=1).strip()


class _Token(NamedTuple):  # not a frozen dataclass: making those was most of the lexer's time
    kind: Literal["word", "punct", "literal"]
    text: str
    depth: int  # parenthesis depth before the token
    start: int


_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
# Postgres's scanner: whitespace is these ASCII characters only, and every byte of a non-ASCII character is an
# identifier character (a no-break space or an em dash is part of a name, not a separator).
_SPACE = frozenset(" \t\n\r\f\v")
_SPACES = re.compile(r"[ \t\n\r\f\v]+")
# The rest of a name: ASCII letters, digits, _ and $, and any non-ASCII character; matched as one run, not a
# character at a time (that loop was most of the lexer's time).
_IDENT_REST = re.compile(r"[A-Za-z0-9_$\x80-\U0010ffff]*")


def _ident_start(c: str) -> bool:
    return not c.isascii() or c.isalpha() or c == "_"


def _tokens(sql: str) -> Iterator[_Token]:
    """Words, punctuation and literals outside comments, with their paren depth; literals are opaque.

    Not a parser: just enough of PostgreSQL's lexical rules (standard and E'' strings, quoted identifiers, dollar
    quoting, nested block comments) that a keyword or semicolon inside a literal or comment is never taken for SQL.
    """
    i, n, depth = 0, len(sql), 0
    while i < n:
        c = sql[i]
        start = i
        if c in _SPACE:
            i = _SPACES.match(sql, i).end()  # type: ignore[union-attr]  # c is one
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            level, i = 1, i + 2
            while i < n and level:
                if sql.startswith("/*", i):
                    level, i = level + 1, i + 2
                elif sql.startswith("*/", i):
                    level, i = level - 1, i + 2
                else:
                    i += 1
        elif c in "'\"":
            i = _skip_quoted(sql, i, c, backslash=False)
            yield _Token("literal", sql[start:i], depth, start)
        elif c == "$" and (m := _DOLLAR_TAG.match(sql, i)):
            close = sql.find(m.group(0), m.end())
            i = n if close < 0 else close + len(m.group(0))
            yield _Token("literal", sql[start:i], depth, start)
        elif _ident_start(c):
            i = _IDENT_REST.match(sql, i + 1).end()  # type: ignore[union-attr]  # * matches the empty string too
            if i - start == 1 and c in "eE" and i < n and sql[i] == "'":
                i = _skip_quoted(sql, i, "'", backslash=True)
                yield _Token("literal", sql[start:i], depth, start)
            else:
                yield _Token("word", sql[start:i].upper(), depth, start)
        else:
            if c == ")":
                depth = max(depth - 1, 0)
            yield _Token("punct", c, depth, start)
            if c == "(":
                depth += 1
            i += 1


def _skip_quoted(sql: str, i: int, quote: str, *, backslash: bool) -> int:
    """Index after the literal starting at ``i``; a doubled quote (and in E'' strings a backslash) escapes."""
    i += 1
    n = len(sql)
    while i < n:
        c = sql[i]
        if backslash and c == "\\":
            i += 2
        elif c == quote:
            if i + 1 < n and sql[i + 1] == quote:
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return n


def split_statements(sql: str) -> list[str]:
    """The statements in ``sql``, split at semicolons outside literals and comments; empty statements are dropped.

    A statement that holds only comments is empty too, so ``SELECT 1; -- done`` is one statement.
    """
    return list(_split(sql))


# The lexer is pure and a case asks about the same two statements several times (execution, cost, the results
# check, the snapshot): remembered per text.
@functools.lru_cache(maxsize=1024)
def _split(sql: str) -> tuple[str, ...]:
    statements: list[str] = []
    start = 0
    has_code = False
    for token in _tokens(sql):
        if token.kind == "punct" and token.text == ";":
            if has_code:
                statements.append(sql[start : token.start].strip())
            start, has_code = token.start + 1, False
        else:
            has_code = True
    if has_code:
        statements.append(sql[start:].strip())
    return tuple(statements)


@functools.lru_cache(maxsize=1024)
def has_top_level_order_by(sql: str) -> bool:
    """Whether the outer query is ordered: ORDER BY outside parentheses, literals and comments.

    Test-suite accuracy compares rows in order only when the gold query orders them; an ORDER BY inside a subquery,
    a window (``OVER (ORDER BY ...)``) or an aggregate (``string_agg(x, ',' ORDER BY x)``) does not order the result.
    """
    previous: _Token | None = None
    for token in _tokens(sql):
        if (
            token.kind == "word"
            and token.text == "BY"
            and token.depth == 0
            and previous is not None
            and previous.kind == "word"
            and previous.text == "ORDER"
            and previous.depth == 0
        ):
            return True
        previous = token
    return False
