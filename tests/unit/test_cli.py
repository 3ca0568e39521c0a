"""``llmtrace import`` / ``show`` as a user runs them: stable file names, clear summaries, no tracebacks."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from support import load_traces

from pytest_llmtrace.cli import golden_file_name, main
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.otlp import read_trace

DATA = Path(__file__).parent.parent / "data" / "phoenix"
REST = DATA / "rest_spans.json"
OTLPV1 = DATA / "spans_otlpv1.json"
NAMES = [
    "how-many-customers-are-in-berlin-1bcf109c.json",
    "list-the-three-most-expensive-products-4e0c8f41.json",
    "total-revenue-per-month-in-2024-b1a5d98c.json",
]


def listing(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(directory.iterdir())}


def test_import_writes_one_golden_file_per_trace_with_stable_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "golden"

    assert main(["import", str(REST), "--out", str(out)]) == 0

    stdout, stderr = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == NAMES
    assert stdout.splitlines()[0] == f"{REST}: 3 traces (9 spans), read as Phoenix REST spans"
    assert stdout.splitlines()[-1] == f"wrote 3 traces (9 spans) to {out}"
    assert stderr == ""
    first = listing(out)
    for name in NAMES:
        assert len(read_trace(out / name)) == 3  # each file is a valid single-trace golden file

    assert main(["import", str(REST), "--out", str(out)]) == 0

    assert listing(out) == first
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote 0 traces (0 spans) to {out}; 3 unchanged"


def test_same_spans_from_another_phoenix_export_are_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "golden"

    assert main(["import", str(REST), str(OTLPV1), "--out", str(out)]) == 0

    assert capsys.readouterr().out.splitlines()[-1] == f"wrote 3 traces (9 spans) to {out}; 3 unchanged"


def test_differing_existing_file_is_refused_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "golden"
    out.mkdir()
    edited = out / NAMES[0]
    edited.write_text("{}\n", encoding="utf-8")

    assert main(["import", str(REST), "--out", str(out)]) == 1

    stdout, stderr = capsys.readouterr()
    assert stderr == f"error: {edited} exists with different content; use --force to overwrite it\n"
    assert stdout.splitlines()[-1] == f"wrote 2 traces (6 spans) to {out}"
    assert edited.read_text(encoding="utf-8") == "{}\n"

    assert main(["import", str(REST), "--out", str(out), "--force"]) == 0

    assert read_trace(edited).input == "How many customers are in Berlin?"


def test_malformed_source_is_an_error_line_and_the_others_still_convert(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"resourceSpans": [', encoding="utf-8")
    out = tmp_path / "golden"

    assert main(["import", str(broken), str(REST), "--out", str(out)]) == 1

    stdout, stderr = capsys.readouterr()
    assert stderr == (
        f"error: {broken}: at $: expected valid JSON, got end of file (the file is truncated) at line 1 column 20\n"
    )
    assert "Traceback" not in stdout + stderr
    assert stdout.splitlines()[-1] == f"wrote 3 traces (9 spans) to {out}"


def test_refused_traces_export_and_warnings_go_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = json.loads(REST.read_text(encoding="utf-8"))
    page["data"] = [s for s in page["data"] if s["name"] != "text_to_sql"][:1]
    orphan = tmp_path / "orphan.json"
    orphan.write_text(json.dumps(page), encoding="utf-8")

    code = main(["import", str(DATA / "traces_include_spans.json"), str(orphan), "--out", str(tmp_path / "o")])

    stderr = capsys.readouterr().err.splitlines()
    assert code == 1
    assert stderr[0].startswith(f"error: {DATA / 'traces_include_spans.json'}: at $.data[0].spans: expected spans")
    assert stderr[1] == (
        f"warning: {orphan}: at $.data[0].parentSpanId: parent span '3eda0dd7882da166' of span 'SELECT shop' is not "
        "in the trace; kept as an extra root"
    )


def test_two_sources_with_different_versions_of_a_trace_do_not_overwrite_each_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    changed = tmp_path / "changed.json"
    changed.write_text(REST.read_text(encoding="utf-8").replace("session-42", "session-43"), encoding="utf-8")
    out = tmp_path / "golden"

    assert main(["import", str(REST), str(changed), "--out", str(out)]) == 1

    stderr = capsys.readouterr().err.splitlines()
    assert len(stderr) == 3
    assert stderr[0] == (
        f"error: {out / NAMES[0]}: trace 1bcf109c28b2f1db9f4ba242b348dbb0 from {changed} differs from the one "
        f"just written from {REST}; import them into different directories"
    )
    assert "session-42" in (out / NAMES[0]).read_text(encoding="utf-8")


def test_show_prints_the_waterfall(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["import", str(REST), "--out", str(tmp_path)])
    capsys.readouterr()

    assert main(["show", str(tmp_path / NAMES[2])]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("trace b1a5d98ca14c0e0d988d7549a9cc92cb  3 spans")
    assert lines[1].startswith("text_to_sql ")
    assert "model=qwen2.5-coder:1.5b  tokens=405+40" in lines[2]
    assert "ERROR" in lines[3]
    assert "error='relation \"orderz\" does not exist'" in lines[3]


def test_show_reads_exports_directly_and_reports_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.json"

    assert main(["show", str(REST), str(missing)]) == 1

    stdout, stderr = capsys.readouterr()
    assert stdout.count(f"== {REST}") == 3
    assert stderr.startswith(f"error: {missing}: at $: expected a readable file, got ")


def test_no_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: llmtrace" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["import", "show"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])

    assert info.value.code == 0
    assert f"usage: llmtrace {command}" in capsys.readouterr().out


def test_console_script_is_installed() -> None:
    script = shutil.which("llmtrace", path=str(Path(sys.executable).parent))
    assert script is not None, "the llmtrace console script is not installed next to this Python"

    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode == 0, result.stderr
    assert "usage: llmtrace" in result.stdout
    assert "import" in result.stdout
    assert "show" in result.stdout


def test_a_reader_that_closes_the_pipe_early_ends_it_quietly() -> None:
    """``llmtrace show ... | head -1``: 200 copies print ~280 kB, far past a pipe's 64 kB buffer, so writes after
    ``head`` exits hit the closed pipe every time; before, that printed a ``BrokenPipeError`` traceback."""
    script = shutil.which("llmtrace", path=str(Path(sys.executable).parent))
    assert script is not None, "the llmtrace console script is not installed next to this Python"
    files = " ".join([shlex.quote(str(REST))] * 200)

    command = f"{shlex.quote(script)} show {files} | head -1; echo llmtrace exit status ${{PIPESTATUS[0]}}"

    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120, check=False)

    assert result.stderr == ""  # no traceback
    assert result.stdout.splitlines() == [f"== {REST}", "llmtrace exit status 141"]


# -- hostile sources and hostile output directories --------------------------------------------------------------------


def golden_with(tmp_path: Path, name: str, fragment: str) -> Path:
    """A copy of a converted golden file with its first span's start time written as ``fragment`` verbatim."""
    main(["import", str(REST), "--out", str(tmp_path / "seed")])
    text = (tmp_path / "seed" / NAMES[0]).read_text(encoding="utf-8")
    path = tmp_path / name
    path.write_text(text.replace('"startTimeUnixNano": "', '"startTimeUnixNano": ' + fragment + ', "x": "', 1))
    return path


