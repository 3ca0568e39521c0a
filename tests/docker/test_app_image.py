"""The service under test from a locally built image (``llmtrace_app_image``): the reference gateway's image that
tests/docker/engine.sh builds (``LLMTRACE_TEST_APP_IMAGE``), run on the host's network, its spans back over OTLP, the
shipped golden cases judged through it; and no container left afterwards."""

from __future__ import annotations

import os
import shutil
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
