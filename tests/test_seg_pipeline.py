"""Segmentation pipeline: phantoms (2D/3D, seeded), bad input, outputs in the input's geometry, real data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from medprobe.errors import DataError
from medprobe.pipeline.families.segmentation import write_mask_like_input
from medprobe.pipeline.run import run_task as run_segmentation
from medprobe.pipeline.task import TaskSpec, load_task
from medprobe.results import ResultsDB

REPO = Path(__file__).resolve().parents[1]
TINY = {"epochs": 1, "iters_per_epoch": 2, "batch_size": 2, "crop_depth": 4, "width": 16, "lr": 1e-3}


def _spec(tmp: Path, **kw: Any) -> TaskSpec:
    base: dict[str, Any] = dict(name="t", kind="segmentation", encoder="none", cache_dir=str(tmp / "cache"),
                                device="cpu", features={"progress": False}, metrics={"bootstrap": 50, "overlays": 1})
    base.update(kw)
    return TaskSpec(**base)


def test_phantom_2d_linear_and_decoder(tmp_path: Path) -> None:
    spec = _spec(tmp_path, dataset="phantom:mri2d-segmentation", data={"n": 12, "size": 48},
                 split={"fractions": [0.5, 0.2, 0.3]},
                 preprocess={"resolution": 64}, heads=["linear", "decoder2d"],
                 head_params={"linear": {"epochs": 1, "iters_per_epoch": 2}, "decoder2d": TINY})
    db = ResultsDB(tmp_path / "res")
    rows = run_segmentation(spec, db=db, verbose=False)
    assert [r["head"] for r in rows] == ["linear", "decoder2d"]
    for r in rows:
        assert 0 <= r["metrics"]["dice"][0] <= 1
        assert r["record"]["task_type"] == "segmentation" and r["record"]["notes"]["untrained"]
        out = r["outputs"]
        assert len(list(out.glob("*_overlay.png"))) == 1
        assert len([p for p in out.glob("*.png") if "overlay" not in p.name]) == r["record"]["split"]["n_test"]
        stored = db.get(r["run_id"])
        assert stored["config_hash"] == r["record"]["config_hash"]
        pred = db.load_predictions(r["run_id"])
        assert pred["values"].shape == (len(pred["ids"]), len(pred["metric_names"]))


def test_phantom_3d_is_seeded(tmp_path: Path) -> None:
    spec = _spec(tmp_path, dataset="phantom:ct3d-segmentation", data={"n": 6, "size": [32, 32, 8]},
                 split={"fractions": [0.5, 0.17, 0.33]},
                 preprocess={"resolution": 32}, heads=["decoder3d"], head_params={"decoder3d": TINY}, seed=3)
    a = run_segmentation(spec, db=ResultsDB(tmp_path / "a"), verbose=False)[0]
    b = run_segmentation(spec, db=ResultsDB(tmp_path / "b"), verbose=False)[0]
    assert b["record"]["timings"]["cached"]
    assert a["per_case"] == b["per_case"] or np.allclose(
        [list(c.values()) for c in a["per_case"]], [list(c.values()) for c in b["per_case"]], equal_nan=True)
    assert a["record"]["notes"]["history"]["loss"] == b["record"]["notes"]["history"]["loss"]
    files = sorted(a["outputs"].glob("*.nii.gz"))
    assert files and nib.load(str(files[0])).shape == (32, 32, 8)


# ------------------------------------------------------------------------------------------ bad input
def _msd(root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray]], labels: dict[str, str] | None = None) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for cid, (img, lab) in cases.items():
        nib.save(nib.Nifti1Image(img, np.diag([1.0, 1.0, 2.0, 1.0])), str(root / "imagesTr" / f"{cid}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, np.diag([1.0, 1.0, 2.0, 1.0])), str(root / "labelsTr" / f"{cid}.nii.gz"))
    js = {"name": "toy", "modality": {"0": "MRI"}, "labels": labels or {"0": "background", "1": "blob"},
          "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases]}
    (root / "dataset.json").write_text(json.dumps(js), encoding="utf-8")
    return root


def _case(seed: int, shape: tuple[int, int, int] = (24, 24, 6)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    lab[6:14 + seed % 5, 8:16, 1:5] = 1
    img = (rng.normal(100, 10, shape) + 80 * lab).astype(np.float32)
    return img, lab


BAD = {
    "shape": lambda: (_case(0)[0], np.zeros((24, 20, 6), np.uint8)),
    "value": lambda: (_case(1)[0], np.full((24, 24, 6), 7, np.uint8)),
    "nan": lambda: (np.full((24, 24, 6), np.nan, np.float32), _case(2)[1]),
    "empty": lambda: (_case(3)[0], np.zeros((24, 24, 6), np.uint8)),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_case_stops_with_one_line(tmp_path: Path, kind: str) -> None:
    cases = {f"good{i}": _case(i) for i in range(3)}
    cases[f"bad_{kind}"] = BAD[kind]()
    root = _msd(tmp_path / "ds", cases)
    spec = _spec(tmp_path, dataset=f"msd:{root}", data={"strict_empty": True}, preprocess={"resolution": 32},
                 heads=["decoder3d"], head_params={"decoder3d": TINY})
    with pytest.raises(DataError) as e:
        run_segmentation(spec, db=ResultsDB(tmp_path / "res"), verbose=False)
    msg = str(e.value)
    assert f"bad_{kind}" in msg and "\n" not in msg


def test_missing_channel_file_stops(tmp_path: Path) -> None:
    root = tmp_path / "nn"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(3):
        img, lab = _case(i)
        for c in range(2 if i else 1):  # case 0 lacks channel 1
            nib.save(nib.Nifti1Image(img, np.eye(4)), str(root / "imagesTr" / f"c{i}_{c:04d}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(root / "labelsTr" / f"c{i}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT", "1": "PET"},
                                                   "labels": {"background": 0, "lesion": 1},
                                                   "file_ending": ".nii.gz"}))
    spec = _spec(tmp_path, dataset=f"nnunet:{root}", preprocess={"resolution": 32}, heads=["decoder3d"],
                 head_params={"decoder3d": TINY})
    with pytest.raises(DataError, match=r"c0: .*missing channel 1 \(PET\)"):
        run_segmentation(spec, db=ResultsDB(tmp_path / "res"), verbose=False)


def test_skip_invalid_lists_every_skipped_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {f"good{i}": _case(i) for i in range(6)}
    cases.update({f"bad_{k}": f() for k, f in BAD.items()})
    root = _msd(tmp_path / "ds", cases)
    spec = _spec(tmp_path, dataset=f"msd:{root}", data={"strict_empty": True, "skip_invalid": True},
                 split={"fractions": [0.5, 0.17, 0.33]}, preprocess={"resolution": 32}, heads=["decoder3d"],
                 head_params={"decoder3d": TINY})
    row = run_segmentation(spec, db=ResultsDB(tmp_path / "res"), verbose=True)[0]
    skipped = row["record"]["notes"]["skipped_cases"]
    assert sorted(s.split(":")[0] for s in skipped) == sorted(f"bad_{k}" for k in BAD)
    out = capsys.readouterr().out
    assert all(f"skipped bad_{k}:" in out for k in BAD)
    assert row["record"]["split"]["n_train"] + row["record"]["split"]["n_val"] + row["record"]["split"]["n_test"] == 6


# ------------------------------------------------------------------------------------------ real data
SCT = [("t2/t2.nii.gz", "t2/t2_seg-manual.nii.gz"), ("t2s/t2s.nii.gz", "t2s/t2s_gmseg_manual.nii.gz"),
       ("mt/mt1.nii.gz", "mt/mt1_gmseg_goldstandard.nii.gz")]


def _sct_msd(shared: Path, tmp: Path) -> Path:
    src = shared / "format-samples" / "sct-spinalcord"
    root = tmp / "sct"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for img, lab in SCT:
        cid = Path(img).name.split(".")[0]
        (root / "imagesTr" / f"{cid}.nii.gz").symlink_to(src / img)
        (root / "labelsTr" / f"{cid}.nii.gz").symlink_to(src / lab)
    js = {"name": "sct", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "cord"},
          "training": [{"image": f"./imagesTr/{Path(i).name.split('.')[0]}.nii.gz",
                        "label": f"./labelsTr/{Path(i).name.split('.')[0]}.nii.gz"} for i, _ in SCT]}
    (root / "dataset.json").write_text(json.dumps(js), encoding="utf-8")
    return root


def test_written_masks_keep_input_affine_and_shape(shared_data: Path, tmp_path: Path) -> None:
    """Reoriented (PSR, LAS) and anisotropic (7.5 / 17 mm slices) inputs: a label map in the loader's RAS order
    written back equals the input label file voxel for voxel, with its affine and shape."""
    from medprobe.data import create_dataset

    ds = create_dataset(f"msd:{_sct_msd(shared_data, tmp_path)}")
    for i, (_, lab) in enumerate(SCT):
        item = ds.load(i)
        out = tmp_path / f"{item.id}.nii.gz"
        write_mask_like_input(out, item.mask, item)
        ref = nib.load(str(shared_data / "format-samples" / "sct-spinalcord" / lab))
        got = nib.load(str(out))
        assert got.shape == ref.shape
        assert np.array_equal(got.affine, nib.load(item.meta["files"][0]).affine)
        assert np.array_equal(np.asarray(got.dataobj), np.asarray(ref.dataobj).astype(np.uint8))


def test_anisotropic_volumes_train_and_predict(shared_data: Path, tmp_path: Path) -> None:
    root = _sct_msd(shared_data, tmp_path)
    spec = _spec(tmp_path, dataset=f"msd:{root}", split={"fractions": [0.34, 0.0, 0.66]},
                 preprocess={"resolution": 64}, heads=["decoder3d"], head_params={"decoder3d": TINY})
    row = run_segmentation(spec, db=ResultsDB(tmp_path / "res"), verbose=False)[0]
    written = sorted(row["outputs"].glob("*.nii.gz"))
    assert len(written) == row["record"]["split"]["n_test"] >= 1
    src = shared_data / "format-samples" / "sct-spinalcord"
    inputs = {Path(i).name.split(".")[0]: src / i for i, _ in SCT}
    for w in written:
        ref, got = nib.load(str(inputs[w.name.split(".")[0]])), nib.load(str(w))
        assert got.shape == ref.shape and np.array_equal(got.affine, ref.affine)
    assert np.isfinite(row["metrics"]["dice"][0])


def test_isbi2012_linear_and_decoder2d(shared_data: Path, tmp_path: Path) -> None:
    spec = _spec(tmp_path, dataset=f"isbi2012:{shared_data / 'isbi2012-em'}", data={"limit": 8},
                 encoder="dinov3-vits16", weights="random", features={"layers": "four", "progress": False},
                 split={"fractions": [0.6, 0.15, 0.25]}, preprocess={"resolution": 64},
                 heads=["linear", "decoder2d"], head_params={"linear": {"epochs": 1, "iters_per_epoch": 3},
                                                            "decoder2d": TINY})
    rows = run_segmentation(spec, db=ResultsDB(tmp_path / "res"), verbose=False)
    for r in rows:
        assert 0 < r["metrics"]["dice/membrane"][0] <= 1 and 0 < r["metrics"]["iou"][0] <= 1


def test_hippocampus_ci_sized(shared_data: Path, tmp_path: Path) -> None:
    """The benchmark task on 12 cases, one short epoch."""
    spec = load_task(REPO / "tasks" / "hippocampus-fold0.yaml", cache_dir=str(tmp_path / "cache"))
    hp = {**spec.head_params["decoder3d"], "epochs": 1, "iters_per_epoch": 1, "val_cases": 1}
    spec = spec.with_overrides(data={"limit": 10}, head_params={"decoder3d": hp}, metrics={"bootstrap": 50},
                               features={"progress": False}, preprocess={"resolution": 32})
    row = run_segmentation(spec, db=ResultsDB(tmp_path / "res"), verbose=False)[0]
    assert {"dice/Anterior", "dice/Posterior", "hd95", "asd"} <= set(row["metrics"])
    assert row["record"]["split"]["spec"]["folds"] == 5 and row["record"]["split"]["spec"]["fold"] == 0
