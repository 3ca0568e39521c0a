"""The one walk over a span's text that both redactions use: every place reached, in one order, identity kept."""

from __future__ import annotations

from pytest_llmtrace.trace.model import Span, SpanEvent, SpanLink
from pytest_llmtrace.trace.walk import map_span, map_strings, span_strings

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def every_place() -> Span:
    """A span with text in every place the walk must reach, and in places it must leave alone."""
    return Span(
        trace_id=TRACE_ID,
        span_id="b7ad6b7169203331",
        parent_span_id=None,
        name="name",
        start_time_unix_nano=100,
        end_time_unix_nano=900,
        attributes={"a.key": "a.value", "nested": {"n.key": ("n.item", 7, {"deep.key": "deep.value"})}, "count": 3},
        status_message="status",
        events=(SpanEvent("event", 200, {"e.key": "e.value"}),),
        links=(SpanLink(TRACE_ID, "00f067aa0ba902b7", "link.state", {"l.key": "l.value"}),),
        trace_state="span.state",
        resource_attributes={"r.key": "r.value"},
        resource_schema_url="r.schema",
        scope_name="scope.name",
        scope_version="scope.version",
        scope_attributes={"s.key": "s.value"},
        scope_schema_url="s.schema",
    )


def test_span_strings_lists_every_text_place_in_the_walk_order() -> None:
    assert span_strings(every_place()) == [
        "name",
        "a.key",
        "a.value",
        "nested",
        "n.key",
        "n.item",
        "deep.key",
        "deep.value",
        "count",
        "status",
        "event",
        "e.key",
        "e.value",
        "l.key",
        "l.value",
        "r.key",
        "r.value",
        "s.key",
        "s.value",
    ]


def test_map_strings_calls_its_function_in_the_order_span_strings_yields() -> None:
    """Placeholders are numbered by first appearance in span_strings: the rewrite must meet values in that order."""
    span = every_place()
    seen: list[str] = []

    def upper(text: str) -> str:
        seen.append(text)
        return text.upper()

    mapped = map_strings(span, upper)

    assert seen == span_strings(span)
    assert mapped.name == "NAME"
    assert mapped.status_message == "STATUS"
    assert mapped.attributes == {
        "A.KEY": "A.VALUE",
        "NESTED": {"N.KEY": ("N.ITEM", 7, {"DEEP.KEY": "DEEP.VALUE"})},
        "COUNT": 3,
    }
    assert mapped.events == (SpanEvent("EVENT", 200, {"E.KEY": "E.VALUE"}),)
    assert mapped.links == (SpanLink(TRACE_ID, "00f067aa0ba902b7", "link.state", {"L.KEY": "L.VALUE"}),)
    assert mapped.resource_attributes == {"R.KEY": "R.VALUE"}
    assert mapped.scope_attributes == {"S.KEY": "S.VALUE"}
    # not text a user or an app puts there: ids, trace states, schema URLs, the instrumentation scope's name
    untouched = ("trace_state", "resource_schema_url", "scope_name", "scope_version", "scope_schema_url", "span_id")
    assert [getattr(mapped, f) for f in untouched] == [getattr(span, f) for f in untouched]


def test_map_span_gives_back_the_same_objects_when_nothing_changes() -> None:
    span = every_place()

    same = map_span(span, lambda text, where: "".join(text), lambda attributes: attributes)

    assert same is span  # an equal string counts as unchanged; trace.secrets and the exporter rely on `is`


def test_map_span_rebuilds_only_what_changed_and_says_where_text_stands() -> None:
    span = every_place()
    places: list[tuple[str, str]] = []

    def text(value: str, where: str) -> str:
        places.append((where, value))
        return "EVENT" if value == "event" else value

    event_renamed = map_span(span, text, lambda attributes: attributes)

    assert places == [("span name", "name"), ("span status_message", "status"), ("event name", "event")]
    assert event_renamed.events[0].name == "EVENT"
    assert event_renamed.events[0].attributes is span.events[0].attributes
    assert event_renamed.links is span.links
    assert event_renamed.attributes is span.attributes

    link_attributes = span.links[0].attributes
    link_changed = map_span(span, lambda value, where: value, lambda a: {"x": "y"} if a is link_attributes else a)

    assert link_changed.links[0].attributes == {"x": "y"}
    assert link_changed.links[0].trace_state == "link.state"
    assert link_changed.events is span.events
    assert link_changed.resource_attributes is span.resource_attributes
