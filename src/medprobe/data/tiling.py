"""Tiling a slide at a physical scale: a grid of non-overlapping tiles, filtered by tissue, read by streaming.

:func:`plan_tiles` lays a grid over level 0 whose tiles span ``tile_px * target_mpp`` µm (default 224 px at
0.5 µm/px, about 20x), keeps tiles whose tissue fraction (from a mask over the whole slide) is at least
``min_tissue``, and chooses the pyramid level to read from: the level with the largest downsample
``<= target_mpp / mpp`` (within ``level_tolerance``), whose box of ``read_px`` pixels is then resized to
``tile_px``. :func:`iter_tiles` / :func:`read_tile` read the kept tiles batch by batch: a whole level is never
held in memory. Coordinates are level-0 ``(x, y)`` of each tile's top-left corner (CLAM/TRIDENT ``coords``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from medprobe.data.slides import Slide, missing_mpp_message, resize_rgb
from medprobe.errors import ConfigError, DataError
from medprobe.schema import as_dict, choice, normalise_fields, opt, to_float, to_int

TILE_INTERPOLATIONS = ("bilinear", "bicubic", "lanczos", "box", "nearest")


def _stride(v: Any, path: str) -> int | None:
    return to_int(1, optional=True)(v, path)


@dataclass(frozen=True)
class TilingConfig:
    """How a slide becomes tiles (every field changes the features; recorded with them). In a task's config
    hash the section is sparse (:func:`medprobe.schema.numbers_only`): ``hash_always`` plus every changed field."""

    hash_always: ClassVar[tuple[str, ...]] = ("target_mpp", "tile_px", "min_tissue")  # what every shipped task wrote

    target_mpp: float = opt(0.5, norm=to_float(0.0, open_lo=True), type="float",
                            help="tile scale in µm per pixel (0.5 is about 20x, 0.25 about 40x)")
    tile_px: int = opt(224, norm=to_int(1), type="int", help="tile side in pixels at target_mpp (encoder input)")
    stride_px: int | None = opt(None, norm=_stride, type="int|null",
                                help="grid step in pixels at target_mpp (null: tile_px, non-overlapping)")
    min_tissue: float = opt(0.5, norm=to_float(0.0, 1.0), type="float",
                            help="keep tiles whose tissue fraction is at least this (0: keep every grid tile)")
    level_tolerance: float = opt(0.01, norm=to_float(0.0, 1.0), type="float",
                                 help="a pyramid level within this relative margin above the target counts as "
                                      "fine enough (2.0005 serves 2.0)")
    interpolation: str = opt("bilinear", norm=choice(*TILE_INTERPOLATIONS), type="|".join(TILE_INTERPOLATIONS),
                             help="resampling from the level read to tile_px (Pillow, antialiased)")

    def __post_init__(self) -> None:
        normalise_fields(self, "tiling.")  # built in code or parsed from a task: the same checks and values

    def to_dict(self) -> dict[str, Any]:
        return dict(as_dict(self))


@dataclass(frozen=True)
class TilePlan:
    """The tiles of one slide: level-0 ``coords`` (N, 2) int64 ``(x, y)`` in row-major order, their tissue
    fractions, and how each is read (``read_px`` square at ``level``, resized to ``tile_px``)."""

    coords: np.ndarray
    tissue_fraction: np.ndarray
    level: int
    level_downsample: float
    read_px: int
    size0: int
    stride0: int
    tile_px: int
    target_mpp: float
    mpp: float
    grid: tuple[int, int]
    config: TilingConfig

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """Everything but the per-tile arrays (recorded with the features)."""
        return {"n_tiles": len(self), "level": self.level, "level_downsample": self.level_downsample,
                "read_px": self.read_px, "size0": self.size0, "stride0": self.stride0, "tile_px": self.tile_px,
                "target_mpp": self.target_mpp, "mpp": self.mpp, "grid": list(self.grid),
                "config": self.config.to_dict()}


def _mask_array(mask: Any) -> np.ndarray:
    m = getattr(mask, "mask", mask)
    a = np.asarray(m)
    if a.ndim != 2 or a.size == 0:
        raise ConfigError(f"tissue mask must be a non-empty 2D array, got shape {a.shape}")
    return a.astype(bool)


def tile_tissue_fraction(mask: np.ndarray, dimensions: tuple[int, int], coords: np.ndarray, size0: int) -> np.ndarray:
    """Per tile, the share of mask pixels whose centre lies in the level-0 box ``[x, x+size0) x [y, y+size0)``;
    the mask covers the whole slide (level-0 ``dimensions=(w, h)``). A box holding no pixel centre takes the
    mask pixel under its centre."""
    mh, mw = mask.shape
    w0, h0 = dimensions
    sx, sy = w0 / mw, h0 / mh
    integral = np.zeros((mh + 1, mw + 1), dtype=np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.int64), axis=0), axis=1)
    x, y = coords[:, 0].astype(np.float64), coords[:, 1].astype(np.float64)
    # mask column j has its centre at (j + 0.5) * sx: j in [ceil(x/sx - 0.5), ceil((x+size0)/sx - 0.5))
    c0 = np.clip(np.ceil(x / sx - 0.5), 0, mw).astype(np.int64)
    c1 = np.clip(np.ceil((x + size0) / sx - 0.5), 0, mw).astype(np.int64)
    r0 = np.clip(np.ceil(y / sy - 0.5), 0, mh).astype(np.int64)
    r1 = np.clip(np.ceil((y + size0) / sy - 0.5), 0, mh).astype(np.int64)
    count = (r1 - r0) * (c1 - c0)
    inside = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
    frac = np.where(count > 0, inside / np.maximum(count, 1), 0.0)
    empty = count <= 0
    if empty.any():
        cx = np.clip(((x + size0 / 2) / sx).astype(np.int64), 0, mw - 1)
        cy = np.clip(((y + size0 / 2) / sy).astype(np.int64), 0, mh - 1)
        frac[empty] = mask[cy[empty], cx[empty]].astype(np.float64)
    return frac.astype(np.float32)


def plan_tiles(slide: Slide, cfg: TilingConfig | None = None, mask: Any = None) -> TilePlan:
    """The tile grid of ``slide`` at ``cfg.target_mpp`` (see the module docstring).

    Grid: ``x = 0, stride0, 2 stride0, ...`` while ``x + size0 <= width`` (partial edge tiles dropped), same
    for ``y``, with ``size0 = round(tile_px * target_mpp / mpp)`` and ``stride0`` likewise from ``stride_px``.
    ``mask``: a bool array (or an object with ``.mask``) over the whole slide at any resolution; None keeps
    every grid tile (fraction 1)."""
    cfg = cfg or TilingConfig()
    if slide.mpp is None:
        raise DataError(missing_mpp_message(slide), source=slide.path)
    target_ds = cfg.target_mpp / slide.mpp
    size0 = max(1, int(round(cfg.tile_px * target_ds)))
    stride0 = size0 if cfg.stride_px is None else max(1, int(round(cfg.stride_px * target_ds)))
    level = slide.best_level(target_ds, cfg.level_tolerance)
    ds = slide.level_downsamples[level]
    read_px = max(1, int(round(size0 / ds)))
    w0, h0 = slide.dimensions
    nx = 0 if w0 < size0 else (w0 - size0) // stride0 + 1
    ny = 0 if h0 < size0 else (h0 - size0) // stride0 + 1
    gy, gx = np.meshgrid(np.arange(ny, dtype=np.int64) * stride0, np.arange(nx, dtype=np.int64) * stride0,
                         indexing="ij")
    coords = np.stack([gx.ravel(), gy.ravel()], axis=1).reshape(-1, 2)
    if mask is None:
        frac = np.ones(len(coords), dtype=np.float32)
    else:
        frac = tile_tissue_fraction(_mask_array(mask), slide.dimensions, coords, size0)
        keep = frac >= cfg.min_tissue
        coords, frac = coords[keep], frac[keep]
    return TilePlan(coords=np.ascontiguousarray(coords, dtype=np.int64), tissue_fraction=frac, level=level,
                    level_downsample=float(ds), read_px=read_px, size0=size0, stride0=stride0, tile_px=cfg.tile_px,
                    target_mpp=cfg.target_mpp, mpp=float(slide.mpp), grid=(int(ny), int(nx)), config=cfg)


def read_tile(slide: Slide, plan: TilePlan, i: int) -> np.ndarray:
    """Tile ``i`` of ``plan``: ``(tile_px, tile_px, 3)`` uint8 RGB."""
    x, y = (int(v) for v in plan.coords[i])
    box = slide.read_level((x, y), plan.level, (plan.read_px, plan.read_px))
    if plan.read_px == plan.tile_px:
        return box
    return resize_rgb(box, (plan.tile_px, plan.tile_px), plan.config.interpolation)


def iter_tiles(slide: Slide, plan: TilePlan, batch_size: int = 64,
               indices: Sequence[int] | np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream the tiles of ``plan`` (all, or ``indices``, in that order) as ``(idx (B,), tiles (B, t, t, 3))``;
    only one batch is in memory at a time."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    idx = np.arange(len(plan), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    for b0 in range(0, len(idx), batch_size):
        chunk = idx[b0:b0 + batch_size]
        tiles = np.empty((len(chunk), plan.tile_px, plan.tile_px, 3), dtype=np.uint8)
        for j, i in enumerate(chunk):
            tiles[j] = read_tile(slide, plan, int(i))
        yield chunk, tiles


__all__ = ["TILE_INTERPOLATIONS", "TilePlan", "TilingConfig", "iter_tiles", "plan_tiles", "read_tile",
           "tile_tissue_fraction"]
