"""The places in a span that hold text, walked in one fixed order by both redactions.

``trace.secrets`` (credential rules) and ``pytest_llmtrace.sources.redact`` (PII placeholders) must reach the same
places, or a value one of them removes survives in a field the other forgot. ``map_span`` is that list of places, the
only one: the span's name, its attributes, its status message, each event's name and attributes, each link's attributes,
then the resource and scope attributes. Ids, trace states, schema URLs and the scope's name and version are not
visited. The order is fixed, so a walk is deterministic (``redact``'s placeholders are keyed hashes of the values
and do not depend on it).

What happens inside an attribute mapping is the caller's, because the two differ on purpose: the credential rules
read each key (its name says whether the value is a secret or a connection string) and never rewrite it, while PII
redaction treats keys as text like any other (``map_strings``), since a user's email can be a metadata key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from pytest_llmtrace.trace.span import AttrValue, Span

Attributes = Mapping[str, AttrValue]


def map_span(span: Span, text: Callable[[str, str], str], attributes: Callable[[Attributes], Attributes]) -> Span:
    """The span with ``text`` applied to its names and status message and ``attributes`` to each attribute mapping.

    ``text`` gets the string and where it stands (``"span name"``, ``"span status_message"``, ``"event name"``), for
    callers that report what they changed. Where every call gives back its argument (an equal string, the same
    mapping object), the same span, event and link objects come back, so callers can tell "nothing changed" by
    identity.
    """
    changes: dict[str, object] = {}
    name = text(span.name, "span name")
    if name != span.name:
        changes["name"] = name
    new_attributes = attributes(span.attributes)
    if new_attributes is not span.attributes:
        changes["attributes"] = new_attributes
    status_message = text(span.status_message, "span status_message")
    if status_message != span.status_message:
        changes["status_message"] = status_message
    events = []
    for event in span.events:
        event_name = text(event.name, "event name")
        event_attributes = attributes(event.attributes)
        if event_name == event.name and event_attributes is event.attributes:
            events.append(event)
        else:
            events.append(replace(event, name=event_name, attributes=event_attributes))
    if any(a is not b for a, b in zip(events, span.events, strict=True)):
        changes["events"] = tuple(events)
    links = []
    for link in span.links:
        link_attributes = attributes(link.attributes)
        links.append(link if link_attributes is link.attributes else replace(link, attributes=link_attributes))
    if any(a is not b for a, b in zip(links, span.links, strict=True)):
        changes["links"] = tuple(links)
    for field in ("resource_attributes", "scope_attributes"):
        old = getattr(span, field)
        new = attributes(old)
        if new is not old:
            changes[field] = new
    return replace(span, **changes) if changes else span  # type: ignore[arg-type]


def map_strings(span: Span, fn: Callable[[str], str]) -> Span:
    """Every string of the span through ``fn``: names, status message, attribute keys and values at any nesting.

    ``fn`` is called in the order ``span_strings`` yields.
    """
    return map_span(span, lambda value, where: fn(value), lambda attrs: _map_attributes(attrs, fn))


def span_strings(span: Span) -> list[str]:
    """Every string ``map_strings`` would pass to its function, in that order (the span itself is not copied)."""
    strings: list[str] = []

    def text(value: str, where: str) -> str:
        strings.append(value)
        return value

    def attributes(attrs: Attributes) -> Attributes:
        strings.extend(_attribute_strings(attrs))
        return attrs

    map_span(span, text, attributes)
    return strings


def _map_attributes(attributes: Attributes, fn: Callable[[str], str]) -> dict[str, AttrValue]:
    """A new mapping with every key and string value through ``fn``, into nested mappings and tuples."""
    return {fn(key): _map_value(value, fn) for key, value in attributes.items()}


def _map_value(value: AttrValue, fn: Callable[[str], str]) -> AttrValue:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(_map_value(item, fn) for item in value)
    if isinstance(value, dict):
        return _map_attributes(value, fn)
    return value


def _attribute_strings(attributes: Attributes) -> Iterable[str]:
    """Every key and string value, in the order ``_map_attributes`` passes them to its function."""
    for key, value in attributes.items():
        yield key
        yield from _value_strings(value)


def _value_strings(value: AttrValue) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, tuple):
        for item in value:
            yield from _value_strings(item)
    elif isinstance(value, dict):
        yield from _attribute_strings(value)
