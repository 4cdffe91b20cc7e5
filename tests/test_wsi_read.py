"""Slide reading and tiling on the real slides in ../shared/data/wsi-samples and on small TIFFs written here.

Tile grids and tissue fractions are checked against an independent computation written directly from
OpenSlide's level sizes and a numpy mask (pixel-centre loops, not the integral image the library uses)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from medprobe.data import RegionSource
from medprobe.data.slides import open_slide
from medprobe.data.tiling import TilingConfig, iter_tiles, plan_tiles, read_tile
from medprobe.errors import ConfigError, DataError

CMU = "wsi-samples/cmu-1-small-region.svs"
TCGA = "wsi-samples/tcga-cr-7395-01a-01-ts1.svs"
KIDNEY = "wsi-samples/kidney-48-5.tif"
BROKEN = "wsi-samples/broken.svs"


def independent_tiles(path: Path, mpp: float, mask: np.ndarray | None, target_mpp: float = 0.5, tile: int = 224,
                      min_tissue: float = 0.5) -> tuple[list[tuple[int, int]], int, int]:
    """(kept level-0 (x, y) list, level, level-0 tile side) computed from OpenSlide directly."""
    osr = openslide.OpenSlide(str(path))
    w0, h0 = osr.level_dimensions[0]
    want = target_mpp / mpp
    level = max((i for i, d in enumerate(osr.level_downsamples) if d <= want * 1.01),
                key=lambda i: osr.level_downsamples[i])
    side = int(round(tile * want))
    kept = []
    for y in range(0, h0 - side + 1, side):
        for x in range(0, w0 - side + 1, side):
            if mask is None:
                kept.append((x, y))
                continue
            mh, mw = mask.shape
            cx = (np.arange(mw) + 0.5) * (w0 / mw)
            cy = (np.arange(mh) + 0.5) * (h0 / mh)
            cols = (cx >= x) & (cx < x + side)
            rows = (cy >= y) & (cy < y + side)
            frac = mask[np.ix_(rows, cols)].mean()
            if frac >= min_tissue:
                kept.append((x, y))
    osr.close()
    return kept, level, side


def blocky_mask(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.random((max(2, h // 7), max(2, w // 7))) > 0.5
    return np.kron(coarse, np.ones((7, 7), dtype=bool))[:h, :w].astype(bool)


def test_cmu_svs_tiles_at_half_micron(shared_data: Path) -> None:
    path = shared_data / CMU
    slide = open_slide(path)
    assert slide.backend == "openslide" and slide.mpp == pytest.approx(0.499)
    assert "header" in slide.mpp_source and slide.dimensions == (2220, 2967)
    full = plan_tiles(slide)  # no mask: every whole tile of the grid
    kept, level, side = independent_tiles(path, 0.499, None)
    assert (full.level, full.size0, full.read_px, full.tile_px) == (level, side, 224, 224) == (0, 224, 224, 224)
    assert full.coords.dtype == np.int64 and [tuple(c) for c in full.coords.tolist()] == kept
    assert len(full) == (2220 // 224) * (2967 // 224) and full.grid == (2967 // 224, 2220 // 224)
    for seed, shape in ((0, (185, 139)), (1, (61, 47))):  # two mask resolutions
        mask = blocky_mask(*shape, seed)
        plan = plan_tiles(slide, TilingConfig(min_tissue=0.5), mask=mask)
        kept, _, _ = independent_tiles(path, 0.499, mask)
        assert 0 < len(kept) < len(full)
        assert [tuple(c) for c in plan.coords.tolist()] == kept
        assert (plan.tissue_fraction >= 0.5).all()
    # a tile is the level-0 box itself (read_px == tile_px): identical to OpenSlide's pixels
    osr = openslide.OpenSlide(str(path))
    x, y = (int(v) for v in full.coords[17])
    ref = np.asarray(osr.read_region((x, y), 0, (224, 224)))[..., :3]
    np.testing.assert_array_equal(read_tile(slide, full, 17), ref)
    osr.close()


def test_tcga_svs_needs_mpp_then_tiles_from_level_1(shared_data: Path) -> None:
    path = shared_data / TCGA
    with pytest.raises(DataError) as e:
        open_slide(path)
    msg = str(e.value)
    assert "\n" not in msg and path.name in msg and "mpp" in msg
    slide = open_slide(path, mpp=0.25)
    assert slide.mpp == 0.25 and slide.mpp_source.startswith("option") and slide.level_count == 2
    plan = plan_tiles(slide)
    kept, level, side = independent_tiles(path, 0.25, None)
    # downsample 2.0005 serves the wanted 2.0 (within the 1 % tolerance): read 224 px at level 1
    assert (plan.level, plan.size0, plan.read_px) == (level, side, 224) == (1, 448, 224)
    assert [tuple(c) for c in plan.coords.tolist()] == kept and len(plan) == (4443 // 448) * (3567 // 448)
    osr = openslide.OpenSlide(str(path))
    x, y = (int(v) for v in plan.coords[5])
    ref = np.asarray(osr.read_region((x, y), 1, (224, 224)))[..., :3]
    np.testing.assert_array_equal(read_tile(slide, plan, 5), ref)
    osr.close()
    strict = plan_tiles(slide, TilingConfig(level_tolerance=0.0))  # without tolerance: level 0, resized
    assert (strict.level, strict.read_px, strict.tile_px) == (0, 448, 224)
    assert read_tile(slide, strict, 5).shape == (224, 224, 3)
    mask = blocky_mask(111, 139, 3)
    plan_m = plan_tiles(slide, mask=mask)
    kept_m, _, _ = independent_tiles(path, 0.25, mask)
    assert [tuple(c) for c in plan_m.coords.tolist()] == kept_m and 0 < len(kept_m) < len(plan)
    # without mpp the slide opens on request, but tiling still says what is missing
    loose = open_slide(path, require_mpp=False)
    assert loose.mpp is None
    with pytest.raises(DataError, match="no pixel size"):
        plan_tiles(loose)


def test_broken_and_missing_files_one_line(shared_data: Path, tmp_path: Path) -> None:
    for p, what in ((shared_data / BROKEN, "not a readable slide"), (tmp_path / "nope.svs", "not found")):
        with pytest.raises(DataError) as e:
            open_slide(p, mpp=0.5)
        msg = str(e.value)
        assert "\n" not in msg and p.name in msg and what in msg


def test_kidney_plain_tiff_reads_through_non_pyramidal_path(shared_data: Path) -> None:
    path = shared_data / KIDNEY
    with pytest.raises(openslide.OpenSlideError):  # OpenSlide refuses it ...
        openslide.OpenSlide(str(path))
    with pytest.raises(DataError, match="kidney-48-5.tif: no pixel size"):
        open_slide(path)
    slide = open_slide(path, mpp=2.0)  # ... tifffile reads it
    ref = tifffile.imread(path)
    assert slide.backend == "tiff" and slide.level_count == 1 and slide.dimensions == (ref.shape[1], ref.shape[0])
    np.testing.assert_array_equal(slide.read_level((250, 130), 0, (300, 200)), ref[130:330, 250:550])
    edge = slide.read_level((ref.shape[1] - 10, -5), 0, (20, 10))  # outside -> white
    np.testing.assert_array_equal(edge[5:, :10], ref[:5, -10:])
    assert (edge[:5] == 255).all() and (edge[:, 10:] == 255).all()
    plan = plan_tiles(slide, TilingConfig(target_mpp=4.0, tile_px=32))
    assert plan.size0 == 64 and len(plan) == (ref.shape[1] // 64) * (ref.shape[0] // 64)
    tiles = np.concatenate([t for _, t in iter_tiles(slide, plan, batch_size=7)])
    from PIL import Image

    x, y = (int(v) for v in plan.coords[9])
    want = np.asarray(Image.fromarray(ref[y:y + 64, x:x + 64]).resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(tiles[9], want)
    assert isinstance(slide, RegionSource) and slide.shape == ref.shape[:2]
    np.testing.assert_array_equal(slide.read_region(10, 20, 30, 40), ref[10:40, 20:60])
    assert slide.read_region(0, 0, 100, 60, scale=0.5).shape == (50, 30, 3)


def test_thumbnail_streams_in_bands(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medprobe.data import slides as slides_mod

    slide = open_slide(shared_data / CMU)
    one = slide.thumbnail(target_mpp=8.0)
    assert one.shape == (round(2967 / (8 / 0.499)), round(2220 / (8 / 0.499)), 3)
    reads: list[tuple[int, int]] = []
    orig = slide.read_level

    def spy(location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        reads.append(size)
        return orig(location, level, size)

    monkeypatch.setattr(slides_mod, "BAND_PIXELS", 2220 * 100)
    monkeypatch.setattr(slide, "read_level", spy)
    banded = slide.thumbnail(target_mpp=8.0)
    assert len(reads) > 20 and max(h for _, h in reads) <= 120  # never the whole level at once
    assert np.abs(banded.astype(int) - one.astype(int)).max() <= 2
    assert slide.thumbnail(max_px=100).shape[0] == 100


def test_generated_tiffs_strips_tiles_and_pickling(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (300, 410, 3), dtype=np.uint8)
    strip = tmp_path / "strips.tif"  # zlib strips: OpenSlide refuses, tifffile decodes only the strips touched
    tifffile.imwrite(strip, a, rowsperstrip=32, compression="zlib", resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER")
    s = open_slide(strip)
    assert s.backend == "tiff" and s.mpp == pytest.approx(0.5) and "TIFF resolution" in s.mpp_source
    np.testing.assert_array_equal(s.read_level((33, 50), 0, (200, 100)), a[50:150, 33:233])
    assert sorted(i for _, i in s._b.cache) == [0, 1, 2, 3, 4]  # strip 0 (probed at open) and the 4 touched
    s2 = pickle.loads(pickle.dumps(s))  # the handle is dropped and reopened
    np.testing.assert_array_equal(s2.read_level((400, 290), 0, (10, 10)), a[290:300, 400:410])
    s.close()
    s2.close()

    tiled = tmp_path / "pyramid.tif"  # generic tiled pyramid (levels as pages): OpenSlide, mpp from the tags
    with tifffile.TiffWriter(tiled) as w:
        w.write(a, tile=(64, 64), compression="zlib", resolution=(1e4 / 0.25, 1e4 / 0.25),
                resolutionunit="CENTIMETER")
        w.write(a[::2, ::2], tile=(64, 64), compression="zlib", subfiletype=1)
    t = open_slide(tiled)
    assert t.backend == "openslide" and t.mpp == pytest.approx(0.25) and t.level_count == 2
    np.testing.assert_array_equal(t.read_level((64, 32), 0, (100, 50)), a[32:82, 64:164])
    plan = plan_tiles(t, TilingConfig(target_mpp=0.5, tile_px=32))
    assert (plan.level, plan.read_px, plan.size0) == (1, 32, 64)
    np.testing.assert_array_equal(read_tile(t, plan, 3), a[::2, ::2][0:32, 96:128])
    batches = list(iter_tiles(t, plan, batch_size=4, indices=[5, 1, 2]))
    assert [b[0].tolist() for b in batches] == [[5, 1, 2]]
    np.testing.assert_array_equal(batches[0][1][0], read_tile(t, plan, 5))

    smooth = np.dstack([np.add.outer(np.arange(300), np.arange(410)) % 256] * 3).astype(np.uint8)
    jtif = tmp_path / "jpeg-strips.tif"  # JPEG strips tifffile cannot decode without imagecodecs: Pillow reads it
    Image.fromarray(smooth).save(jtif, compression="jpeg", dpi=(25400 / 0.5, 25400 / 0.5))
    jt = open_slide(jtif, mpp=0.5)
    assert jt.backend in ("tiff", "pillow")
    assert np.abs(jt.read_level((5, 7), 0, (64, 32)).astype(int) - smooth[7:39, 5:69]).mean() < 3

    dpi72 = tmp_path / "screen.tif"  # a 72-dpi default is not a microscope scale
    tifffile.imwrite(dpi72, a, resolution=(72, 72), resolutionunit="INCH")
    with pytest.raises(DataError, match="screen.tif: no pixel size"):
        open_slide(dpi72)

    png = tmp_path / "slide.png"  # PNG / JPEG slides (BCNB ships JPEG): Pillow, mpp from the option
    Image.fromarray(a).save(png)
    with pytest.raises(DataError, match="slide.png: no pixel size"):
        open_slide(png)
    j = open_slide(png, mpp=0.5)
    assert j.backend == "pillow" and j.dimensions == (410, 300) and j.level_count == 1
    np.testing.assert_array_equal(j.read_level((10, 10), 0, (50, 40)), a[10:50, 10:60])
    jpg = tmp_path / "slide.jpg"
    Image.fromarray(smooth).save(jpg, quality=95)
    got = open_slide(jpg, mpp=0.5).read_level((10, 10), 0, (50, 40)).astype(int)
    assert np.abs(got - smooth[10:50, 10:60]).mean() < 3


def test_tiling_config_checks() -> None:
    from medprobe.schema import parse_section

    with pytest.raises(ConfigError, match="tiling.target_mpp"):
        TilingConfig(target_mpp=0)
    with pytest.raises(ConfigError, match="tiling.min_tissue"):
        TilingConfig(min_tissue=1.5)
    cfg = parse_section(TilingConfig, {"target_mpp": "0.25", "tile_px": 256}, "tiling", "t.yaml")
    assert (cfg.target_mpp, cfg.tile_px, cfg.min_tissue) == (0.25, 256, 0.5)
    assert cfg.to_dict()["interpolation"] == "bilinear"
    with pytest.raises(ConfigError, match="tile_pz"):
        parse_section(TilingConfig, {"tile_pz": 3}, "tiling", "t.yaml")


def write_dicom_wsi_level(path: Path, img: np.ndarray, tile: int, uids: tuple[str, str, str], mpp: float,
                          image_type: list[str], instance: int) -> None:
    """One level of a DICOM whole-slide image (VL WSI, TILED_FULL, uncompressed RGB frames) with pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    h, w, _ = img.shape
    frames = []
    for ty in range(-(-h // tile)):
        for tx in range(-(-w // tile)):
            t = np.full((tile, tile, 3), 255, np.uint8)
            part = img[ty * tile:(ty + 1) * tile, tx * tile:(tx + 1) * tile]
            t[:part.shape[0], :part.shape[1]] = part
            frames.append(t)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uids
    ds.Modality, ds.ImageType, ds.InstanceNumber = "SM", image_type, instance
    ds.PatientID, ds.PatientName, ds.ContainerIdentifier = "p", "p", "slide1"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = tile, tile, 3, "RGB"
    ds.PlanarConfiguration, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 0, 8, 8, 7, 0
    ds.NumberOfFrames, ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = len(frames), w, h
    ds.DimensionOrganizationType, ds.TotalPixelMatrixFocalPlanes = "TILED_FULL", 1
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = w * mpp / 1000, h * mpp / 1000
    pm = Dataset()
    pm.PixelSpacing, pm.SliceThickness = [mpp / 1000, mpp / 1000], 0.001
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([pm])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    op = Dataset()
    op.OpticalPathIdentifier = "1"
    ds.OpticalPathSequence, ds.NumberOfOpticalPaths = Sequence([op]), 1
    ds.PixelData = np.stack(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_wsi_through_openslide(tmp_path: Path) -> None:
    from pydicom.uid import generate_uid

    a = np.random.default_rng(1).integers(0, 256, (300, 410, 3), dtype=np.uint8)
    uids = (generate_uid(), generate_uid(), generate_uid())
    write_dicom_wsi_level(tmp_path / "l0.dcm", a, 128, uids, 0.25, ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"], 1)
    write_dicom_wsi_level(tmp_path / "l1.dcm", a[::2, ::2], 128, uids, 0.5,
                          ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"], 2)
    s = open_slide(tmp_path / "l0.dcm")  # any file of the series opens the whole pyramid
    assert s.backend == "openslide" and s.properties["openslide.vendor"] == "dicom"
    assert s.mpp == pytest.approx(0.25) and s.level_dimensions == ((410, 300), (205, 150))
    np.testing.assert_array_equal(s.read_level((50, 20), 0, (100, 60)), a[20:80, 50:150])
    plan = plan_tiles(s, TilingConfig(target_mpp=0.5, tile_px=64))
    assert (plan.level, plan.read_px, len(plan)) == (1, 64, (410 // 128) * (300 // 128))
    np.testing.assert_array_equal(read_tile(s, plan, 1), a[::2, ::2][0:64, 64:128])
