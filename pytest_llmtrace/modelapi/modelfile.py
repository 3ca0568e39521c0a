"""A reader for the Ollama Modelfile subset a served model is defined by: FROM, SYSTEM, PARAMETER, TEMPLATE, MESSAGE.

The embedded backend has no Ollama to interpret the file, so it reads it itself: the GGUF to load, the system prompt
to prepend, and the sampling parameters (temperature 0 matters: it is what makes a regression run repeatable).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pytest_llmtrace.core.errors import LLMTraceError

KNOWN_INSTRUCTIONS = ("FROM", "SYSTEM", "PARAMETER", "TEMPLATE", "MESSAGE", "ADAPTER", "LICENSE", "REQUIRES")


class ModelfileError(LLMTraceError):
    """A Modelfile that cannot define a model; the message names the file and line."""


@dataclass(frozen=True)
class Modelfile:
    path: Path
    source: str  # the FROM argument as written
    system: str | None = None
    template: str | None = None
    parameters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    messages: tuple[tuple[str, str], ...] = ()

    @property
    def from_path(self) -> Path | None:
        """The GGUF file FROM names, resolved against the Modelfile's folder; None when FROM names a model tag."""
        if not (self.source.startswith((".", "/", "~")) or self.source.endswith(".gguf")):
            return None
        candidate = Path(self.source).expanduser()
        return candidate if candidate.is_absolute() else (self.path.parent / candidate).resolve()

    def options(self) -> dict[str, float | int | str | list[str]]:
        """PARAMETER lines as Ollama request options: numbers parsed, repeated keys (``stop``) as lists."""
        result: dict[str, float | int | str | list[str]] = {}
        for key, values in self.parameters.items():
            if key == "stop":
                result[key] = list(values)
                continue
            raw = values[-1]
            try:
                result[key] = int(raw)
            except ValueError:
                try:
                    result[key] = float(raw)
                except ValueError:
                    result[key] = raw
        return result


def parse_modelfile(path: Path) -> Modelfile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelfileError(f"{path}: cannot read the Modelfile: {exc.strerror or exc}") from None
    return parse_modelfile_text(text, path)


def parse_modelfile_text(text: str, path: Path) -> Modelfile:
    source: str | None = None
    system: str | None = None
    template: str | None = None
    parameters: dict[str, list[str]] = {}
    messages: list[tuple[str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line_no = i + 1
        stripped = lines[i].strip()
        i += 1
        if not stripped or stripped.startswith("#"):
            continue
        instruction, _, rest = stripped.partition(" ")
        instruction = instruction.upper()
        rest = rest.strip()
        if rest.startswith('"""'):
            body = rest[3:]
            while '"""' not in body and i < len(lines):
                body += "\n" + lines[i]
                i += 1
            if '"""' not in body:
                raise ModelfileError(f'{path}:{line_no}: {instruction} opens a """ block that is never closed')
            rest = body[: body.index('"""')]
        elif len(rest) >= 2 and rest[0] == rest[-1] == '"':
            rest = rest[1:-1]
        if instruction == "FROM":
            source = rest
        elif instruction == "SYSTEM":
            system = rest
        elif instruction == "TEMPLATE":
            template = rest
        elif instruction == "PARAMETER":
            parts = shlex.split(rest)
            if len(parts) != 2:
                raise ModelfileError(f"{path}:{line_no}: expected 'PARAMETER <name> <value>', got {stripped!r}")
            parameters.setdefault(parts[0].lower(), []).append(parts[1])
        elif instruction == "MESSAGE":
            role, _, content = rest.partition(" ")
            messages.append((role.lower(), content.strip()))
        elif instruction not in KNOWN_INSTRUCTIONS:
            raise ModelfileError(
                f"{path}:{line_no}: unknown instruction {instruction!r}; "
                f"expected one of {', '.join(KNOWN_INSTRUCTIONS)}"
            )
    if not source:
        raise ModelfileError(f"{path}: no FROM line; a Modelfile must name the GGUF file or model it builds on")
    return Modelfile(
        path=path,
        source=source,
        system=system,
        template=template,
        parameters={k: tuple(v) for k, v in parameters.items()},
        messages=tuple(messages),
    )
