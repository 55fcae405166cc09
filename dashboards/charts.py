"""The report's charts, drawn with matplotlib and inlined as SVG (no network, no chart library in the page).

Every chart function returns a :class:`Chart` (the SVG text and how many data marks it drew), or
``None`` when there is nothing to draw; the report then shows an empty-state message instead of a
blank chart. Each data mark (marker, bar, heatmap cell, polyline) is one matplotlib artist whose SVG
group carries ``class="pt"`` and a ``<title>`` tooltip, so a test can count the rendered marks
against the figure's ``data-points``. Legends sit beside the axes and the figure is cropped to
everything it draws (``bbox_inches="tight"``), so a legend is never cut; legend labels are never
shortened.

Figures are ``matplotlib.figure.Figure`` objects rendered by the SVG canvas directly: no pyplot,
no global backend or figure state.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from dataclasses import dataclass, field
from html import escape
from typing import Sequence

import matplotlib
import pandas as pd
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

#: Tableau 10: distinguishable, print-friendly; a method keeps its colour across every chart.
PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
           "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]
#: Perceptually uniform, readable in grey scale.
COLOURMAP = "viridis"
_STYLE = {"svg.fonttype": "none", "svg.hashsalt": "ltbias", "font.size": 9,
          "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"],
          "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
          "grid.color": "#e4e4e4", "grid.linewidth": 0.6}
_MARK = "pt-"


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


@dataclass(frozen=True)
class Axis:
    """One axis of a parallel-coordinates chart: its name, kind (linear|log|cat) and values per row."""

    name: str
    kind: str
    values: list[object]


def color_map(names: Sequence[str]) -> dict[str, str]:
    """A stable colour per name, in the order given (repeats the palette past ten names)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(dict.fromkeys(names))}


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for a label: fixed digits, integers without decimals, NaN as 'n/a'."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if float(value).is_integer() and abs(value) >= 1 and digits <= 1:
        return str(int(value))
    return f"{value:.{digits}f}"


def _has_std(st: Stat) -> bool:
    return st.std is not None and math.isfinite(st.std) and st.std > 0


def _tooltip(series: str, x: object, st: Stat, unit: str) -> str:
    spread = f" ± {fmt(st.std, 2)}" if st.std is not None and math.isfinite(st.std) else ""
    return f"{series} | {x}: {fmt(st.mean, 2)}{spread}{unit} (n={st.n})"


def _sort_key(v: object) -> tuple[int, float, str]:
    return (0, float(v), "") if isinstance(v, (int, float)) else (1, 0.0, str(v))


class _Canvas:
    """A figure plus the tooltips of its data marks; ``render`` turns it into a :class:`Chart`."""

    def __init__(self, width: float, height: float, label: str) -> None:
        self.fig = Figure(figsize=(width, height), layout="constrained")
        FigureCanvasSVG(self.fig)
        self.label = label
        self.tips: list[str] = []

    def mark(self, tooltip: str) -> str:
        """The gid of the next data mark (set it on the artist)."""
        self.tips.append(tooltip)
        return f"{_MARK}{len(self.tips) - 1}"

    def render(self) -> Chart:
        buffer = io.StringIO()
        self.fig.savefig(buffer, format="svg", bbox_inches="tight", pad_inches=0.05,
                         metadata={"Date": None, "Creator": None})
        svg = buffer.getvalue()
        svg = svg[svg.index("<svg"):]
        svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.S)  # RDF naming external schemas
        # SVG 2 ``href`` instead of the XLink namespace (inline SVG in HTML needs neither namespace)
        svg = svg.replace(' xmlns:xlink="http://www.w3.org/1999/xlink"', "").replace("xlink:href=", "href=")
        for i, tip in enumerate(self.tips):
            svg = svg.replace(f'<g id="{_MARK}{i}">', f'<g id="{_MARK}{i}" class="pt"><title>{escape(tip)}</title>', 1)
        svg = svg.replace("<svg ", f'<svg role="img" aria-label="{escape(self.label, quote=True)}" ', 1)
        return Chart(_unique_ids(svg), len(self.tips))


