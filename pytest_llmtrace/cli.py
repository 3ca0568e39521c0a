"""``llmtrace``: turn exported traces into golden files and look at them in the terminal.

The command never prints a traceback for a bad input file: a ``TraceFormatError`` already says which file, where and
what was expected, so it is printed as ``error: ...`` and the other sources are still converted.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from pytest_llmtrace.checks import equiv_command
from pytest_llmtrace.core.errors import LLMTraceError, TraceFormatWarning, first_line, whole_number
from pytest_llmtrace.core.inert import escape_controls, one_line
from pytest_llmtrace.core.settings import env_var
from pytest_llmtrace.results import compare
from pytest_llmtrace.sources import capture, redact, redaction_flags
from pytest_llmtrace.sources.importing import KNOWN_FORMATS, Imported, import_file
from pytest_llmtrace.trace.model import Trace
from pytest_llmtrace.trace.otlp import dumps, write_golden
from pytest_llmtrace.trace.question import DEFAULT_SOURCES, QuestionSource, QuestionSourceError, parse_sources
from pytest_llmtrace.trace.safejson import DEFAULT_MAX_TRACE_BYTES, MAX_TRACE_BYTES_ENV

__all__ = ["INTERNAL_ERROR", "golden_file_name", "import_sources", "main", "one_line"]

# The words of the last-resort error in ``_load``; the fuzz test fails if any input produces them.
INTERNAL_ERROR = "internal error in llmtrace while reading this file"

SLUG_CHARS = 48


QUESTION_ENV = env_var("question")  # the pytest setting's variable, read by `llmtrace import` too


def golden_file_name(trace: Trace, sources: Sequence[QuestionSource] | str = DEFAULT_SOURCES) -> str:
    """A name that is the same every time the same trace is imported, and readable in a directory listing.

    The slug comes from the question, found by the same sources golden cases replay it from (``input.value``,
    OpenLLMetry's ``traceloop.entity.input``, the first LLM call's user message, or ``sources``), else the root
    span's name; the first 8 hex digits of the trace id keep two runs of the same question apart.
    """
    question = trace.question(sources).text
    slug = re.sub(r"[^a-z0-9]+", "-", (question or trace.root.name).lower()).strip("-")
    slug = slug[:SLUG_CHARS].rstrip("-") or "trace"
    return f"{slug}-{trace.trace_ids[0][:8]}.json"


# What a shell reports for a command killed by SIGPIPE (128 + 13): ``llmtrace show ... | head`` ends as ``cat`` would.
BROKEN_PIPE_STATUS = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a reader that closes the pipe early (``| head``) ends it quietly, never with a traceback.

    Python ignores SIGPIPE, so a closed stdout surfaces as ``BrokenPipeError`` at the next write or at the exit flush.
    The recipe in Python's ``signal`` docs: point stdout at devnull so the interpreter's own flush at exit cannot fail
    again, and exit with the status a shell gives a command SIGPIPE stopped.
    """
    try:
        status = _main(argv)
        sys.stdout.flush()  # the last buffered lines fail here, inside the handler, not in the interpreter's exit
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE_STATUS
    return status


