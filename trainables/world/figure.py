"""``python -m trainables.world.figure OUT.png``: sample images of the toy world, one row per class.

Columns: instances of the class as a downstream data set shows them (every part visible), then the
same class as pre-training corpora with views top / bottom / left / right show it (regions outside
the view hold random parts unrelated to the class).
"""

from __future__ import annotations

import argparse

import numpy as np

from trainables.config import ToyWorldConfig
from trainables.world.data import instance_ids
from trainables.world.render import World, half_views, make_world


def world_figure(world: World, out: str, instances: int = 4, max_classes: int = 20) -> None:
    """Write the sample grid of ``world`` to ``out`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    classes = np.arange(min(world.num_classes, max_classes))
    views = list(half_views(world.num_parts))
    cols = instances + len(views)
    # Fixed inches per tile, label column and title band, so the grid fills the page exactly.
    cell, label_w, title_h = 0.9, 2.9, 0.6
    width, height = label_w + cols * cell, title_h + len(classes) * cell
    fig, axes = plt.subplots(len(classes), cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=label_w / width, right=0.995, bottom=0.005, top=1 - title_h / height,
                        wspace=0.06, hspace=0.06)
    for row, c in enumerate(classes):
        labels = np.full(instances, c)
        ids = instance_ids(labels, np.arange(instances))  # distinct per class: its own noise and clutter
        tiles = list(world.render(labels, "figure", ids))
        for v in views:
            tiles += list(world.render(labels[:1], f"figure-{v}", ids[:1], world.view_mask(v)))
        for col, (ax, img) in enumerate(zip(axes[row], tiles)):
            ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"instance {col}" if col < instances else f"view {views[col - instances]}",
                             fontsize=8)
        axes[row, 0].set_ylabel(_label(world, int(c)), rotation=0, ha="right", va="center", fontsize=7.5)
    fig.suptitle(f"toy world: {world.num_classes} classes x {world.num_parts} parts "
                 f"(seed {world.config.seed}); part k sits in region k (0 1 / 2 3)", fontsize=10,
                 y=1 - 0.12 / height)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _label(world: World, c: int) -> str:
    """The class name over one line of part names per region row."""
    rows, cols = world.grid
    lines = [" | ".join(world.part_name(k, int(world.parts[c, k]))
                        for k in range(r * cols, min((r + 1) * cols, world.num_parts))) for r in range(rows)]
    return "\n".join([world.class_name(c), *lines])


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="PNG file to write")
    ap.add_argument("--num-classes", type=int, default=ToyWorldConfig().num_classes)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--instances", type=int, default=4)
    args = ap.parse_args(argv)
    world = make_world(ToyWorldConfig(num_classes=args.num_classes, seed=args.seed))
    world_figure(world, args.out, instances=args.instances)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
