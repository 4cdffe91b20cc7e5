"""Classification loaders (MedMNIST, CSV manifests, NIH14, RSNA, folders, volumes+CSV) and splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medprobe.data import create_dataset, dataset_kinds
from medprobe.data.io import write_png, write_volume
from medprobe.data.splits import check_leakage, kfold_by_patient, split_by_patient, validate_splits
from medprobe.errors import DataError


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_kinds_registered() -> None:
    kinds = dataset_kinds()
    for k in ("medmnist", "csv", "nih14", "rsna-pneumonia", "folder", "volumes"):
        assert k in kinds


# ------------------------------------------------------------------------------------------- MedMNIST
@pytest.mark.parametrize("name,size,sizes,classes,pos", [
    ("pneumoniamnist", 28, (4708, 524, 624), ("normal", "pneumonia"), (3494, 389, 390)),
    ("breastmnist", 28, (546, 78, 156), ("malignant", "normal, benign"), (399, 57, 114)),
    ("adrenalmnist3d", 28, (1188, 98, 298), ("normal", "hyperplasia"), (259, 22, 69)),
    ("adrenalmnist3d", 64, (1188, 98, 298), ("normal", "hyperplasia"), (259, 22, 69)),
])
def test_medmnist_real(shared_data: Path, name: str, size: int, sizes: tuple, classes: tuple,
                       pos: tuple) -> None:
    ds = create_dataset(f"medmnist:{name}", root=shared_data / "medmnist", size=size)
    sp = ds.splits()
    assert tuple(len(sp[s]) for s in ("train", "val", "test")) == sizes
    assert len(ds) == sum(sizes) and len(set(ds.ids())) == len(ds)
    assert ds.task.type == "binary" and ds.task.classes == classes
    labels = ds.labels()
    assert tuple(sum(labels[i] for i in sp[s]) for s in ("train", "val", "test")) == pos
    first_test = sp["test"][0]
    assert ds.ids()[first_test] == f"{name}-test-000000"
    it = ds.load(first_test)
    assert it.label == labels[first_test] and it.image.dtype == np.uint8
    if name.endswith("3d"):
        assert ds.spatial_dims == 3 and it.image.shape == (size,) * 3 and it.slice_axis == 2
        raw = np.load(shared_data / "medmnist" / (f"{name}.npz" if size == 28 else f"{name}_{size}.npz"))
        d0 = raw["test_images"][0]  # MedMNIST (D, H, W) -> items (X, Y, Z) = (W, H, D)
        np.testing.assert_array_equal(it.image[:, :, 5], d0[5].T)
    else:
        assert ds.spatial_dims == 2 and it.image.shape == (28, 28)
    assert ds.fingerprint() == create_dataset(f"medmnist:{name}", root=shared_data / "medmnist",
                                              size=size).fingerprint()


def _fake_npz(path: Path, n=(6, 2, 3), shape=(28, 28), label_width=1, k=2, compressed=False, drop=()) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for s, m in zip(("train", "val", "test"), n):
        arrays[f"{s}_images"] = rng.integers(0, 255, (m, *shape), dtype=np.uint8)
        arrays[f"{s}_labels"] = rng.integers(0, k, (m, label_width), dtype=np.uint8)
    for key in drop:
        arrays.pop(key)
    (np.savez_compressed if compressed else np.savez)(path, **arrays)


def test_medmnist_multilabel_rgb_uncompressed(tmp_path: Path) -> None:
    _fake_npz(tmp_path / "chestmnist_64.npz", shape=(64, 64), label_width=14)
    ds = create_dataset("medmnist:chestmnist", root=tmp_path, size=64)
    assert ds.task.type == "multilabel" and ds.task.n_classes == 14 and ds.modality == "xray"
    it = ds.load(7)
    assert it.id == "chestmnist-val-000001" and it.label.shape == (14,) and it.image.shape == (64, 64)
    assert isinstance(ds._arrays["val"], np.memmap)  # stored members are memory-mapped
    _fake_npz(tmp_path / "pathmnist.npz", shape=(28, 28, 3), k=9, compressed=True)
    ds = create_dataset("medmnist:pathmnist", root=tmp_path)
    assert ds.task.type == "multiclass" and ds.task.n_classes == 9 and ds.load(0).image.shape == (28, 28, 3)


def test_medmnist_errors(tmp_path: Path) -> None:
    _fake_npz(tmp_path / "breastmnist.npz", drop=("val_labels", "test_images"))
    with pytest.raises(DataError) as e:
        create_dataset("medmnist:breastmnist", root=tmp_path)
    msg = _one_line(e)
    assert "breastmnist.npz" in msg and "val_labels" in msg and "test_images" in msg
    with pytest.raises(DataError) as e:
        create_dataset("medmnist:dermamnist", root=tmp_path, size=128)
    assert "dermamnist_128.npz" in _one_line(e)
    _fake_npz(tmp_path / "pneumoniamnist.npz", k=3)  # label 2 in a binary dataset
    with pytest.raises(DataError) as e:
        create_dataset("medmnist:pneumoniamnist", root=tmp_path)
    assert "not allowed" in _one_line(e)


# ---------------------------------------------------------------------------------------- CSV manifest
def _images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        write_png(folder / n, np.full((8, 10), i * 10, dtype=np.uint8))


def test_csv_multilabel_columns_and_patients(tmp_path: Path) -> None:
    _images(tmp_path / "img", ["a.png", "b.png", "c.png", "d.png"])
    (tmp_path / "labels.csv").write_text(
        "path,effusion,mass,pid,split\n"
        "img/a.png,1,0,p1,train\nimg/b.png,0,0,p1,train\nimg/c.png,1,1,p2,test\nimg/d.png,0,1,p3,val\n")
    ds = create_dataset(f"csv:{tmp_path / 'labels.csv'}", label_columns=["effusion", "mass"],
                        patient_column="pid", split_column="split")
    assert ds.task.type == "multilabel" and ds.task.classes == ("effusion", "mass")
    assert [lab.tolist() for lab in ds.labels()] == [[1, 0], [0, 0], [1, 1], [0, 1]]
    assert ds.patients() == ["p1", "p1", "p2", "p3"] and ds.ids() == ["a", "b", "c", "d"]
    assert ds.splits() == {"train": [0, 1], "val": [3], "test": [2]}
    it = ds.load(2)
    assert it.image.shape == (8, 10) and it.image[0, 0] == 20 and it.patient == "p2"
    fp = ds.fingerprint()
    write_png(tmp_path / "img" / "a.png", np.zeros((9, 9), dtype=np.uint8))
    ds2 = create_dataset(f"csv:{tmp_path / 'labels.csv'}", label_columns=["effusion", "mass"],
                         patient_column="pid", split_column="split")
    assert ds2.fingerprint() != fp


def test_csv_single_label_binary_and_named(tmp_path: Path) -> None:
    _images(tmp_path, ["a.png", "b.png", "c.png"])
    (tmp_path / "l.csv").write_text("path,y\na.png,1\nb.png,0\nc.png,1.0\n", encoding="utf-8")
    ds = create_dataset(f"csv:{tmp_path / 'l.csv'}", label_columns="y")
    assert ds.task.type == "binary" and ds.labels() == [1, 0, 1]
    (tmp_path / "n.csv").write_text("path,y\na.png,cat\nb.png,dog\nc.png,bird\n", encoding="utf-8")
    ds = create_dataset(f"csv:{tmp_path / 'n.csv'}", label_columns="y", task="multiclass",
                        classes=["bird", "cat", "dog"])
    assert ds.labels() == [1, 2, 0] and ds.splits() is None


@pytest.mark.parametrize("value,task", [("2", "binary"), ("yes", "binary"), ("", "binary"),
                                        ("-1", "multiclass"), ("abc", None)])
def test_csv_bad_label_names_row_and_value(tmp_path: Path, value: str, task: str | None) -> None:
    _images(tmp_path, ["a.png", "b.png", "c.png"])
    csv = tmp_path / "bad.csv"
    csv.write_text(f"path,y\na.png,0\nb.png,1\nc.png,{value}\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        create_dataset(f"csv:{csv}", label_columns=["y"], task=task)
    msg = _one_line(e)
    assert str(csv) in msg and "row 3" in msg and repr(value) in msg


def test_csv_missing_files_listed_up_front(tmp_path: Path) -> None:
    _images(tmp_path, ["a.png"])
    csv = tmp_path / "m.csv"
    csv.write_text("path,y\na.png,0\ngone1.png,1\ngone2.png,0\ngone3.png,0\ngone4.png,1\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        create_dataset(f"csv:{csv}", label_columns=["y"])
    msg = _one_line(e)
    assert str(csv) in msg and "4 of 5" in msg and "row 2" in msg and "gone1.png" in msg and "1 more" in msg
    with pytest.raises(DataError) as e:
        create_dataset(f"csv:{csv}", label_columns=["nolabel"])
    assert "nolabel" in _one_line(e)


def test_csv_pipe_separated_labels(tmp_path: Path) -> None:
    _images(tmp_path, ["a.png", "b.png", "c.png"])
    (tmp_path / "f.csv").write_text("path,Finding Labels\n"
                                    "a.png,Mass|Effusion\nb.png,No Finding\nc.png,Mass\n")
    ds = create_dataset(f"csv:{tmp_path / 'f.csv'}", label_columns=["Finding Labels"], sep="|")
    assert ds.task.classes == ("Effusion", "Mass")
    assert [lab.tolist() for lab in ds.labels()] == [[1, 1], [0, 0], [0, 1]]


def test_nih14_layout(tmp_path: Path) -> None:
    names = [f"0000000{i}_000.png" for i in range(1, 9)]
    _images(tmp_path / "images_001" / "images", names)
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID"]
    findings = ["Cardiomegaly", "No Finding", "Effusion|Hernia", "No Finding", "Mass", "Nodule|Mass",
                "No Finding", "Pleural_Thickening"]
    for i, (n, f) in enumerate(zip(names, findings)):
        rows.append(f"{n},{f},0,{i // 2 + 1}")
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "train_val_list.txt").write_text("\n".join(names[:6]) + "\n", encoding="utf-8")
    (tmp_path / "test_list.txt").write_text("\n".join(names[6:]) + "\n", encoding="utf-8")
    ds = create_dataset("nih14:", root=tmp_path, val_fraction=0.34)
    assert ds.task.type == "multilabel" and ds.task.n_classes == 14 and ds.modality == "xray"
    lab = ds.labels()
    assert lab[1].sum() == 0 and lab[2][ds.task.classes.index("Hernia")] == 1
    sp = ds.splits()
    assert sp["test"] == [6, 7] and len(sp["val"]) == 2 and len(sp["train"]) == 4
    assert check_leakage(sp, ds.patients()) == []
    assert ds.load(0).image.shape == (8, 10)
    text = "\n".join(rows[:3] + [f"{names[2]},Fracture,0,2"]) + "\n"
    (tmp_path / "Data_Entry_2017.csv").write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as e:
        create_dataset("nih14:", root=tmp_path)
    assert "row 3" in _one_line(e) and "Fracture" in str(e.value)


def test_rsna_pneumonia_dedup(tmp_path: Path) -> None:
    img = tmp_path / "stage_2_train_images"
    img.mkdir()
    for pid in ("p-a", "p-b", "p-c"):
        (img / f"{pid}.dcm").write_bytes(b"x")
    (tmp_path / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\np-a,,,,,0\np-b,1,2,3,4,1\np-b,5,6,7,8,1\np-c,,,,,0\n")
    ds = create_dataset("rsna-pneumonia:", root=tmp_path)
    assert ds.ids() == ["p-a", "p-b", "p-c"] and ds.labels() == [0, 1, 0]
    assert ds.task.type == "binary" and ds.records[1].path == img / "p-b.dcm"
    (tmp_path / "stage_2_train_labels.csv").write_text("patientId,Target\np-a,0\np-b,2\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        create_dataset("rsna-pneumonia:", root=tmp_path)
    assert "row 2" in _one_line(e) and "'2'" in str(e.value)


# ------------------------------------------------------------------------------------------- folders
def test_image_folder(tmp_path: Path) -> None:
    _images(tmp_path / "tumour", ["t1.png", "t2.png"])
    _images(tmp_path / "normal", ["n1.png"])
    _images(tmp_path / "normal" / "sub", ["n2.png"])
    (tmp_path / "normal" / "notes.txt").write_text("ignored", encoding="utf-8")
    ds = create_dataset(f"folder:{tmp_path}")
    assert ds.task.classes == ("normal", "tumour") and ds.task.type == "binary"
    assert ds.ids() == ["normal/n1", "normal/sub/n2", "tumour/t1", "tumour/t2"]
    assert ds.labels() == [0, 0, 1, 1] and ds.load(3).image.shape == (8, 10)
    with pytest.raises(DataError):
        create_dataset(f"folder:{tmp_path / 'absent'}")


def test_image_folder_real_tiles(shared_data: Path, tmp_path: Path) -> None:
    for t in sorted((shared_data / "nct-crc-he-tiles").glob("*.tif")):
        cls = tmp_path / t.name.split("-")[0]
        cls.mkdir()
        (cls / t.name).symlink_to(t)
    ds = create_dataset(f"folder:{tmp_path}", modality="pathology")
    assert ds.task.n_classes == 9 and ds.task.classes[0] == "ADI" and ds.load(8).image.shape == (224, 224, 3)


# ------------------------------------------------------------------------------------------- volumes
def test_volumes_csv_real(shared_data: Path, tmp_path: Path) -> None:
    fs = shared_data / "format-samples"
    csv = tmp_path / "labels.csv"
    csv.write_text("path,tumour,subject\n"
                   "pyradiomics-nrrd/brain1_image.nrrd,1,b1\n"
                   "sct-spinalcord/t2s/t2s.nii.gz,0,sct\n"
                   "totalsegmentator-ct-mr/example_ct_sm.nii.gz,0,ts\n")
    ds = create_dataset(f"volumes:{csv}", root=fs, label_columns=["tumour"], task="binary",
                        patient_column="subject")
    assert ds.spatial_dims == 3 and ds.labels() == [1, 0, 0] and ds.patients() == ["b1", "sct", "ts"]
    a, b = ds.load(0), ds.load(1)
    assert a.image.shape == (256, 256, 25) and a.spacing == pytest.approx((0.78125, 0.78125, 6.5))
    assert b.spacing == pytest.approx((0.5, 0.5, 7.5), abs=1e-4) and b.slice_axis == 2
    assert b.affine is not None and a.label == 1


def test_volumes_ctrate_layout(tmp_path: Path) -> None:
    names = ["train_1_a_1", "train_1_a_2", "train_2_a_1"]
    for n in names:
        p = tmp_path / "train" / "_".join(n.split("_")[:2]) / "_".join(n.split("_")[:3]) / f"{n}.nii.gz"
        write_volume(p, np.zeros((4, 4, 3), dtype=np.int16), np.diag([0.7, 0.7, 1.5, 1.0]))
    csv = tmp_path / "train_predicted_labels.csv"
    csv.write_text("VolumeName,Emphysema,Lung nodule\n"
                   "train_1_a_1.nii.gz,1,0\ntrain_1_a_2.nii.gz,1,0\ntrain_2_a_1.nii.gz,0,1\n")
    ds = create_dataset(f"volumes:{csv}", root=tmp_path, modality="ct")
    assert ds.task.type == "multilabel" and ds.task.classes == ("Emphysema", "Lung nodule")
    assert ds.ids() == names and ds.patients() == ["train_1", "train_1", "train_2"]
    assert ds.load(2).spacing == pytest.approx((0.7, 0.7, 1.5))


# ------------------------------------------------------------------------------------------- splits
def _patients(n_cases: int = 300, n_pat: int = 60, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"p{int(x)}" for x in rng.integers(0, n_pat, n_cases)]


def test_split_by_patient_no_leak_seeded_stratified() -> None:
    pats = _patients()
    labels = [int(p[1:]) % 4 == 0 for p in pats]
    a = split_by_patient(pats, seed=1)
    assert a == split_by_patient(pats, seed=1) and a != split_by_patient(pats, seed=2)
    assert sorted(i for v in a.values() for i in v) == list(range(len(pats)))
    assert check_leakage(a, pats) == []
    validate_splits(a, pats)
    n_pat = {k: len({pats[i] for i in v}) for k, v in a.items()}
    assert sum(n_pat.values()) == len(set(pats)) and abs(n_pat["test"] - 0.2 * sum(n_pat.values())) <= 1
    s = split_by_patient(pats, seed=1, stratify=labels)
    assert check_leakage(s, pats) == []
    pos_rate = {k: np.mean([labels[i] for i in v]) for k, v in s.items()}
    pat_pos = {k: np.mean([int(p[1:]) % 4 == 0 for p in {pats[i] for i in v}]) for k, v in s.items()}
    assert max(pat_pos.values()) - min(pat_pos.values()) < 0.15, (pos_rate, pat_pos)


def test_kfold_by_patient() -> None:
    pats = _patients()
    folds = kfold_by_patient(pats, k=5, seed=0, val_fraction=0.2)
    assert len(folds) == 5 and folds == kfold_by_patient(pats, k=5, seed=0, val_fraction=0.2)
    tests = sorted(i for f in folds for i in f["test"])
    assert tests == list(range(len(pats)))  # every case tested exactly once
    for f in folds:
        assert check_leakage(f, pats) == [] and all(f[k] for k in ("train", "val", "test"))
        validate_splits(f, pats)
        n_rest = len({pats[i] for i in f["train"] + f["val"]})
        assert abs(len({pats[i] for i in f["val"]}) - 0.2 * n_rest) <= 1


def test_leakage_detection_and_validation_errors() -> None:
    pats = ["a", "a", "b", "c"]
    bad = {"train": [0, 2], "val": [3], "test": [1]}
    assert check_leakage(bad, pats) == ["a"]
    with pytest.raises(DataError) as e:
        validate_splits(bad, pats, "split.json")
    assert _one_line(e) == "split.json: patient a is in both train and test"
    with pytest.raises(DataError) as e:
        validate_splits({"train": [0, 1, 2], "val": [], "test": [3]}, pats, "split.json")
    assert "split 'val' is empty" in _one_line(e)
