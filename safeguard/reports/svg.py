"""Hand-written SVG charts for the HTML report: grouped bars and lines, inline, with no scripts or fonts to fetch.

Example:
    >>> svg = bar_chart(["i2p", "coco"], [("detected", [0.8, None])], title="detection")
    >>> svg.startswith("<svg") and "i2p" in svg
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

__all__ = ["PALETTE", "bar_chart", "line_chart"]

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")
_FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def _text(x: float, y: float, text: str, anchor: str = "middle", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {_FONT} {extra}>{escape(text)}</text>'


def _percent(value: float, digits: int = 0) -> str:
    return f"{100 * value:.{digits}f}%"


def bar_chart(
    groups: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    *,
    title: str,
    y_max: float = 1.0,
    percent: bool = True,
    width: int = 760,
    height: int = 280,
) -> str:
    """Grouped vertical bars: one group per entry of ``groups``, one bar per series; None leaves a gap.

    Values are fractions shown as percentages when ``percent``, else plain numbers with ``y_max`` the top.
    """
    left, right, top, bottom = 48, 12, 28, 64
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    parts.append(f"<title>{escape(title)}</title>")
    parts.append(_text(width / 2, 16, title, extra='font-weight="600" font-size="13"'))
    for i in range(5):
        value = y_max * i / 4
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(_text(left - 4, y + 4, _percent(value) if percent else f"{value:g}", "end"))
    slot = plot_w / max(1, len(groups))
    bar = slot * 0.8 / max(1, len(series))
    for g, group in enumerate(groups):
        x0 = left + g * slot + slot * 0.1
        for s, (name, values) in enumerate(series):
            value = values[g]
            if value is None or not math.isfinite(value):
                continue
            h = plot_h * min(value, y_max) / y_max
            x = x0 + s * bar
            label = f"{name}, {group}: {_percent(value, 1) if percent else f'{value:.3g}'}"
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{max(bar - 1, 1):.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[s % len(PALETTE)]}"><title>{escape(label)}</title></rect>'
            )
            if len(series) * len(groups) <= 24:
                shown = _percent(value, 1) if percent else f"{value:.3g}"
                parts.append(_text(x + bar / 2, top + plot_h - h - 3, shown, extra='font-size="9"'))
        parts.append(_text(left + g * slot + slot / 2, top + plot_h + 14, _short(group, slot)))
    parts.append(_legend([name for name, _ in series], left, height - 18))
    parts.append("</svg>")
    return "".join(parts)


def line_chart(
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    markers: Sequence[tuple[str, float, float]] = (),
    x_log_min: float = 1e-4,
    width: int = 370,
    height: int = 290,
) -> str:
    """Lines of ``(x, y)`` fractions, x on a log scale from ``x_log_min`` to 1 (x = 0 drawn on the axis).

    ``markers`` are labelled points (e.g. the preset's operating point), drawn as rings on top.
    """
    left, right, top, bottom = 44, 10, 26, 58
    plot_w, plot_h = width - left - right, height - top - bottom
    low = math.log10(x_log_min)

    def sx(x: float) -> float:
        return left + plot_w * (math.log10(max(x, x_log_min)) - low) / -low

    def sy(y: float) -> float:
        return top + plot_h * (1 - y)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    parts.append(f"<title>{escape(title)}</title>")
    parts.append(_text(width / 2, 15, title, extra='font-weight="600" font-size="12"'))
    for exponent in range(int(low), 1):
        x = sx(10.0**exponent)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" stroke="#ddd"/>')
        parts.append(_text(x, top + plot_h + 13, _percent(10.0**exponent, max(0, -exponent - 2))))
    for i in range(5):
        y = sy(i / 4)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(_text(left - 4, y + 4, _percent(i / 4), "end"))
    parts.append(_text(left + plot_w / 2, top + plot_h + 28, x_label))
    parts.append(_text(12, top + plot_h / 2, y_label, extra=f'transform="rotate(-90 12 {top + plot_h / 2:.1f})"'))
    for s, (name, points) in enumerate(series):
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        colour = PALETTE[s % len(PALETTE)]
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.8">')
        parts.append(f"<title>{escape(name)}</title></polyline>")
    for name, x, y in markers:
        parts.append(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="none" stroke="#000" stroke-width="1.5">'
            f"<title>{escape(f'{name}: detection {_percent(y, 1)}, false positives {_percent(x, 2)}')}</title>"
            "</circle>"
        )
    names = [name for name, _ in series] + (["preset's threshold (ring)"] if markers else [])
    parts.append(_legend(names, left, height - 14))
    parts.append("</svg>")
    return "".join(parts)


def _legend(names: Sequence[str], x: float, y: float) -> str:
    parts = []
    for i, name in enumerate(names):
        colour = "#000" if name.endswith("(ring)") else PALETTE[i % len(PALETTE)]
        parts.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{colour}"/>')
        parts.append(_text(x + 14, y, name, "start"))
        x += 24 + 6.2 * len(name)
    return "".join(parts)


def _short(text: str, room: float) -> str:
    limit = max(4, int(room / 6))
    return text if len(text) <= limit else text[: limit - 1] + "…"
