"""Service settings that cannot work stop the run before any case, naming the setting and the fix."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("ini", "message"),
    [
        ("llmtrace_app_command = uvicorn server:app", "*llmtrace_app_command: the command has no {port}*"),
        (
            'llmtrace_app_command = x {port}\nllmtrace_app_request = POST /v1/ask {"question": {question}}',
            "*llmtrace_app_request: the body * is not JSON once its fields are filled in*",
        ),
        ("llmtrace_app_command = x {port}\nllmtrace_app_ready = /healthz", "*expected 'GET /path'*"),
        (
            "llmtrace_app_command = x {port}\nllmtrace_app_url = http://127.0.0.1:1",
            "*are all set: start a service by command or from an image, or use a running one; one of them",
        ),
    ],
    ids=["no port", "template", "ready", "both"],
)
def test_bad_service_settings_are_usage_errors(pytester: pytest.Pytester, ini: str, message: str) -> None:
    pytester.makeini(f"[pytest]\naddopts = -p no:phoenix -p no:randomly\n{ini}\n")
    result = pytester.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_a_running_service_gets_the_receiver_address_in_the_header(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\naddopts = -p no:phoenix -p no:randomly\nllmtrace_app_url = http://127.0.0.1:9/\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "llmtrace app: the running service at http://127.0.0.1:9 (from ini); ready: *",
            "llmtrace app spans: OTLP/HTTP receiver at http://127.0.0.1:*/v1/traces; a case's spans by trace id*",
        ]
    )


@pytest.mark.parametrize(
    ("ini", "target"),
    [
        ("llmtrace_app_command = python -m http.server {port}", "the service python -m http.server {port}"),
        ("llmtrace_app_url = http://user:secret@127.0.0.1:9/", "the service http://user:***@127.0.0.1:9/"),
        ("llmtrace_app_image = registry.example/text2sql:1.4", "the service registry.example/text2sql:1.4"),
    ],
)
def test_the_header_names_the_service_as_the_target(pytester: pytest.Pytester, ini: str, target: str) -> None:
    pytester.makeini(f"[pytest]\naddopts = -p no:phoenix -p no:randomly\nllmtrace_target = app:answer\n{ini}\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_inprocess("--co")
    setting = ini.split(" =", 1)[0]
    line = next(line for line in result.stdout.lines if line.startswith("llmtrace golden cases:"))
    assert f"target={target} ({setting}, ini), not llmtrace_target=app:answer (ini)" in line
    assert "(unset)" not in line