def test_bad_sources_are_one_line_each_and_every_good_one_is_converted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = golden_with(tmp_path, "deep.json", "[" * 100_000 + "]" * 100_000)
    digits = golden_with(tmp_path, "digits.json", "1" * 5000)
    capsys.readouterr()
    out = tmp_path / "golden"

    assert main(["import", str(deep), str(REST), str(digits), str(OTLPV1), "--out", str(out)]) == 1

    stdout, stderr = capsys.readouterr()
    span0 = "$.resourceSpans[0].scopeSpans[0].spans[0].startTimeUnixNano"
    assert stderr.splitlines() == [
        f"error: {deep}: at {span0}[0]...(x93): expected at most 100 levels of nested arrays and objects, "
        "got level 101 here",
        f"error: {digits}: at {span0}: expected a number of at most 100 characters, got a number of 5,000 "
        "characters (11111111111111111111...)",
    ]
    assert sorted(p.name for p in out.iterdir()) == NAMES
    assert stdout.splitlines()[-1] == f"wrote 3 traces (9 spans) to {out}; 3 unchanged"
    assert main(["import", str(REST), "--out", str(out)]) == 0  # exit 0 when every source is good


def test_a_symlink_at_the_output_name_is_never_written_through(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "golden"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n", encoding="utf-8")
    link = out / NAMES[0]
    link.symlink_to(victim)

    for force in ([], ["--force"]):
        assert main(["import", str(REST), "--out", str(out), *force]) == 1

        stderr = capsys.readouterr().err
        assert stderr == (
            f"error: {link} is a symbolic link; golden files are never written through a link: remove it or write "
            "to another directory\n"
        )
        assert victim.read_text(encoding="utf-8") == "precious\n"
        assert link.is_symlink()
    assert sorted(p.name for p in out.iterdir()) == NAMES  # the other two were written, no temporary files left


def test_force_replaces_atomically_and_leaves_no_temporary_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "golden"
    out.mkdir()
    edited = out / NAMES[0]
    edited.write_text("{}\n", encoding="utf-8")
    reader = edited.open(encoding="utf-8")  # a reader that opened the old file keeps reading the old file
    before = edited.stat().st_ino

    assert main(["import", str(REST), "--out", str(out), "--force"]) == 0

    assert edited.stat().st_ino != before  # a new file renamed over the old one, not the old one rewritten
    assert reader.read() == "{}\n"
    reader.close()
    assert read_trace(edited).input == "How many customers are in Berlin?"
    assert sorted(p.name for p in out.iterdir()) == NAMES
    assert f"  {edited} (3 spans)" in capsys.readouterr().out


def test_an_output_name_taken_by_a_directory_is_an_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "golden"
    (out / NAMES[1]).mkdir(parents=True)

    assert main(["import", str(REST), "--out", str(out)]) == 1

    assert capsys.readouterr().err == (
        f"error: {out / NAMES[1]} exists and is not a regular file; remove it or write to another directory\n"
    )


@pytest.mark.parametrize(
    ("question", "name"),
    [
        ("../../etc/passwd", "etc-passwd-1bcf109c.json"),
        ("..", "trace-1bcf109c.json"),
        ("C:\\Windows\\system32 /tmp", "c-windows-system32-tmp-1bcf109c.json"),
        ("Ärger über Größe", "rger-ber-gr-e-1bcf109c.json"),
        ("x" * 5000, "x" * 48 + "-1bcf109c.json"),
    ],
)
def test_golden_file_names_cannot_leave_the_directory(question: str, name: str) -> None:
    trace = load_traces(REST)[0]
    root = trace.root
    renamed = Trace([replace(root, attributes={**root.attributes, "input.value": question}), *trace.spans[1:]])

    assert golden_file_name(renamed) == name


def test_size_limit_from_the_flag_and_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    size = REST.stat().st_size
    out = tmp_path / "golden"

    assert main(["import", str(REST), "--out", str(out), "--max-trace-bytes", str(size - 1)]) == 1
    assert capsys.readouterr().err.endswith(f"--max-trace-bytes)), got {size:,} bytes\n")

    monkeypatch.setenv("LLMTRACE_MAX_TRACE_BYTES", str(size - 1))
    assert main(["import", str(REST), "--out", str(out)]) == 1
    assert main(["import", str(REST), "--out", str(out), "--max-trace-bytes", str(size)]) == 0  # flag wins

    monkeypatch.setenv("LLMTRACE_MAX_TRACE_BYTES", "lots")
    with pytest.raises(SystemExit) as info:
        main(["show", str(REST)])
    assert info.value.code == 2
    assert "LLMTRACE_MAX_TRACE_BYTES='lots': expected a positive number of bytes, got 'lots'" in capsys.readouterr().err


def test_import_redacts_credentials_and_never_prints_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret_url = "postgresql://app:s3cret-pw@db:5432/shop?sslpassword=hunter2"
    api_key = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t"
    page = json.loads(REST.read_text(encoding="utf-8"))
    for span in page["data"]:
        span["attributes"]["db.connection_string"] = secret_url
        span["attributes"]["llm.invocation_parameters"] = json.dumps({"model": "qwen", "api_key": api_key})
        span["attributes"]["http"] = {"request": {"header": {"authorization": ["Bearer tok3n-value-123"]}}}
    leaky = tmp_path / "leaky.json"
    leaky.write_text(json.dumps(page), encoding="utf-8")
    out = tmp_path / "golden"

    assert main(["import", str(leaky), "--out", str(out)]) == 0

    stdout, stderr = capsys.readouterr()
    written = "".join(p.read_text(encoding="utf-8") for p in out.iterdir()) + "".join(p.name for p in out.iterdir())
    for secret in ("s3cret-pw", "hunter2", api_key, "tok3n-value-123"):
        assert secret not in written
        assert secret not in stdout + stderr
    # The URL password is a value the PII redaction recognises (one placeholder per value); the rest are found by
    # their attribute names or parameter names and masked.
    assert re.search(r"postgresql://app:<PASSWORD:[0-9a-f]{8}>@db:5432/shop\?sslpassword=\*\*\*", written)
    assert stdout.splitlines()[-2].startswith("redacted ")
    assert " credential" in stdout.splitlines()[-2]

    raw = tmp_path / "raw"
    assert main(["import", str(leaky), "--out", str(raw), "--no-redact"]) == 0
    assert "s3cret-pw" in "".join(p.read_text(encoding="utf-8") for p in raw.iterdir())
