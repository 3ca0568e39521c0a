"""Print one of the README's commands, so CI runs what a new user copies and fails the day the README breaks.

A command is the fenced block right after a ``<!-- ci:NAME -->`` marker in README.md. The marker may carry
``exit=N``, the exit status the README promises for that command (``--exit`` prints it; 0 when not given).
Standard library only: CI calls this before any virtual environment exists.

    python3 .ci/readme_command.py setup        # the command, one line
    python3 .ci/readme_command.py main-job --exit
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"^<!-- ci:(?P<name>[\w-]+)(?: exit=(?P<exit>\d+))? -->$")


def commands(text: str) -> dict[str, tuple[str, int]]:
    """Each marked block's command and promised exit status, by marker name."""
    found: dict[str, tuple[str, int]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = MARKER.match(line.strip())
        if match is None:
            continue
        name = match["name"]
        if name in found:
            raise SystemExit(f"README.md:{i + 1}: a second <!-- ci:{name} --> marker")
        if i + 1 >= len(lines) or not lines[i + 1].startswith("```"):
            raise SystemExit(f"README.md:{i + 1}: <!-- ci:{name} --> must be followed by a fenced code block")
        body: list[str] = []
        for inner in lines[i + 2 :]:
            if inner.startswith("```"):
                break
            body.append(inner)
        else:
            raise SystemExit(f"README.md:{i + 1}: the code block after <!-- ci:{name} --> is not closed")
        command = " ".join(part.strip() for part in body if part.strip())
        if not command:
            raise SystemExit(f"README.md:{i + 1}: the code block after <!-- ci:{name} --> is empty")
        found[name] = (command, int(match["exit"] or 0))
    return found


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    name, want_exit = argv[0], "--exit" in argv[1:]
    found = commands(README.read_text(encoding="utf-8"))
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        print(f"README.md has no <!-- ci:{name} --> marker (it has: {known})", file=sys.stderr)
        return 2
    command, exit_status = found[name]
    print(exit_status if want_exit else command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
