"""Per-trial artifacts the driver logs to MLflow: per-class table, logits, confusion matrix, D x P heatmap."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainables.cache import Stage1Result, logits_table
from trainables.data.longtail import GROUP_NAMES, d_groups
from trainables.metrics import confusion_matrix, dp_grid, p_groups, per_class_accuracy

_MAX_LABELLED_CLASSES = 30  # tick labels beyond this many classes are unreadable


def write_artifacts(out_dir: str, r: Stage1Result) -> list[str]:
    """Write per_class.parquet, logits.parquet, confusion_matrix.png and dp_heatmap.png; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    C = len(r.class_names)
    dg = d_groups(r.group_counts)
    pg = p_groups(r.q_hat) if r.q_hat is not None else None
    per_class = pa.table({
        "class": pa.array(np.arange(C), pa.int64()),
        "name": pa.array(r.class_names, pa.string()),
        "train_count": pa.array(np.asarray(r.train_counts, dtype=np.int64)),
        "d_group": pa.array([GROUP_NAMES[g] for g in dg], pa.string()),
        "p_group": pa.array([GROUP_NAMES[g] for g in pg] if pg is not None else [None] * C, pa.string()),
        "q_hat": pa.array(np.asarray(r.q_hat, dtype=np.float64) if r.q_hat is not None else [None] * C,
                          pa.float64()),
        "val_acc": pa.array(per_class_accuracy(r.val_logits, r.val_labels, C), pa.float64()),
        "test_acc": pa.array(per_class_accuracy(r.test_logits, r.test_labels, C), pa.float64()),
    })
    paths = {name: os.path.join(out_dir, name) for name in
             ("per_class.parquet", "logits.parquet", "confusion_matrix.png", "dp_heatmap.png")}
    pq.write_table(per_class, paths["per_class.parquet"])
    pq.write_table(logits_table({"val": (r.val_logits, r.val_labels), "test": (r.test_logits, r.test_labels)}),
                   paths["logits.parquet"])
    _plot_confusion(confusion_matrix(r.test_logits, r.test_labels, C), r.class_names, paths["confusion_matrix.png"])
    grid = dp_grid(r.test_logits, r.test_labels, r.group_counts, r.q_hat) if r.q_hat is not None else None
    _plot_dp(grid, paths["dp_heatmap.png"])
    return list(paths.values())


def _plot_confusion(cm: np.ndarray, names: list[str], path: str) -> None:
    # Rows normalised to recall so head and tail classes share one colour scale.
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    from matplotlib.figure import Figure  # imported here: 0.8 s off every Ray worker's start

    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    im = ax.imshow(rows, cmap="viridis", vmin=0, vmax=1)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (sorted as the data set)")
    ax.set_title("test confusion matrix (row-normalised)")
    if len(names) <= _MAX_LABELLED_CLASSES:
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.set_yticks(range(len(names)), names, fontsize=6)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _plot_dp(grid: np.ndarray | None, path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3.5))
    ax = fig.subplots()
    if grid is None:
        ax.text(0.5, 0.5, "no q_hat: the backbone has\nno zero-shot classifier", ha="center", va="center")
        ax.set_axis_off()
    else:
        ax.imshow(np.nan_to_num(grid, nan=0.0), cmap="magma", vmin=0, vmax=1)
        for d in range(3):
            for p in range(3):
                txt = "n/a" if np.isnan(grid[d, p]) else f"{100 * grid[d, p]:.1f}"
                ax.text(p, d, txt, ha="center", va="center", color="cyan")
        ax.set_xticks(range(3), [f"P-{g}" for g in GROUP_NAMES])
        ax.set_yticks(range(3), [f"D-{g}" for g in GROUP_NAMES])
        ax.set_title("test accuracy (%) by D x P group")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
