"""Procedural images of the toy world: each class is a composition of parts, one part per region.

The image is cut into a 2-row grid of regions (4 parts: the quadrants 0 = top-left, 1 = top-right,
2 = bottom-left, 3 = bottom-right). A part is a (shape, colour, texture) triple from its region's
small vocabulary; a class is one vocabulary entry per region. Classes share parts on purpose, so
no single part names a class while the full composition does: a model that sees only some regions
(a *view*) learns an incomplete picture of each class.

Every random quantity comes from a counter-based hash of (world seed, split, index, field), so an
image depends only on those and its parts, never on the batch it is rendered in.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from trainables.config import ToyWorldConfig

SHAPES = ("disc", "square", "triangle", "ring", "cross", "diamond")
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "white")
PALETTE = np.array([
    [0.90, 0.15, 0.15], [0.15, 0.80, 0.20], [0.20, 0.35, 0.95], [0.95, 0.90, 0.15],
    [0.85, 0.20, 0.85], [0.15, 0.85, 0.90], [0.98, 0.55, 0.10], [0.92, 0.92, 0.92],
], dtype=np.float32)
TEXTURES = ("solid", "hstripe", "vstripe", "diag", "check")

# Named views over the 2-row region grid; any other view is a '+'-joined list of part indices.
NAMED_VIEWS = ("all", "top", "bottom", "left", "right")

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A bijective 64-bit mixer (SplitMix64's finaliser); uint64 wrap-around is intended."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return x ^ (x >> np.uint64(31))


def split_id(split: str) -> int:
    """A stable integer for a split name (part of every image's random stream)."""
    return zlib.crc32(split.encode())


def hashed_uniform(seed: int, split: str, index: np.ndarray, field: int, width: int = 1) -> np.ndarray:
    """Uniform floats in [0, 1) of shape [len(index), width], a pure function of the arguments."""
    base = _splitmix64(np.array([(seed & 0xFFFFFFFF) << 32 | split_id(split)], dtype=np.uint64))
    base = _splitmix64(base ^ np.uint64(field * 0x100000001B3 & 0xFFFFFFFFFFFFFFFF))
    idx = np.asarray(index, dtype=np.uint64).reshape(-1, 1)
    with np.errstate(over="ignore"):
        ctr = _splitmix64(idx ^ base) * np.uint64(1 << 20) + np.arange(width, dtype=np.uint64)
    bits = _splitmix64(ctr & _MASK64) >> np.uint64(40)  # 24 random bits: exact in float32
    return bits.astype(np.float32) / np.float32(1 << 24)


def region_grid(num_parts: int) -> tuple[int, int]:
    """(rows, cols) of the region grid of a world with ``num_parts`` parts, filled row by row."""
    return 2, math.ceil(num_parts / 2)


def view_mask(num_parts: int, view: str) -> np.ndarray:
    """Boolean [num_parts]: which regions a view shows ('all', 'top', 'bottom', 'left', 'right', '0+2')."""
    rows, cols = region_grid(num_parts)
    k = np.arange(num_parts)
    row, col = k // cols, k % cols
    named = {"all": np.ones(num_parts, bool), "top": row == 0, "bottom": row == rows - 1,
             "left": col < cols / 2, "right": col >= cols / 2}
    if view in named:
        mask = named[view]
        if cols == 1 and view in ("left", "right"):
            mask = np.zeros(num_parts, bool)  # a 2x1 grid has no left/right half
    else:
        try:
            idx = [int(t) for t in view.split("+")]
        except ValueError:
            idx = [-1]
        if any(i < 0 or i >= num_parts for i in idx):
            raise ValueError(f"pretrain.view={view!r} is not a view of a {num_parts}-part world; "
                             f"use one of {', '.join(NAMED_VIEWS)} or '+'-joined part indices "
                             f"0..{num_parts - 1} such as '0+2'")
        mask = np.isin(k, idx)
    if not mask.any():
        raise ValueError(f"pretrain.view={view!r} shows no part of a {rows}x{cols} region grid; "
                         f"use 'top', 'bottom' or part indices")
    return mask


@dataclass(frozen=True)
class World:
    """The class definitions of one world and its renderer.

    parts[c, k] is the vocabulary index of class c's part in region k; vocab[k, v] is the
    (shape, colour, texture) triple of value v in region k.
    """

    config: ToyWorldConfig
    parts: np.ndarray   # [C, P] int
    vocab: np.ndarray   # [P, V, 3] int: shape, colour, texture

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def num_parts(self) -> int:
        return self.config.num_parts

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the region grid: 2 rows, parts filled row by row."""
        return region_grid(self.num_parts)

    def region(self, k: int) -> tuple[int, int, int, int]:
        """(y0, x0, height, width) in pixels of part k's region."""
        rows, cols = self.grid
        s = self.config.image_size
        h, w = s // rows, s // cols
        return (k // cols) * h, (k % cols) * w, h, w

    def part_name(self, k: int, v: int) -> str:
        """'red-disc-hstripe' for vocabulary value v of region k."""
        sh, co, tx = self.vocab[k, v]
        return f"{COLOURS[co]}-{SHAPES[sh]}" + ("" if TEXTURES[tx] == "solid" else f"-{TEXTURES[tx]}")

    def class_name(self, c: int, long: bool = False) -> str:
        """'class03', or with long=True 'class03 (red-disc / ... )' listing its parts."""
        short = f"class{c:0{len(str(self.num_classes - 1))}d}"
        if not long:
            return short
        return f"{short} ({' / '.join(self.part_name(k, int(v)) for k, v in enumerate(self.parts[c]))})"

    def view_mask(self, view: str) -> np.ndarray:
        """Boolean [P]: which regions a view shows ('all', 'top', 'bottom', 'left', 'right', '0+2')."""
        return view_mask(self.num_parts, view)

    def parts_for(self, labels: np.ndarray, split: str, index: np.ndarray,
                  visible: np.ndarray | None = None) -> np.ndarray:
        """Per-image parts [N, P]: the class's parts in visible regions; elsewhere a random
        vocabulary part drawn independently of the label (a nuisance the model learns to ignore)."""
        parts = self.parts[np.asarray(labels, dtype=np.int64)].copy()
        if visible is not None and not visible.all():
            v = self.vocab.shape[1]
            rnd = (hashed_uniform(self.config.seed, split, index, 90, self.num_parts) * v).astype(np.int64)
            parts[:, ~visible] = rnd[:, ~visible]
        return parts

    def render(self, labels: np.ndarray, split: str, index: np.ndarray,
               visible: np.ndarray | None = None) -> torch.Tensor:
        """uint8 images [N, 3, H, W] of classes ``labels``, instance ``index`` of ``split``."""
        index = np.asarray(index, dtype=np.int64)
        return render_parts(self, self.parts_for(labels, split, index, visible), split, index)


def _shape_masks(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """[len(SHAPES), N, h, w] masks in cell coordinates u, v (in [-1, 1]) at radius r [N,1,1]."""
    rad = np.sqrt(u * u + v * v)
    au, av = np.abs(u), np.abs(v)
    thick = 0.38 * r
    return np.stack([
        rad <= r,                                                  # disc
        np.maximum(au, av) <= 0.85 * r,                            # square
        (v <= 0.75 * r) & (v >= -r + 1.75 * au),                   # triangle (apex up)
        (rad <= r) & (rad >= 0.5 * r),                             # ring
        ((au <= thick) & (av <= r)) | ((av <= thick) & (au <= r)),  # cross
        au + av <= 1.15 * r,                                       # diamond
    ])


def _texture_masks(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """[len(TEXTURES), N, h, w]: where the texture shows the part's full colour (else darker)."""
    f = 2.5  # stripes per unit: about 3 px wide at 16-pixel cells
    hs = np.floor((v + 1) * f) % 2 == 0
    vs = np.floor((u + 1) * f) % 2 == 0
    return np.stack([np.ones_like(hs), hs, vs, np.floor((u + v + 2) * f) % 2 == 0, hs ^ vs])


RENDER_CHUNK = 512  # images per vectorised pass: keeps the per-pixel temporaries in cache


def render_parts(world: World, parts: np.ndarray, split: str, index: np.ndarray) -> torch.Tensor:
    """Render images whose region k shows vocabulary part parts[:, k] (vectorised over images)."""
    s = world.config.image_size
    out = torch.empty((len(index), 3, s, s), dtype=torch.uint8)
    for i in range(0, len(index), RENDER_CHUNK):
        out[i:i + RENDER_CHUNK] = _render_chunk(world, parts[i:i + RENDER_CHUNK], split, index[i:i + RENDER_CHUNK])
    return out


def _render_chunk(world: World, parts: np.ndarray, split: str, index: np.ndarray) -> torch.Tensor:
    cfg = world.config
    n, s = len(index), cfg.image_size
    seed = cfg.seed
    img = np.empty((n, 3, s, s), dtype=np.float32)
    img[:] = (0.08 + 0.22 * hashed_uniform(seed, split, index, 1, 3))[:, :, None, None]  # background tint

    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    # Clutter: small label-free rectangles anywhere (also over parts), so no pixel is clean.
    for j in range(cfg.clutter):
        q = hashed_uniform(seed, split, index, 10 + j, 7)
        cy, cx = q[:, 0] * s, q[:, 1] * s
        hh, hw = 0.5 + q[:, 2] * 2.5, 0.5 + q[:, 3] * 2.5
        m = (np.abs(yy - cy[:, None, None]) <= hh[:, None, None]) & (np.abs(xx - cx[:, None, None]) <= hw[:, None, None])
        col = 0.15 + 0.7 * q[:, 4:7]
        img = np.where(m[:, None], col[:, :, None, None], img)

    for k in range(world.num_parts):
        y0, x0, h, w = world.region(k)
        q = hashed_uniform(seed, split, index, 100 + k, 6)
        jit = cfg.jitter
        cu, cv = (q[:, 0] * 2 - 1) * jit, (q[:, 1] * 2 - 1) * jit
        r = (0.55 + 0.3 * q[:, 2])[:, None, None]
        cy, cx = np.mgrid[0:h, 0:w].astype(np.float32)
        u = (cx[None] + 0.5) / (w / 2) - 1 - cu[:, None, None]
        v = (cy[None] + 0.5) / (h / 2) - 1 - cv[:, None, None]
        sh, co, tx = (world.vocab[k, parts[:, k], i] for i in range(3))
        ar = np.arange(n)
        shape = _shape_masks(u, v, r)[sh, ar]
        stripe = _texture_masks(u, v)[tx, ar]
        colour = PALETTE[co] * (0.85 + 0.3 * q[:, 3:4]) + cfg.colour_noise * (q[:, 3:6] * 2 - 1)
        colour = np.clip(colour, 0, 1)[:, :, None, None]
        fill = np.where(stripe[:, None], colour, 0.45 * colour)
        cell = img[:, :, y0:y0 + h, x0:x0 + w]
        img[:, :, y0:y0 + h, x0:x0 + w] = np.where(shape[:, None], fill, cell)

    if cfg.noise > 0:  # Gaussian pixel noise by Box-Muller from hashed uniforms
        q = hashed_uniform(seed, split, index, 7, 2 * 3 * s * s).reshape(n, 2, 3, s, s)
        g = np.sqrt(-2 * np.log1p(-q[:, 0])) * np.cos(2 * np.pi * q[:, 1])
        img += cfg.noise * g
    return torch.from_numpy(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))


def _vocab_size(cfg: ToyWorldConfig) -> int:
    """Values per region: enough that half the regions are ambiguous for about two classes each."""
    if cfg.part_vocab is not None:
        return cfg.part_vocab
    half = max(1, cfg.num_parts // 2)
    # Tiny worlds (fewer than 6 classes) cannot share every value; they get 2 values per region.
    return max(2, min(max(3, math.ceil((cfg.num_classes / 2) ** (1 / half))), cfg.num_classes // 2))


@functools.lru_cache(maxsize=16)
def _make_world(cfg_json: str) -> World:
    cfg = ToyWorldConfig.model_validate_json(cfg_json)
    c, p, v = cfg.num_classes, cfg.num_parts, _vocab_size(cfg)
    if v ** p < c:
        raise ValueError(f"world.part_vocab={v} gives only {v}**{p}={v ** p} compositions for "
                         f"num_classes={c}; raise part_vocab or num_parts")
    if cfg.part_vocab is not None and v > c // 2:
        raise ValueError(f"world.part_vocab={v} is too large for num_classes={c}: every part must "
                         f"be shared by at least two classes; use part_vocab <= {c // 2}")
    rng = np.random.default_rng([cfg.seed, 0x70A1D])
    all_parts = np.stack(np.meshgrid(np.arange(len(SHAPES)), np.arange(len(COLOURS)),
                                     np.arange(len(TEXTURES)), indexing="ij"), -1).reshape(-1, 3)
    vocab = np.stack([all_parts[rng.choice(len(all_parts), v, replace=False)] for _ in range(p)])
    # Each region's values are dealt evenly over the classes (each value used by >= 2 classes);
    # re-deal until every full composition is unique (the whole image names its class) and every
    # half view leaves at least a fifth of the classes confusable (an incomplete picture).
    halves = list(half_views(p).values())
    base = np.arange(c) % v
    best, best_score = None, c + 1
    for _ in range(2_000):
        parts = np.stack([rng.permutation(base) for _ in range(p)], axis=1)
        if len({tuple(row) for row in parts}) < c:
            continue
        score = max((len({tuple(row[m]) for row in parts}) for m in halves), default=0)
        if score < best_score:
            best, best_score = parts, score
        if score <= 0.8 * c:
            break
    if best is None:
        raise ValueError(f"could not make {c} distinct compositions of {p} parts from {v} values; "
                         f"raise world.part_vocab")
    return World(cfg, best, vocab)


def half_views(num_parts: int) -> dict[str, np.ndarray]:
    """The named half views (top, bottom, left, right) that a world's region grid has, with masks."""
    out = {}
    for view in ("top", "bottom", "left", "right"):
        try:
            mask = view_mask(num_parts, view)
        except ValueError:  # a 2x1 grid has no left or right half
            continue
        if mask.sum() < num_parts:
            out[view] = mask
    return out


def make_world(cfg: ToyWorldConfig) -> World:
    """The world of a config (cached: class definitions are a pure function of the config)."""
    return _make_world(cfg.model_dump_json())
