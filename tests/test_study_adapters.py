"""Native adapters, each tested with tiny files written here in the dataset's own layout: AutoLaparo (frames and
an mp4 at 1 fps), EndoVis 2018 (sequences, instrument / binary / scene masks), EDD2020 (overlapping
``<name>_<class>_mask.tif``), AutoPET-II and HECKTOR 2022 (PET resampled onto the CT); the study's metrics."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from medprobe.data import create_dataset
from medprobe.data.surgical import binary_iou, challenge_instrument_iou, multilabel_dice
from medprobe.errors import DataError


def _png(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


# ------------------------------------------------------------------------------------------ AutoLaparo
def _labels(path: Path, phases: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("Frame\tPhase\n" + "".join(f"{i}\t{p}\n" for i, p in enumerate(phases)), encoding="utf-8")


def test_autolaparo_frames_official_split_and_phases(tmp_path: Path) -> None:
    root = tmp_path / "task1"
    for vid in (1, 11, 15):
        _labels(root / "labels" / f"label_{vid:02d}.txt", [1, 1, 4, 7])
        for k in range(4):
            _png(root / "frames" / f"{vid:02d}" / f"{k}.png", np.full((8, 8, 3), 10 * vid + k, np.uint8))
    ds = create_dataset(f"autolaparo:{root}")
    assert ds.task.n_classes == 7 and ds.task.classes[0] == "Preparation"
    assert sorted(set(ds.labels())) == [0, 3, 6]  # phases 1, 4, 7 -> 0, 3, 6: no empty class
    s = ds.splits()
    pts = ds.patients()
    assert {pts[i] for i in s["train"]} == {"01"} and {pts[i] for i in s["val"]} == {"11"}
    assert {pts[i] for i in s["test"]} == {"15"}
    it = ds.load(ds.ids().index("11/00002"))
    assert it.label == 3 and it.image[0, 0, 0] == 112 and it.meta["frame_source"] == "pre-extracted frame"
    custom = create_dataset(f"autolaparo:{root}", videos={"train": [1, 11], "test": [15]})
    assert set(custom.splits()) == {"train", "test"}
    _labels(root / "labels" / "label_15.txt", [1, 8])
    with pytest.raises(DataError, match="phase 8"):
        create_dataset(f"autolaparo:{root}")


def test_autolaparo_decodes_the_video_at_1fps(tmp_path: Path) -> None:
    import imageio_ffmpeg

    root = tmp_path / "task1"
    (root / "videos").mkdir(parents=True)
    w = imageio_ffmpeg.write_frames(str(root / "videos" / "02.mp4"), (32, 32), fps=5, codec="libx264",
                                    pix_fmt_out="yuv420p", macro_block_size=16)
    w.send(None)
    for sec in range(3):  # 5 frames per second, one grey level per second
        for _ in range(5):
            w.send(np.full((32, 32, 3), 30 + 60 * sec, np.uint8).tobytes())
    w.close()
    _labels(root / "labels" / "label_02.txt", [2, 2, 3])
    ds = create_dataset(f"autolaparo:{root}")
    assert len(ds) == 3 and ds.labels() == [1, 1, 2]
    for k in range(3):
        it = ds.load(k)
        assert it.image.shape == (32, 32, 3) and abs(float(it.image.mean()) - (30 + 60 * k)) < 3
        assert "decoded at" in it.meta["frame_source"]
    _labels(root / "labels" / "label_02.txt", [2, 2, 3, 3, 3])  # annotations past the end of the video
    with pytest.raises(DataError, match="no frame at 4.000 s"):
        create_dataset(f"autolaparo:{root}").load(4)


# ------------------------------------------------------------------------------------------ EndoVis 2018
SCENE = [{"name": "background-tissue", "color": [0, 0, 0], "classid": 0},
         {"name": "instrument-shaft", "color": [0, 255, 0], "classid": 1},
         {"name": "instrument-clasper", "color": [0, 255, 255], "classid": 2},
         {"name": "kidney-parenchyma", "color": [255, 55, 0], "classid": 3}]


def _endovis(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, seqs in (("train", (1, 2)), ("test", (3,))):
        for s in seqs:
            d = root / split / f"seq_{s}"
            for f in range(3):
                _png(d / "left_frames" / f"frame{f:03d}.png", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
                inst = np.zeros((16, 16), np.uint8)
                inst[2:6, 2:6] = 1 + (s + f) % 7
                inst[10:14, 8:12] = 3 if f else 0
                _png(d / "instruments_masks" / f"frame{f:03d}.png", inst)
                scene = np.zeros((16, 16, 3), np.uint8)
                scene[2:6, 2:6] = (0, 255, 0)
                scene[10:14, 8:12] = (0, 255, 255)
                scene[0, :] = (255, 55, 0)
                _png(d / "labels" / f"frame{f:03d}.png", scene)
    (root / "labels.json").write_text(json.dumps(SCENE), encoding="utf-8")


def test_endovis2018_sequences_and_targets(tmp_path: Path) -> None:
    root = tmp_path / "endovis"
    _endovis(root)
    ds = create_dataset(f"endovis2018:{root}", val_sequences=["seq_2"])
    assert ds.task.n_classes == 8 and ds.task.classes[1] == "Bipolar Forceps"
    s = ds.splits()
    pts = ds.patients()
    assert {k: sorted({pts[i] for i in v}) for k, v in s.items()} == \
        {"train": ["train/seq_1"], "val": ["train/seq_2"], "test": ["test/seq_3"]}
    it = ds.load(ds.ids().index("train/seq_1/frame001"))
    assert it.mask[3, 3] == 3 and it.mask[11, 9] == 3 and it.mask[0, 0] == 0
    binary = create_dataset(f"endovis2018:{root}", target="binary")
    m = binary.load(0).mask
    assert binary.task.classes == ("background", "instrument") and set(np.unique(m)) <= {0, 1} and m[3, 3] == 1
    scene = create_dataset(f"endovis2018:{root}", target="scene")
    sm = scene.load(0).mask
    assert scene.task.n_classes == 4 and sm[3, 3] == 1 and sm[11, 9] == 2 and sm[0, 5] == 3
    # binary from scene labels when there are no instrument masks: the instrument-* classes
    bs = create_dataset(f"endovis2018:{root}", target="binary", mask_dir="labels")
    assert bs.task.n_classes == 2
    frame = np.asarray(Image.open(root / "train" / "seq_1" / "labels" / "frame000.png"))
    frame = frame.copy()
    frame[8, 8] = (1, 2, 3)
    Image.fromarray(frame).save(root / "train" / "seq_1" / "labels" / "frame000.png")
    with pytest.raises(DataError, match=r"colour \(1, 2, 3\)"):
        scene.load(scene.ids().index("train/seq_1/frame000"))
    (root / "train" / "seq_2" / "instruments_masks" / "frame002.png").unlink()
    with pytest.raises(DataError, match="without a mask"):
        create_dataset(f"endovis2018:{root}")


def test_endovis_metrics_by_hand() -> None:
    truth = np.zeros((4, 4), np.int64)
    truth[0, :2] = 1  # class 1: 2 px
    truth[1, :] = 2  # class 2: 4 px
    pred = np.zeros((4, 4), np.int64)
    pred[0, :] = 1  # class 1: 4 px (2 right)
    pred[1, :2] = 3  # instrument but the wrong class
    # binary: truth 6 px, pred 6 px, both 4 px -> 4 / 8
    assert binary_iou(pred, truth) == pytest.approx(0.5)
    # challenge IoU: classes present in truth {1, 2}: IoU 2/4 and 0/4 -> mean 0.25 (class 3 ignored)
    assert challenge_instrument_iou(pred, truth) == pytest.approx(0.25)
    empty = np.zeros((4, 4), np.int64)
    assert challenge_instrument_iou(empty, empty) == 1.0 and challenge_instrument_iou(pred, empty) == 0.0
    assert binary_iou(empty, empty) == 1.0


def test_endovis_run_carries_the_study_metrics(tmp_path: Path) -> None:
    from medprobe.pipeline import run_task
    from medprobe.pipeline.task import parse_task
    from medprobe.results import ResultsDB

    root = tmp_path / "endovis"
    _endovis(root)
    spec = parse_task({"name": "endovis2018", "kind": "segmentation", "dataset": f"endovis2018:{root}",
                       "data": {"val_sequences": ["seq_2"]}, "split": "official", "encoder": "none",
                       "preprocess": {"resolution": 32}, "features": {"progress": False}, "heads": ["decoder2d"],
                       "head_params": {"decoder2d": {"epochs": 1, "batch_size": 2, "width": 8}},
                       "metrics": {"bootstrap": 20, "overlays": 0}, "audit": {"mode": "off"},
                       "cache_dir": str(tmp_path / "cache")})
    db = ResultsDB(tmp_path / "db")
    row = run_task(spec, db=db, verbose=False)[0]
    m = row["metrics"]
    assert 0 <= m["binary_iou"][0] <= 1 and 0 <= m["instrument_iou"][0] <= 1 and "dice" in m
    pr = db.load_predictions(row["run_id"])
    names = [str(n) for n in pr["metric_names"]]
    vals = pr["values"][:, names.index("binary_iou")]
    assert len(vals) == 3 and m["binary_iou"][0] == pytest.approx(float(np.mean(vals)))
    # the stored per-case values are the metric of the stored masks
    ds = create_dataset(f"endovis2018:{root}", val_sequences=["seq_2"])
    for cid, f, v in zip(pr["ids"], pr["files"], vals):
        pred = np.asarray(Image.open(str(f)))
        assert binary_iou(pred, ds.load(ds.ids().index(str(cid))).mask) == pytest.approx(float(v))


# ------------------------------------------------------------------------------------------ EDD2020
def test_edd2020_overlapping_masks_kept_multilabel(tmp_path: Path) -> None:
    root = tmp_path / "edd"
    for k, name in enumerate(("EDD2020_AA0001", "EDD2020_BB0002")):
        _png(root / "originalImages" / f"{name}.jpg", np.full((8, 8, 3), 50 + k, np.uint8))
    (root / "masks").mkdir()
    be = np.zeros((8, 8), np.uint8)
    be[:4, :4] = 255
    hgd = np.zeros((8, 8), np.uint8)
    hgd[2:6, 2:6] = 255
    tifffile.imwrite(root / "masks" / "EDD2020_AA0001_BE_mask.tif", be)
    tifffile.imwrite(root / "masks" / "EDD2020_AA0001_HGD_mask.tif", hgd)
    tifffile.imwrite(root / "masks" / "EDD2020_BB0002_polyp.tif", be)
    ds = create_dataset(f"edd2020:{root}", group_pattern=r"^EDD2020_([A-Z]+)")
    assert ds.task.classes == ("background", "BE", "suspicious", "HGD", "cancer", "polyp")
    assert ds.patients() == ["AA", "BB"]
    it = ds.load(0)
    ml = it.meta["multilabel"]
    assert ml.shape == (8, 8, 5) and ml[..., 0].sum() == 16 and ml[..., 2].sum() == 16
    assert ml[3, 3, 0] and ml[3, 3, 2]  # the overlap is kept in both classes
    assert it.mask[3, 3] == 3 and it.mask[0, 0] == 1 and "4 pixels" in it.meta["issues"][0]
    assert ds.load(1).mask[0, 0] == 5 and ds.load(1).meta["multilabel"][..., 4].sum() == 16
    # multi-label Dice: a prediction equal to the label map loses the overlap for BE only
    d = ds.case_metrics(it.mask, it)
    assert d["dice_multilabel/HGD"] == pytest.approx(1.0)
    assert d["dice_multilabel/BE"] == pytest.approx(2 * 12 / (12 + 16))
    assert np.isnan(d["dice_multilabel/cancer"])
    assert d["dice_multilabel"] == pytest.approx((1.0 + 24 / 28) / 2)
    assert multilabel_dice(np.zeros((8, 8)), ml, ds.classes)["dice_multilabel/BE"] == 0.0
    tifffile.imwrite(root / "masks" / "EDD2020_CC0003_BE_mask.tif", be)
    with pytest.raises(DataError, match="match no image"):
        create_dataset(f"edd2020:{root}")


# ------------------------------------------------------------------------------------------ PET/CT
def _nii(path: Path, a: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(a, affine), str(path))


def _ramp(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """Value = world x + 2 world y + 3 world z at each voxel centre (linear: trilinear resampling is exact)."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    return (world @ np.array([1.0, 2.0, 3.0])).reshape(shape).astype(np.float32)


