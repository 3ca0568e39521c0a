"""``llmtrace_app_request``: how a case asks the service, as a method, a path and a JSON body template.

``POST /v1/ask {"question": "{question}"}``: each ``{name}`` is a field of the case, substituted as a JSON string
value (quotes, backslashes and control characters escaped), so a question can never break the body nor add a key.
``{question}`` is the case's question; ``{user_id}`` and ``{session_id}`` are the golden root span's ``user.id`` and
``session.id``; any other name is a root span attribute of that name. The template is checked when the run starts
(it must give JSON); a field the golden trace lacks fails that case and names it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pytest_llmtrace.core.errors import LLMTraceError

METHODS = ("GET", "POST", "PUT", "PATCH")
DEFAULT_REQUEST = 'POST /v1/ask {"question": "{question}"}'
# Root attributes the short names stand for (OpenInference's names).
ALIASES = {"user_id": "user.id", "session_id": "session.id"}
_FIELD = re.compile(r"\{([A-Za-z_][\w.\-]*)\}")


class TemplateError(LLMTraceError):
    """The template cannot give a request, or names a field the case lacks."""


@dataclass(frozen=True)
class RequestTemplate:
    method: str
    path: str
    body: str | None  # the JSON body template; None: no body
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str, headers: str = "") -> RequestTemplate:
        """``METHOD /path [JSON body]``; ``headers`` are ``Name: value`` lines. Checked with every field filled."""
        parts = text.strip().split(None, 2)
        if len(parts) < 2:
            raise TemplateError(f"expected 'METHOD /path [JSON body]', e.g. {DEFAULT_REQUEST!r}; got {text!r}")
        method, path = parts[0].upper(), parts[1]
        if method not in METHODS:
            raise TemplateError(f"the method {parts[0]!r} is not one of {', '.join(METHODS)}")
        if not path.startswith("/"):
            raise TemplateError(f"the path {path!r} must start with '/' (the service's address is added to it)")
        body = parts[2].strip() if len(parts) == 3 else None
        template = cls(method, path, body, tuple(_headers(headers)))
        if body is not None:
            filled = template.render(dict.fromkeys(template.fields, 'a "quoted" \\ value\n'))
            try:
                json.loads(filled)
            except ValueError as exc:
                raise TemplateError(
                    f"the body {body!r} is not JSON once its fields are filled in ({exc}); write each field inside a "
                    'JSON string, e.g. {"question": "{question}"}'
                ) from None
        return template

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_FIELD.findall(self.body or "")))

    def render(self, values: Mapping[str, str]) -> bytes:
        """The body with each field as a JSON string value: ``"{f}"`` becomes the quoted value, ``{f}`` inside a
        longer string its escaped text."""
        if self.body is None:
            return b""
        body = self.body
        body = re.sub(r'"\{([A-Za-z_][\w.\-]*)\}"', lambda m: json.dumps(values[m.group(1)]), body)
        body = _FIELD.sub(lambda m: json.dumps(values[m.group(1)])[1:-1], body)
        return body.encode()

    def values(self, question: str, root_attributes: Mapping[str, object]) -> dict[str, str]:
        """Each field's value for one case; a field the golden root span lacks is an error naming it."""
        values: dict[str, str] = {}
        for name in self.fields:
            if name == "question":
                values[name] = question
                continue
            key = ALIASES.get(name, name)
            value = root_attributes.get(key)
            if value is None:
                have = ", ".join(sorted(root_attributes)[:12]) or "none"
                raise TemplateError(
                    f"llmtrace_app_request names {{{name}}}, but this golden trace's root span has no {key!r} "
                    f"attribute (it has: {have}); remove the field from the template, or mark the cases that lack it"
                )
            values[name] = value if isinstance(value, str) else json.dumps(value)
        return values

    def __str__(self) -> str:
        return f"{self.method} {self.path}" + (f" {self.body}" if self.body else "")


def _headers(text: str) -> list[tuple[str, str]]:
    result = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name.strip()):
            raise TemplateError(
                f"llmtrace_app_headers line {number}: expected 'Name: value'"
            )  # a value may be a secret
        result.append((name.strip(), value.strip()))
    return result
