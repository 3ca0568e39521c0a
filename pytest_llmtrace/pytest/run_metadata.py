"""What results.json says about a run, so a later reader can tell two runs apart: code (plugin version, git revision),
prompts, SQL fixtures, models and machine.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from pytest_llmtrace.core import settings as session_settings
from pytest_llmtrace.pytest import service_session as services
from pytest_llmtrace.pytest.replay_config import get_config
from pytest_llmtrace.pytest.run_state import RESULTS_KEY
from pytest_llmtrace.results import model_digests as models


def git_revision(root: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_metadata(config: pytest.Config) -> dict[str, Any]:
    """What a later reader needs to tell two runs apart: code, prompts, data and machine."""
    root = config.rootpath
    fixtures: dict[str, str] = {}
    for pattern in config.getini("llmtrace_sql_fixtures") or ["fixtures/**/*.sql"]:
        for path in sorted(root.glob(str(pattern))):
            if path.is_file():
                fixtures[path.relative_to(root).as_posix()] = _sha256(path)
    try:
        version = metadata.version("pytest-llmtrace")
    except metadata.PackageNotFoundError:
        version = "unknown"
    shard = config.stash[RESULTS_KEY].shard
    return {
        "run_id": config.stash[RESULTS_KEY].run_id,
        "shard": None if shard is None else {"index": shard[0], "count": shard[1]},
        "plugin_version": version,
        "git_revision": git_revision(root),
        "mode": get_config(config).mode,
        "model": session_settings.of(config)["ollama_model"],
        "models": _models(config),
        "system_prompt_hashes": sorted(config.stash[RESULTS_KEY].prompt_hashes),
        "sql_fixture_hashes": fixtures,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }


def _models(config: pytest.Config) -> list[dict[str, Any]]:
    state = config.stash[RESULTS_KEY]
    names = set(state.recorded_models)
    if state.mode != "replay":  # the model the app asks the live server for, whatever the recordings named
        names.add(session_settings.of(config)["ollama_model"])
    return models.model_entries(names, state.mode, state.recorded_models, state.live_models)


def configured_phoenix(config: pytest.Config) -> list[str]:
    """The Phoenix the user pointed the run at (--llmtrace-phoenix=URL) and the one the run used, if it started
    one: report.html links to traces there, and nowhere a golden file names."""
    urls = []
    setting = session_settings.of(config)["phoenix"]
    if "://" in setting:
        urls.append(setting)
    try:
        manager = services.get_manager(config)
    except KeyError:  # the services were never configured (a usage error stopped the run)
        return urls
    if "phoenix" in manager.started:  # this process's Phoenix (on the xdist controller: only the setting's)
        urls.append(manager.endpoint("phoenix").url)
    return urls
