"""Tissue detection on a slide thumbnail, with pen ink excluded.

On a thumbnail of a few µm per pixel (default 8). Ink first: green / blue ink (hues no H&E stain takes), red
ink (pure red, more saturated than eosin), black ink (very dark) and dark marker (black / dark-purple rings: dark
in every channel and absorbing blue nearly as much as green, which haematoxylin does not; strokes only, not
specks), widened by ``pen_margin_um``. Then tissue, by ``rule``:

* ``combined`` (default): the slide's glass colour is estimated (:func:`glass_reference`) and a pixel is tissue
  when it has a stain's hue (not green / cyan / blue: ink) and its glass-balanced saturation exceeds
  ``min_saturation``, or its optical density against the glass exceeds ``min_od`` and is not grey (pale stroma,
  mucin, fat), or the local spread of saturation exceeds ``min_texture`` at half that density (fat: faint
  membranes around empty cells); each feature median-filtered over ``median_px``. Made for H&E and IHC; a stain
  of green / blue hue (trichrome, Alcian blue) needs ``pen: false`` (no ink rules, every hue a stain's);
* ``saturation``: HSV saturation, median filter, Otsu threshold over the pixels that are not ink (floored at
  ``min_saturation``). It splits dense from pale tissue and drops pale stroma and fat.

Then morphological closing and opening, holes below ``max_hole_um2`` filled, ink removed, components below
``min_area_um2`` dropped. Every mask also reports ``kept_fraction``: the share of the thumbnail's
non-background area (the combined rule at its default thresholds, ink excluded) inside the mask; below
:data:`KEPT_WARNING` the slides family warns (one line, and in the record).
Areas and radii are physical (µm), converted with the thumbnail's µm per pixel. Every option is a field of
:class:`TissueConfig`, recorded with the mask (:meth:`TissueConfig.to_dict`). numpy + scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from medprobe.errors import ConfigError
from medprobe.schema import as_dict, choice, normalise_fields, opt, to_bool, to_float, to_int

if TYPE_CHECKING:
    from medprobe.data.slides import Slide

RULES = ("combined", "saturation")
DEFAULT_MIN_SATURATION = 0.05  # glass: <= 0.03 after the median filter on the real thumbnails
DEFAULT_MIN_OD = 0.04  # glass: <= 0.016 (95th percentile); mucin 0.044-0.081, fat 0.03-0.37 at 8 µm/px
DEFAULT_MIN_TEXTURE = 0.02  # glass: <= 0.004; fat: median 0.025
NEUTRAL_RATIO = 0.75  # channel densities within this ratio: grey (slide-edge shadow 0.80-0.94), not stain (<= 0.64)
KEPT_WARNING = 0.7  # a mask holding less than this share of the non-background area is reported


@dataclass(frozen=True)
class TissueConfig:
    """Tissue-mask options (each changes which tiles are kept, so each is recorded). In a task's config hash
    the section is sparse (:func:`medprobe.schema.numbers_only`): ``hash_always`` plus every changed field."""

    hash_always: ClassVar[tuple[str, ...]] = ("thumb_mpp", "pen", "rule")  # what every shipped slide task writes
    # out, and the rule (a task run before the combined rule has another hash: its masks were different)

    thumb_mpp: float = opt(8.0, norm=to_float(0.0, open_lo=True), type="float",
                           help="µm per pixel of the thumbnail the mask is computed on")
    rule: str = opt("combined", norm=choice(*RULES), type="|".join(RULES),
                    help="tissue rule: combined (saturation, optical density against the glass, texture: keeps "
                         "pale stroma, mucin and fat) or saturation (Otsu on saturation only; drops pale tissue)")
    median_px: int = opt(5, norm=to_int(1), type="int", help="median filter size on the pixel features (thumbnail px)")
    min_saturation: float = opt(DEFAULT_MIN_SATURATION, norm=to_float(0.0, 1.0), type="float",
                                help="saturation (glass-balanced) above which a pixel is tissue (combined rule); "
                                     "the floor under the Otsu threshold (saturation rule)")
    min_od: float = opt(DEFAULT_MIN_OD, norm=to_float(0.0), type="float",
                        help="optical density (sum over R, G, B, against the glass) above which a coloured pixel "
                             "is tissue: pale stroma, mucin (combined rule; 0: off)")
    min_texture: float = opt(DEFAULT_MIN_TEXTURE, norm=to_float(0.0, 1.0), type="float",
                             help="local spread (3 x 3 std) of saturation above which a pixel is tissue: fat "
                                  "(combined rule; 0: off)")
    close_um: float = opt(32.0, norm=to_float(0.0), type="float", help="morphological closing radius (µm)")
    open_um: float = opt(16.0, norm=to_float(0.0), type="float", help="morphological opening radius (µm)")
    max_hole_um2: float = opt(2e4, norm=to_float(0.0), type="float", help="holes smaller than this are filled (µm²)")
    min_area_um2: float = opt(5e3, norm=to_float(0.0), type="float",
                              help="tissue pieces smaller than this are dropped (µm²; 5000: a piece filling half "
                                   "a 224 px tile at 0.5 µm/px is kept)")
    pen: bool = opt(True, norm=to_bool, type="bool", help="exclude pen ink (green, blue, red, black, dark marker)")
    pen_margin_um: float = opt(24.0, norm=to_float(0.0), type="float", help="ink mask widened by this (µm)")
    pen_black_value: float = opt(0.2, norm=to_float(0.0, 1.0), type="float",
                                 help="pixels darker than this (HSV value) count as black ink (0: off)")
    pen_dark_value: float = opt(0.45, norm=to_float(0.0, 1.0), type="float",
                                help="dark marker: pixels darker than this in every channel (against the glass) "
                                     "whose blue/green density ratio reaches pen_dark_ratio count as ink (0: off)")
    pen_dark_ratio: float = opt(0.68, norm=to_float(0.0), type="float",
                                help="dark marker: blue/green optical-density ratio, 5 px average (marker 0.70-0.88, "
                                     "haematoxylin-dense tissue 0.55-0.66)")

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


def glass_reference(rgb: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """The slide's glass colour (R, G, B float32): the median colour of the pixels around the brightest mode of
    brightness (mean of R, G, B >= 200), leaving out pure white fill (unscanned areas, every channel >= 254) and
    ``exclude`` (ink). (255, 255, 255) when fewer than 0.2 % of the pixels are that bright (no glass in view)."""
    a = _rgb(rgb).reshape(-1, 3)
    ok = a.min(axis=1) < 254
    if exclude is not None:
        ok &= ~np.asarray(exclude, dtype=bool).ravel()
    lum = a.astype(np.int32).sum(axis=1) // 3
    bright = ok & (lum >= 200)
    if bright.sum() < max(50, 0.002 * len(a)):
        return np.full(3, 255.0, dtype=np.float32)
    hist = np.convolve(np.bincount(lum[bright], minlength=256), np.ones(5), mode="same")  # a 5-level mode
    mode = int(np.argmax(hist))
    near = bright & (np.abs(lum - mode) <= 4)
    return np.median(a[near].astype(np.float32), axis=0).astype(np.float32)


def optical_density(rgb: np.ndarray, glass: np.ndarray) -> np.ndarray:
    """Per-channel optical density against the glass, ``-log10(I / I_glass)`` clipped to [0, log10(255)]:
    (H, W, 3) float32, 0 on glass."""
    t = _rgb(rgb).astype(np.float32) / np.maximum(np.asarray(glass, dtype=np.float32), 1.0)
    return np.asarray(-np.log10(np.clip(t, 1.0 / 255.0, 1.0)), dtype=np.float32)


def dark_marker(od: np.ndarray, cfg: TissueConfig | None = None) -> np.ndarray:
    """Dark marker ink (black / dark-purple rings drawn around a lesion) from optical densities against the
    glass: darker than ``pen_dark_value`` in every channel (HSV value against the glass) with a blue / green
    optical-density ratio, averaged over the dark pixels of a 5 x 5 window, of at least ``pen_dark_ratio``; strokes
    only (a 3 x 3 opening: single dark specks are nuclei, not marker). Marker ink absorbs blue nearly as much as
    green (measured 0.70-0.88 on the pen-mark thumbnail); haematoxylin-dense tissue (lymphocytes, nuclei,
    muscle) does not (0.55-0.66 on real H&E)."""
    from scipy import ndimage as ndi

    cfg = cfg or TissueConfig()
    if cfg.pen_dark_value <= 0:
        return np.zeros(od.shape[:2], dtype=bool)
    dark = od.min(axis=2) > -np.log10(max(float(cfg.pen_dark_value), 1e-6))
    if not dark.any():
        return dark
    ratio = od[..., 2] / np.maximum(od[..., 1], 1e-3)
    num = ndi.uniform_filter(np.where(dark, ratio, 0.0).astype(np.float32), 5, mode="nearest")
    den = ndi.uniform_filter(dark.astype(np.float32), 5, mode="nearest")
    ink = dark & (num >= cfg.pen_dark_ratio * np.maximum(den, 1e-6))
    return np.asarray(ndi.binary_opening(ink, structure=np.ones((3, 3), dtype=bool)), dtype=bool)


def _colour_ink(rgb: np.ndarray, black_value: float) -> np.ndarray:
    hue, sat, val = hsv(rgb)
    green = (hue >= 70) & (hue < 180) & (sat >= 0.25)
    blue = (hue >= 180) & (hue < 235) & (sat >= 0.35)
    dred = np.minimum(hue, 360.0 - hue)
    red = ((dred <= 10) & (sat >= 0.5)) | ((dred <= 15) & (sat >= 0.65)) | ((dred <= 20) & (sat >= 0.7))
    ink = (green | blue | red) & (val > 0.05)
    if black_value > 0:
        ink |= val < black_value
    return np.asarray(ink, dtype=bool)


def pen_mask(rgb: np.ndarray, cfg: TissueConfig | None = None, glass: np.ndarray | None = None) -> np.ndarray:
    """Pen-ink pixels (before the margin): green / cyan and blue hues, pure red, black and dark marker.

    * green: hue 70-180°, saturation >= 0.25 (no H&E stain is green);
    * blue: hue 180-235°, saturation >= 0.35 (haematoxylin sits at 240-300°);
    * red: within 10° of pure red with saturation >= 0.5, within 15° with >= 0.65, or within 20° with >= 0.7
      (eosin is magenta-pink, 300-350°, and less saturated);
    * black: HSV value below ``pen_black_value``;
    * dark marker: :func:`dark_marker` (``glass``: the glass colour, default :func:`glass_reference`)."""
    cfg = cfg or TissueConfig()
    ink = _colour_ink(rgb, cfg.pen_black_value)
    if cfg.pen_dark_value > 0:
        g = glass_reference(rgb, exclude=ink) if glass is None else glass
        ink |= dark_marker(optical_density(rgb, g), cfg)
    return ink


def _disk(radius: int) -> np.ndarray:
    r = max(0, int(radius))
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return np.asarray(x * x + y * y <= r * r)


def _local_std(x: np.ndarray, size: int = 3) -> np.ndarray:
    from scipy import ndimage as ndi

    m1 = ndi.uniform_filter(x, size, mode="nearest")
    m2 = ndi.uniform_filter(x * x, size, mode="nearest")
    return np.sqrt(np.maximum(m2 - m1 * m1, 0.0)).astype(np.float32)


def _features(rgb: np.ndarray, glass: np.ndarray, median_px: int, ink_hues: bool = True) -> tuple[np.ndarray, ...]:
    """Per pixel, median-filtered over ``median_px``: saturation of the glass-balanced colour and optical density
    against the glass (summed over R, G, B); local spread (3 x 3 std) of that saturation, averaged over
    ``median_px``; from 5 x 5 means,
    whether its hue is a stain's (outside 70-235°, where no H&E or IHC stain is but green / cyan / blue ink and its
    faint residue are) and whether it is stain-coloured (that hue, and its channels' densities not within
    ``NEUTRAL_RATIO`` of each other: a shadow, the slide edge or dust is grey). ``ink_hues=False``: every hue
    is a stain's (``pen: false``)."""
    from scipy import ndimage as ndi

    od = optical_density(rgb, glass)
    balanced = (np.clip(10.0 ** -od, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    _, sat, _ = hsv(balanced)
    tex = _local_std(sat)
    od_mean = np.stack([ndi.uniform_filter(od[..., c], 5, mode="nearest") for c in range(3)], axis=2)
    hue, _, _ = hsv((np.clip(10.0 ** -od_mean, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    stain_hue = (hue < 70) | (hue >= 235) if ink_hues else np.ones(hue.shape, dtype=bool)
    coloured = stain_hue & (od_mean.min(axis=2) < NEUTRAL_RATIO * od_mean.max(axis=2))
    od_sum = od.sum(axis=2)
    if median_px > 1:  # texture is a local statistic already: a mean is enough (and a median filter is slow)
        sat, od_sum = (ndi.median_filter(x, size=int(median_px), mode="nearest") for x in (sat, od_sum))
        tex = ndi.uniform_filter(tex, size=int(median_px), mode="nearest")
    return sat, od_sum, tex, stain_hue, coloured


def _stained(features: tuple[np.ndarray, ...], min_saturation: float, min_od: float,
             min_texture: float) -> np.ndarray:
    """The combined rule on :func:`_features`: of a stain's hue and saturated, or dense and stain-coloured, or
    textured, stain-coloured and at least half as dense (fat; the edge of a piece on glass is textured too but
    not dense)."""
    sat, od_sum, tex, stain_hue, coloured = features
    mask = (sat > min_saturation) & stain_hue
    if min_od > 0:
        mask |= (od_sum > min_od) & coloured
    if min_texture > 0:
        mask |= (tex > min_texture) & coloured & (od_sum > min_od / 2)
    return np.asarray(mask, dtype=bool)


def tissue_mask(rgb: np.ndarray, cfg: TissueConfig | None = None, mpp: float | None = None,
                stats: dict[str, Any] | None = None) -> np.ndarray:
    """Tissue (True) on an (H, W, 3) uint8 thumbnail of ``mpp`` µm per pixel (None: ``cfg.thumb_mpp``).

    ``stats``, when given, receives the rule, the glass colour, the thresholds, the tissue / ink fractions, the
    share of the thumbnail that is not background (stained material by the default combined rule, ink
    excluded) and ``kept_fraction``: the share of that non-background area inside the mask (see
    :data:`KEPT_WARNING`)."""
    from scipy import ndimage as ndi

    cfg = cfg or TissueConfig()
    px_um = float(mpp if mpp is not None else cfg.thumb_mpp)
    if not np.isfinite(px_um) or px_um <= 0:
        raise ConfigError(f"thumbnail mpp must be positive, got {mpp!r}")
    a = _rgb(rgb)
    colour_ink = _colour_ink(a, cfg.pen_black_value) if cfg.pen else np.zeros(a.shape[:2], dtype=bool)
    glass = glass_reference(a, exclude=colour_ink)
    dark = np.zeros(a.shape[:2], dtype=bool)
    if cfg.pen and cfg.pen_dark_value > 0:
        dark = dark_marker(optical_density(a, glass), cfg)
    ink = colour_ink | dark
    wide = ink
    if cfg.pen and ink.any():
        r_margin = round(cfg.pen_margin_um / px_um)
        strokes = ndi.binary_opening(ink, structure=np.ones((3, 3), dtype=bool))  # specks are not strokes
        if r_margin > 0 and strokes.any():
            wide = ndi.binary_dilation(strokes, structure=_disk(r_margin)) | ink
    # what is not background: the combined rule at its default thresholds, whatever rule builds the mask
    feats = _features(a, glass, int(cfg.median_px), ink_hues=cfg.pen)
    nonbg = _stained(feats, DEFAULT_MIN_SATURATION, DEFAULT_MIN_OD, DEFAULT_MIN_TEXTURE) & ~wide
    otsu = None
    if cfg.rule == "saturation":
        _, sat, _ = hsv(a)
        if cfg.median_px > 1:
            sat = ndi.median_filter(sat, size=int(cfg.median_px), mode="nearest")
        otsu = otsu_threshold(sat[~ink] if (~ink).any() else sat)  # ink would pull the threshold up
        thr = max(otsu, cfg.min_saturation)
        mask = sat > thr
    else:
        thr = cfg.min_saturation
        # ink never joins tissue pieces, nor turns a ring drawn on glass into a filled hole
        mask = _stained(feats, cfg.min_saturation, cfg.min_od, cfg.min_texture) & ~wide
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
        mask = mask & ~wide
    if cfg.min_area_um2 > 0 and mask.any():
        lab, n = ndi.label(mask)
        sizes = np.bincount(lab.ravel(), minlength=n + 1) * px_area
        big = sizes >= cfg.min_area_um2
        big[0] = False
        mask = big[lab]
    if stats is not None:
        n_bg = int(nonbg.sum())
        stats.update({"rule": cfg.rule, "glass": [round(float(v), 1) for v in glass], "threshold": float(thr),
                      "tissue_fraction": float(mask.mean()), "pen_fraction": float(ink.mean()),
                      "dark_marker_fraction": float(dark.mean()), "nonbackground_fraction": float(nonbg.mean()),
                      "kept_fraction": float((mask & nonbg).sum() / n_bg) if n_bg else 1.0,
                      "thumb_mpp": px_um})
        if otsu is not None:
            stats["otsu_threshold"] = otsu
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


__all__ = ["KEPT_WARNING", "RULES", "TissueConfig", "TissueMask", "dark_marker", "detect_tissue", "glass_reference",
           "hsv", "optical_density", "otsu_threshold", "pen_mask", "save_mask_png", "tissue_mask"]
