"""The docs' benchmark table, generated from ``benchmarks/run.py --json`` output, so no figure is typed by hand.

    python benchmarks/table.py benchmarks/results.json                          # the table, as Markdown
    python benchmarks/table.py benchmarks/results.json --into docs/benchmarks.md

``--into`` replaces what lies between the page's ``<!-- benchmarks:table -->`` and ``<!-- /benchmarks:table -->``
markers and leaves the prose around them alone. A figure without its date and machine misleads, so both head the
table. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BEGIN = "<!-- benchmarks:table -->"
END = "<!-- /benchmarks:table -->"


def _figure(value: float) -> str:
    return f"{value:.4g}"


def machine_line(box: Mapping[str, Any] | str) -> str:
    """One line for the machine; an older results file names it in a string, which is shown as it is."""
    if isinstance(box, str):
        return box
    load = box.get("load")
    load_text = ", ".join(f"{v:.1f}" for v in load) if isinstance(load, list) else "unknown"
    return (
        f"{box.get('cores', '?')} cores ({box.get('cpu_model', 'unknown CPU')}, {box.get('arch', '?')}), "
        f"Python {box.get('python', '?')}, load average {load_text} at the start"
    )


def markdown(document: Mapping[str, Any], note: str = "") -> str:
    """The table with its date, command, machine and, when given, a note on the conditions (a shared machine)."""
    rows: Sequence[Mapping[str, Any]] = document.get("rows", [])
    note = note or str(document.get("note", ""))
    lines = [
        f"Measured {document['date']} with `{document.get('command', 'python benchmarks/run.py')}`"
        + (f" ({document['duration_s']:.0f} s)" if "duration_s" in document else "")
        + f" on {machine_line(document['machine'])}."
        + (f" {note}" if note else ""),
        "",
        "| name | plugin | baseline | ratio | target | met | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = (
            row["name"],
            _figure(row["plugin_median_s"]),
            _figure(row["baseline_median_s"]),
            f"{row['ratio']:.2f}",
            row["target"],
            "yes" if row["met"] else "no",
            row.get("note", ""),
        )
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    if not rows:
        lines.append("| (no rows) | | | | | | |")
    return "\n".join(lines) + "\n"


def replace_between(page: str, table: str) -> str:
    start, end = page.find(BEGIN), page.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"the page has no {BEGIN} ... {END} markers to put the table between")
    return page[: start + len(BEGIN)] + "\n\n" + table + "\n" + page[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a file written by benchmarks/run.py --json")
    parser.add_argument("--into", type=Path, help="a Markdown page whose marked region the table replaces")
    parser.add_argument("--note", default="", help="a sentence on the conditions, e.g. 'The machine was shared.'")
    args = parser.parse_args(argv)
    table = markdown(json.loads(args.results.read_text(encoding="utf-8")), args.note)
    if args.into is None:
        sys.stdout.write(table)
    else:
        args.into.write_text(replace_between(args.into.read_text(encoding="utf-8"), table), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
