"""Tissue detection on a slide thumbnail, with pen ink excluded.

On a thumbnail of a few µm per pixel (default 8): HSV saturation, median filter, Otsu threshold over the
pixels that are not ink (floored at ``min_saturation``), morphological closing then opening, holes below
``max_hole_um2`` filled; then ink is removed -- green / blue ink (hues no H&E stain takes), red ink (pure red,
more saturated than eosin) and black ink (very dark) -- widened by ``pen_margin_um``; finally components below
``min_area_um2`` are dropped.
Areas and radii are physical (µm), converted with the thumbnail's µm per pixel. Every option is a field of
:class:`TissueConfig`, recorded with the mask (:meth:`TissueConfig.to_dict`). numpy + scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from medprobe.errors import ConfigError
from medprobe.schema import as_dict, normalise_fields, opt, to_bool, to_float, to_int

if TYPE_CHECKING:
    from medprobe.data.slides import Slide


@dataclass(frozen=True)
class TissueConfig:
    """Tissue-mask options (each changes which tiles are kept, so each is recorded). In a task's config hash
    the section is sparse (:func:`medprobe.schema.numbers_only`): ``hash_always`` plus every changed field."""

    hash_always: ClassVar[tuple[str, ...]] = ("thumb_mpp", "pen")  # what every shipped slide task writes out

    thumb_mpp: float = opt(8.0, norm=to_float(0.0, open_lo=True), type="float",
                           help="µm per pixel of the thumbnail the mask is computed on")
    median_px: int = opt(5, norm=to_int(1), type="int", help="median filter size on saturation (thumbnail px)")
    min_saturation: float = opt(0.05, norm=to_float(0.0, 1.0), type="float",
                                help="saturation floor under the Otsu threshold (a blank slide stays blank)")
    close_um: float = opt(32.0, norm=to_float(0.0), type="float", help="morphological closing radius (µm)")
    open_um: float = opt(16.0, norm=to_float(0.0), type="float", help="morphological opening radius (µm)")
    max_hole_um2: float = opt(2e4, norm=to_float(0.0), type="float", help="holes smaller than this are filled (µm²)")
    min_area_um2: float = opt(2e4, norm=to_float(0.0), type="float",
                              help="tissue pieces smaller than this are dropped (µm²)")
    pen: bool = opt(True, norm=to_bool, type="bool", help="exclude pen ink (green, blue, red, black)")
    pen_margin_um: float = opt(24.0, norm=to_float(0.0), type="float", help="ink mask widened by this (µm)")
    pen_black_value: float = opt(0.2, norm=to_float(0.0, 1.0), type="float",
                                 help="pixels darker than this (HSV value) count as black ink (0: off)")

    def __post_init__(self) -> None:
        normalise_fields(self, "tissue.")  # built in code or parsed from a task: the same checks and values

    def to_dict(self) -> dict[str, Any]:
        return dict(as_dict(self))


def _rgb(rgb: np.ndarray) -> np.ndarray:
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8:
        raise ConfigError(f"tissue detection needs an (H, W, 3) uint8 RGB thumbnail, got {a.shape} {a.dtype}")
    return a[..., :3]


def hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation and value in [0, 1] of an (H, W, 3) uint8 image (float32 each)."""
    a = _rgb(rgb).astype(np.float32) / 255.0
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    mx, mn = a.max(axis=2), a.min(axis=2)
    d = mx - mn
    sat = np.where(mx > 0, d / np.maximum(mx, 1e-12), 0.0).astype(np.float32)
    dd = np.maximum(d, 1e-12)
    hue = np.where(mx == r, np.mod((g - b) / dd, 6.0), np.where(mx == g, (b - r) / dd + 2.0, (r - g) / dd + 4.0))
    hue = np.where(d > 0, hue * 60.0, 0.0).astype(np.float32)
    return hue, sat, mx.astype(np.float32)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (the bin edge maximising the between-class variance)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return 0.0
    hist, edges = np.histogram(v, bins=bins, range=(0.0, 1.0))
    p = hist.astype(np.float64) / v.size
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(p)
    m = np.cumsum(p * centres)
    mt = m[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    k = int(np.argmax(between))
    return float(edges[k + 1])


def pen_mask(rgb: np.ndarray, cfg: TissueConfig | None = None) -> np.ndarray:
    """Pen-ink pixels (before the margin): green / cyan and blue hues, pure red, and black.

    * green: hue 70-180°, saturation >= 0.25 (no H&E stain is green);
    * blue: hue 180-235°, saturation >= 0.35 (haematoxylin sits at 240-300°);
    * red: within 10° of pure red with saturation >= 0.5, within 15° with >= 0.65, or within 20° with >= 0.7
      (eosin is magenta-pink, 300-350°, and less saturated);
    * black: HSV value below ``pen_black_value``."""
    cfg = cfg or TissueConfig()
    hue, sat, val = hsv(rgb)
    green = (hue >= 70) & (hue < 180) & (sat >= 0.25)
    blue = (hue >= 180) & (hue < 235) & (sat >= 0.35)
    dred = np.minimum(hue, 360.0 - hue)
    red = ((dred <= 10) & (sat >= 0.5)) | ((dred <= 15) & (sat >= 0.65)) | ((dred <= 20) & (sat >= 0.7))
    ink = (green | blue | red) & (val > 0.05)
    if cfg.pen_black_value > 0:
        ink |= val < cfg.pen_black_value
    return np.asarray(ink, dtype=bool)


def _disk(radius: int) -> np.ndarray:
    r = max(0, int(radius))
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return np.asarray(x * x + y * y <= r * r)


def tissue_mask(rgb: np.ndarray, cfg: TissueConfig | None = None, mpp: float | None = None,
                stats: dict[str, Any] | None = None) -> np.ndarray:
    """Tissue (True) on an (H, W, 3) uint8 thumbnail of ``mpp`` µm per pixel (None: ``cfg.thumb_mpp``).

    ``stats``, when given, receives the Otsu threshold, the threshold used, and the tissue / ink fractions."""
    from scipy import ndimage as ndi

    cfg = cfg or TissueConfig()
    px_um = float(mpp if mpp is not None else cfg.thumb_mpp)
    if not np.isfinite(px_um) or px_um <= 0:
        raise ConfigError(f"thumbnail mpp must be positive, got {mpp!r}")
    _, sat, _ = hsv(rgb)
    ink = pen_mask(rgb, cfg) if cfg.pen else np.zeros(sat.shape, dtype=bool)
    if cfg.median_px > 1:
        sat = ndi.median_filter(sat, size=int(cfg.median_px), mode="nearest")
    otsu = otsu_threshold(sat[~ink] if (~ink).any() else sat)  # ink would pull the threshold up
    thr = max(otsu, cfg.min_saturation)
    mask = sat > thr
    r_close, r_open = round(cfg.close_um / px_um), round(cfg.open_um / px_um)
    if r_close > 0:
        pad = r_close + 1  # closing without the border effect of an unpadded erosion
        mask = ndi.binary_closing(np.pad(mask, pad), structure=_disk(r_close))[pad:-pad, pad:-pad]
    if r_open > 0:
        mask = ndi.binary_opening(mask, structure=_disk(r_open))
    px_area = px_um * px_um
    if cfg.max_hole_um2 > 0:
        holes = ndi.binary_fill_holes(mask) & ~mask
        lab, n = ndi.label(holes)
        if n:
            sizes = np.bincount(lab.ravel(), minlength=n + 1) * px_area
            small = sizes < cfg.max_hole_um2
            small[0] = False
            mask = mask | small[lab]
    if cfg.pen:
        r_margin = round(cfg.pen_margin_um / px_um)
        strokes = ndi.binary_opening(ink, structure=np.ones((3, 3), dtype=bool))  # specks are not strokes
        wide = ndi.binary_dilation(strokes, structure=_disk(r_margin)) if r_margin > 0 and strokes.any() else ink
        wide |= ink
        mask = mask & ~wide
    if cfg.min_area_um2 > 0 and mask.any():
        lab, n = ndi.label(mask)
        sizes = np.bincount(lab.ravel(), minlength=n + 1) * px_area
        big = sizes >= cfg.min_area_um2
        big[0] = False
        mask = big[lab]
    if stats is not None:
        stats.update({"otsu_threshold": otsu, "threshold": thr, "tissue_fraction": float(mask.mean()),
                      "pen_fraction": float(ink.mean()), "thumb_mpp": px_um})
    return np.asarray(mask, dtype=bool)


@dataclass
class TissueMask:
    """A tissue mask over a whole slide: ``mask`` (h, w) bool at ``mpp`` µm/px; ``downsample`` = level-0 px per
    mask px along (x, y); the thumbnail it was computed on; the options and statistics."""

    mask: np.ndarray
    mpp: float
    downsample: tuple[float, float]
    config: TissueConfig
    thumbnail: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data record (no arrays)."""
        return {"shape": list(self.mask.shape), "mpp": self.mpp, "downsample": list(self.downsample),
                "config": self.config.to_dict(), "stats": dict(self.stats)}


def detect_tissue(slide: Slide, cfg: TissueConfig | None = None) -> TissueMask:
    """Thumbnail ``slide`` at ``cfg.thumb_mpp`` (streamed from the best level) and detect its tissue.

    The slide must know its pixel size (``open_slide(path, mpp=...)``)."""
    cfg = cfg or TissueConfig()
    thumb = slide.thumbnail(target_mpp=cfg.thumb_mpp)
    w0, h0 = slide.dimensions
    ds = (w0 / thumb.shape[1], h0 / thumb.shape[0])
    mpp = float(slide.mpp) * (ds[0] + ds[1]) / 2.0 if slide.mpp else cfg.thumb_mpp
    stats: dict[str, Any] = {}
    mask = tissue_mask(thumb, cfg, mpp=mpp, stats=stats)
    return TissueMask(mask=mask, mpp=mpp, downsample=ds, config=cfg, thumbnail=thumb, stats=stats)


def save_mask_png(mask: TissueMask | np.ndarray, path: str | Path) -> None:
    """Write a mask as an 8-bit PNG (tissue 255, background 0), atomically."""
    from medprobe.data.io import write_png

    m = mask.mask if isinstance(mask, TissueMask) else np.asarray(mask)
    write_png(path, m.astype(bool))


__all__ = ["TissueConfig", "TissueMask", "detect_tissue", "hsv", "otsu_threshold", "pen_mask", "save_mask_png",
           "tissue_mask"]
