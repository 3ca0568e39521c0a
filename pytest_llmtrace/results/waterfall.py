"""Golden and now as two SVG waterfalls on one time scale, for report.html.

Drawn from results.json's ``waterfall`` / ``golden_waterfall`` (``outcome.Waterfall``), never from trace files, so
a report made from merged shards or an old run looks the same. Both charts share the longer trace's scale: a bar
twice as long took twice as long, whichever chart it is in. Replayed time (virtual: the recording's duration
standing in for an instant answer) is drawn pale and dashed and labelled, so it is never read as measured.

Everything from a trace (span names, kinds) is escaped text; kinds become CSS classes only through a fixed table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from html import escape
from typing import Any

from pytest_llmtrace.results.baseline import figure
from pytest_llmtrace.results.case_record import SpanBarRecord, WaterfallRecord

KIND_COLOURS = {
    "LLM": "#7a5af8",
    "SQL": "#2e90fa",
    "CHAIN": "#98a2b3",
    "TOOL": "#f79009",
    "RETRIEVER": "#15b79e",
    "AGENT": "#ee46bc",
    "other": "#667085",
}
_WIDTH, _LABEL, _FIGURE = 960, 260, 190
_BAR = _WIDTH - _LABEL - _FIGURE
_HEAD, _ROW = 24, 18
_CHAR_PX = 6.7  # the label font's advance (11px monospace), to cut names to the label column
_INDENT_PX, _MAX_INDENT = 12, 10

CSS = (
    "svg.waterfall{display:block;max-width:100%;height:auto;background:#fff;border:1px solid #eaecf0;margin:4px 0}"
    "svg.waterfall text{font:11px ui-monospace,SFMono-Regular,Menlo,monospace;fill:#344054}"
    "svg.waterfall text.head{font-weight:600;fill:#101828}svg.waterfall text.err{fill:#b42318}"
    "svg.waterfall line{stroke:#eaecf0}svg.waterfall rect.replayed{fill-opacity:.35;stroke-dasharray:3 2}"
    "svg.waterfall rect.error{stroke:#b42318;stroke-width:2}"
    ".key{display:inline-block;width:10px;height:10px;margin:0 3px 0 10px;vertical-align:middle}"
    + "".join(
        f"svg.waterfall rect.k-{kind}{{fill:{colour};stroke:{colour}}}.key.k-{kind}{{background:{colour}}}"
        for kind, colour in KIND_COLOURS.items()
    )
)


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _number(value: Any) -> float:
    """A figure from results.json, or 0 for anything else: a hand-edited or foreign file must not break the page."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) and number > 0 else 0.0


def _total(data: Mapping[str, Any] | None) -> float:
    return _number(data.get("total_ms")) if isinstance(data, Mapping) else 0.0


def pair(golden: WaterfallRecord | None, now: WaterfallRecord | None) -> str:
    """The golden waterfall over the one now, on the scale of the longer; a missing trace says so instead."""
    if not isinstance(golden, Mapping) and not isinstance(now, Mapping):
        return ""
    scale = max(_total(golden), _total(now)) or 1.0
    charts = [
        _chart(title, data, scale) if isinstance(data, Mapping) else f"<p class='small muted'>{title}: no trace</p>"
        for title, data in (("golden", golden), ("now", now))
    ]
    legend = "".join(f"<span class='key k-{kind}'></span>{kind}" for kind in KIND_COLOURS)
    return (
        "<p class='small'>Waterfalls, golden over now, on one time scale. "
        f"{legend}; pale and dashed: replayed from the recording; red outline: error status.</p>" + "".join(charts)
    )


def _x(ms: float, scale: float) -> float:
    return round(_LABEL + min(ms, scale) / scale * _BAR, 1)


def _label(name: str, depth: int) -> tuple[float, str]:
    indent = min(depth, _MAX_INDENT) * _INDENT_PX
    room = max(4, int((_LABEL - 12 - indent) / _CHAR_PX))
    return 4 + indent, name if len(name) <= room else name[: room - 1] + "…"


def _bar(index: int, bar: SpanBarRecord, scale: float) -> str:
    y = _HEAD + index * _ROW
    name, kind = str(bar.get("name", "")), str(bar.get("kind", ""))
    start, duration, replayed = (
        _number(bar.get("start_ms")),
        _number(bar.get("duration_ms")),
        _number(bar.get("replayed_ms")),
    )
    depth = int(_number(bar.get("depth")))
    x = _x(start, scale)
    width = max(1.0, round(_x(start + duration, scale) - x, 1))
    classes = [f"k-{kind if kind in KIND_COLOURS else 'other'}"]
    if duration and replayed >= duration * 0.999:
        classes.append("replayed")
        shown = f"{figure(duration)} ms replayed"
    elif replayed:
        shown = f"{figure(duration)} ms, {figure(round(replayed, 1))} replayed"
    else:
        shown = f"{figure(duration)} ms"
    if bar.get("open"):
        shown = f">= {figure(duration)} ms, open"
    error = bool(bar.get("error"))
    if error:
        classes.append("error")
    label_x, label = _label(name, depth)
    tip = f"{name} ({kind}): {shown}, from {figure(start)} ms" + (", error status" if error else "")
    label_class = " class='err'" if error else ""
    return (
        f"<g><title>{_e(tip)}</title>"
        f"<text x='{label_x}' y='{y + 13}'{label_class}>{_e(label)}</text>"
        f"<rect class='{' '.join(classes)}' x='{x}' y='{y + 3}' width='{width}' height='12'></rect>"
        f"<text x='{_WIDTH - 4}' y='{y + 13}' text-anchor='end'>{_e(shown)}</text></g>"
    )


def _tick(fraction: float, scale: float, height: int) -> str:
    """A grid line at ``fraction`` of the scale, labelled in ms above the bars (the last one says the unit)."""
    x = _x(scale * fraction, scale)
    anchor = "start" if fraction == 0 else "end" if fraction == 1 else "middle"
    label = figure(round(scale * fraction, 1), "ms" if fraction == 1 else "")
    return (
        f"<line x1='{x}' y1='{_HEAD - 4}' x2='{x}' y2='{height}'></line>"
        f"<text x='{x}' y='{_HEAD - 8}' text-anchor='{anchor}'>{_e(label)}</text>"
    )


def _chart(title: str, data: WaterfallRecord, scale: float) -> str:
    listed = data.get("bars")
    bars = [b for b in listed if isinstance(b, Mapping)] if isinstance(listed, list) else []
    omitted = int(_number(data.get("omitted")))
    rows = len(bars) + (1 if omitted else 0)
    height = _HEAD + max(rows, 1) * _ROW + 4
    ticks = "".join(_tick(fraction, scale, height) for fraction in (0, 0.25, 0.5, 0.75, 1))
    body = "".join(_bar(i, bar, scale) for i, bar in enumerate(bars))
    if omitted:
        body += f"<text x='4' y='{_HEAD + len(bars) * _ROW + 13}'>... {omitted} more spans not drawn</text>"
    if not bars:
        body = f"<text x='4' y='{_HEAD + 13}'>no spans</text>"
    head = f"{title}: {figure(_total(data))} ms"
    return (
        f"<svg class='waterfall' data-trace='{_e(title)}' xmlns='http://www.w3.org/2000/svg' role='img' "
        f"aria-label='{_e(head)}' width='{_WIDTH}' height='{height}' viewBox='0 0 {_WIDTH} {height}'>"
        f"<text class='head' x='4' y='{_HEAD - 8}'>{_e(head)}</text>{ticks}{body}</svg>"
    )
