"""SVG chart of the fold report's per-BatchNorm error, log scale, in network order, with reference lines.

Each BatchNorm is one mark (`<circle class="bn-mark">`, exactly one per fold-report entry) at height
log10(max_error) on an axis spanning whole decades from the smallest to the largest figure shown. The
horizontal lines are the manifest's `atol` (the absolute part of the output tolerance, atol + rtol·max|u|)
and the end-to-end max |Δ| of the outputs. The worst layer is drawn in red and labelled. An entry whose
error is 0 or was not measured sits on the bottom axis as a hollow mark.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bnfold.service.ui.templates import escape, number

LEFT, RIGHT, TOP, PLOT_HEIGHT, LABEL_SPACE = 70, 170, 24, 220, 110
MIN_STEP, MIN_PLOT_WIDTH = 30, 640  # horizontal pixels per BatchNorm, at least; plot width, at least


@dataclass(frozen=True)
class LogAxis:
    """Maps a positive value to a y pixel: whole decades from 10^low to 10^high, top at 10^high."""

    low: int
    high: int

    @classmethod
    def spanning(cls, values: Sequence[float]) -> LogAxis:
        positive = [v for v in values if v > 0 and math.isfinite(v)] or [1e-7]
        low, high = math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)))
        return cls(low, high if high > low else low + 1)

    def y(self, value: float | None) -> float:
        if value is None or value <= 0:
            return TOP + PLOT_HEIGHT
        fraction = (self.high - math.log10(value)) / (self.high - self.low)
        return TOP + PLOT_HEIGHT * min(1.0, max(0.0, fraction))


def error_chart(entries: Sequence[Mapping[str, Any]], atol: float, end_to_end: float | None) -> str:
    """The chart as an inline <svg> element."""
    errors = [entry.get("max_error") for entry in entries]
    axis = LogAxis.spanning([e for e in errors if e is not None] + [atol] + ([end_to_end] if end_to_end else []))
    step = max(MIN_STEP, MIN_PLOT_WIDTH / max(1, len(entries)))
    width = round(LEFT + step * max(1, len(entries)) + RIGHT)
    height = TOP + PLOT_HEIGHT + LABEL_SPACE
    worst = _worst_index(errors)
    parts = [
        f'<svg class="error-chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'role="img" aria-label="max error per BatchNorm, log scale">',
        *_grid(axis, width),
        _reference_line(axis, atol, width, "tolerance-line", f"atol {atol:.0e}"),
    ]
    if end_to_end:
        parts.append(_reference_line(axis, end_to_end, width, "output-line", f"outputs {end_to_end:.1e}"))
    parts += [_mark(LEFT + step * (index + 0.5), entry, axis, index == worst) for index, entry in enumerate(entries)]
    parts.append("</svg>")
    return "\n".join(parts)


def _worst_index(errors: Sequence[float | None]) -> int | None:
    """The first (in network order) of the largest measured errors."""
    measured = [i for i, e in enumerate(errors) if e is not None and e > 0]
    return max(measured, key=lambda i: errors[i] or 0.0) if measured else None


def _grid(axis: LogAxis, width: int) -> list[str]:
    lines = []
    for exponent in range(axis.low, axis.high + 1):
        y = axis.y(10.0**exponent)
        lines.append(f'<line class="grid" x1="{LEFT}" x2="{width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        lines.append(f'<text class="tick" x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">1e{exponent}</text>')
    lines.append(
        f'<text class="axis-title" x="14" y="{TOP + PLOT_HEIGHT / 2:.0f}" '
        f'transform="rotate(-90 14 {TOP + PLOT_HEIGHT / 2:.0f})" text-anchor="middle">max |Δ| (log)</text>'
    )
    return lines


def _reference_line(axis: LogAxis, value: float, width: int, css_class: str, label: str) -> str:
    y = axis.y(value)
    return (
        f'<line class="{css_class}" x1="{LEFT}" x2="{width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
        f'<text class="{css_class}-label" x="{width - RIGHT + 6}" y="{y + 4:.1f}">{escape(label)}</text>'
    )


def _mark(x: float, entry: Mapping[str, Any], axis: LogAxis, worst: bool) -> str:
    error = entry.get("max_error")
    y, bottom = axis.y(error), TOP + PLOT_HEIGHT
    kind = "worst" if worst else "measured" if error is not None and error > 0 else "unmeasured"
    action = escape(entry.get("action"))
    name = escape(entry.get("bn"))
    title = f"{name}: {action}, max |Δ| {number(error)}"
    label = f'<text class="worst-label" x="{x:.1f}" y="{y - 10:.1f}" text-anchor="middle">{number(error)}</text>'
    data_error = "" if error is None else repr(float(error))
    short = name if len(name) <= 22 else name[:21] + "…"
    return (
        f'<line class="stem" x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{y:.1f}"/>'
        f'<circle class="bn-mark {kind} action-{action}" data-bn="{name}" data-error="{data_error}" '
        f'cx="{x:.1f}" cy="{y:.1f}" r="5"><title>{title}</title></circle>'
        + (label if worst else "")
        + f'<text class="bn-label" x="{x:.1f}" y="{bottom + 14}" '
        f'transform="rotate(40 {x:.1f} {bottom + 14})">{short}</text>'
    )
