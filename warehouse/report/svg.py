"""Static SVG charts for the report: no JavaScript, no fonts or files to fetch, a few KB each.

Each function returns one ``<svg class="plot">`` element sized in CSS pixels. Bars and points
carry a ``<title>`` child, so hovering shows the exact number. Colours are the Okabe-Ito
palette (distinguishable with the common colour-vision deficiencies).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000", "#999999")
KIND_COLOURS = {"in": "#4d4d4d", "drop": "#D55E00", "quarantine": "#E69F00", "kept": "#009E73",
                "released": "#0072B2"}
FONT = 'font-family="system-ui,-apple-system,Segoe UI,Roboto,sans-serif"'


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def fmt(v: float | int | None) -> str:
    """A compact human number: 1,234 / 12.3k / 4.5M / 0.0312."""
    if v is None:
        return "–"
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 1:
        n = int(v)
        if abs(n) >= 1_000_000:
            return f"{n / 1e6:.1f}M"
        if abs(n) >= 100_000:
            return f"{n / 1e3:.0f}k"
        return f"{n:,}"
    x = float(v)
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.3g}"
    return f"{x:.2g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (about ``n`` of them)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    out, t = [], start
    while t <= hi + step * 1e-9:
        out.append(round(t, 12))
        t += step
    return out


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}" {FONT} font-size="11">'
            f'<title>{escape(label)}</title>{"".join(body)}</svg>')


def _text(x: float, y: float, s: str, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{escape(s)}</text>'


@dataclass
class Step:
    """One row of a waterfall: ``kind`` is in | drop | quarantine | kept | released."""

    label: str
    rows: int
    kind: str


def waterfall(steps: list[Step], title: str, width: int = 400) -> str:
    """Horizontal waterfall: the input total, each drop as a floating bar taken off what remains,
    then kept and released (released can exceed kept: a mixture repeats documents)."""
    row_h, left, right, top = 18, 140, 60, 8
    height = top + row_h * len(steps) + 24
    total = max([s.rows for s in steps] + [1])
    plot_w = width - left - right

    def x(v: float) -> float:
        return left + plot_w * v / total

    body: list[str] = []
    remaining = steps[0].rows if steps else 0
    for i, s in enumerate(steps):
        y = top + i * row_h
        if s.kind in ("drop", "quarantine"):
            x0, x1 = x(remaining - s.rows), x(remaining)
            remaining -= s.rows
            label = f"−{s.rows:,}" if s.rows else "0"
        else:
            x0, x1 = x(0), x(s.rows)
            label = f"{s.rows:,}"
        c = KIND_COLOURS.get(s.kind, "#777")
        w = max(x1 - x0, 0.8 if s.rows else 0)
        body.append(_text(left - 6, y + 12.5, s.label[:24], "end"))
        body.append(f'<rect x="{x0:.1f}" y="{y + 2}" width="{w:.1f}" height="{row_h - 4}" fill="{c}">'
                    f'<title>{escape(s.label)}: {s.rows:,} rows</title></rect>')
        body.append(_text(x0 + w + 4, y + 12.5, label, extra=' fill="#333"'))
    for t in nice_ticks(0, total, 4):
        xt = x(t)
        body.append(f'<line x1="{xt:.1f}" x2="{xt:.1f}" y1="{top}" y2="{height - 20}" stroke="#ddd"/>')
        body.append(_text(xt, height - 6, fmt(t), "middle", ' fill="#666"'))
    return _svg(width, height, body, title)


@dataclass
class Series:
    label: str
    values: list[float]  # one per bin / category
    colour: str


def step_histogram(edges: list[float], series: list[Series], title: str, x_label: str,
                   marks: Sequence[tuple[float, str]] = (), log_x: bool = False, width: int = 400,
                   height: int = 180) -> str:
    """Overlaid step histograms on shared bins (``edges`` has one more entry than each series'
    values, in data units; with ``log_x`` they are log10 values). ``marks``: vertical lines
    (value in data units, label), e.g. the selection's thresholds."""
    left, right, top, bottom = 46, 12, 10, 34
    pw, ph = width - left - right, height - top - bottom
    lo, hi = edges[0], edges[-1]
    span = (hi - lo) or 1.0
    ymax = max([max(s.values) for s in series if s.values] + [1e-12])

    def x(v: float) -> float:
        return left + pw * (v - lo) / span

    def y(v: float) -> float:
        return top + ph * (1 - v / ymax)

    body = [f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#e5e5e5"/>']
    for t in nice_ticks(0, ymax, 3):
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#eee"/>')
        body.append(_text(left - 4, y(t) + 3.5, f"{t:.0%}" if ymax <= 1 else fmt(t), "end", ' fill="#666"'))
    ticks = [t for t in range(math.ceil(lo), math.floor(hi) + 1)] if log_x else nice_ticks(lo, hi, 5)
    for t in ticks:
        label = fmt(10 ** t) if log_x else fmt(t)
        body.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#999"/>')
        body.append(_text(x(t), top + ph + 15, label, "middle", ' fill="#666"'))
    body.append(_text(left + pw / 2, height - 4, x_label + (" (log scale)" if log_x else ""), "middle", ' fill="#444"'))
    for s in series:
        pts = [f"{x(edges[0]):.1f},{y(0):.1f}"]
        for i, v in enumerate(s.values):
            pts.append(f"{x(edges[i]):.1f},{y(v):.1f}")
            pts.append(f"{x(edges[i + 1]):.1f},{y(v):.1f}")
        pts.append(f"{x(edges[-1]):.1f},{y(0):.1f}")
        body.append(f'<polyline points="{" ".join(pts)}" fill="{s.colour}" fill-opacity="0.12" stroke="{s.colour}" '
                    f'stroke-width="1.5"><title>{escape(s.label)}</title></polyline>')
    for v, label in marks:
        xv = math.log10(v) if log_x and v > 0 else v
        if lo <= xv <= hi:
            body.append(f'<line class="threshold" x1="{x(xv):.1f}" x2="{x(xv):.1f}" y1="{top}" y2="{top + ph}" '
                        f'stroke="#C00" stroke-width="1.5" stroke-dasharray="4 3"><title>{escape(label)}</title></line>')
            body.append(_text(min(x(xv) + 3, left + pw - 2), top + 11, label,
                              "start" if x(xv) < left + pw * 0.7 else "end", ' fill="#C00"'))
    return _svg(width, height, body, title)


def grouped_bars(categories: list[str], series: list[Series], title: str, value_fmt: str = "pct",
                 width: int = 560) -> str:
    """Horizontal bars, one group per category and one bar per series (e.g. planned vs released
    share per source). ``value_fmt``: ``pct`` (values are fractions) or ``num``."""
    bar_h, gap, left, right, top = 11, 8, 130, 60, 6
    group_h = bar_h * len(series) + gap
    legend_h = 18
    height = top + group_h * len(categories) + legend_h + 18
    vmax = max([v for s in series for v in s.values] + [1e-12])
    pw = width - left - right

    def x(v: float) -> float:
        return left + pw * v / vmax

    def label(v: float) -> str:
        return f"{v:.1%}" if value_fmt == "pct" else fmt(v)

    body: list[str] = []
    for ci, cat in enumerate(categories):
        y0 = top + ci * group_h
        body.append(_text(left - 6, y0 + group_h / 2 + 1, cat[:22], "end"))
        for si, s in enumerate(series):
            v = s.values[ci]
            y = y0 + si * bar_h
            body.append(f'<rect x="{left}" y="{y:.1f}" width="{max(x(v) - left, 0.5 if v else 0):.1f}" '
                        f'height="{bar_h - 1}" fill="{s.colour}"><title>{escape(cat)} · {escape(s.label)}: '
                        f'{label(v)}</title></rect>')
            body.append(_text(x(v) + 3, y + bar_h - 2.5, label(v), extra=' fill="#333" font-size="10"'))
    ly = height - legend_h
    lx = left
    for s in series:
        body.append(f'<rect x="{lx}" y="{ly}" width="10" height="10" fill="{s.colour}"/>')
        body.append(_text(lx + 14, ly + 9, s.label))
        lx += 24 + 7 * len(s.label)
    return _svg(width, height, body, title)


def count_bars(labels: list[str], values: list[int], title: str, x_label: str, colour_: str = PALETTE[0],
               width: int = 420, height: int = 170) -> str:
    """Vertical bars over labelled bins (e.g. duplicate-cluster sizes), counts on a log-free axis."""
    left, right, top, bottom = 40, 8, 10, 34
    pw, ph = width - left - right, height - top - bottom
    vmax = max(values + [1])
    n = max(len(values), 1)
    bw = pw / n
    body = [f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#e5e5e5"/>']
    for t in nice_ticks(0, vmax, 3):
        yt = top + ph * (1 - t / vmax)
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{yt:.1f}" y2="{yt:.1f}" stroke="#eee"/>')
        body.append(_text(left - 4, yt + 3.5, fmt(t), "end", ' fill="#666"'))
    for i, (lab, v) in enumerate(zip(labels, values)):
        h = ph * v / vmax
        xb = left + i * bw
        body.append(f'<rect x="{xb + 1:.1f}" y="{top + ph - h:.1f}" width="{max(bw - 2, 1):.1f}" height="{h:.1f}" '
                    f'fill="{colour_}"><title>{escape(lab)}: {v:,}</title></rect>')
        body.append(_text(xb + bw / 2, top + ph + 13, lab, "middle", ' fill="#666" font-size="10"'))
    body.append(_text(left + pw / 2, height - 4, x_label, "middle", ' fill="#444"'))
    return _svg(width, height, body, title)


def line_chart(xs: list[float], ys: list[float | None], title: str, x_label: str, y_label: str,
               marks: Sequence[tuple[float, str]] = (), width: int = 560, height: int = 200) -> str:
    """A line of ``ys`` over ``xs`` (gaps where a value is None); ``marks`` are vertical lines
    (e.g. where each phase of a release starts)."""
    left, right, top, bottom = 52, 12, 12, 34
    pw, ph = width - left - right, height - top - bottom
    vals = [v for v in ys if v is not None]
    lo_y, hi_y = (min(vals), max(vals)) if vals else (0.0, 1.0)
    if hi_y <= lo_y:
        lo_y, hi_y = lo_y - 0.5, hi_y + 0.5
    lo_x, hi_x = (xs[0], xs[-1]) if xs else (0.0, 1.0)
    span_x = (hi_x - lo_x) or 1.0

    def x(v: float) -> float:
        return left + pw * (v - lo_x) / span_x

    def y(v: float) -> float:
        return top + ph * (1 - (v - lo_y) / (hi_y - lo_y))

    body = [f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#e5e5e5"/>']
    for t in nice_ticks(lo_y, hi_y, 4):
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#eee"/>')
        body.append(_text(left - 4, y(t) + 3.5, fmt(t), "end", ' fill="#666"'))
    for t in nice_ticks(lo_x, hi_x, 5):
        body.append(_text(x(t), top + ph + 14, fmt(t), "middle", ' fill="#666"'))
    body.append(_text(left + pw / 2, height - 4, x_label, "middle", ' fill="#444"'))
    body.append(_text(12, top + ph / 2, y_label[:40], "middle",
                      f' fill="#444" transform="rotate(-90 12 {top + ph / 2:.1f})"'))
    for v, label in marks:
        body.append(f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{top}" y2="{top + ph}" stroke="#C00" '
                    f'stroke-dasharray="4 3"><title>{escape(label)}</title></line>')
        body.append(_text(x(v) + 3, top + 11, label, extra=' fill="#C00"'))
    seg: list[str] = []
    segments: list[list[str]] = []
    for xv, yv in zip(xs, ys):
        if yv is None:
            if seg:
                segments.append(seg)
            seg = []
            continue
        seg.append(f"{x(xv):.1f},{y(yv):.1f}")
    if seg:
        segments.append(seg)
    for s in segments:
        body.append(f'<polyline points="{" ".join(s)}" fill="none" stroke="{PALETTE[0]}" stroke-width="1.8"/>')
    return _svg(width, height, body, title)
