"""Every setting is resolved once per session, and every layer reads that one resolution (issue 18)."""

from __future__ import annotations

import pytest


def test_every_layer_reads_the_one_resolution_of_the_settings(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMTRACE_OLLAMA_MODELS", str(pytester.path / "models"))
    pytester.makeini("[pytest]\naddopts = -p no:phoenix\nllmtrace_ollama_model = team-model\n")
    pytester.makepyfile(
        """
        from pytest_llmtrace.core import settings
        from pytest_llmtrace.pytest.export_hooks import get_state
        from pytest_llmtrace.pytest.replay_config import get_config
        from pytest_llmtrace.pytest.service_session import get_manager

        def test_one_resolution(pytestconfig):
            resolved = settings.of(pytestconfig)
            assert get_config(pytestconfig).settings is resolved
            assert get_manager(pytestconfig).settings is resolved
            assert get_state(pytestconfig).settings is resolved
            assert settings.of(pytestconfig) is resolved
            models = resolved.values["ollama_models"]
            assert (models.source, models.origin) == ("environment", "LLMTRACE_OLLAMA_MODELS")
            assert (resolved["ollama_model"], resolved.source("ollama_model")) == ("team-model", "ini")
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
