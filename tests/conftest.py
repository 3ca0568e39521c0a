"""Settings every test of this suite shares."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _inner_runs_as_on_a_laptop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner pytest runs (pytester) print the same on a CI runner as on a laptop, and write no CI files.

    pytest stops shortening the short test summary when ``CI`` or ``BUILD_NUMBER`` is set, which changes what the
    tests count in an inner run's output; and an inner run given ``--llmtrace-report`` would append its summary to the
    real run's ``GITHUB_STEP_SUMMARY``.
    """
    for name in ("CI", "BUILD_NUMBER", "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(name, raising=False)
