"""Segmentation datasets: MSD / nnU-Net (msd.py), 2D image+mask folders (seg2d.py), EM stacks (em.py)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medprobe.data import create_dataset, dataset_kinds
from medprobe.data.io import write_png
from medprobe.data.msd import (
    drop_invalid,
    modality_from_names,
    resample_item,
    restore_to_original,
    validate_all,
)
from medprobe.errors import ConfigError, DataError

HIPPO = "msd-task04-hippocampus"


# ------------------------------------------------------------------------------------------ helpers
def _save_nii(path: Path, arr: np.ndarray, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))


def _case_arrays(rng: np.random.Generator, shape=(10, 9, 6)) -> tuple[np.ndarray, np.ndarray]:
    img = rng.normal(100, 20, size=shape).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    lab[2:6, 2:5, 1:4] = 1
    lab[6:8, 5:7, 2:5] = 2
    return img, lab


def _one_line(e: pytest.ExceptionInfo, case: str, *words: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg
    assert case in msg, msg
    for w in words:
        assert w in msg.lower(), msg


def _bad_nnunet(root: Path) -> Path:
    """nnU-Net v2 raw folder with 2 channels: one good case and one case per problem."""
    rng = np.random.default_rng(0)
    ds = root / "Dataset999_Bad"
    for case in ("ok", "shape", "affine", "badlabel", "nan", "empty", "missingch"):
        img, lab = _case_arrays(rng)
        aff = np.eye(4)
        if case == "shape":
            lab = lab[:, :, :5]
        if case == "affine":
            aff = np.diag([1.0, 1.0, 2.0, 1.0])
        if case == "badlabel":
            lab[0, 0, 0] = 7
        if case == "nan":
            img[1, 1, 1] = np.nan
        if case == "empty":
            lab[:] = 0
        _save_nii(ds / "imagesTr" / f"{case}_0000.nii.gz", img)
        if case != "missingch":
            _save_nii(ds / "imagesTr" / f"{case}_0001.nii.gz", img * 2)
        _save_nii(ds / "labelsTr" / f"{case}.nii.gz", lab, aff if case == "affine" else None)
    (ds / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "a": 1, "b": 2},
        "numTraining": 7, "file_ending": ".nii.gz"}))
    return ds


# --------------------------------------------------------------------------------------- registry
def test_kinds_registered() -> None:
    kinds = dataset_kinds()
    for k in ("msd", "nnunet", "seg2d", "isbi2012", "em", "em-tiff"):
        assert k in kinds


def test_modality_from_names() -> None:
    assert modality_from_names(["MRI"]) == "mri"
    assert modality_from_names(["T2", "ADC"]) == "mri"
    assert modality_from_names(["CT"]) == "ct"
    assert modality_from_names(["CT", "PET"]) == "petct"
    assert modality_from_names(["zscore"]) == "generic"


# ------------------------------------------------------------------------------ MSD hippocampus
def test_hippocampus_index(shared_data: Path) -> None:
    ds = create_dataset(f"msd:{shared_data / HIPPO}")
    js = json.loads((shared_data / HIPPO / "dataset.json").read_text(encoding="utf-8"))
    assert len(ds) == 260 == len(set(ds.ids()))
    assert list(ds.task.classes) == [js["labels"][str(i)] for i in range(3)] == ["background", "Anterior",
                                                                                  "Posterior"]
    assert ds.task.type == "segmentation" and ds.modality == "mri" and ds.spatial_dims == 3
    assert ds.labels() == [None] * 260 and ds.splits() is None
    assert ds.fingerprint() == create_dataset(f"msd:{shared_data / HIPPO}").fingerprint()
    assert ds.patients() == ds.ids()


def test_hippocampus_all_cases(shared_data: Path) -> None:
    ds = create_dataset(f"msd:{shared_data / HIPPO}")
    dtypes = set()
    for i in range(len(ds)):
        it = ds.load(i)
        x, y, z = it.image.shape
        assert 31 <= x <= 43 and 40 <= y <= 59 and 24 <= z <= 47, it.image.shape
        assert it.spacing == (1.0, 1.0, 1.0) and it.slice_axis == 2
        assert it.mask is not None and it.mask.shape == it.image.shape
        assert it.mask.dtype.kind in "iu"
        assert set(np.unique(it.mask).tolist()) <= {0, 1, 2}
        assert it.patient == it.id and it.affine is not None
        assert not it.meta["issues"]
        dtypes.add(it.image.dtype.name)
    assert dtypes <= {"uint8", "float32"}


def test_hippocampus_subset_fast_and_valid(shared_data: Path) -> None:
    t0 = time.perf_counter()
    ds = create_dataset(f"msd:{shared_data / HIPPO}", limit=5)
    items = [ds.load(i) for i in range(len(ds))]
    assert len(items) == 5 and time.perf_counter() - t0 < 5.0
    assert validate_all(create_dataset(f"msd:{shared_data / HIPPO}", limit=30)) == []
    ids = ds.ids()[:2]
    assert create_dataset(f"msd:{shared_data / HIPPO}", cases=ids).ids() == ids
    with pytest.raises(ConfigError):
        create_dataset(f"msd:{shared_data / HIPPO}", cases=["nope"])


def test_nnunet_from_hippocampus(shared_data: Path, tmp_path: Path) -> None:
    src = create_dataset(f"msd:{shared_data / HIPPO}", limit=3)
    root = tmp_path / "Dataset004_Hippocampus"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for cid in src.ids():
        shutil.copy(shared_data / HIPPO / "imagesTr" / f"{cid}.nii.gz", root / "imagesTr" / f"{cid}_0000.nii.gz")
        shutil.copy(shared_data / HIPPO / "imagesTr" / f"{cid}.nii.gz", root / "imagesTr" / f"{cid}_0001.nii.gz")
        shutil.copy(shared_data / HIPPO / "labelsTr" / f"{cid}.nii.gz", root / "labelsTr" / f"{cid}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T1copy"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
        "numTraining": 3, "file_ending": ".nii.gz"}))
    ds = create_dataset(f"nnunet:{root}")
    assert ds.ids() == src.ids() and ds.modality == "mri"
    assert list(ds.task.classes) == ["background", "Anterior", "Posterior"]
    for i in range(3):
        a, b = ds.load(i), src.load(i)
        assert a.image.shape == b.image.shape + (2,) and a.n_channels == 2
        np.testing.assert_array_equal(a.image[..., 0], b.image)
        np.testing.assert_array_equal(a.image[..., 1], b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.spacing == b.spacing
    assert validate_all(ds) == []
    # "msd:" auto-detects the v2 json too; single-channel variant
    for cid in src.ids():
        (root / "imagesTr" / f"{cid}_0001.nii.gz").unlink()
    js = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    js["channel_names"] = {"0": "T1"}
    (root / "dataset.json").write_text(json.dumps(js), encoding="utf-8")
    ds1 = create_dataset(f"msd:{root}")
    assert ds1.layout == "nnunet" and ds1.load(0).image.ndim == 3
    assert ds1.fingerprint() != ds.fingerprint()


# ---------------------------------------------------------------------------- bad inputs (synthetic)
EXPECTED = {
    "shape": ("shape",),
    "affine": ("affine",),
    "badlabel": ("label values", "[7]"),
    "nan": ("nan",),
    "missingch": ("missing channel 1", "missingch_0001"),
}


def test_bad_cases_one_line_each(tmp_path: Path) -> None:
    ds = create_dataset(f"nnunet:{_bad_nnunet(tmp_path)}")
    ids = ds.ids()
    assert sorted(ids) == sorted(["ok", *EXPECTED, "empty"])
    ok = ds.load(ids.index("ok"))
    assert ok.image.shape == (10, 9, 6, 2) and ok.meta["issues"] == []
    for case, words in EXPECTED.items():
        with pytest.raises(DataError) as e:
            ds.load(ids.index(case))
        _one_line(e, case, *words)
    empty = ds.load(ids.index("empty"))  # policy: warning, recorded, case still loads
    assert empty.meta["issues"] and "empty" in empty.meta["issues"][0]
    strict = create_dataset(f"nnunet:{tmp_path / 'Dataset999_Bad'}", strict_empty=True)
    with pytest.raises(DataError) as e:
        strict.load(ids.index("empty"))
    _one_line(e, "empty", "empty")


def test_validate_all_lists_every_problem(tmp_path: Path) -> None:
    ds = create_dataset(f"nnunet:{_bad_nnunet(tmp_path)}")
    probs = validate_all(ds)
    by_case = {c: p for c, p in probs}
    assert set(by_case) == set(EXPECTED) | {"empty"}
    assert by_case["empty"].startswith("warning:")
    for case, words in EXPECTED.items():
        assert all(w in by_case[case].lower() for w in words), by_case[case]
        assert "\n" not in by_case[case]
    assert {c for c, _ in validate_all(ds, include_warnings=False)} == set(EXPECTED)
    sub, skipped = drop_invalid(ds)
    assert sorted(sub.ids()) == ["empty", "ok"] and {c for c, _ in skipped} == set(EXPECTED)
    assert all(sub.load(i).mask is not None for i in range(len(sub)))


def _msd_folder(root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray]], labels: dict[str, str],
                modality: dict[str, str] | None = None) -> Path:
    for cid, (img, lab) in cases.items():
        _save_nii(root / "imagesTr" / f"{cid}.nii.gz", img)
        if lab is not None:
            _save_nii(root / "labelsTr" / f"{cid}.nii.gz", lab)
    (root / "dataset.json").write_text(json.dumps({
        "name": "T", "modality": modality or {"0": "CT"}, "labels": labels,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases]}))
    return root


def test_msd_float_labels_remap_and_missing(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    img, lab = _case_arrays(rng)
    lab4 = lab.copy()
    lab4[lab4 == 2] = 4
    nonint = lab.astype(np.float32)
    nonint[3, 3, 2] = 0.5
    root = _msd_folder(tmp_path / "Task99", {
        "floatlab": (img, lab4.astype(np.float32)), "nonint": (img, nonint), "nolabel": (img, None),
        "mri4d": (np.stack([img, img], -1), lab4)}, {"0": "background", "1": "x", "4": "y"})
    ds = create_dataset(f"msd:{root}")
    assert ds.modality == "ct" and list(ds.task.classes) == ["background", "x", "y"]
    it = ds.load(0)
    assert it.mask.dtype.kind == "u" and set(np.unique(it.mask).tolist()) == {0, 1, 2}  # 4 -> class 2
    assert it.meta["label_values"] == [0, 1, 4]
    np.testing.assert_array_equal(it.mask == 2, lab4 == 4)
    assert ds.load(3).image.shape == (10, 9, 6, 2)
    with pytest.raises(DataError) as e:
        ds.load(1)
    _one_line(e, "nonint", "non-integer")
    with pytest.raises(DataError) as e:
        ds.load(2)
    _one_line(e, "nolabel", "not found")
    assert [c for c, _ in validate_all(ds)] == ["nonint", "nolabel"]


def test_msd_test_split_and_orientation(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    img, lab = _case_arrays(rng)
    root = _msd_folder(tmp_path / "T", {"c1": (img, lab), "c2": (img, lab)}, {"0": "bg", "1": "a", "2": "b"})
    _save_nii(root / "imagesTs" / "t1.nii.gz", img)
    # c2: label stored with the first axis flipped and a matching affine -> same world grid, accepted
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = img.shape[0] - 1
    _save_nii(root / "labelsTr" / "c2.nii.gz", lab[::-1].copy(), flip)
    ds = create_dataset(f"msd:{root}", include_test=True)
    assert ds.ids() == ["c1", "c2", "t1"] and ds.splits() == {"train": [0, 1], "val": [], "test": [2]}
    np.testing.assert_array_equal(ds.load(1).mask, lab)
    assert ds.load(2).mask is None and ds.load(2).meta["split"] == "test"
    # same flipped label without the matching origin: a different grid -> affine error, also from headers
    _save_nii(root / "labelsTr" / "c2.nii.gz", lab[::-1].copy(), np.diag([-1.0, 1.0, 1.0, 1.0]))
    ds = create_dataset(f"msd:{root}")
    with pytest.raises(DataError) as e:
        ds.load(1)
    _one_line(e, "c2", "affine")
    assert ds.check_headers(1) and "affine" in ds.check_headers(1)[0]
    assert ds.fingerprint() != create_dataset(f"msd:{root}", include_test=True).fingerprint()


def test_msd_config_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        create_dataset(f"msd:{tmp_path / 'nothing'}")
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="dataset.json"):
        create_dataset(f"msd:{tmp_path / 'd'}")
    with pytest.raises(ConfigError):
        create_dataset("msd:")


# ---------------------------------------------------------------------------------- resampling
def test_resample_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    img, lab = _case_arrays(rng, shape=(20, 18, 9))
    aff = np.diag([0.8, 0.8, 2.5, 1.0])
    root = tmp_path / "T"
    _save_nii(root / "imagesTr" / "c1.nii.gz", img, aff)
    _save_nii(root / "labelsTr" / "c1.nii.gz", lab, aff)
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}, "labels": {"0": "bg", "1": "a",
                                                                                          "2": "b"}}))
    it = create_dataset(f"msd:{root}").load(0)
    assert it.spacing == pytest.approx((0.8, 0.8, 2.5))
    r = resample_item(it, (1.0, 1.0, 1.0))
    assert r.spatial_shape == (16, 14, 22) and r.spacing == pytest.approx((1.0, 14.4 / 14, 22.5 / 22))
    assert r.mask.shape == r.spatial_shape and r.mask.dtype == it.mask.dtype
    assert set(np.unique(r.mask).tolist()) <= {0, 1, 2}
    assert r.image.dtype == np.float32 and r.meta["original_shape"] == (20, 18, 9)
    # world position of the volume's corner is preserved (pixel-area convention)
    corner_old = it.affine @ np.array([-0.5, -0.5, -0.5, 1])
    corner_new = r.affine @ np.array([-0.5, -0.5, -0.5, 1])
    np.testing.assert_allclose(corner_old, corner_new, atol=1e-6)
    back = restore_to_original(r.mask, r.meta["original_shape"])
    assert back.shape == it.mask.shape and back.dtype == it.mask.dtype
    assert (back == it.mask).mean() > 0.9
    # multichannel + scalar spacing
    it.image = np.stack([it.image, it.image], -1)
    r2 = resample_item(it, 2.0, order=0)
    assert r2.image.shape == (8, 7, 11, 2)


# ------------------------------------------------------------------------------------- seg2d
def test_isbi2012(shared_data: Path) -> None:
    ds = create_dataset(f"isbi2012:{shared_data / 'isbi2012-em'}")
    assert len(ds) == 30 and ds.modality == "em" and list(ds.task.classes) == ["background", "membrane"]
    assert ds.ids()[:3] == ["0", "1", "2"] and ds.ids()[10] == "10"
    fracs = []
    for i in range(len(ds)):
        it = ds.load(i)
        assert it.image.shape == (512, 512) and it.mask.shape == (512, 512) and it.spatial_dims == 2
        assert set(np.unique(it.mask).tolist()) <= {0, 1}
        fracs.append(float(it.mask.mean()))
    assert 0.12 < np.mean(fracs) < 0.3  # membranes are ~20 % of pixels
    # the generic loader with the same mapping gives the same masks
    g = create_dataset(f"seg2d:{shared_data / 'isbi2012-em' / 'train'}", images="image", masks="label",
                       classes=["background", "membrane"], mask_values={"0": 1, "255": 0}, limit=2)
    np.testing.assert_array_equal(g.load(1).mask, ds.load(1).mask)


def test_seg2d_label_maps_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for n in ("a1", "a2", "a10"):
        write_png(tmp_path / "images" / f"{n}.png", rng.integers(0, 255, (12, 10), dtype=np.uint8))
        m = np.zeros((12, 10), np.uint8)
        m[2:5, 3:6] = 255
        write_png(tmp_path / "masks" / f"{n}_mask.png", m)
    ds = create_dataset(f"seg2d:{tmp_path}", mask_suffix="_mask")
    assert ds.ids() == ["a1", "a2", "a10"] and list(ds.task.classes) == ["background", "foreground"]
    it = ds.load(0)
    assert it.mask.sum() == 9 and set(np.unique(it.mask).tolist()) == {0, 1}  # {0,255} -> {0,1}
    ds3 = create_dataset(f"seg2d:{tmp_path}", mask_suffix="_mask", classes=["bg", "x", "y"])
    with pytest.raises(DataError) as e:
        ds3.load(0)
    _one_line(e, "a1", "255")
    ds_map = create_dataset(f"seg2d:{tmp_path}", mask_suffix="_mask", classes=["bg", "x", "y"],
                            mask_values={0: 0, 255: 2})
    assert ds_map.load(2).mask.max() == 2
    # unpaired files are listed
    write_png(tmp_path / "images" / "lonely.png", np.zeros((12, 10), np.uint8))
    write_png(tmp_path / "masks" / "orphan_mask.png", np.zeros((12, 10), np.uint8))
    with pytest.raises(DataError) as e:
        create_dataset(f"seg2d:{tmp_path}", mask_suffix="_mask")
    msg = str(e.value)
    assert "\n" not in msg and "lonely" in msg and "orphan_mask" in msg
    # shape mismatch
    (tmp_path / "images" / "lonely.png").unlink()
    (tmp_path / "masks" / "orphan_mask.png").unlink()
    write_png(tmp_path / "masks" / "a2_mask.png", np.zeros((11, 10), np.uint8))
    with pytest.raises(DataError) as e:
        create_dataset(f"seg2d:{tmp_path}", mask_suffix="_mask").load(1)
    _one_line(e, "a2", "shape")


def test_seg2d_per_class_folders(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    (tmp_path / "img").mkdir()
    for n in ("x", "y"):
        tifffile.imwrite(tmp_path / "img" / f"{n}.tif", np.full((8, 8, 3), 50, np.uint8))
    a = np.zeros((8, 8), bool)
    a[:4] = True
    b = np.zeros((8, 8), bool)
    b[3:6] = True
    write_png(tmp_path / "masks" / "liver" / "x.png", a)
    write_png(tmp_path / "masks" / "tumour" / "x.png", b)
    write_png(tmp_path / "masks" / "liver" / "y.png", a)  # no tumour mask for y: class absent
    ds = create_dataset(f"seg2d:{tmp_path}", images="img", classes=["background", "liver", "tumour"])
    assert ds.per_class
    mx = ds.load(0).mask
    assert (mx[:3] == 1).all() and (mx[3:6] == 2).all() and (mx[6:] == 0).all()
    assert "several class masks" in ds.load(0).meta["issues"][0]
    assert set(np.unique(ds.load(1).mask).tolist()) == {0, 1}
    with pytest.raises(DataError, match="vessel"):
        create_dataset(f"seg2d:{tmp_path}", images="img", classes=["background", "liver", "vessel"])


# ----------------------------------------------------------------------------------------- EM
def _instances(shape_zyx: tuple[int, int, int]) -> np.ndarray:
    ids = np.zeros(shape_zyx, np.uint64)
    ids[:, :, : shape_zyx[2] // 2] = 7
    ids[:, :, shape_zyx[2] // 2:] = 9
    return ids


def test_em_hdf5_cremi_like(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    raw = np.random.default_rng(4).integers(0, 255, (5, 16, 12), dtype=np.uint8)  # (z, y, x)
    ids = _instances(raw.shape)
    with h5py.File(tmp_path / "sample_A.h5", "w") as f:
        f.create_dataset("volumes/raw", data=raw).attrs["resolution"] = (40.0, 4.0, 4.0)
        f.create_dataset("volumes/labels/neuron_ids", data=ids).attrs["resolution"] = (40.0, 4.0, 4.0)
    ds = create_dataset(f"em:{tmp_path / 'sample_A.h5'}", raw="volumes/raw", labels="volumes/labels/neuron_ids")
    assert ds.modality == "em" and list(ds.task.classes) == ["background", "membrane"] and ds.ids() == ["sample_A"]
    it = ds.load(0)
    assert it.image.shape == (12, 16, 5) and it.slice_axis == 2
    np.testing.assert_array_equal(it.image[:, :, 2], raw[2].T)
    assert it.spacing == pytest.approx((4e-6, 4e-6, 40e-6)) and it.meta["spacing_nm"] == (4.0, 4.0, 40.0)
    assert set(np.unique(it.mask).tolist()) == {0, 1}
    assert it.mask[5:7].all() and not it.mask[:5].any()  # membrane at the id change along x
    inst = create_dataset(f"em:{tmp_path}", target="instance")  # folder of HDF5 files
    ii = inst.load(0)
    assert ii.meta["instance"] is True and inst.task.classes == ()
    assert set(np.unique(ii.mask).tolist()) == {7, 9} and ii.mask.shape == (12, 16, 5)
    with pytest.raises(DataError) as e:
        create_dataset(f"em:{tmp_path / 'sample_A.h5'}", raw="volumes/nope").load(0)
    assert "\n" not in str(e.value) and "volumes/nope" in str(e.value) and "volumes/raw" in str(e.value)
    # CREMI padded file: labels smaller with an offset (nm) -> raw cropped to the labelled region
    with h5py.File(tmp_path / "padded.h5", "w") as f:
        f.create_dataset("volumes/raw", data=raw).attrs["resolution"] = (40.0, 4.0, 4.0)
        f.create_dataset("volumes/labels/neuron_ids", data=ids[1:4, 2:10, 2:10]).attrs["offset"] = (40.0, 8.0, 8.0)
    p = create_dataset(f"em:{tmp_path / 'padded.h5'}").load(0)
    assert p.image.shape == (8, 8, 3) and p.mask.shape == (8, 8, 3)
    np.testing.assert_array_equal(p.image, raw[1:4, 2:10, 2:10].transpose(2, 1, 0))


def test_em_tiff_stack(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    raw = np.random.default_rng(5).integers(0, 255, (6, 20, 10), dtype=np.uint8)
    lab = np.full(raw.shape, 255, np.uint8)
    lab[:, 9:11, :] = 0  # membrane
    tifffile.imwrite(tmp_path / "raw.tif", raw)
    tifffile.imwrite(tmp_path / "labels.tif", lab)
    ds = create_dataset(f"em-tiff:{tmp_path / 'raw.tif'}", labels=str(tmp_path / "labels.tif"),
                        spacing=(4, 4, 40), mask_values={0: 1, 255: 0})
    it = ds.load(0)
    assert it.image.shape == (10, 20, 6) and it.spacing == pytest.approx((4e-6, 4e-6, 40e-6))
    assert it.mask.shape == it.image.shape and it.mask[:, 9:11].all() and it.mask.sum() == 10 * 2 * 6
    noted = create_dataset(f"em-tiff:{tmp_path / 'raw.tif'}").load(0)
    assert noted.mask is None and "unknown" in noted.meta["issues"][0]
    tifffile.imwrite(tmp_path / "short.tif", lab[:5])
    with pytest.raises(DataError) as e:
        create_dataset(f"em-tiff:{tmp_path / 'raw.tif'}", labels=str(tmp_path / "short.tif")).load(0)
    _one_line(e, "raw", "shape")