def _silence_stdout() -> None:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a stream without a descriptor (pytest's capsys)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    if hasattr(args, "max_trace_bytes") and args.max_trace_bytes is None:  # import and show read files
        env = os.environ.get(MAX_TRACE_BYTES_ENV, "").strip()
        try:
            args.max_trace_bytes = _positive_int(env) if env else DEFAULT_MAX_TRACE_BYTES
        except argparse.ArgumentTypeError as exc:
            parser.error(f"{MAX_TRACE_BYTES_ENV}={_clip(env, 40)!r}: {exc}")
    return handler(args)


def _positive_int(text: str) -> int:
    """A byte count: digits with optional ``_`` (``50_000_000``), more than zero."""
    number = whole_number(text)
    if number is None or not 0 < number < 10**18:
        raise argparse.ArgumentTypeError(f"expected a positive number of bytes, got {_clip(text, 40)!r}")
    return number


def _parser() -> argparse.ArgumentParser:
    formats = "\n".join(f"  - {f}" for f in KNOWN_FORMATS)
    parser = argparse.ArgumentParser(
        prog="llmtrace",
        description="Convert exported traces into golden files for pytest-llmtrace, and show trace files.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    imp = commands.add_parser(
        "import",
        help="convert exports (OTLP, Phoenix) into one golden OTLP JSON file per trace",
        description="Convert each SRC into one spec OTLP JSON golden file per trace, named from the question\n"
        "(see --question) and the trace id so that importing the same export again gives the same files.\n\n"
        "A bad SRC is one error line and the others are still converted (exit status 1). Files are\n"
        "written atomically, never through a symbolic link, and an existing file with other content\n"
        "is kept unless --force. Credentials (URL passwords, API keys, Authorization headers) are\n"
        "redacted unless --no-redact.",
        epilog=f"Formats are recognised from the content, not the file name:\n{formats}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument("sources", nargs="+", metavar="SRC", type=Path, help="exported trace file")
    imp.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for the golden files")
    imp.add_argument("--force", action="store_true", help="overwrite existing files whose content differs")
    imp.add_argument(
        "--question",
        metavar="SOURCES",
        default=None,
        help="where the question is, for the file names: sources as for the llmtrace_question setting, first text "
        f"wins (default: ${QUESTION_ENV}, else {DEFAULT_SOURCES!r})",
    )
    _add_max_bytes(imp)
    redaction_flags.add_arguments(imp)
    imp.set_defaults(handler=_import)
    cap = commands.add_parser(
        "capture",
        help="read a Phoenix project's traces into redacted golden files",
        description="Read traces from a Phoenix project over its REST API and write each one as a redacted golden "
        "file named like `import` names them, with where it came from in its resource attributes. "
        "PHOENIX_API_KEY, when set, is sent as a bearer token and never printed or written.",
    )
    capture.add_arguments(cap)
    redaction_flags.add_arguments(cap)
    cap.set_defaults(handler=lambda args: capture.run(args, golden_file_name))
    show = commands.add_parser(
        "show",
        help="print the waterfall of trace files",
        description="Print each trace as an indented waterfall: golden files or any format `import` reads.",
    )
    show.add_argument("files", nargs="+", metavar="FILE", type=Path, help="trace file")
    _add_max_bytes(show)
    show.set_defaults(handler=_show)
    compare.add_gate_arguments(
        commands.add_parser(
            "gate",
            help="evaluate release gates over results.json files (e.g. a CI matrix's shards), merged",
            description="Merge the cases of every RESULTS file and evaluate each --gate once over all of them; "
            "output and exit status are the in-run gate's (0 met, 6 violated, 2 bad input).",
        )
    )
    compare.add_compare_arguments(
        commands.add_parser(
            "compare",
            help="list cases that regressed, improved or changed between two results.json, with McNemar's test",
            description="Pair the cases of two runs by id; McNemar's exact test says whether the difference in "
            "pass rate is more than chance.",
        )
    )
    equiv = commands.add_parser(
        "equiv",
        help="are two SQL queries equivalent? judged on a distilled test suite of databases from your seed",
        description="Derive databases from the fixtures' schema and seed (every one the schema allows), keep those "
        "that tell the gold query from its near misses, and compare the two queries' rows on each. Prints "
        "'equivalent (N databases)' or 'different' with the smallest database that tells them apart. Exit "
        "status: 0 all equivalent, 1 any different or failing, 2 usage error.",
    )
    equiv_command.add_arguments(equiv)
    equiv.set_defaults(handler=lambda args: equiv_command.run(args, _postgres_server))
    return parser


@contextmanager
def _postgres_server(url: str | None) -> Iterator[str]:
    """``llmtrace equiv``'s server: the one given, else an embedded one of its own, stopped at the end."""
    if url is not None:
        yield url
        return
    from pytest_llmtrace.services.postgres import EmbeddedPostgres

    with EmbeddedPostgres() as endpoint:
        yield endpoint.url


def _add_max_bytes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-trace-bytes",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"refuse files larger than N bytes (default: ${MAX_TRACE_BYTES_ENV}, else {DEFAULT_MAX_TRACE_BYTES:,})",
    )


def _import(args: argparse.Namespace) -> int:
    try:
        redactor = redaction_flags.from_args(args)
    except redaction_flags.RedactionError as exc:
        _error(str(exc))
        return 2
    where, text = (
        ("--question", args.question) if args.question is not None else (QUESTION_ENV, os.environ.get(QUESTION_ENV))
    )
    try:
        sources = parse_sources(text) if text and text.strip() else parse_sources(DEFAULT_SOURCES)
    except QuestionSourceError as exc:
        _error(f"{where}: {exc}")
        return 2
    return import_sources(
        args.sources, args.out, force=args.force, max_bytes=args.max_trace_bytes, redactor=redactor, question=sources
    )


def import_sources(
    sources: Sequence[Path],
    out: Path,
    *,
    force: bool = False,
    max_bytes: int = DEFAULT_MAX_TRACE_BYTES,
    redactor: redact.Redactor | None = None,
    question: Sequence[QuestionSource] | str = DEFAULT_SOURCES,
) -> int:
    """``llmtrace import``: every good source is converted, every bad one is one ``error:`` line; 1 if any failed.

    File names come from the question, found by the ``question`` sources (see ``golden_file_name``).

    With a ``redactor`` (the default from the command line) personal data and credentials are replaced before the
    file name is made and before anything is written. Files are written atomically (a temporary file in the target
    directory, then ``os.replace``), never through a symbolic link, and an existing file with other content is kept
    unless ``force``.
    """
    status = 0
    written: dict[Path, tuple[str, Path]] = {}  # this run's files, so two sources cannot overwrite each other
    traces_done = spans_done = unchanged = 0
    for source in sources:
        imported = _load(source, max_bytes)
        if imported is None:
            status = 1
            continue
        counts = f"{len(imported.traces)} traces ({imported.span_count} spans)"
        print(f"{one_line(source)}: {counts}, read as {imported.format}")
        for trace in imported.traces:
            if redactor is not None:  # before the name: the slug comes from the question
                trace = redactor.trace(trace)
            target = out / golden_file_name(trace, question)
            text = dumps(trace)
            if target in written and written[target][0] != text:
                _error(
                    f"{target}: trace {trace.trace_ids[0]} from {source} differs from the one just written from "
                    f"{written[target][1]}; import them into different directories"
                )
                status = 1
                continue
            try:
                outcome = write_golden(target, text, force=force or target in written)
            except LLMTraceError as exc:
                _error(str(exc))
                status = 1
                continue
            if outcome == "unchanged":
                unchanged += 1
                print(f"  {target} unchanged")
            else:
                traces_done += 1
                spans_done += len(trace)
                sql_note = "; no SQL span: the SQL is the model's answer" if _sql_is_answer(trace) else ""
                print(f"  {target} ({len(trace)} spans{sql_note})")
            written[target] = (text, source)
    if redactor is not None:
        print(redactor.summary())
    summary = f"wrote {traces_done} traces ({spans_done} spans) to {out}"
    if unchanged:
        summary += f"; {unchanged} unchanged"
    print(summary)
    return status


def _sql_is_answer(trace: Trace) -> bool:
    """No span ran SQL (Langfuse's default export keeps only spans with GenAI attributes), but a model answered:
    the golden SQL is the model's answer (``checks.runner.sql_of``), which ``import`` says per file."""
    return not trace.sql_statements and bool(trace.llm_calls)


def _show(args: argparse.Namespace) -> int:
    status = 0
    first = True
    for path in args.files:
        imported = _load(path, args.max_trace_bytes)
        if imported is None:
            status = 1
            continue
        for trace in imported.traces:
            if not first:
                print()
            first = False
            if len(args.files) > 1 or len(imported.traces) > 1:
                print(f"== {one_line(path)}")
            print(escape_controls(trace))  # span names and attributes come from the file: no terminal escapes
    return status


def _load(path: Path, max_bytes: int) -> Imported | None:
    """Import one file; errors and warnings are printed, never raised, so one bad file does not stop the rest."""
    try:
        with _printed_warnings(sys.stderr):
            return import_file(path, max_bytes=max_bytes)
    except LLMTraceError as exc:
        _error(str(exc))
    except ImportError as exc:  # a parquet file without pyarrow: the message carries the install hint
        _error(str(exc))
    except Exception as exc:
        # Last resort, so that one file cannot stop the others being converted. The loaders turn every malformed
        # input they know into a TraceFormatError (tests/unit/test_fuzz_loaders.py feeds them thousands of hostile
        # documents and fails on this message), so reaching this line is a bug in llmtrace, reported as one.
        _error(f"{path}: at $: {INTERNAL_ERROR} ({type(exc).__name__}: {first_line(exc)}); please report it")
    return None


@contextmanager
def _printed_warnings(stream: TextIO) -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TraceFormatWarning)
        try:
            yield
        finally:
            for warning in caught:
                if issubclass(warning.category, TraceFormatWarning):
                    print(f"warning: {one_line(str(warning.message))}", file=stream)
                else:
                    warnings.warn_explicit(
                        warning.message, warning.category, warning.filename, warning.lineno, source=warning.source
                    )


def _error(message: str) -> None:
    """One line per error, whatever the file or its content put into the message."""
    print("error: " + one_line(message), file=sys.stderr)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