def _unique_ids(svg: str) -> str:
    """Prefix every id (and reference to it) with a digest of the chart, so that several inline
    SVGs in one page never share an id (clip paths would otherwise cross charts)."""
    prefix = "c" + hashlib.sha1(svg.encode()).hexdigest()[:8] + "-"
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', svg)
    return re.sub(r'(url\(#|href="#)([^")]+)', lambda m: f"{m.group(1)}{prefix}{m.group(2)}", svg)


def _legend(ax: object, title: str | None = None) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, title=title,  # type: ignore[attr-defined]
              borderaxespad=0.0, handlelength=2.4)


def _dash(dash: str) -> object:
    if not dash:
        return "-"
    return (0, tuple(float(d) for d in dash.split()))


def line_chart(series: Sequence[Series], *, x_label: str, y_label: str, x_kind: str = "auto",
               unit: str = "", width: float = 7.0, height: float = 3.6) -> Chart | None:
    """Mean per x with a ±std band and error bars per series; ``x_kind`` linear|log|cat|auto."""
    series = [s for s in series if any(math.isfinite(v.mean) for v in s.values.values())]
    if not series:
        return None
    xs = sorted({x for s in series for x, v in s.values.items() if math.isfinite(v.mean)}, key=_sort_key)
    if x_kind == "auto":
        numeric = all(isinstance(x, (int, float)) for x in xs)
        positive = numeric and min(xs) > 0  # type: ignore[type-var]
        x_kind = ("log" if positive and max(xs) / min(xs) >= 10 else "linear") if numeric else "cat"  # type: ignore[operator]
    position = {x: float(i) for i, x in enumerate(xs)} if x_kind == "cat" else {x: float(x) for x in xs}  # type: ignore[arg-type]
    with matplotlib.rc_context(_STYLE):
        canvas = _Canvas(width, height, f"{y_label} vs {x_label}")
        ax = canvas.fig.add_subplot()
        for s in series:
            pts = sorted(((x, st) for x, st in s.values.items() if math.isfinite(st.mean)), key=lambda p: _sort_key(p[0]))
            px = [position[x] for x, _ in pts]
            ax.plot(px, [st.mean for _, st in pts], color=s.color, linestyle=_dash(s.dash), linewidth=1.8,
                    label=s.label)
            band = [(position[x], st) for x, st in pts if st.std is not None and math.isfinite(st.std)]
            if len(band) >= 2:
                ax.fill_between([b[0] for b in band], [b[1].mean - b[1].std for b in band],  # type: ignore[operator]
                                [b[1].mean + b[1].std for b in band], color=s.color, alpha=0.13, linewidth=0)  # type: ignore[operator]
            for (x, st), p in zip(pts, px):
                if _has_std(st):
                    ax.errorbar([p], [st.mean], yerr=[st.std], color=s.color, capsize=3, linewidth=1.0)
                ax.plot([p], [st.mean], "o", color=s.color, markersize=5, markeredgecolor="white",
                        gid=canvas.mark(_tooltip(s.label, x, st, unit)))
        if x_kind == "log":
            ax.set_xscale("log")
            x_label += " (log scale)"
        ax.set_xticks([position[x] for x in xs], [f"{x:g}" if isinstance(x, (int, float)) else str(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        _legend(ax)
        return canvas.render()


def bar_chart(categories: Sequence[str], series: Sequence[Series], *, x_label: str, y_label: str,
              unit: str = "", width: float = 7.0, height: float = 3.6, y_zero: bool = True,
              tick_rotation: float = 0.0) -> Chart | None:
    """Grouped bars (one group per category, one bar per series) with ±std error bars; long
    category names read better with ``tick_rotation`` (degrees)."""
    series = [s for s in series if any(math.isfinite(s.values[c].mean) for c in categories if c in s.values)]
    if not series or not categories:
        return None
    with matplotlib.rc_context(_STYLE):
        canvas = _Canvas(width, height, f"{y_label} by {x_label}")
        ax = canvas.fig.add_subplot()
        bar_w = 0.8 / len(series)
        for si, s in enumerate(series):
            for ci, cat in enumerate(categories):
                st = s.values.get(cat)
                if st is None or not math.isfinite(st.mean):
                    continue
                x = ci - 0.4 + bar_w * (si + 0.5)
                ax.bar([x], [st.mean], width=bar_w * 0.92, color=s.color, label=s.label if ci == 0 else None,
                       gid=canvas.mark(_tooltip(s.label, cat, st, unit)))
                if _has_std(st):
                    ax.errorbar([x], [st.mean], yerr=[st.std], color="#222", capsize=2.5, linewidth=0.9)
        ax.set_xticks(range(len(categories)), list(categories), rotation=tick_rotation,
                      ha="right" if tick_rotation else "center")
        ax.grid(axis="x", visible=False)
        if y_zero:
            ax.set_ylim(bottom=0)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        _legend(ax)
        return canvas.render()


def heatmap(grid: Sequence[Sequence[Stat | None]], row_labels: Sequence[str], col_labels: Sequence[str], *,
            title: str, vmin: float, vmax: float, unit: str = "", row_title: str = "", col_title: str = "") -> Chart | None:
    """A grid of numbers coloured on a shared [vmin, vmax] viridis scale, the value in each cell."""
    cells = [(r, c, st) for r, row in enumerate(grid) for c, st in enumerate(row)
             if st is not None and math.isfinite(st.mean)]
    if not cells:
        return None
    norm = Normalize(vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1.0)
    cmap = matplotlib.colormaps[COLOURMAP]
    with matplotlib.rc_context({**_STYLE, "axes.grid": False}):
        canvas = _Canvas(0.9 * len(col_labels) + 2.0, 0.9 * len(row_labels) + 1.0, title)
        ax = canvas.fig.add_subplot()
        for r, row in enumerate(grid):
            for c, st in enumerate(row):
                if st is None or not math.isfinite(st.mean):
                    ax.add_patch(Rectangle((c, r), 1, 1, facecolor="#eeeeee", edgecolor="white"))
                    ax.text(c + 0.5, r + 0.5, "n/a", ha="center", va="center", color="#888888")
                    continue
                t = norm(st.mean)
                ax.add_patch(Rectangle((c, r), 1, 1, facecolor=cmap(t), edgecolor="white",
                                       gid=canvas.mark(_tooltip(title, f"{row_labels[r]} x {col_labels[c]}", st, unit))))
                text = fmt(st.mean, 1) + (f"\n±{fmt(st.std, 1)}" if st.std is not None and math.isfinite(st.std) else "")
                ax.text(c + 0.5, r + 0.5, text, ha="center", va="center", fontweight="bold",
                        color="white" if t < 0.6 else "#111111")
        ax.set_xlim(0, len(col_labels))
        ax.set_ylim(len(row_labels), 0)
        ax.set_xticks([c + 0.5 for c in range(len(col_labels))], list(col_labels))
        ax.set_yticks([r + 0.5 for r in range(len(row_labels))], list(row_labels))
        ax.xaxis.tick_top()
        ax.tick_params(length=0)
        for side in ("left", "bottom", "top", "right"):
            ax.spines[side].set_visible(False)
        ax.set_title(title, fontweight="bold", fontsize=10)
        if row_title:
            ax.set_ylabel(row_title)
        if col_title:
            ax.set_xlabel(col_title)
        canvas.fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.06, pad=0.03,
                            label=unit or None)
        return canvas.render()


def hbar_chart(items: Sequence[tuple[str, float]], *, x_label: str, color: str = PALETTE[0],
               width: float = 6.0) -> Chart | None:
    """Horizontal bars, largest first (used for parameter importances in [0, 1])."""
    items = sorted(((k, v) for k, v in items if math.isfinite(v)), key=lambda kv: -kv[1])
    if not items:
        return None
    with matplotlib.rc_context(_STYLE):
        canvas = _Canvas(width, 0.32 * len(items) + 0.9, x_label)
        ax = canvas.fig.add_subplot()
        for i, (name, value) in enumerate(items):
            ax.barh([i], [value], color=color, height=0.7, gid=canvas.mark(f"{name}: {value:.3f}"))
            ax.text(value, i, f" {value:.2f}", va="center")
        ax.set_yticks(range(len(items)), [name for name, _ in items])
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
        ax.set_xlim(0, max(max(v for _, v in items), 1e-12) * 1.15)
        ax.set_xlabel(x_label)
        return canvas.render()


def _present(v: object) -> bool:
    if v is None:
        return False
    if isinstance(v, float) and not math.isfinite(v):
        return False
    try:
        return not bool(pd.isna(v))
    except (TypeError, ValueError):  # pd.isna of a list-like is an array: the value is present
        return True


def parallel_coordinates(axes: Sequence[Axis], colour_values: Sequence[float], *, colour_label: str,
                         highlight: int | None = None, width: float = 7.0, height: float = 3.2) -> Chart | None:
    """One polyline per row across the axes, coloured by ``colour_values`` (viridis, NaN grey).

    Each axis is scaled to its own range (log axes in log10); categorical axes place their levels
    evenly and label them. Axes whose values are lists are not drawn (they are not one coordinate).
    """
    axes = [a for a in axes if not any(isinstance(v, (list, tuple)) for v in a.values)]
    if len(axes) < 2 or not axes[0].values:
        return None
    ok = [i for i in range(len(axes[0].values)) if all(_present(a.values[i]) for a in axes)]
    if not ok:
        return None
    scaled: list[dict[int, float]] = []
    ticks: list[list[tuple[float, str]]] = []
    for a in axes:
        if a.kind == "cat":
            levels = sorted({str(a.values[i]) for i in ok})
            pos = {lv: (k + 0.5) / len(levels) for k, lv in enumerate(levels)}
            scaled.append({i: pos[str(a.values[i])] for i in ok})
            ticks.append([(pos[lv], lv) for lv in levels])
            continue
        raw = {i: float(a.values[i]) for i in ok}  # type: ignore[arg-type]
        vals = {i: math.log10(v) if a.kind == "log" and v > 0 else v for i, v in raw.items()}
        lo, hi = min(vals.values()), max(vals.values())
        span = (hi - lo) or 1.0
        scaled.append({i: 0.5 if hi == lo else (v - lo) / span for i, v in vals.items()})
        ticks.append(sorted({(scaled[-1][i], f"{raw[i]:.3g}") for i in ok if raw[i] in (min(raw.values()), max(raw.values()))}))
    finite = [v for v in colour_values if math.isfinite(v)]
    norm = Normalize(*(min(finite), max(finite)) if finite and min(finite) < max(finite) else (0.0, 1.0))
    cmap = matplotlib.colormaps[COLOURMAP]
    with matplotlib.rc_context({**_STYLE, "axes.grid": False}):
        canvas = _Canvas(width, height, "parallel coordinates")
        ax = canvas.fig.add_subplot()
        order = sorted(ok, key=lambda i: (i == highlight, colour_values[i] if math.isfinite(colour_values[i]) else -math.inf))
        for i in order:
            cv = colour_values[i]
            tip = "; ".join(f"{a.name}={fmt(v, 4) if isinstance(v := a.values[i], float) else v}" for a in axes)
            ax.plot(range(len(axes)), [s[i] for s in scaled], color=cmap(norm(cv)) if math.isfinite(cv) else "#999999",
                    linewidth=3.2 if i == highlight else 1.4, alpha=1.0 if i == highlight else 0.8,
                    gid=canvas.mark(tip))
        for j, tick in enumerate(ticks):
            ax.axvline(j, color="#333333", linewidth=0.8)
            for y, label in tick:
                ax.text(j + 0.03, y, label, va="center", fontsize=8,
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.8})
        ax.set_xticks(range(len(axes)), [a.name for a in axes], fontweight="bold")
        ax.xaxis.tick_top()
        ax.set_yticks([])
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlim(-0.1, len(axes) - 0.6)
        for side in ("left", "bottom", "top", "right"):
            ax.spines[side].set_visible(False)
        canvas.fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.05, pad=0.02,
                            label=f"{colour_label} (thick line = selected)")
        return canvas.render()


__all__ = ["Axis", "COLOURMAP", "Chart", "PALETTE", "Series", "Stat", "bar_chart", "color_map", "fmt",
           "heatmap", "hbar_chart", "line_chart", "parallel_coordinates"]
