"""The image and GPU options as users meet them: each source, the report header, and a mistyped value.

None of this needs an engine: a backend set to ``docker`` is shown with its image whether or not Docker answers. The
inner runs are in process: they only collect.
"""

from __future__ import annotations

import pytest

from pytest_llmtrace.services.docker import IMAGES

# arize-phoenix-client's own pytest plugin costs seconds (a minute on a loaded machine) at every start
INI = "[pytest]\naddopts = -p no:phoenix -p no:randomly\n"


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for service in IMAGES:
        monkeypatch.delenv(f"LLMTRACE_{service.upper()}_IMAGE", raising=False)  # engine.sh sets them
    monkeypatch.delenv("LLMTRACE_OLLAMA_GPU", raising=False)
    pytester.makepyfile("def test_nothing(): pass")
    pytester.makeini(INI)
    return pytester


def test_each_docker_service_shows_its_image_and_where_it_came_from(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makeini(INI + "llmtrace_ollama_image = mirror.example/ollama:0.12.6\n")
    monkeypatch.setenv("LLMTRACE_PHOENIX_IMAGE", "mirror.example/phoenix:version-20.26.1")
    result = project.runpytest(
        "--co",
        "--llmtrace-mode=live",
        "--llmtrace-postgres=docker",
        "--llmtrace-phoenix=docker",
        "--llmtrace-ollama=docker",
        "--llmtrace-postgres-image=pgvector/pgvector:pg17",
        "--llmtrace-ollama-gpu=none",
    )
    result.stdout.fnmatch_lines(
        [
            "llmtrace postgres: docker (from --llmtrace-postgres); "
            "image pgvector/pgvector:pg17 (--llmtrace-postgres-image)",
            "llmtrace ollama: docker (from --llmtrace-ollama); image mirror.example/ollama:0.12.6 "
            "(ini llmtrace_ollama_image); GPUs: none (llmtrace_ollama_gpu = none)",
            "llmtrace phoenix: docker (from --llmtrace-phoenix); "
            "image mirror.example/phoenix:version-20.26.1 (LLMTRACE_PHOENIX_IMAGE)",
        ]
    )
    assert result.ret == 0


def test_the_default_image_is_the_pinned_official_tag(project: pytest.Pytester) -> None:
    result = project.runpytest("--co", "--llmtrace-postgres=docker")
    result.stdout.fnmatch_lines(
        [f"llmtrace postgres: docker (from --llmtrace-postgres); image {IMAGES['postgres']} (default)"]
    )
    assert ":latest" not in "".join(IMAGES.values())
    assert all(":" in image for image in IMAGES.values())


def test_backends_other_than_docker_show_no_image(project: pytest.Pytester) -> None:
    result = project.runpytest("--co", "--llmtrace-postgres=embedded")
    result.stdout.fnmatch_lines(["llmtrace postgres: embedded (from --llmtrace-postgres)"])
    assert "image" not in "\n".join(line for line in result.stdout.lines if line.startswith("llmtrace postgres"))


def test_a_mistyped_gpu_setting_is_a_usage_error_with_the_near_miss(project: pytest.Pytester) -> None:
    result = project.runpytest("--co", "--llmtrace-ollama-gpu=al")
    result.stderr.fnmatch_lines(
        [
            "ERROR: --llmtrace-ollama-gpu: 'al' is not a valid ollama_gpu setting; use auto, all, none. "
            "Did you mean 'all'?"
        ]
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