def test_autopet_pet_resampled_onto_ct(tmp_path: Path) -> None:
    root = tmp_path / "FDG-PET-CT-Lesions"
    ct_aff = np.diag([1.0, 1.0, 1.0, 1.0])
    pet_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    pet_aff[:3, 3] = [0.5, 0.5, 0.5]  # PET voxel centres between CT voxel centres
    d = root / "PETCT_0af7" / "06-02-2002-NA-PET-CT"
    ct = np.arange(12 * 12 * 8, dtype=np.int16).reshape(12, 12, 8) - 1000
    _nii(d / "CT.nii.gz", ct, ct_aff)
    _nii(d / "SUV.nii.gz", _ramp((6, 6, 4), pet_aff), pet_aff)
    seg = np.zeros((6, 6, 4), np.uint8)
    seg[1:3, 1:3, 1:3] = 1
    _nii(d / "SEG.nii.gz", seg, pet_aff)
    ds = create_dataset(f"autopet:{root}")
    assert ds.patients() == ["PETCT_0af7"] and ds.channel_names == ("CT", "PET")
    it = ds.load(0)
    assert it.image.shape == (12, 12, 8, 2) and it.mask.shape == (12, 12, 8) and it.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(it.image[..., 0], ct.astype(np.float32))
    want = _ramp((12, 12, 8), ct_aff)
    inside = (slice(1, 10), slice(1, 10), slice(1, 6))  # CT voxels inside the PET field of view
    np.testing.assert_allclose(it.image[..., 1][inside], want[inside], atol=1e-3)
    # the lesion covers PET voxels 1..2 -> world 2.5..6.5 -> CT voxels 2..6 (nearest neighbour)
    assert it.mask[4, 4, 4] == 1 and it.mask[0, 0, 0] == 0 and it.mask[8, 8, 4] == 0
    assert 0.8 < it.mask.sum() / (seg.sum() * 8) < 1.3
    (d / "SEG.nii.gz").unlink()
    with pytest.raises(DataError, match="not SEG.nii.gz"):
        create_dataset(f"autopet:{root}")


