"""The places in a span that hold text, walked in one fixed order by both redactions.

``trace.secrets`` (credential rules) and ``pytest_llmtrace.redact`` (PII placeholders) must reach the same places,
or a value one of them removes survives in a field the other forgot. ``map_span`` is that list of places, the only
one: the span's name, its attributes, its status message, each event's name and attributes, each link's attributes,
then the resource and scope attributes. Ids, trace states, schema URLs and the scope's name and version are not
visited. The order is part of the contract: ``redact`` numbers its placeholders by first appearance,
so changing it would renumber every redacted golden file.

What happens inside an attribute mapping is the caller's, because the two differ on purpose: the credential rules
read each key (its name says whether the value is a secret or a connection string) and never rewrite it, while PII
redaction treats keys as text like any other, since a user's email can be a metadata key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from pytest_llmtrace.trace.span import AttrValue, Span

__all__ = ["map_span"]

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
