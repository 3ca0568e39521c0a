"""Whether the embedded Phoenix can run is asked without importing arize-phoenix into the pytest process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pytest_llmtrace.services.base import ServiceStartError
from pytest_llmtrace.services.phoenix import EmbeddedPhoenix


def test_asking_whether_phoenix_is_installed_does_not_import_it() -> None:
    code = (
        "import sys\n"
        "from pytest_llmtrace.services.phoenix import server_installed\n"
        "print(server_installed(), 'phoenix' in sys.modules)\n"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert shown.stdout.split() == ["True", "False"]


def test_only_the_phoenix_client_installed_says_how_to_get_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """arize-phoenix-client alone also provides a ``phoenix`` package (``phoenix.client``), without the server."""
    (tmp_path / "phoenix" / "client").mkdir(parents=True)
    (tmp_path / "phoenix" / "client" / "__init__.py").write_text("")
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    monkeypatch.delitem(sys.modules, "phoenix", raising=False)
    with pytest.raises(ServiceStartError) as caught:
        EmbeddedPhoenix().start()
    assert str(caught.value) == (
        "phoenix (embedded) did not start: arize-phoenix is not installed\n"
        "fix: pip install 'pytest-llmtrace[phoenix]', or use --llmtrace-phoenix=http://host:6006 for a running Phoenix"
    )
