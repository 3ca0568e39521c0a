"""The service under test from a locally built image (``llmtrace_app_image``): the reference gateway's image that
tests/docker/engine.sh builds (``LLMTRACE_TEST_APP_IMAGE``), run on the host's network, its spans back over OTLP, the
shipped golden cases judged through it; and no container left afterwards."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from pytest_llmtrace.services.docker import LABEL_PREFIX, docker_available

REPO = Path(__file__).resolve().parents[2]
DOCKER, WHY_NOT = docker_available()
IMAGE = os.environ.get("LLMTRACE_TEST_APP_IMAGE", "")
FAILING = {
    "destructive_delete_discounted_items",
    "error_syntax",
    "error_unknown_column",
    "error_unknown_table",
    "slow_higher_priced_items",
}
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DOCKER, reason=f"needs a Docker engine: {WHY_NOT} (tests/docker/engine.sh starts one)"),
    pytest.mark.skipif(not IMAGE, reason="needs the gateway image: tests/docker/engine.sh builds it"),
]


@pytest.fixture
def client() -> Iterator[Any]:
    docker_client = docker.from_env()
    yield docker_client
    docker_client.close()


def _apps(client: Any) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": [f"{LABEL_PREFIX}.service=app"]}))


def test_the_golden_cases_through_the_image_give_the_in_process_verdicts(
    pytester: pytest.Pytester, postgres_url: str, client: Any
) -> None:
    before = {c.id for c in _apps(client)}
    shutil.copytree(REPO / "fixtures" / "company_db", pytester.path / "fixtures" / "company_db")
    golden = pytester.path / "golden_traces"
    shutil.copytree(REPO / "golden_traces", golden)
    pytester.makeini(
        "[pytest]\naddopts = -p no:phoenix -p no:randomly\n"
        f"llmtrace_app_image = {IMAGE}\nllmtrace_app_ready = GET /healthz\n"
    )
    result = pytester.runpytest(f"--llmtrace-postgres={postgres_url}", "golden_traces")
    result.assert_outcomes(passed=18, failed=5)
    failed = {line.split("::")[1].split(" ")[0] for line in result.outlines if line.startswith("FAILED golden_")}
    assert failed == FAILING
    result.stdout.fnmatch_lines(
        [
            f"llmtrace app: image {IMAGE} on the host's network, PORT=a free port (from ini); ready: GET /healthz *",
            "llmtrace app: cases' spans by trace id: 23, by time window: 0, none: 0; *service starts: 1;*",
        ]
    )
    assert {c.id for c in _apps(client)} - before == set()  # removed at the end of the run


HOLD = """
import time

def test_hold(llmtrace_service):  # started and ready
    print("SERVICE-UP", flush=True)
    time.sleep(120)
"""


def test_no_container_outlives_sigterm(pytester: pytest.Pytester, postgres_url: str, client: Any) -> None:
    shutil.copytree(REPO / "fixtures" / "company_db", pytester.path / "fixtures" / "company_db")
    pytester.makeini(
        "[pytest]\naddopts = -p no:phoenix -p no:randomly\n"
        f"llmtrace_app_image = {IMAGE}\nllmtrace_app_ready = GET /healthz\nllmtrace_app_span_wait_s = 1\n"
    )
    pytester.makepyfile(test_hold=HOLD)
    argv = [sys.executable, "-m", "pytest", "test_hold.py", "-s", f"--llmtrace-postgres={postgres_url}"]
    proc = subprocess.Popen(argv, cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "SERVICE-UP" in line:
                break
        assert "SERVICE-UP" in seen[-1], "".join(seen)[-3000:]
        mine = client.containers.list(
            filters={"label": [f"{LABEL_PREFIX}.service=app", f"{LABEL_PREFIX}.pid={proc.pid}"]}
        )
        assert len(mine) == 1
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED
    left = client.containers.list(all=True, filters={"label": [f"{LABEL_PREFIX}.pid={proc.pid}"]})
    for container in left:
        container.remove(force=True)  # not left for the next test, whatever the verdict
    assert left == []
