"""Published numbers beside ours: each ``Study.published`` entry matched with the result rows of the
cells it belongs to (``platform.execute.select_rows``: one row per cell, seed means of the
configuration selected on validation)."""

from __future__ import annotations

import math
from typing import Any, Sequence

from platform.spec import Published


def _matches(entry: Published, values: dict[str, Any]) -> bool:
    return all(values.get(axis) == value for axis, value in entry.where.items())


def _number(row: dict, metric: str) -> float | None:
    v = row.get(metric)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def compare(published: Sequence[Published], rows: Sequence[dict], methods: dict[str, str]) -> list[dict]:
    """One dict per (entry, matching cell): source, cell, label, metric, published, ours, ours_std and,
    for a ``min_gain`` entry, the best single-model cell and our gain over it. ``methods`` maps a cell
    id to its method name; rows are ``select_rows`` rows (``values`` = the cell's grid values)."""
    out = []
    for entry in published:
        for row in rows:
            if methods.get(row["cell"]) != entry.method or not _matches(entry, row.get("values", {})):
                continue
            ours = _number(row, entry.metric)
            item = {"source": entry.source, "cell": row["cell"], "label": row.get("label", ""),
                    "metric": entry.metric, "approximate": entry.approximate, "ours": ours,
                    "ours_std": _number(row, f"{entry.metric}_std"), "published": entry.value}
            if entry.min_gain is not None:
                # every single-model cell (any backbone, any method) with the row's other grid values
                singles = [(v, r["cell"]) for r in rows if r.get("kind") != "ensemble"
                           and all(r.get("values", {}).get(a) == v for a, v in row.get("values", {}).items()
                                   if a not in ("method.name", "backbone_index"))
                           and (v := _number(r, entry.metric)) is not None]
                best = max(singles, default=None)
                item.update(published_min_gain=entry.min_gain, best_single=None if best is None else best[1],
                            gain=None if best is None or ours is None else ours - best[0])
            out.append(item)
    return out


def format_comparison(items: Sequence[dict]) -> str:
    """The comparison as text lines: published next to ours (percent)."""
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    signed = lambda v: "-" if v is None else f"{100 * v:+.1f}"  # noqa: E731
    lines = ["published vs ours (percent; ours = mean over seeds of the configuration selected on val):"]
    for it in items:
        about = "about " if it["approximate"] else ""
        if "published_min_gain" in it:
            lines.append(f"  {it['cell']} {it['label']}: {it['source']}: gain over the best single model "
                         f"at least +{pct(it['published_min_gain'])}; ours {it['metric']} {pct(it['ours'])}, "
                         f"gain over {it['best_single'] or '-'} {signed(it['gain'])}")
        else:
            sd = "" if it["ours_std"] is None else f" ± {pct(it['ours_std'])}"
            lines.append(f"  {it['cell']} {it['label']}: {it['source']}: {it['metric']} {about}{pct(it['published'])}; "
                         f"ours {pct(it['ours'])}{sd}")
    return "\n".join(lines)


__all__ = ["compare", "format_comparison"]
