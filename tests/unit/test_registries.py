"""One registry per kind of fact: settings whose variables are derived from their names, one policy for a name
registered twice, and one parser of whole numbers (issue 18)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pytest_llmtrace
import pytest_llmtrace.plugin  # imports every layer, so every setting is declared
from pytest_llmtrace import cli
from pytest_llmtrace.core.errors import whole_number
from pytest_llmtrace.core.registry import DuplicateName, Registry, caller_place
from pytest_llmtrace.core.settings import SETTINGS, Resolved, Settings, SettingSpec, declare, env_var
from pytest_llmtrace.sources import redaction_key
from pytest_llmtrace.trace import safejson

PACKAGE = Path(pytest_llmtrace.__file__).parent


def test_every_settings_env_var_option_and_ini_key_are_derived_from_its_name() -> None:
    assert len(SETTINGS) >= 40
    for name, spec in SETTINGS.items():
        assert spec.name == name
        assert spec.env_var == "LLMTRACE_" + name.upper() == env_var(name) == env_var("llmtrace_" + name)
        assert spec.option == "--llmtrace-" + name.replace("_", "-")
        assert spec.ini == spec.dest == "llmtrace_" + name


def test_the_ollama_model_cache_is_a_registered_setting() -> None:
    assert SETTINGS["ollama_models"].env_var == "LLMTRACE_OLLAMA_MODELS"


def test_every_variable_the_package_names_is_a_settings_derived_one() -> None:
    """A variable spelled by hand (in code or in a docstring) must be the one its setting derives: a typo there
    would send users to a variable nothing reads."""
    derived = {spec.env_var for spec in SETTINGS.values()}
    spelled = {
        (path.relative_to(PACKAGE).as_posix(), name)
        for path in PACKAGE.rglob("*.py")
        for name in re.findall(r"\bLLMTRACE_[A-Z][A-Z0-9_]*\b", path.read_text())
    }
    assert spelled  # the scan sees the hand-spelled ones that remain (safejson's)
    assert {(where, name) for where, name in spelled if name not in derived} == set()
    assert SETTINGS["question"].env_var == cli.QUESTION_ENV
    assert SETTINGS["redaction_key"].env_var == redaction_key.KEY_ENV
    assert SETTINGS["max_trace_bytes"].env_var == safejson.MAX_TRACE_BYTES_ENV


def test_declaring_a_setting_twice_is_an_error_naming_both_places() -> None:
    line = caller_place(0).rsplit(":", 1)[1]
    with pytest.raises(DuplicateName) as caught:
        declare(SettingSpec("mode", "another plugin's mode", "fast"))
    first = SETTINGS.place("mode")
    assert re.search(r"pytest_llmtrace/pytest/replay_config\.py:\d+$", first)
    assert str(caught.value) == (
        f"setting 'mode' is registered twice: first at {first}, again at {__file__}:{int(line) + 2}; "
        "choose another name or pass replace=True to replace it"
    )
    assert SETTINGS["mode"].default == "replay"  # the first declaration stands


def test_a_registration_from_the_same_place_again_is_a_reimport_and_replace_true_replaces() -> None:
    registry: Registry[int] = Registry("thing")
    for value in (1, 2):  # one place, run twice: a conftest imported by a second in-process session
        registry.register("a", value, place=caller_place(0))
    assert registry["a"] == 2
    with pytest.raises(DuplicateName, match=r"thing 'a' is registered twice: first at .*test_registries\.py:\d+, "):
        registry.register("a", 3, place="elsewhere.py:1")
    registry.register("a", 3, place="elsewhere.py:1", replace=True)
    assert (registry["a"], registry.place("a"), list(registry)) == (3, "elsewhere.py:1", ["a"])
    snapshot = registry.copy()
    registry.register("b", 4, place="x.py:2")
    registry.restore(snapshot)
    assert dict(registry) == {"a": 3}


@pytest.mark.parametrize(
    ("value", "number"),
    [
        ("5", 5),
        (" 5 ", 5),
        ("50_000_000", 50_000_000),
        ("-3", -3),
        ("+7", 7),
        (12, 12),
        (2.0, 2),
        ("0", 0),
    ],
)
def test_the_one_whole_number_parser_reads_what_people_type(value: object, number: int) -> None:
    assert whole_number(value) == number


@pytest.mark.parametrize(
    "value", ["", "five", "1.5", 2.5, "1e3", "٣", "5_", "_5", "5__0", True, None, "1" * 41, "0x10", "5 6"]
)
def test_the_one_whole_number_parser_refuses_what_is_not_a_whole_number(value: object) -> None:
    assert whole_number(value) is None


def test_the_parsers_that_share_it_keep_their_messages() -> None:
    with pytest.raises(Exception, match=r"expected a positive number of bytes, got '٣'"):
        cli._positive_int("٣")
    assert cli._positive_int("50_000_000") == 50_000_000


def test_a_settings_parse_error_names_the_knob_it_came_from() -> None:
    settings = Settings({"app_ready": Resolved("GET healthz", "ini", "ini llmtrace_app_ready")})

    def parse(text: str) -> str:
        raise ValueError(f"{text!r} is not GET /path")

    with pytest.raises(pytest.UsageError, match=r"^ini llmtrace_app_ready: 'GET healthz' is not GET /path$"):
        settings.parsed("app_ready", parse)
    assert settings.parsed("app_ready", str.split) == ["GET", "healthz"]
    with pytest.raises(KeyError):  # only the errors named are the user's mistake
        settings.parsed("app_ready", lambda text: dict[str, str]()[text], ValueError)
