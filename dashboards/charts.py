"""Small static SVG charts, generated in Python so the report needs no chart library and no network.

Every chart function returns a :class:`Chart` (the SVG text and how many data marks it drew), or
``None`` when there is nothing to draw; the report then shows an empty-state message instead of a
blank chart. Each data mark (marker, bar, heatmap cell, polyline) carries ``class="pt"`` and a
``<title>`` tooltip, so a test can count the rendered marks against the figure's ``data-points``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Sequence

import pandas as pd

#: Tableau 10: distinguishable, print-friendly; a method keeps its colour across every chart.
PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
           "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]
DASHES = ["", "6 3", "2 3", "8 3 2 3"]
# Viridis at six stops (perceptually uniform, readable in grey scale).
_VIRIDIS = ["#440154", "#414487", "#2a788e", "#22a884", "#7ad151", "#fde725"]
FONT = "font-family='Helvetica, Arial, sans-serif'"


@dataclass(frozen=True)
class Chart:
    """An SVG chart and the number of data marks in it."""

    svg: str
    points: int


@dataclass(frozen=True)
class Stat:
    """Mean, spread (standard deviation over seeds, or None when unknown) and sample count."""

    mean: float
    std: float | None = None
    n: int = 1


@dataclass
class Series:
    """A named line or bar series: ``values`` maps an x value (number or category) to a Stat."""

    label: str
    color: str
    values: dict[object, Stat] = field(default_factory=dict)
    dash: str = ""


def color_map(names: Sequence[str]) -> dict[str, str]:
    """A stable colour per name, in the order given (repeats the palette past ten names)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(dict.fromkeys(names))}


def viridis(t: float) -> str:
    """The viridis colour at ``t`` in [0, 1] (linear between six stops)."""
    t = min(1.0, max(0.0, t if math.isfinite(t) else 0.0)) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    a, b = _rgb(_VIRIDIS[i]), _rgb(_VIRIDIS[i + 1])
    f = t - i
    return "#" + "".join(f"{round(x + (y - x) * f):02x}" for x, y in zip(a, b))


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return int(hex_color[1:3], 16), int(hex_color[3:5], 16), int(hex_color[5:7], 16)


