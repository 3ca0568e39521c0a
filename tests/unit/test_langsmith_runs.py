"""LangSmith's run ingestion on the OTLP receiver, driven by the real SDK's own calls: every path the installed client
sends runs on (multipart by default, ``/runs/batch``, ``POST /runs`` and ``PATCH /runs/<id>``), and what it refuses."""

from __future__ import annotations

import datetime as dt
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from pytest_llmtrace.pytest.sdk_endpoints import spans_of_runs
from pytest_llmtrace.services.otlp_receiver import OtlpReceiver


def _run(name: str, run_type: str, **extra: Any) -> dict[str, Any]:
    return {"id": uuid.uuid4(), "name": name, "run_type": run_type, "inputs": {"question": "How many?"}, **extra}


def test_single_posts_and_patches_are_merged_into_one_run() -> None:
    from langsmith import Client

    got: list[dict[str, Any]] = []
    with OtlpReceiver(on_runs=got.extend) as receiver:
        client = Client(api_url=receiver.endpoint, api_key="lsv2-local", auto_batch_tracing=False)
        run = _run("text2sql", "chain", start_time=dt.datetime.now(dt.timezone.utc))
        client.create_run(**run, project_name="p")
        assert got == []  # started, not ended: not handed on yet
        client.update_run(run["id"], end_time=dt.datetime.now(dt.timezone.utc), outputs={"sql": "SELECT 1"})
        assert receiver.stats.refused == 0
    (merged,) = got
    assert merged["name"] == "text2sql"
    assert merged["outputs"] == {"sql": "SELECT 1"}
    (span,), unread = spans_of_runs(got)
    assert unread == 0
    assert span.name == "text2sql"
    assert span.end_time_unix_nano is not None


def test_a_batch_of_posts_and_patches_is_read() -> None:
    from langsmith import Client

    got: list[dict[str, Any]] = []
    with OtlpReceiver(on_runs=got.extend) as receiver:
        client = Client(api_url=receiver.endpoint, api_key="lsv2-local", auto_batch_tracing=False)
        now = dt.datetime.now(dt.timezone.utc)
        root = _run("text2sql", "chain", start_time=now, trace_id=None, dotted_order=None)
        root_id = root["id"]
        root.update(trace_id=root_id, dotted_order=f"{now:%Y%m%dT%H%M%S%fZ}{root_id}")
        client.batch_ingest_runs(create=[root], update=[{**root, "end_time": now, "outputs": {"ok": True}}])
        assert receiver.stats.refused == 0, list(receiver.stats.reasons)
    assert [run["name"] for run in got] == ["text2sql"]
    assert got[0]["outputs"] == {"ok": True}


@pytest.mark.parametrize(
    ("method", "path", "content_type", "body", "reason"),
    [
        ("POST", "/runs", "application/json", b"[1]", "expected a JSON object, got list"),
        ("POST", "/runs/batch", "application/json", b"{not json", "the batch is not JSON"),
        ("POST", "/runs/multipart", "application/json", b"{}", "expected multipart/form-data with a boundary"),
        ("PATCH", "/runs/a/b", "application/json", b"{}", "expected PATCH /runs/<id>"),
    ],
)
def test_a_post_that_cannot_be_read_is_refused_and_counted(
    method: str, path: str, content_type: str, body: bytes, reason: str
) -> None:
    with OtlpReceiver(on_runs=lambda runs: None) as receiver:
        request = urllib.request.Request(
            receiver.endpoint + path, data=body, method=method, headers={"Content-Type": content_type}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 400
        refused.value.close()
        assert receiver.stats.refused == 1
        assert reason in receiver.stats.reasons[-1]


def test_without_on_runs_the_runs_paths_are_not_served() -> None:
    with OtlpReceiver() as receiver:
        request = urllib.request.Request(
            receiver.endpoint + "/runs", data=b"{}", headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 404
        refused.value.close()
