"""Tissue masks: pen ink excluded (checked against ink found here by plain RGB rules), Otsu, holes, minimum area."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medprobe.errors import ConfigError
from medprobe.preprocess.tissue import (
    TissueConfig,
    detect_tissue,
    otsu_threshold,
    pen_mask,
    save_mask_png,
    tissue_mask,
)

THUMBS = "wsi-samples/thumbnails"


def rgb_ink(a: np.ndarray) -> np.ndarray:
    """Confident ink by RGB channel rules (independent of the library's HSV rules)."""
    r, g, b = (a[..., i].astype(int) for i in range(3))
    green = (g > r + 40) & (g > b - 25) & (g > 60)
    blue = (b > r + 60) & (b > g + 25)
    red = (r > 150) & (r - np.maximum(g, b) > 100)
    black = np.maximum(np.maximum(r, g), b) < 35
    return green | blue | red | black


def load(shared: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(shared / THUMBS / name).convert("RGB"))


@pytest.mark.parametrize("name, min_ink", [("tcga-green-pen.png", 0.02), ("tcga-red-pen.png", 0.08),
                                           ("wsi-blue-pen.png", 0.01), ("diagnostic-slide-thumb-rgb.png", 0.05)])
def test_pen_ink_is_excluded(shared_data: Path, name: str, min_ink: float) -> None:
    a = load(shared_data, name)
    ink = rgb_ink(a)
    assert ink.mean() >= min_ink  # the thumbnail really has ink for this test to mean something
    stats: dict = {}
    mask = tissue_mask(a, stats=stats)
    left = (mask & ink).sum()  # ink left in the tissue mask (measured: 0-2.1 %, the rest at faint stroke edges)
    assert left <= 0.03 * ink.sum()
    assert mask.mean() > 0.15 and stats["pen_fraction"] > 0  # tissue is still found
    without = tissue_mask(a, TissueConfig(pen=False))
    assert (without & ink).sum() > 0.5 * ink.sum()  # without the pen rules most ink passes as tissue
    assert left <= 0.05 * (without & ink).sum()


def test_no_pen_no_ink_and_tissue_found(shared_data: Path) -> None:
    a = load(shared_data, "tcga-lung-rgb.png")
    assert pen_mask(a).mean() < 0.005 and rgb_ink(a).mean() < 0.005
    mask = tissue_mask(a)
    assert 0.5 < mask.mean() < 0.95
    # ink does not drag the threshold up: the red-pen thumbnail keeps its tissue (Otsu over non-ink pixels)
    st: dict = {}
    red = load(shared_data, "tcga-red-pen.png")
    assert tissue_mask(red, stats=st).mean() > 0.3 and st["otsu_threshold"] < 0.4


def test_otsu_matches_scikit_image() -> None:
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(0)
    v = np.clip(np.concatenate([rng.normal(0.05, 0.02, 5000), rng.normal(0.45, 0.08, 3000)]), 0, 1)
    assert otsu_threshold(v) == pytest.approx(threshold_otsu(v, nbins=256), abs=1.5 / 256)
    assert 0.1 < otsu_threshold(v) < 0.35


def test_holes_and_minimum_area_are_physical() -> None:
    a = np.full((120, 160, 3), 235, dtype=np.uint8)  # glass
    pink = (200, 110, 170)
    a[10:90, 10:90] = pink  # a large piece (80 x 80 px)
    a[40:44, 40:44] = 235  # a 16 px hole -> filled
    a[20:40, 60:80] = 235  # a 400 px hole -> kept
    a[100:104, 120:124] = pink  # a 16 px speck -> dropped
    cfg = TissueConfig(close_um=0, open_um=0, median_px=1, max_hole_um2=100 * 4.0, min_area_um2=100 * 4.0,
                       pen_margin_um=0)
    m = tissue_mask(a, cfg, mpp=2.0)  # 4 µm² per pixel: 100 px thresholds
    assert m[42, 42] and not m[30, 70] and not m[101, 121] and m[50, 50] and not m[5, 5]
    m2 = tissue_mask(a, cfg, mpp=0.5)  # same pixels at a finer scale: 0.25 µm² per pixel, 1600 px thresholds
    assert m2[30, 70] and not m2[101, 121]
    m3 = tissue_mask(a, TissueConfig(close_um=0, open_um=0, median_px=1, max_hole_um2=0, min_area_um2=0), mpp=2.0)
    assert not m3[42, 42] and m3[101, 121]


def test_detect_tissue_on_a_slide_and_save_png(shared_data: Path, tmp_path: Path) -> None:
    from medprobe.data.slides import open_slide

    slide = open_slide(shared_data / "wsi-samples/cmu-1-small-region.svs")
    tm = detect_tissue(slide)
    h, w = round(2967 * 0.499 / 8), round(2220 * 0.499 / 8)
    assert tm.mask.shape == tm.thumbnail.shape[:2] == (h, w) == (185, 138)
    assert tm.downsample == pytest.approx((2220 / w, 2967 / h)) and tm.mpp == pytest.approx(8.0, rel=0.01)
    assert 0.1 < tm.mask.mean() < 0.9 and tm.to_dict()["config"]["thumb_mpp"] == 8.0
    from medprobe.data.tiling import plan_tiles

    plan = plan_tiles(slide, mask=tm)  # a TissueMask or its array: the same tiles
    np.testing.assert_array_equal(plan.coords, plan_tiles(slide, mask=tm.mask).coords)
    assert 0 < len(plan) < plan.grid[0] * plan.grid[1] and (plan.tissue_fraction >= 0.5).all()
    out = tmp_path / "mask.png"
    save_mask_png(tm, out)
    back = np.asarray(Image.open(out))
    assert back.dtype == np.uint8 and set(np.unique(back)) <= {0, 255}
    np.testing.assert_array_equal(back > 0, tm.mask)


def test_tissue_config_checks() -> None:
    from medprobe.schema import parse_section

    with pytest.raises(ConfigError, match="thumb_mpp"):
        TissueConfig(thumb_mpp=0)
    with pytest.raises(ConfigError, match="min_saturation"):
        TissueConfig(min_saturation=2)
    cfg = parse_section(TissueConfig, {"thumb_mpp": 4, "pen": "no"}, "tissue", "t.yaml")
    assert cfg.thumb_mpp == 4.0 and cfg.pen is False and cfg.to_dict()["min_area_um2"] == 2e4
    with pytest.raises(ConfigError):
        tissue_mask(np.zeros((4, 4), dtype=np.uint8))
