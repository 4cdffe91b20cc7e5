"""Official splits honoured: CT-RATE's train / valid CSVs, RSNA's MGCA split files; external test sets."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medprobe.data import create_dataset
from medprobe.errors import ConfigError, DataError
from medprobe.pipeline.common import make_splits
from medprobe.pipeline.task import parse_task

LABELS = ["Emphysema", "Atelectasis", "Lung nodule"]


def _ctrate(tmp_path: Path, n_train: int = 6, n_valid: int = 3) -> Path:
    top = tmp_path / "dataset"
    (top / "multi_abnormality_labels").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("valid", n_valid)):
        rows = ["VolumeName," + ",".join(LABELS)]
        for p in range(1, n + 1):
            for scan in ("a", "b") if p % 2 else ("a",):  # odd patients have two scans
                name = f"{split}_{p}_{scan}_1.nii.gz"
                d = top / split / f"{split}_{p}" / f"{split}_{p}_{scan}"
                d.mkdir(parents=True, exist_ok=True)
                nib.save(nib.Nifti1Image(rng.integers(-1000, 400, (6, 6, 3)).astype(np.int16), np.eye(4)),
                         str(d / name))
                rows.append(name + "," + ",".join(str(int(v)) for v in rng.integers(0, 2, 3)))
        (top / "multi_abnormality_labels" / f"{split}_predicted_labels.csv").write_text("\n".join(rows) + "\n",
                                                                                         encoding="utf-8")
    return top


def test_ctrate_official_train_valid(tmp_path: Path) -> None:
    top = _ctrate(tmp_path)
    ds = create_dataset(f"ct-rate:{top}", val_fraction=0.34, seed=1)
    s = ds.splits()
    ids = ds.ids()
    assert ds.task.type == "multilabel" and ds.task.classes == tuple(LABELS) and ds.spatial_dims == 3
    assert {ids[i] for i in s["test"]} == {i for i in ids if i.startswith("valid_")}
    assert all(ids[i].startswith("train_") for i in s["train"] + s["val"])
    assert len(s["val"]) >= 1 and len(s["train"]) >= 1
    pts = ds.patients()
    assert not {pts[i] for i in s["train"]} & {pts[i] for i in s["val"]}  # two scans of one patient stay together
    spec = parse_task({"name": "ct-rate", "split": "official"})
    done = make_splits(ds, spec)
    assert sorted(done["test"]) == sorted(s["test"]) and sorted(done["train"]) == sorted(s["train"])
    item = ds.load(s["test"][0])
    assert item.image.shape[:3] == (6, 6, 3) and item.label.shape == (3,)
    no_val = create_dataset(f"ct-rate:{top}", val_fraction=0)
    assert "val" not in no_val.splits()
    with pytest.raises(DataError, match="not found"):
        create_dataset(f"ct-rate:{tmp_path / 'nope'}")


def _rsna(tmp_path: Path) -> Path:
    root = tmp_path / "rsna"
    root.mkdir()
    rows = ["patientId,x,y,width,height,Target"]
    for p in range(12):
        rows.append(f"p{p:03d},,,,,{p % 2}")
        if p % 2:  # positive patients have two boxes
            rows.append(f"p{p:03d},1,1,2,2,1")
    (root / "stage_2_train_labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def test_rsna_mgca_split_files(tmp_path: Path) -> None:
    root = _rsna(tmp_path)
    split_dir = root / "mgca"
    split_dir.mkdir()
    parts = {"train.csv": range(0, 7), "val.csv": range(7, 9), "test.csv": range(9, 11)}  # p011 in no file
    for name, r in parts.items():
        lines = ["patientId,Target"] + [f"p{p:03d},{p % 2}" for p in r for _ in range(1 + p % 2)]
        (split_dir / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds = create_dataset("rsna-pneumonia:", root=root, split_files="mgca", check_files=False)
    s = ds.splits()
    ids = ds.ids()
    assert [ids[i] for i in s["train"]] == [f"p{p:03d}" for p in range(7)]
    assert [ids[i] for i in s["val"]] == ["p007", "p008"] and [ids[i] for i in s["test"]] == ["p009", "p010"]
    assert ds.meta["unlisted_patients"] == 1 and len(ds) == 11
    done = make_splits(ds, parse_task({"name": "rsna", "split": "official"}))
    assert [ids[i] for i in done["test"]] == ["p009", "p010"]
    # a mapping works too; valid.csv is accepted as the val file
    (split_dir / "val.csv").rename(split_dir / "valid.csv")
    ds2 = create_dataset("rsna-pneumonia:", root=root, split_files="mgca", check_files=False)
    assert [ds2.ids()[i] for i in ds2.splits()["val"]] == ["p007", "p008"]
    ds3 = create_dataset("rsna-pneumonia:", root=root, check_files=False,
                         split_files={"train": "mgca/train.csv", "test": "mgca/test.csv"})
    assert "val" not in ds3.splits() and len(ds3) == 9
    # without split files there is no official split (unchanged behaviour)
    assert create_dataset("rsna-pneumonia:", root=root, check_files=False).splits() is None
    (split_dir / "test.csv").write_text("patientId\np000\n", encoding="utf-8")  # p000 also in train
    with pytest.raises(DataError, match="also listed"):
        create_dataset("rsna-pneumonia:", root=root, split_files="mgca", check_files=False)
    (split_dir / "test.csv").write_text("patientId\nghost\n", encoding="utf-8")
    with pytest.raises(DataError, match="not in stage_2_train_labels.csv"):
        create_dataset("rsna-pneumonia:", root=root, split_files="mgca", check_files=False)
    with pytest.raises(ConfigError, match="unknown split"):
        create_dataset("rsna-pneumonia:", root=root, split_files={"holdout": "x.csv"}, check_files=False)


def _folder(root: Path, n: int, shift: int) -> None:
    for c in ("benign", "malignant"):
        for i in range(n):
            d = root / c
            d.mkdir(parents=True, exist_ok=True)
            v = (40 if c == "benign" else 200) + shift + i
            Image.fromarray(np.full((16, 16), v, np.uint8)).save(d / f"{c}{i}.png")


def test_external_test_set(tmp_path: Path) -> None:
    _folder(tmp_path / "site_a", 10, 0)
    _folder(tmp_path / "site_b", 4, 5)
    ds = create_dataset("external:", train={"dataset": f"folder:{tmp_path / 'site_a'}"},
                        test={"dataset": f"folder:{tmp_path / 'site_b'}"}, val_fraction=0.2)
    s = ds.splits()
    ids = ds.ids()
    assert len(s["test"]) == 8 and all(ids[i].startswith("test:") for i in s["test"])
    assert len(s["train"]) == 16 and len(s["val"]) == 4
    assert all(ids[i].startswith("train:") for i in s["train"] + s["val"])
    assert ds.name == "site_a->site_b" and ds.load(s["test"][0]).meta["external_side"] == "test"
    # through the run path: train on site A, test on site B (an image-intensity problem every probe solves)
    from medprobe.pipeline import run_task
    from medprobe.results import ResultsDB

    spec = parse_task({"name": "ext", "dataset": "external:", "encoder": "none", "heads": ["logreg"],
                       "data": {"train": {"dataset": f"folder:{tmp_path / 'site_a'}"},
                                "test": {"dataset": f"folder:{tmp_path / 'site_b'}"}},
                       "preprocess": {"resolution": 16}, "features": {"progress": False},
                       "metrics": {"bootstrap": 20}, "cache_dir": str(tmp_path / "cache")})
    rows = run_task(spec, db=ResultsDB(tmp_path / "db"), verbose=False)
    rec = rows[0]["record"]
    assert rec["split"]["n_test"] == 8 and rec["dataset"] == "site_a->site_b"
    assert rows[0]["metrics"]["auc"][0] == pytest.approx(1.0)
    _folder(tmp_path / "site_c", 2, 0)
    (tmp_path / "site_c" / "other").mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "site_c" / "other" / "x.png")
    with pytest.raises(DataError, match="differs from the training set"):
        create_dataset("external:", train={"dataset": f"folder:{tmp_path / 'site_a'}"},
                       test={"dataset": f"folder:{tmp_path / 'site_c'}"})
    with pytest.raises(ConfigError, match="data.train and data.test"):
        create_dataset("external:", train={"dataset": f"folder:{tmp_path / 'site_a'}"})