def test_hecktor_pet_resampled_onto_ct(tmp_path: Path) -> None:
    root = tmp_path / "hecktor2022"
    ct_aff = np.diag([1.0, 1.0, 2.0, 1.0])
    pet_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    for case in ("CHUM-001", "MDA-004"):
        _nii(root / "imagesTr" / f"{case}__CT.nii.gz", np.zeros((8, 8, 4), np.int16), ct_aff)
        _nii(root / "imagesTr" / f"{case}__PT.nii.gz", _ramp((4, 4, 4), pet_aff), pet_aff)
        lab = np.zeros((8, 8, 4), np.uint8)
        lab[1:3, 1:3, 1] = 1
        lab[5:7, 5:7, 2] = 2
        _nii(root / "labelsTr" / f"{case}.nii.gz", lab, ct_aff)
    ds = create_dataset(f"hecktor:{root}")
    assert ds.ids() == ["CHUM-001", "MDA-004"] and ds.task.classes == ("background", "GTVp", "GTVn")
    it = ds.load(1)
    assert it.meta["centre"] == "MDA" and it.image.shape == (8, 8, 4, 2)
    assert int(it.mask.sum()) == 4 * 1 + 4 * 2 and it.mask[5, 5, 2] == 2  # the label is on the CT grid already
    want = _ramp((8, 8, 4), ct_aff)
    np.testing.assert_allclose(it.image[..., 1][:7, :7, :4], want[:7, :7, :4], atol=1e-3)
    (root / "imagesTr" / "MDA-004__PT.nii.gz").unlink()
    with pytest.raises(DataError, match="MDA-004__PT.nii.gz"):
        create_dataset(f"hecktor:{root}")
