"""report.html: its structure and escaping read back with html.parser (always), and the page rendered by a real
headless Chromium (Debian's ``chromium`` package) over the DevTools protocol, its screenshot checked pixel by pixel.

The cases carry hostile strings in every place a trace or a model answer reaches (case id, SQL, reasons, errors,
question, the Phoenix URL): the page must show them as text and run or load nothing.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from htmlpage import parse

from pytest_llmtrace.checks.outcome import CaseOutcome, CheckResult, Measurement, SpanBar, Waterfall
from pytest_llmtrace.results import gate
from pytest_llmtrace.results.case_record import CaseRecord, as_case
from pytest_llmtrace.results.html import render
from pytest_llmtrace.results.repeats import aggregate
from pytest_llmtrace.results.trace_links import phoenix_link

HOSTILE = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>"
VERDICT_RED = (0xB4, 0x23, 0x18)  # .v-failed's background
LLM_PURPLE = (0x7A, 0x5A, 0xF8)  # an LLM bar's fill (results.waterfall.KIND_COLOURS)


def _waterfall(total_ms: float, llm_ms: float, *, replayed: bool, name: str = "ollama.chat") -> Waterfall:
    return Waterfall(
        (
            SpanBar("text2sql.request", "CHAIN", 0, 0.0, total_ms, llm_ms if replayed else 0.0),
            SpanBar(name, "LLM", 1, 0.5, llm_ms, llm_ms if replayed else 0.0),
            SpanBar("sql.execute", "SQL", 1, llm_ms + 1, total_ms - llm_ms - 2),
        ),
        total_ms,
    )


def _case(case_id: str, *, passed: bool, sql: str = "SELECT 1", **more: Any) -> CaseRecord:
    latency = Measurement(
        "total", "ms", 9295.0, 2852.0, "relative", 4277.8, "<= 1.5x golden (4277.8 ms)",
        "passed" if passed else "failed", replayed=537.2,
    )  # fmt: skip
    tokens = Measurement("total", "tokens", 362, 362, "relative", 398, "within +-10% of golden", "passed", "replayed")
    outcome = CaseOutcome(
        case_id=case_id,
        mode="replay",
        checks=(
            CheckResult("sql", "passed" if passed else "failed", "" if passed else f"the SQL failed: {HOSTILE}"),
            CheckResult("latency", "passed" if passed else "failed", "", (latency,)),
            CheckResult("tokens", "passed", "", (tokens,)),
        ),
        sql=sql,
        golden_sql="SELECT 1",
        tokens={"total": 362},
        golden_tokens={"total": 362},
        durations_ms={"total": 9295.0},
        question=f"question {HOSTILE}",
        question_source="input.value",
        waterfall=_waterfall(9295.0, 537.2, replayed=True, name=f"span {HOSTILE}"),
        golden_waterfall=_waterfall(2852.0, 537.2, replayed=False),
    )
    data = outcome.to_dict()
    data.update(verdict="passed" if passed else "failed", nodeid=f"golden_traces/{case_id}.json::{case_id}", **more)
    return as_case(data)


def _doc() -> tuple[dict[str, Any], list[gate.GateResult], list[CaseRecord]]:
    cases = aggregate(
        [
            _case("good_case", passed=True, phoenix={"url": "http://127.0.0.1:6006/", "trace_id": "ab" * 16}),
            _case(
                HOSTILE,
                passed=False,
                sql=f"SELECT '{HOSTILE}'",
                phoenix={"url": "javascript:alert(3)", "trace_id": "x"},
            ),
            _case("other_failure", passed=False, app_error=f"RuntimeError: {HOSTILE}"),
        ],
        min_pass_rate=1.0,
    )
    run = {"mode": "replay", "models": [{"name": HOSTILE, "digest": None}], "git_revision": HOSTILE}
    doc = {"schema_version": 1, "run": run, "totals": {}, "cases": cases}
    baseline = [_case("good_case", passed=True), _case("other_failure", passed=True)]
    rules = [gate.parse("sql_success_rate >= 0.95"), gate.parse("regressions == 0")]
    return doc, gate.evaluate(rules, cases, baseline), baseline


def test_the_page_has_the_verdict_failing_cases_first_and_shows_hostile_strings_as_text() -> None:
    doc, results, baseline = _doc()
    page = parse(render(doc, results, baseline, phoenix=["http://127.0.0.1:6006"]))
    (verdict,) = page.find("section", id="verdict")
    assert verdict["data-verdict"] == "failed"
    rows = page.find("tr", **{"data-verdict": "failed"}) + page.find("tr", **{"data-verdict": "passed"})
    assert len(rows) == 3
    order = [a.get("id") for t, a in page.tags if t == "tr" and a.get("data-verdict")]
    assert order[-1] == "case-good_case", "failing cases come first"
    assert len(page.find("table", id="gates")) == len(page.find("table", id="was-now")) == 1

    # nothing runs, nothing loads: no script, no image, no stylesheet link, no event handler, a CSP that forbids all
    assert {t for t, _ in page.tags} <= {
        "html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "p", "span", "b", "section", "ul",
        "li", "table", "colgroup", "col", "thead", "tbody", "tr", "th", "td", "br", "code", "pre", "details",
        "summary", "a", "svg", "g", "rect", "text", "line",
    }  # fmt: skip
    assert not [a for _, a in page.tags if any(k.startswith("on") or k == "src" for k in a)]
    (csp,) = page.find("meta", **{"http-equiv": "Content-Security-Policy"})
    assert str(csp["content"]).startswith("default-src 'none'")
    text = "".join(page.text)
    for place in ("the SQL failed: ", "SELECT '", "RuntimeError: ", "question ", "span "):
        assert place + HOSTILE in text, f"{place!r} is shown as text"
    # only http(s) Phoenix links: the javascript: URL of the hostile case becomes no link at all
    assert [a["href"] for a in page.find("a")] == [f"http://127.0.0.1:6006/redirects/traces/{'ab' * 16}"]
    assert phoenix_link(as_case({"phoenix": {"url": "javascript:alert(3)", "trace_id": "x"}})) is None
    # the figures: now (replayed part) / golden / limit, and the baseline's verdict beside this run's
    assert "9295 (537.2 replayed)" in text
    assert "golden 2852" in text
    assert "<= 1.5x golden (4277.8 ms)" in text
    assert "362 (replayed)" in text
    assert re.search(r"regressions == 0\s*-\s*1\s*failed", text), "regressions has no 'was'"
    # golden over now, for every case; a case that did not pass is unfolded
    assert [a["data-trace"] for a in page.find("svg")] == ["golden", "now"] * 3
    assert [t for t, a in page.tags if t == "details" and "open" in a] == ["details"] * 2
    assert "537.2 ms replayed" in text


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and unfiltered rows of an 8-bit RGB or RGBA PNG, as Chromium writes them."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8, depth
    assert color in (2, 6), color
    bpp = 3 if color == 2 else 4
    raw, stride, rows, previous = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(line[j] for k in range(0, stride, bpp) for j in range(k, k + 3)))
        previous = line
    return width, height, rows


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chromium-headless-shell"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium on PATH: apt-get install chromium (Debian's package) to render report.html")


class _DevTools:
    """A page in a headless Chromium, driven over the DevTools protocol (one websocket, flattened sessions)."""

    def __init__(self, socket: Any) -> None:
        self._socket = socket
        self._next = 0
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def send(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        self._socket.send(json.dumps(message))
        while True:  # events arrive in between: skip them up to our answer
            answer = json.loads(self._socket.recv(timeout=60))
            if answer.get("id") == self._next:
                assert "error" not in answer, answer
                result: dict[str, Any] = answer["result"]
                return result

    def evaluate(self, expression: str) -> Any:
        return self.send("Runtime.evaluate", True, expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.evaluate(expression):
            assert time.monotonic() < deadline, f"Chromium never got to {expression}"
            time.sleep(0.05)


@pytest.fixture
def devtools(tmp_path: Path) -> Iterator[_DevTools]:
    client = pytest.importorskip("websockets.sync.client", reason="websockets drives Chromium's DevTools")
    # Chromium's singleton socket lives in TMPDIR, and a unix socket path is limited to 107 bytes: under xdist the
    # test's own folder (.../popen-gw0/test_chromium_renders_the_repo0/) is too deep, so a short folder of its own
    chromium = _chromium()  # skips without one: before the folder below exists, or the skip would leave it behind
    browser_tmp = Path(tempfile.mkdtemp(prefix="llt-chromium-"))
    browser = subprocess.Popen(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--remote-debugging-port=0", f"--user-data-dir={tmp_path / 'profile'}", "about:blank",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        # no session bus here: Chromium's complaints stay short. TMPDIR a folder removed afterwards: the browser is
        # killed, and the singleton folder it makes in the temp dir (org.chromium.Chromium.*) would outlive it
        env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": "", "TMPDIR": str(browser_tmp)},
    )  # fmt: skip
    try:
        assert browser.stderr is not None
        said: list[str] = []
        for line in browser.stderr:  # Chromium says where its DevTools listen before anything else useful
            if line.startswith("DevTools listening on "):
                url = line.split(" on ", 1)[1].strip()
                break
            said.append(line)
        else:
            tail = "".join(said[-20:])
            pytest.fail(f"Chromium exited ({browser.wait()}) without opening DevTools; it said:\n{tail}", pytrace=False)
        with client.connect(url, max_size=None, open_timeout=60) as socket:
            yield _DevTools(socket)
    finally:
        browser.kill()
        browser.wait()
        shutil.rmtree(browser_tmp, ignore_errors=True)


@pytest.mark.slow  # a headless Chromium
def test_chromium_renders_the_report_with_the_red_verdict_on_top(devtools: _DevTools, tmp_path: Path) -> None:
    doc, results, baseline = _doc()
    page = tmp_path / "report.html"
    page.write_text(render(doc, results, baseline), encoding="utf-8")
    devtools.send("Emulation.setDeviceMetricsOverride", True, width=1280, height=900, deviceScaleFactor=1, mobile=False)
    devtools.send("Page.navigate", True, url=page.as_uri())
    devtools.wait_for("document.readyState === 'complete' && document.getElementById('verdict') !== null")
    box = devtools.evaluate(
        "JSON.stringify((() => { const r = document.getElementById('verdict').getBoundingClientRect();"
        " return {x: r.x, y: r.y, w: r.width, h: r.height, page: document.documentElement.scrollHeight,"
        " rows: document.querySelectorAll('tr.case').length}; })())"
    )
    layout = json.loads(box)
    assert layout["rows"] == 3
    assert layout["w"] > 600, layout
    assert 40 < layout["h"] < 400, layout
    assert layout["y"] < 200, "the verdict is the first thing a person sees"
    assert layout["page"] > 900, "three cases and the tables make a page taller than one screen"

    shot = devtools.send("Page.captureScreenshot", True, format="png")
    (tmp_path / "report.png").write_bytes(base64.b64decode(shot["data"]))
    width, height, rows = _png_pixels(base64.b64decode(shot["data"]))
    assert (width, height) == (1280, 900)
    x, y = int(layout["x"] + 12), int(layout["y"] + layout["h"] - 6)  # inside the banner, clear of its text
    assert tuple(rows[y][3 * x : 3 * x + 3]) == VERDICT_RED
    colours = {rows[yy][3 * xx : 3 * xx + 3] for yy in range(0, height, 20) for xx in range(0, width, 20)}
    assert len(colours) > 5, "the page rendered more than a blank background"

    # the first failing case is unfolded: its golden LLM bar is drawn solid, the replayed one now pale
    centres = json.loads(
        devtools.evaluate(
            "JSON.stringify((() => { const g = document.querySelector(\"svg[data-trace='golden'] rect.k-LLM\");"
            " g.scrollIntoView({block: 'center'});"
            " const n = document.querySelector(\"svg[data-trace='now'] rect.k-LLM\");"
            " return [g, n].map(r => { const b = r.getBoundingClientRect();"
            " return [Math.round(b.x + b.width / 2), Math.round(b.y + b.height / 2), b.width]; }); })())"
        )
    )
    (gx, gy, golden_width), (nx, ny, now_width) = centres
    assert now_width == pytest.approx(golden_width, abs=1), "one time scale: 537 ms is as long in both charts"
    shot = devtools.send("Page.captureScreenshot", True, format="png")
    (tmp_path / "waterfalls.png").write_bytes(base64.b64decode(shot["data"]))
    _, _, rows = _png_pixels(base64.b64decode(shot["data"]))
    assert tuple(rows[gy][3 * gx : 3 * gx + 3]) == LLM_PURPLE
    pale = tuple(rows[ny][3 * nx : 3 * nx + 3])
    assert pale != LLM_PURPLE
    assert all(p > c for p, c in zip(pale, LLM_PURPLE, strict=True)), f"replayed is drawn paler: {pale}"
