"""The trace: every span of one trace (or of one test), as a parent tree, with the sums a regression check needs.

Dependencies run one way: ``span`` (one span) <- ``views`` (what a span did) <- ``question`` (where the question is)
<- ``render`` (the waterfall) <- this module. The names users import from here (``Trace``, ``Span``, ``LLMCall``,
``Message``, ``SqlStatement``, ``Status``, ...) live in those modules; they are re-exported so
``pytest_llmtrace.trace.model`` stays the one import for the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from pytest_llmtrace.core.errors import TraceFormatError, warn_format
from pytest_llmtrace.trace.question import DEFAULT_SOURCES, Question, QuestionSource, find_question
from pytest_llmtrace.trace.render import render_waterfall
from pytest_llmtrace.trace.span import AttrValue, Span, SpanEvent, SpanLink, Status
from pytest_llmtrace.trace.views import LLMCall, Message, SqlStatement, llm_call, span_kind

__all__ = [
    "AttrValue",
    "LLMCall",
    "Message",
    "Span",
    "SpanEvent",
    "SpanLink",
    "SqlStatement",
    "Status",
    "Trace",
]


class Trace:
    """All spans of one trace (or of one test, which may hold several traces), as a parent tree.

    Construction validates the tree: duplicate span ids, parent cycles and spans that end before they start raise
    ``TraceFormatError``; spans whose parent is absent are kept as extra roots with a warning, because partial exports
    (a sampled-out parent, a parent in another service) are common and still worth testing.
    """

    def __init__(
        self,
        spans: Iterable[Span],
        *,
        source: str | Path | None = None,
        span_paths: Mapping[str, str] | None = None,
        warn_missing_parents: bool = True,
    ) -> None:
        self.source = str(source) if source is not None else None
        ordered = sorted(spans, key=lambda s: (s.start_time_unix_nano, s.span_id))
        paths = dict(span_paths or {})
        by_id: dict[str, Span] = {}
        for span in ordered:
            where = paths.get(span.span_id, f"$.spans[span_id={span.span_id}]")
            if span.span_id in by_id:
                raise TraceFormatError(source, where + ".spanId", "unique span ids", f"{span.span_id!r} twice")
            if span.end_time_unix_nano is not None and span.end_time_unix_nano < span.start_time_unix_nano:
                raise TraceFormatError(
                    source,
                    where + ".endTimeUnixNano",
                    "an end time at or after the start time",
                    f"end {span.end_time_unix_nano} < start {span.start_time_unix_nano}",
                )
            by_id[span.span_id] = span
        self.spans: tuple[Span, ...] = tuple(ordered)
        self._by_id = by_id
        self._children: dict[str | None, list[Span]] = {}
        orphan_ids: set[str] = set()
        for span in ordered:
            parent = span.parent_span_id
            if parent is not None and parent not in by_id:
                orphan_ids.add(span.span_id)
                if warn_missing_parents:
                    warn_format(
                        source,
                        paths.get(span.span_id, f"$.spans[span_id={span.span_id}]") + ".parentSpanId",
                        f"parent span {parent!r} of span {span.name!r} is not in the trace; kept as an extra root",
                    )
                parent = None
            self._children.setdefault(parent, []).append(span)
        self.orphan_span_ids: frozenset[str] = frozenset(orphan_ids)
        self._check_cycles(source, paths)

    def _check_cycles(self, source: str | Path | None, paths: Mapping[str, str]) -> None:
        reachable: set[str] = set()
        stack = list(self._children.get(None, []))
        while stack:
            span = stack.pop()
            reachable.add(span.span_id)
            stack.extend(self._children.get(span.span_id, []))
        for span in self.spans:
            if span.span_id not in reachable:
                cycle = [span.span_id]
                cursor = span.parent_span_id
                while cursor is not None and cursor not in cycle:
                    cycle.append(cursor)
                    cursor = self._by_id[cursor].parent_span_id
                raise TraceFormatError(
                    source,
                    paths.get(span.span_id, f"$.spans[span_id={span.span_id}]") + ".parentSpanId",
                    "a parent chain that ends at a root span",
                    "a cycle " + " -> ".join([*cycle, cursor or ""]),
                )

    # -- the tree ---------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.spans)

    def __iter__(self) -> Iterator[Span]:
        return iter(self.spans)

    def __bool__(self) -> bool:
        return bool(self.spans)

    def __repr__(self) -> str:
        return f"<Trace {len(self.spans)} spans, roots={[s.name for s in self.roots]!r}>"

    def __str__(self) -> str:
        return render_waterfall(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Trace) and self.spans == other.spans

    __hash__ = None  # type: ignore[assignment]

    @property
    def trace_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.trace_id for s in self.spans))

    @property
    def roots(self) -> tuple[Span, ...]:
        return tuple(self._children.get(None, []))

    @property
    def root(self) -> Span:
        """The first root span. Raises ``LookupError`` on an empty trace, so a test cannot silently check nothing."""
        roots = self.roots
        if not roots:
            raise LookupError("the trace has no spans")
        return roots[0]

    def children(self, span: Span) -> tuple[Span, ...]:
        return tuple(self._children.get(span.span_id, []))

    def parent(self, span: Span) -> Span | None:
        if span.parent_span_id is None:
            return None
        return self._by_id.get(span.parent_span_id)

    def get(self, span_id: str) -> Span:
        return self._by_id[span_id]

    def walk(self) -> Iterator[tuple[int, Span]]:
        """Depth-first, children in start order: (depth, span)."""
        stack = [(0, s) for s in reversed(self.roots)]
        while stack:
            depth, span = stack.pop()
            yield depth, span
            stack.extend((depth + 1, c) for c in reversed(self.children(span)))

    # -- lookups ----------------------------------------------------------------------------------------------------

    def find(self, name: str | None = None, *, kind: str | None = None) -> tuple[Span, ...]:
        """Spans by exact name and/or kind (case-insensitive), in start order.

        The kind is OpenInference's, except that an LLM call in any convention is ``LLM`` (``views.span_kind``).
        """
        wanted_kind = kind.upper() if kind is not None else None
        return tuple(
            s
            for s in self.spans
            if (name is None or s.name == name) and (wanted_kind is None or span_kind(s) == wanted_kind)
        )

    def find_one(self, name: str | None = None, *, kind: str | None = None) -> Span:
        """Exactly one matching span, or a ``LookupError`` that lists what the trace does have."""
        found = self.find(name, kind=kind)
        if len(found) == 1:
            return found[0]
        wanted = " ".join(p for p in (f"name={name!r}" if name else "", f"kind={kind}" if kind else "") if p)
        have = ", ".join(f"{s.name!r} ({span_kind(s)})" for s in self.spans) or "no spans"
        raise LookupError(f"expected exactly one span with {wanted}, found {len(found)}; the trace has: {have}")

    @property
    def open_spans(self) -> tuple[Span, ...]:
        return tuple(s for s in self.spans if s.is_open)

    @property
    def llm_calls(self) -> tuple[LLMCall, ...]:
        """Every span that records an LLM call, in any convention ``views.LLM_READERS`` knows, in start order.

        Read once per trace (its spans never change): token sums, replay and the checks ask for it many times.
        """
        cached: tuple[LLMCall, ...] | None = self.__dict__.get("_llm_calls")
        if cached is None:
            found = (llm_call(s) for s in self.spans)
            cached = self.__dict__["_llm_calls"] = tuple(c for c in found if c is not None)
        return cached

    @property
    def sql_statements(self) -> tuple[SqlStatement, ...]:
        found = (SqlStatement.from_span(s) for s in self.spans)
        return tuple(s for s in found if s is not None)

    @property
    def input(self) -> str | None:
        """The root span's ``input.value``: for a text-to-SQL app, the user's question."""
        return self.root.input_value if self.spans else None

    def question(self, sources: Sequence[QuestionSource] | str = DEFAULT_SOURCES) -> Question:
        """The user's question, from the first of ``sources`` that yields text (see ``trace.question``).

        By default: ``input.value``, then OpenLLMetry's ``traceloop.entity.input``, then the last user message of
        the first LLM call. ``.text`` is ``None`` when none does, and ``.explain()`` says why.
        """
        if not self.spans:
            return Question(None, None, ())
        return find_question(self.root, self.spans, sources)

    @property
    def output(self) -> str | None:
        return self.root.output_value if self.spans else None

    @property
    def start_time_unix_nano(self) -> int:
        return min((s.start_time_unix_nano for s in self.spans), default=0)

    @property
    def end_time_unix_nano(self) -> int:
        return max((s.end_time_unix_nano or s.start_time_unix_nano for s in self.spans), default=0)

    @property
    def duration_ms(self) -> float:
        return (self.end_time_unix_nano - self.start_time_unix_nano) / 1e6

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens or 0 for c in self.llm_calls)

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens or 0 for c in self.llm_calls)

    @property
    def total_tokens(self) -> int:
        return sum(c.total_tokens or 0 for c in self.llm_calls)
