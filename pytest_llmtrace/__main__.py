"""``python -m pytest_llmtrace`` runs the ``llmtrace`` command, for environments without the console script."""

from __future__ import annotations

from pytest_llmtrace.cli import main

raise SystemExit(main())
