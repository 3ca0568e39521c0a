"""Every setting is resolved once per session, remembering where its value came from.

Precedence is the one pytest-django uses: command line > environment > ini file > default. The report header prints
each value with its source, so "why did CI use Docker?" is answered by the first screen of output.

Each layer declares its own knobs next to the code that reads them, with ``declare``; they all land in one registry,
``SETTINGS``, which ``add_options`` turns into options and ini keys and ``configure`` resolves once per session (into
``config.stash``; ``of(config)`` reads it). A setting's option, env var and ini key are derived from its name
(``env_var``), so nothing outside this module spells them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar

import pytest

from pytest_llmtrace.core.errors import did_you_mean
from pytest_llmtrace.core.registry import Registry, caller_place
from pytest_llmtrace.core.url_secrets import redact_url

if TYPE_CHECKING:
    from pathlib import Path

Source = Literal["command line", "environment", "ini", "default"]
T = TypeVar("T")

PREFIX = "llmtrace_"


def env_var(name: str) -> str:
    """The environment variable of the setting ``name``: ``postgres`` (or ``llmtrace_postgres``): ``LLMTRACE_POSTGRES``.

    The one derivation: code outside pytest (``llmtrace import``, ``capture``) reading a setting's variable calls
    this rather than spelling the name, so the variable cannot drift from the option and the ini key.
    """
    return (name if name.startswith(PREFIX) else PREFIX + name).upper()


@dataclass(frozen=True)
class SettingSpec:
    """One user-facing knob: its option, env var and ini key are derived from one name so they cannot drift apart."""

    name: str  # e.g. "postgres" -> --llmtrace-postgres, LLMTRACE_POSTGRES, llmtrace_postgres
    help: str
    default: str
    choices: tuple[str, ...] = ()  # when set, values outside it are an error (a URL may be allowed separately)
    allow_url: tuple[str, ...] = ()  # URL schemes accepted besides the choices (or besides any value, without them)
    env: bool = True
    ini_type: Literal["string", "linelist", "args"] = "string"
    flag: bool = False  # the option takes no value: given, it means "yes"

    @property
    def option(self) -> str:
        return "--" + self.dest.replace("_", "-")

    @property
    def dest(self) -> str:
        return PREFIX + self.name

    @property
    def env_var(self) -> str:
        return env_var(self.name)

    @property
    def ini(self) -> str:
        return PREFIX + self.name


@dataclass(frozen=True)
class Resolved:
    value: str
    source: Source
    origin: str = "default"  # the exact knob: "--llmtrace-postgres", "LLMTRACE_POSTGRES", "ini llmtrace_postgres"

    def __str__(self) -> str:
        # printed in the report header and in errors: a service setting may be a DSN with a password
        return f"{redact_url(self.value)} (from {self.source})"


@dataclass(frozen=True)
class Settings:
    """All resolved settings; ``values[name]`` keeps the source for the report header."""

    values: Mapping[str, Resolved] = field(default_factory=dict)
    rootdir: Path | None = None

    def __getitem__(self, name: str) -> str:
        return self.values[name].value

    def source(self, name: str) -> Source:
        return self.values[name].source

    def parsed(
        self, name: str, parse: Callable[[str], T], errors: type[Exception] | tuple[type[Exception], ...] = ValueError
    ) -> T:
        """The setting's value through ``parse``; a parse error is a ``pytest.UsageError`` naming the knob it came
        from (``ini llmtrace_app_ready: ...``), so every setting's parsing reads as one line at its caller."""
        try:
            return parse(self[name])
        except errors as exc:
            raise pytest.UsageError(f"{self.values[name].origin}: {exc}") from None


SETTINGS: Registry[SettingSpec] = Registry("setting")


def declare(*specs: SettingSpec) -> tuple[SettingSpec, ...]:
    """Register a layer's knobs in ``SETTINGS`` (a name declared twice is an error naming both places)."""
    place = caller_place(1)
    for spec in specs:
        SETTINGS.register(spec.name, spec, place=place)
    return specs


def add_options(parser: pytest.Parser, specs: tuple[SettingSpec, ...] | None = None) -> None:
    """Options and ini keys of ``specs``, by default of every declared setting."""
    group = parser.getgroup("llmtrace", "LLM trace regression testing")
    for spec in tuple(SETTINGS.values()) if specs is None else specs:
        if spec.flag:
            group.addoption(
                spec.option, dest=spec.dest, action="store_const", const="yes", default=None, help=spec.help
            )
        elif spec.ini_type == "string":
            group.addoption(spec.option, dest=spec.dest, default=None, help=f"{spec.help} [default: {spec.default}]")
        parser.addini(spec.ini, spec.help, type=spec.ini_type, default=None)


def _validate(spec: SettingSpec, value: str, where: str) -> str:
    lowered = value.strip()
    if not spec.choices:
        return lowered
    if lowered.lower() in spec.choices:
        return lowered.lower()
    scheme = lowered.split("://", 1)[0].lower() if "://" in lowered else ""
    if scheme and scheme in spec.allow_url:
        return lowered
    options = ", ".join(spec.choices)
    if spec.allow_url:
        options += ", or a URL (" + ", ".join(f"{s}://..." for s in spec.allow_url) + ")"
    hint = did_you_mean(lowered.lower(), spec.choices)
    hint = f" {hint[:1].upper()}{hint[1:]}" if hint else ""  # a sentence of its own here
    raise pytest.UsageError(f"{where}: {redact_url(value)!r} is not a valid {spec.name} setting; use {options}.{hint}")


_KEY = pytest.StashKey[Settings]()


def configure(config: pytest.Config) -> Settings:
    """Resolve every declared setting, once per session; a bad value stops the run here, before any layer starts."""
    config.stash[_KEY] = resolve(config)
    return config.stash[_KEY]


def of(config: pytest.Config) -> Settings:
    """The session's settings, as ``configure`` resolved them (resolved now if it has not run: a usage error)."""
    if _KEY not in config.stash:
        return configure(config)
    return config.stash[_KEY]


def resolve(
    config: pytest.Config,
    specs: tuple[SettingSpec, ...] | None = None,
    environ: Mapping[str, str] | None = None,
    getini: Callable[[str], object] | None = None,
) -> Settings:
    """CLI > env > ini > default, validated; a bad value is a ``pytest.UsageError`` naming where it came from."""
    env = os.environ if environ is None else environ
    read_ini = config.getini if getini is None else getini
    values: dict[str, Resolved] = {}
    for spec in tuple(SETTINGS.values()) if specs is None else specs:
        cli = config.getoption(spec.dest, default=None) if spec.ini_type == "string" else None
        if cli is not None:
            values[spec.name] = Resolved(_validate(spec, str(cli), spec.option), "command line", spec.option)
            continue
        if spec.env and env.get(spec.env_var):
            values[spec.name] = Resolved(_validate(spec, env[spec.env_var], spec.env_var), "environment", spec.env_var)
            continue
        ini_value = read_ini(spec.ini)
        if isinstance(ini_value, list):
            ini_value = "\n".join(str(v) for v in ini_value) if ini_value else None
        if ini_value:
            origin = f"ini {spec.ini}"
            values[spec.name] = Resolved(_validate(spec, str(ini_value), origin), "ini", origin)
            continue
        values[spec.name] = Resolved(spec.default, "default")
    return Settings(values=values, rootdir=config.rootpath)
