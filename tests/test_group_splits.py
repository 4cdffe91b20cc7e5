"""Group-aware splits: no video / sequence / patient id in two splits, for folder, seg2d and CSV datasets; class
subsets and label maps (Kvasir-Capsule's 11 classes, AutoLaparo's phases 1-7 -> 0-6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medprobe.data import create_dataset
from medprobe.data.splits import compile_group_pattern, group_from_name
from medprobe.errors import ConfigError, DataError
from medprobe.pipeline.common import make_splits
from medprobe.pipeline.task import parse_task

VIDEOS = [f"{v:016x}" for v in (0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6, 0x17, 0x28, 0x39, 0x4A)]


def _png(path: Path, value: int, size: int = 8, rgb: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full((size, size, 3) if rgb else (size, size), value, np.uint8)
    Image.fromarray(a).save(path)


def _groups_per_split(ds, splits: dict[str, list[int]]) -> dict[str, set[str]]:  # type: ignore[no-untyped-def]
    pts = ds.patients()
    return {k: {pts[i] for i in v} for k, v in splits.items() if v}


def _assert_disjoint(ds, spec_raw: dict) -> dict[str, set[str]]:  # type: ignore[no-untyped-def,type-arg]
    spec = parse_task({"name": "t", "dataset": "phantom:xray2d-binary", **spec_raw})
    s = make_splits(ds, spec)
    g = _groups_per_split(ds, s)
    names = list(g)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not g[a] & g[b], f"group(s) {g[a] & g[b]} in both {a} and {b}"
    return g


def test_group_from_name() -> None:
    p = compile_group_pattern(r"^(?P<group>[0-9a-f]+)_\d+")
    assert group_from_name("04a78ef00c5245e0_10478.jpg", p) == "04a78ef00c5245e0"
    assert group_from_name("seq_3_frame010.png", compile_group_pattern(r"(seq_\d+)")) == "seq_3"
    assert group_from_name("abc", compile_group_pattern("b")) == "b"  # no group: the whole match
    with pytest.raises(DataError, match="does not match group_pattern"):
        group_from_name("frame.png", p)
    with pytest.raises(ConfigError, match="not a regular expression"):
        compile_group_pattern("(unclosed")


def test_folder_frames_of_a_video_stay_together(tmp_path: Path) -> None:
    root = tmp_path / "kvasir"
    for j, v in enumerate(VIDEOS):  # 10 videos x 4 frames, classes spread over videos
        for f in range(4):
            _png(root / ("Normal" if (j + f) % 2 else "Ulcer") / f"{v}_{f:05d}.jpg", 10 * j + f, rgb=True)
    ds = create_dataset(f"folder:{root}", group_pattern=r"^([0-9a-f]+)_")
    assert len(ds) == 40 and len(set(ds.patients())) == 10
    for seed in range(3):
        g = _assert_disjoint(ds, {"split": {"fractions": [0.6, 0.2, 0.2], "seed": seed}})
        assert sum(len(v) for v in g.values()) == 10
    for fold in range(5):
        _assert_disjoint(ds, {"split": {"folds": 5, "fold": fold}})
    # without the pattern, every frame is its own group and frames of one video land in two splits
    flat = create_dataset(f"folder:{root}")
    spec = parse_task({"name": "t", "split": {"fractions": [0.6, 0.2, 0.2], "seed": 0}})
    s = make_splits(flat, spec)
    vid = {k: {flat.ids()[i].split("/")[1].split("_")[0] for i in v} for k, v in s.items() if v}
    assert vid["train"] & vid["test"], "the control split should leak videos"


def test_folder_class_subset_and_label_map(tmp_path: Path) -> None:
    root = tmp_path / "caps"
    names = ["Angiectasia", "Polyp", "Ampulla of vater", "Ulcer", "Blood - hematin"]
    for k, c in enumerate(names):
        for f in range(2):
            _png(root / c / f"{VIDEOS[k]}_{f}.png", k)
    with pytest.raises(DataError, match="not in the given classes"):
        create_dataset(f"folder:{root}", classes=["Angiectasia", "Ulcer"])
    ds = create_dataset(f"folder:{root}", classes=["Ulcer", "Angiectasia"], unlisted="drop")
    assert ds.task.classes == ("Ulcer", "Angiectasia") and len(ds) == 4
    assert sorted(ds.meta["dropped_classes"]) == ["Ampulla of vater", "Blood - hematin", "Polyp"]
    labels = {ds.ids()[i].split("/")[0]: ds.labels()[i] for i in range(len(ds))}
    assert labels == {"Ulcer": 0, "Angiectasia": 1}
    # label map: merge two folders into one class, drop one with null
    ds2 = create_dataset(f"folder:{root}", label_map={"Blood - hematin": "Angiectasia", "Polyp": None},
                         unlisted="drop", classes=["Angiectasia", "Ulcer"])
    assert len(ds2) == 6 and sorted(ds2.labels()) == [0, 0, 0, 0, 1, 1]
    with pytest.raises(ConfigError, match="do not exist"):
        create_dataset(f"folder:{root}", label_map={"Nope": "x"})
    with pytest.raises(DataError, match="have no folder"):
        create_dataset(f"folder:{root}", classes=["Ulcer", "Erosion"], unlisted="drop")


def test_folder_official_split_dirs_refuse_a_video_in_two(tmp_path: Path) -> None:
    root = tmp_path / "f"
    _png(root / "train" / "a" / f"{VIDEOS[0]}_0.png", 1)
    _png(root / "test" / "a" / f"{VIDEOS[0]}_1.png", 2)
    with pytest.raises(DataError, match="is in split"):
        create_dataset(f"folder:{root}", group_pattern=r"^([0-9a-f]+)_")


def test_seg2d_sequences_stay_together(tmp_path: Path) -> None:
    root = tmp_path / "endo"
    for s in range(6):
        for f in range(3):
            _png(root / "images" / f"seq_{s}_frame{f:03d}.png", 40 * s + f, rgb=True)
            _png(root / "masks" / f"seq_{s}_frame{f:03d}.png", 255 if f % 2 else 0)
    ds = create_dataset(f"seg2d:{root}", group_pattern=r"^(seq_\d+)_")
    assert len(set(ds.patients())) == 6 and ds.load(4).patient == "seq_1"
    for seed in range(3):
        _assert_disjoint(ds, {"split": {"fractions": [0.5, 0.17, 0.33], "seed": seed}})
    for fold in range(3):
        _assert_disjoint(ds, {"split": {"folds": 3, "fold": fold, "val_fraction": 0.25}})
    plain = create_dataset(f"seg2d:{root}")
    assert plain.fingerprint() != ds.fingerprint() and plain.patients() == plain.ids()
    with pytest.raises(DataError, match="does not match"):
        create_dataset(f"seg2d:{root}", group_pattern=r"^video(\d+)")


def test_csv_groups_from_a_column_and_from_names(tmp_path: Path) -> None:
    rows = ["path,phase,video"]
    for v in range(8):
        for f in range(5):
            p = tmp_path / "frames" / f"vid{v:02d}_{f:04d}.png"
            _png(p, v * 5 + f)
            rows.append(f"frames/{p.name},{1 + (v + f) % 7},v{v:02d}")
    csv_path = tmp_path / "frames.csv"
    csv_path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    lm = {i: i - 1 for i in range(1, 8)}  # AutoLaparo phases 1-7 -> 0-6
    by_col = create_dataset(f"csv:{csv_path}", label_columns="phase", patient_column="video", task="multiclass",
                            classes=[f"P{i}" for i in range(1, 8)], label_map=lm)
    assert by_col.task.n_classes == 7 and min(by_col.labels()) == 0 and max(by_col.labels()) == 6
    by_name = create_dataset(f"csv:{csv_path}", label_columns="phase", group_pattern=r"^(vid\d+)_",
                             task="multiclass", classes=[f"P{i}" for i in range(1, 8)], label_map=lm)
    assert sorted(set(by_name.patients())) == [f"vid{v:02d}" for v in range(8)]
    for ds in (by_col, by_name):
        for seed in range(3):
            _assert_disjoint(ds, {"split": {"fractions": [0.5, 0.25, 0.25], "seed": seed}})
        for fold in range(4):
            _assert_disjoint(ds, {"split": {"folds": 4, "fold": fold}})
    with pytest.raises(ConfigError, match="not both"):
        create_dataset(f"csv:{csv_path}", label_columns="phase", patient_column="video", group_pattern="x")
    with pytest.raises(DataError, match="not in label_map"):
        create_dataset(f"csv:{csv_path}", label_columns="phase", label_map={1: 0, 2: 1})
