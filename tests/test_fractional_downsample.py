"""A pyramid level whose downsample is fractional (3.9993, as CMU-1's and many scanners' levels are) is read at the
right magnification: the level is chosen by its real downsample and the region read there spans the tile's level-0
size (TRIDENT truncates the downsample to 3 and reads a 4/3 too large region; issue 25 keeps this test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

tifffile = pytest.importorskip("tifffile")

from medprobe.data.slides import open_slide  # noqa: E402
from medprobe.data.tiling import TilingConfig, plan_tiles, read_tile  # noqa: E402


def _pyramid(path: Path, w0: int, h0: int, w1: int, h1: int, mpp: float) -> np.ndarray:
    from PIL import Image

    yy, xx = np.mgrid[0:h0, 0:w0]
    img = np.stack([(xx // 7) % 256, (yy // 5) % 256, ((xx + yy) // 11) % 256], -1).astype(np.uint8)
    small = np.asarray(Image.fromarray(img).resize((w1, h1), Image.Resampling.BOX))
    ppcm = 1e4 / mpp
    with tifffile.TiffWriter(path) as tif:
        opts = {"tile": (256, 256), "photometric": "rgb"}
        tif.write(img, resolution=(ppcm, ppcm), resolutionunit="CENTIMETER", **opts)
        tif.write(small, subfiletype=1, resolution=(ppcm * w1 / w0, ppcm * h1 / h0), resolutionunit="CENTIMETER",
                  **opts)
    return img


def test_fractional_level_downsample_read_at_the_right_magnification(tmp_path: Path) -> None:
    # level 1 of 3997 x 2000 px is 1000 x 500: downsample 3.997 (x) / 4.0 (y), mean 3.9985
    w0, h0, w1, h1 = 3997, 2000, 1000, 500
    img = _pyramid(tmp_path / "frac.tif", w0, h0, w1, h1, mpp=0.125)
    slide = open_slide(tmp_path / "frac.tif")
    assert slide.level_count == 2
    ds = float(np.mean(slide.level_downsamples[1])) if np.ndim(slide.level_downsamples[1]) else \
        float(slide.level_downsamples[1])
    assert 3.99 < ds < 4.0  # fractional, below the 4x the 0.5 µm/px target needs
    plan = plan_tiles(slide, TilingConfig(target_mpp=0.5, tile_px=224, min_tissue=0.0))
    assert plan.size0 == 896  # 224 px at 0.5 µm/px = 896 level-0 px at 0.125 µm/px
    assert plan.level == 1 and abs(plan.level_downsample - ds) < 1e-6  # not truncated to 3
    assert abs(plan.read_px * plan.level_downsample - plan.size0) <= plan.level_downsample  # spans the tile
    assert plan.read_px in (224, 225)  # a 3x truncation would read 896 / 3 = 299 px
    tile = read_tile(slide, plan, 0)
    assert tile.shape == (224, 224, 3)
    # the tile shows the level-0 region it names, reduced 4x (box-mean of the pattern, within resampling error)
    x, y = (int(v) for v in plan.coords[0])
    ref = img[y:y + 896, x:x + 896].reshape(224, 4, 224, 4, 3).mean(axis=(1, 3))
    assert np.abs(tile.astype(float) - ref).mean() < 12.0