def fmt(value: float, digits: int = 1) -> str:
    """A number for a label: fixed digits, integers without decimals, NaN as 'n/a'."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if float(value).is_integer() and abs(value) >= 1 and digits <= 1:
        return str(int(value))
    return f"{value:.{digits}f}"


def _fmt_tick(value: float) -> str:
    if abs(value) >= 1e4 or (0 < abs(value) < 1e-3):
        return f"{value:.0e}"
    return f"{value:g}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick positions covering [lo, hi] (1, 2, 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        lo, hi = lo - 1, hi + 1
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    ticks = [round(math.floor(lo / step) * step, 10)]
    while ticks[-1] < hi - 1e-9 * step:  # the last tick reaches hi: no mark above the axis
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


class _Scale:
    """Maps data values to pixels: linear, log10, or categorical (evenly spaced levels)."""

    def __init__(self, domain: Sequence[object], lo_px: float, hi_px: float, kind: str) -> None:
        self.kind, self.lo_px, self.hi_px = kind, lo_px, hi_px
        if kind == "cat":
            self.levels = list(dict.fromkeys(domain))
            return
        vals = [float(v) for v in domain]  # type: ignore[arg-type]
        if kind == "log":
            vals = [math.log10(v) for v in vals]
        self.lo, self.hi = min(vals), max(vals)
        if self.hi == self.lo:
            self.lo, self.hi = self.lo - 0.5, self.hi + 0.5

    def __call__(self, value: object) -> float:
        if self.kind == "cat":
            n = len(self.levels)
            i = self.levels.index(value)
            return self.lo_px + (self.hi_px - self.lo_px) * ((i + 0.5) / n)
        v = float(value)  # type: ignore[arg-type]
        if self.kind == "log":
            v = math.log10(v)
        return self.lo_px + (self.hi_px - self.lo_px) * (v - self.lo) / (self.hi - self.lo)


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width} {height}' width='{width}' "
            f"height='{height}' role='img' aria-label='{escape(label, quote=True)}' {FONT} font-size='12'>"
            + "".join(body) + "</svg>")


def _text(x: float, y: float, s: str, anchor: str = "middle", size: int = 12, extra: str = "") -> str:
    return (f"<text x='{x:.1f}' y='{y:.1f}' text-anchor='{anchor}' font-size='{size}' {extra}>"
            f"{escape(s)}</text>")


def _y_axis(ticks: list[float], y: _Scale, x0: float, x1: float, label: str, top: float, bottom: float) -> list[str]:
    out = []
    for t in ticks:
        py = y(t)
        out.append(f"<line x1='{x0}' x2='{x1}' y1='{py:.1f}' y2='{py:.1f}' stroke='#e3e3e3'/>")
        out.append(_text(x0 - 6, py + 4, _fmt_tick(t), "end", 11))
    out.append(f"<line x1='{x0}' x2='{x0}' y1='{top}' y2='{bottom}' stroke='#333'/>")
    mid = (top + bottom) / 2
    out.append(_text(16, mid, label, extra=f"transform='rotate(-90 16 {mid:.1f})'"))
    return out


def _legend(items: list[tuple[str, str, str, str]], x: float, y: float) -> list[str]:
    """items: (label, colour, dash, kind 'line'|'box')."""
    out = []
    for i, (label, color, dash, kind) in enumerate(items):
        py = y + i * 18
        if kind == "line":
            out.append(f"<line x1='{x}' x2='{x + 22}' y1='{py}' y2='{py}' stroke='{color}' stroke-width='2.5' "
                       f"stroke-dasharray='{dash}'/><circle cx='{x + 11}' cy='{py}' r='3.5' fill='{color}'/>")
        else:
            out.append(f"<rect x='{x + 4}' y='{py - 6}' width='14' height='12' fill='{color}'/>")
        out.append(_text(x + 28, py + 4, _short(label, 26), "start", 11, f"data-full='{escape(label, quote=True)}'"))
    return out


def _short(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _value_range(series: Sequence[Series]) -> tuple[float, float]:
    lo, hi = math.inf, -math.inf
    for s in series:
        for st in s.values.values():
            if math.isfinite(st.mean):
                spread = st.std if st.std is not None and math.isfinite(st.std) else 0.0
                lo, hi = min(lo, st.mean - spread), max(hi, st.mean + spread)
    return lo, hi


def _tooltip(series: str, x: object, st: Stat, unit: str) -> str:
    spread = f" ± {fmt(st.std, 2)}" if st.std is not None and math.isfinite(st.std) else ""
    return f"<title>{escape(series)} | {escape(str(x))}: {fmt(st.mean, 2)}{spread}{unit} (n={st.n})</title>"


def line_chart(series: Sequence[Series], *, x_label: str, y_label: str, x_kind: str = "auto",
               unit: str = "", width: int = 600, height: int = 340) -> Chart | None:
    """Mean per x with a ±std band and error bars per series; ``x_kind`` linear|log|cat|auto."""
    series = [s for s in series if any(math.isfinite(v.mean) for v in s.values.values())]
    if not series:
        return None
    xs = [x for s in series for x, v in s.values.items() if math.isfinite(v.mean)]
    if x_kind == "auto":
        numeric = all(isinstance(x, (int, float)) for x in xs)
        positive = numeric and min(xs) > 0  # type: ignore[operator]
        x_kind = ("log" if positive and max(xs) / min(xs) >= 10 else "linear") if numeric else "cat"  # type: ignore[operator]
    if x_kind == "log":
        x_label += " (log scale)"
    left, right, top, bottom = 64, width - 190, 14, height - 52
    x = _Scale(sorted(set(xs), key=_sort_key), left + 18, right - 18, x_kind)
    lo, hi = _value_range(series)
    pad = max((hi - lo) * 0.08, 0.5)
    # accuracies in % never need an axis beyond 0..100
    ticks = nice_ticks(max(lo - pad, 0.0) if lo >= 0 else lo - pad, min(hi + pad, 100.0) if hi <= 100 else hi + pad)
    y = _Scale([ticks[0], ticks[-1]], bottom, top, "linear")
    body = _y_axis(ticks, y, left, right, y_label, top, bottom)
    body.append(f"<line x1='{left}' x2='{right}' y1='{bottom}' y2='{bottom}' stroke='#333'/>")
    for xv in sorted(set(xs), key=_sort_key):
        px = x(xv)
        body.append(f"<line x1='{px:.1f}' x2='{px:.1f}' y1='{bottom}' y2='{bottom + 5}' stroke='#333'/>")
        body.append(_text(px, bottom + 18, _fmt_tick(xv) if isinstance(xv, (int, float)) else str(xv), size=11))
    body.append(_text((left + right) / 2, height - 10, x_label))
    points = 0
    for index, s in enumerate(series):
        # Dodge: series sharing an x value sit a few pixels apart so their error bars stay readable.
        shift = (index - (len(series) - 1) / 2) * 5.0
        x = _Scale(sorted(set(xs), key=_sort_key), left + 18 + shift, right - 18 + shift, x_kind)
        pts = sorted(((xv, st) for xv, st in s.values.items() if math.isfinite(st.mean)), key=lambda p: _sort_key(p[0]))
        band = [(x(xv), y(st.mean - st.std), y(st.mean + st.std)) for xv, st in pts
                if st.std is not None and math.isfinite(st.std)]
        if len(band) >= 2:
            poly = [f"{px:.1f},{hi_:.1f}" for px, _, hi_ in band] + [f"{px:.1f},{lo_:.1f}" for px, lo_, _ in reversed(band)]
            body.append(f"<polygon points='{' '.join(poly)}' fill='{s.color}' fill-opacity='0.13' stroke='none'/>")
        path = " ".join(f"{'M' if i == 0 else 'L'}{x(xv):.1f},{y(st.mean):.1f}" for i, (xv, st) in enumerate(pts))
        body.append(f"<path d='{path}' fill='none' stroke='{s.color}' stroke-width='2.2' stroke-dasharray='{s.dash}'/>")
        for xv, st in pts:
            px, py = x(xv), y(st.mean)
            if st.std is not None and math.isfinite(st.std) and st.std > 0:
                y0, y1 = y(st.mean - st.std), y(st.mean + st.std)
                body.append(f"<path d='M{px:.1f},{y0:.1f}V{y1:.1f}M{px - 4:.1f},{y0:.1f}h8M{px - 4:.1f},{y1:.1f}h8' "
                            f"stroke='{s.color}' stroke-width='1.3'/>")
            body.append(f"<circle class='pt' cx='{px:.1f}' cy='{py:.1f}' r='4' fill='{s.color}' stroke='#fff'>"
                        f"{_tooltip(s.label, xv, st, unit)}</circle>")
            points += 1
    body += _legend([(s.label, s.color, s.dash, "line") for s in series], right + 16, top + 10)
    return Chart(_svg(width, height, body, y_label + " vs " + x_label), points)


def _sort_key(v: object) -> tuple[int, float, str]:
    return (0, float(v), "") if isinstance(v, (int, float)) else (1, 0.0, str(v))


def bar_chart(categories: Sequence[str], series: Sequence[Series], *, x_label: str, y_label: str,
              unit: str = "", width: int = 600, height: int = 340, y_zero: bool = True) -> Chart | None:
    """Grouped bars (one group per category, one bar per series) with ±std error bars."""
    series = [s for s in series if any(math.isfinite(s.values[c].mean) for c in categories if c in s.values)]
    if not series or not categories:
        return None
    left, right, top, bottom = 64, width - 190, 14, height - 52
    lo, hi = _value_range(series)
    ticks = nice_ticks(0.0 if y_zero else lo, hi)
    y = _Scale([ticks[0], ticks[-1]], bottom, top, "linear")
    body = _y_axis(ticks, y, left, right, y_label, top, bottom)
    body.append(f"<line x1='{left}' x2='{right}' y1='{bottom}' y2='{bottom}' stroke='#333'/>")
    group_w = (right - left) / len(categories)
    bar_w = min(28.0, group_w * 0.8 / len(series))
    points = 0
    for ci, cat in enumerate(categories):
        cx = left + group_w * (ci + 0.5)
        body.append(_text(cx, bottom + 18, cat, size=11))
        for si, s in enumerate(series):
            st = s.values.get(cat)
            if st is None or not math.isfinite(st.mean):
                continue
            bx = cx - bar_w * len(series) / 2 + si * bar_w
            y0, y1 = y(max(ticks[0], 0.0) if y_zero else ticks[0]), y(st.mean)
            body.append(f"<rect class='pt' x='{bx + 1:.1f}' y='{min(y0, y1):.1f}' width='{bar_w - 2:.1f}' "
                        f"height='{max(abs(y0 - y1), 1):.1f}' fill='{s.color}'>{_tooltip(s.label, cat, st, unit)}</rect>")
            points += 1
            if st.std is not None and math.isfinite(st.std) and st.std > 0:
                mx = bx + bar_w / 2
                # Clipped to the axis: a spread below 0 % would draw into the labels.
                e0, e1 = y(max(st.mean - st.std, ticks[0])), y(min(st.mean + st.std, ticks[-1]))
                body.append(f"<path d='M{mx:.1f},{e0:.1f}V{e1:.1f}M{mx - 3:.1f},{e0:.1f}h6M{mx - 3:.1f},{e1:.1f}h6' "
                            f"stroke='#222' stroke-width='1.1'/>")
    body.append(_text((left + right) / 2, height - 10, x_label))
    body += _legend([(s.label, s.color, "", "box") for s in series], right + 16, top + 10)
    return Chart(_svg(width, height, body, y_label + " by " + x_label), points)


def heatmap(grid: Sequence[Sequence[Stat | None]], row_labels: Sequence[str], col_labels: Sequence[str], *,
            title: str, vmin: float, vmax: float, unit: str = "", row_title: str = "", col_title: str = "") -> Chart | None:
    """A grid of numbers coloured on a shared [vmin, vmax] viridis scale, the value in each cell."""
    cells = [(r, c, st) for r, row in enumerate(grid) for c, st in enumerate(row)
             if st is not None and math.isfinite(st.mean)]
    if not cells:
        return None
    size, left, top = 66, 84, 44
    width, height = left + size * len(col_labels) + 70, top + size * len(row_labels) + 40
    body = [_text(left + size * len(col_labels) / 2, 16, title, size=13, extra="font-weight='bold'")]
    for c, label in enumerate(col_labels):
        body.append(_text(left + size * (c + 0.5), top - 8, label, size=11))
    for r, label in enumerate(row_labels):
        body.append(_text(left - 8, top + size * (r + 0.5) + 4, label, "end", 11))
    span = (vmax - vmin) or 1.0
    for r, row in enumerate(grid):
        for c, st in enumerate(row):
            x, y = left + size * c, top + size * r
            if st is None or not math.isfinite(st.mean):
                body.append(f"<rect x='{x}' y='{y}' width='{size}' height='{size}' fill='#eee' stroke='#fff'/>")
                body.append(_text(x + size / 2, y + size / 2 + 4, "n/a", size=11, extra="fill='#888'"))
                continue
            t = (st.mean - vmin) / span
            ink = "#fff" if t < 0.6 else "#111"
            body.append(f"<rect class='pt' x='{x}' y='{y}' width='{size}' height='{size}' fill='{viridis(t)}' "
                        f"stroke='#fff'>{_tooltip(title, f'{row_labels[r]} x {col_labels[c]}', st, unit)}</rect>")
            body.append(_text(x + size / 2, y + size / 2 + (0 if st.std is not None else 5), fmt(st.mean, 1),
                              size=14, extra=f"fill='{ink}' font-weight='bold'"))
            if st.std is not None and math.isfinite(st.std):
                body.append(_text(x + size / 2, y + size / 2 + 16, "±" + fmt(st.std, 1), size=10, extra=f"fill='{ink}'"))
    gx, gh = left + size * len(col_labels) + 14, size * len(row_labels)
    body.append("<defs><linearGradient id='vg' x1='0' y1='1' x2='0' y2='0'>"
                + "".join(f"<stop offset='{i / (len(_VIRIDIS) - 1):.2f}' stop-color='{c}'/>" for i, c in enumerate(_VIRIDIS))
                + "</linearGradient></defs>")
    body.append(f"<rect x='{gx}' y='{top}' width='12' height='{gh}' fill='url(#vg)'/>")
    body.append(_text(gx + 16, top + 8, fmt(vmax, 0), "start", 10))
    body.append(_text(gx + 16, top + gh, fmt(vmin, 0), "start", 10))
    if row_title:
        mid = top + gh / 2
        body.append(_text(14, mid, row_title, size=11, extra=f"transform='rotate(-90 14 {mid:.1f})'"))
    if col_title:
        body.append(_text(left + size * len(col_labels) / 2, height - 12, col_title, size=11))
    return Chart(_svg(width, height, body, title), len(cells))


def hbar_chart(items: Sequence[tuple[str, float]], *, x_label: str, color: str = PALETTE[0],
               width: int = 520) -> Chart | None:
    """Horizontal bars, largest first (used for parameter importances in [0, 1])."""
    items = sorted(((k, v) for k, v in items if math.isfinite(v)), key=lambda kv: -kv[1])
    if not items:
        return None
    left, right, top, row = 190, width - 60, 10, 24
    height = top + row * len(items) + 44
    vmax = max(max(v for _, v in items), 1e-12)
    body = []
    for i, (name, value) in enumerate(items):
        y = top + i * row
        w = (right - left) * value / vmax
        body.append(_text(left - 8, y + row / 2 + 4, _short(name, 30), "end", 11))
        body.append(f"<rect class='pt' x='{left}' y='{y + 4}' width='{max(w, 1):.1f}' height='{row - 8}' "
                    f"fill='{color}'><title>{escape(name)}: {value:.3f}</title></rect>")
        body.append(_text(left + w + 6, y + row / 2 + 4, f"{value:.2f}", "start", 11))
    base = top + row * len(items)
    body.append(f"<line x1='{left}' x2='{left}' y1='{top}' y2='{base}' stroke='#333'/>")
    body.append(_text((left + right) / 2, base + 30, x_label))
    return Chart(_svg(width, height, body, x_label), len(items))


@dataclass(frozen=True)
class Axis:
    """One axis of a parallel-coordinates chart: its name, kind (linear|log|cat) and values per row."""

    name: str
    kind: str
    values: list[object]


def parallel_coordinates(axes: Sequence[Axis], colour_values: Sequence[float], *, colour_label: str,
                         highlight: int | None = None, width: int = 640, height: int = 300) -> Chart | None:
    """One polyline per row across the axes, coloured by ``colour_values`` (viridis, NaN grey)."""
    if len(axes) < 2 or not axes[0].values:
        return None
    n_rows = len(axes[0].values)
    ok = [i for i in range(n_rows) if all(_present(a.values[i]) for a in axes)]
    if not ok:
        return None
    left, right, top, bottom = 50, width - 50, 34, height - 30
    scales = []
    for j, a in enumerate(axes):
        vals = [a.values[i] for i in ok]
        ax = left + (right - left) * j / (len(axes) - 1)
        kind = a.kind if a.kind != "cat" else "cat"
        if kind == "cat":
            vals = sorted({str(v) for v in vals})
        scales.append((ax, _Scale(vals, bottom, top, kind), kind, vals))
    finite = [v for v in colour_values if math.isfinite(v)]
    c_lo, c_hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    body = []
    order = sorted(ok, key=lambda i: (i == highlight, colour_values[i] if math.isfinite(colour_values[i]) else -math.inf))
    for i in order:
        coords = []
        for (ax, scale, kind, _), a in zip(scales, axes):
            v = str(a.values[i]) if kind == "cat" else a.values[i]
            coords.append(f"{ax:.1f},{scale(v):.1f}")
        cv = colour_values[i]
        color = viridis((cv - c_lo) / ((c_hi - c_lo) or 1.0)) if math.isfinite(cv) else "#999"
        wide = i == highlight
        tip = "; ".join(f"{a.name}={a.values[i]}" for a in axes)
        body.append(f"<polyline class='pt' points='{' '.join(coords)}' fill='none' stroke='{color}' "
                    f"stroke-width='{3.5 if wide else 1.6}' stroke-opacity='{1 if wide else 0.75}'>"
                    f"<title>{escape(tip)}</title></polyline>")
    for (ax, scale, kind, vals), a in zip(scales, axes):
        body.append(f"<line x1='{ax:.1f}' x2='{ax:.1f}' y1='{top}' y2='{bottom}' stroke='#333'/>")
        anchor = "start" if ax == left else ("end" if ax == right else "middle")
        body.append(_text(ax, top - 16, _short(a.name, 26), anchor, 11, "font-weight='bold'"))
        if kind == "cat":
            labels = [(scale(v), v) for v in vals]
        else:
            nums = [float(v) for v in vals]  # type: ignore[arg-type]
            labels = [(scale(v), f"{v:.3g}") for v in sorted({min(nums), max(nums)})]
        for py, s in labels:
            body.append(_text(ax + 4, py + 4, str(s), "start", 10, "paint-order='stroke' stroke='#fff' stroke-width='3'"))
    body.append(_text(width / 2, height - 6, f"line colour: {colour_label} (dark = low, yellow = high); "
                      "thick line = best trial", size=11))
    return Chart(_svg(width, height, body, "parallel coordinates"), len(ok))


def _present(v: object) -> bool:
    if v is None:
        return False
    if isinstance(v, float) and not math.isfinite(v):
        return False
    try:
        return not bool(pd.isna(v))
    except (TypeError, ValueError):  # pd.isna of a list-like is an array: the value is present
        return True
