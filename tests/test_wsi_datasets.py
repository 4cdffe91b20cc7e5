"""Slide dataset layouts (CAMELYON16, CAMELYON17, BCNB, generic slides CSV) on tiny slides written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from medprobe.data import RegionSource, create_dataset, dataset_kinds
from medprobe.data.splits import check_leakage
from medprobe.data.wsi_datasets import SlideDataset
from medprobe.errors import ConfigError, DataError


def write_slide(path: Path, seed: int, mpp: float | None = 0.25, size: tuple[int, int] = (96, 128)) -> np.ndarray:
    """A tiny tiled TIFF slide (two levels) with resolution tags in cm."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    kw = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    with tifffile.TiffWriter(path) as w:
        w.write(a, tile=(32, 32), **kw)
        w.write(a[::2, ::2], tile=(32, 32), subfiletype=1)
    return a


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


ASAP = """<?xml version="1.0"?>
<ASAP_Annotations>
  <Annotations>
    <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="0" X="0" Y="0" /><Coordinate Order="1" X="64" Y="0" />
        <Coordinate Order="2" X="64" Y="64" /><Coordinate Order="3" X="0" Y="64" />
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 1" Type="Polygon" PartOfGroup="_2" Color="#64FE2E">
      <Coordinates>
        <Coordinate Order="2" X="32" Y="32" /><Coordinate Order="0" X="0" Y="0" /><Coordinate Order="1" X="32" Y="0" />
        <Coordinate Order="3" X="0" Y="32" />
      </Coordinates>
    </Annotation>
  </Annotations>
</ASAP_Annotations>
"""


def test_kinds_registered() -> None:
    assert {"camelyon16", "camelyon17", "bcnb", "slides"} <= set(dataset_kinds())


@pytest.fixture
def c16(tmp_path: Path) -> Path:
    root = tmp_path / "CAMELYON16"
    for i in range(1, 5):
        write_slide(root / "training" / "normal" / f"normal_{i:03d}.tif", i)
    for i in range(1, 3):
        write_slide(root / "training" / "tumor" / f"tumor_{i:03d}.tif", 10 + i)
    for i in range(1, 4):
        write_slide(root / "testing" / "images" / f"test_{i:03d}.tif", 20 + i)
    write_text(root / "testing" / "reference.csv", "Test_001,Tumor,Macro,\nTest_002,Normal,,\nTest_003,Tumor,Micro,\n")
    return root


def test_camelyon16_official_split_and_items(c16: Path) -> None:
    ds = create_dataset(f"camelyon16:{c16}")
    assert isinstance(ds, SlideDataset) and ds.unit == "slide" and ds.modality == "pathology"
    assert ds.task.type == "binary" and ds.task.classes == ("normal", "tumor")
    ids = ds.ids()
    assert ids[:4] == [f"normal_{i:03d}" for i in range(1, 5)] and ids[-3:] == ["test_001", "test_002", "test_003"]
    assert ds.labels() == [0, 0, 0, 0, 1, 1, 1, 0, 1]
    sp = ds.splits()
    assert sp == {"train": list(range(6)), "test": [6, 7, 8]} and ds.meta["n_test_slides"] == 3
    item = ds.load(5)
    assert item.is_region and isinstance(item.image, RegionSource) and item.label == 1
    assert item.meta["mpp"] == pytest.approx(0.25) and item.spacing == pytest.approx((0.00025, 0.00025))
    assert item.meta["split"] == "train" and item.patient == "tumor_002" and item.image.shape == (96, 128)
    ref = tifffile.imread(c16 / "training" / "tumor" / "tumor_002.tif", key=0)
    np.testing.assert_array_equal(item.image.read_region(10, 20, 30, 40), ref[10:40, 20:60])
    fp = ds.fingerprint()
    assert create_dataset(f"camelyon16:{c16}", mpp=0.5).fingerprint() != fp  # the pixel size is part of it
    assert create_dataset(f"camelyon16:{c16}", mpp=0.5).load(0).meta["mpp_source"].startswith("option")
    val = create_dataset(f"camelyon16:{c16}", val_fraction=0.5, seed=1)
    vs = val.splits()
    assert vs is not None and sorted(vs["train"] + vs["val"]) == list(range(6)) and vs["test"] == [6, 7, 8]
    assert {val.labels()[i] for i in vs["val"]} == {0, 1}  # stratified: both classes in val
    assert not check_leakage(vs, val.patients())


def test_camelyon16_bad_reference(c16: Path) -> None:
    write_text(c16 / "testing" / "reference.csv", "Test_001,Tumor\nTest_002,Normal\n")
    with pytest.raises(DataError, match="test_003.tif is not in the reference CSV"):
        create_dataset(f"camelyon16:{c16}")
    write_text(c16 / "testing" / "reference.csv", "image,type\nTest_001,Tumor\nTest_002,Maybe\nTest_003,Normal\n")
    with pytest.raises(DataError, match="reference.csv: row 3"):
        create_dataset(f"camelyon16:{c16}")
    (c16 / "testing" / "reference.csv").unlink()
    with pytest.raises(DataError, match="reference CSV not found"):
        create_dataset(f"camelyon16:{c16}")


@pytest.fixture
def c17(tmp_path: Path) -> Path:
    root = tmp_path / "CAMELYON17"
    rows = ["patient,stage", "patient_000.zip,pN1", "patient_000_node_0.tif,negative", "patient_000_node_1.tif,itc",
            "patient_021.zip,pN2", "patient_021_node_3.tif,macro", "patient_045_node_2.tif,micro",
            "patient_099_node_4.tif,negative"]
    write_text(root / "stage_labels.csv", "\n".join(rows) + "\n")
    for k, (name, centre) in enumerate((("patient_000_node_0", 0), ("patient_000_node_1", 0),
                                        ("patient_021_node_3", 1), ("patient_045_node_2", 2),
                                        ("patient_099_node_4", 4))):
        write_slide(root / f"centre_{centre}" / f"{name}.tif", 40 + k)
    return root


def test_camelyon17_centres_targets_and_external_test(c17: Path, c16: Path) -> None:
    ds = create_dataset(f"camelyon17:{c17}")
    assert ds.ids() == ["patient_000_node_0", "patient_000_node_1", "patient_021_node_3", "patient_045_node_2",
                        "patient_099_node_4"]
    assert ds.task.classes == ("normal", "tumor") and ds.labels() == [0, 1, 1, 1, 0]
    assert [m["centre"] for m in ds.slide_meta] == [0, 0, 1, 2, 4]
    assert ds.patients()[:2] == ["patient_000", "patient_000"]
    assert ds.splits() == {"test": [0, 1, 2, 3, 4]}
    item = ds.load(2)
    assert item.meta["centre"] == 1 and item.meta["stage"] == "macro" and item.meta["node"] == 3
    assert create_dataset(f"camelyon17:{c17}", itc_positive=False).labels() == [0, 0, 1, 1, 0]
    st = create_dataset(f"camelyon17:{c17}", target="stage")
    assert st.task.type == "ordinal" and st.labels() == [0, 1, 3, 2, 0]
    assert create_dataset(f"camelyon17:{c17}", centres=[0, 4]).ids() == ["patient_000_node_0", "patient_000_node_1",
                                                                        "patient_099_node_4"]
    assert create_dataset(f"camelyon17:{c17}", split="none").splits() is None
    ext = create_dataset("external:", train={"dataset": f"camelyon16:{c16}"}, test={"dataset": f"camelyon17:{c17}"})
    es = ext.splits()
    assert es is not None and len(es["test"]) == 5 and len(es["train"]) + len(es.get("val", [])) == 6
    # lesion outlines (CAMELYON17 ships them for some slides) reach the external test set's tiles
    write_text(c17 / "lesion_annotations" / "patient_021_node_3.xml", ASAP)
    ext = create_dataset("external:", train={"dataset": f"camelyon16:{c16}"}, test={"dataset": f"camelyon17:{c17}"})
    coords = np.array([[0, 0], [32, 0]])
    test_ids = [ext.ids()[i] for i in ext.splits()["test"]]  # type: ignore[index]
    at = {name: ext.tile_labels(ext.ids().index(name), coords, 16) for name in test_ids}
    assert at["test:patient_021_node_3"].tolist() == [0, 1]  # type: ignore[union-attr]
    assert at["test:patient_000_node_0"].tolist() == [0, 0]  # type: ignore[union-attr]  # negative: no lesion
    assert at["test:patient_045_node_2"] is None  # tumour slide without an outline: unknown
    with pytest.raises(ConfigError, match="target must be"):
        create_dataset(f"camelyon17:{c17}", target="pN")
    (c17 / "centre_4" / "patient_099_node_4.tif").rename(c17 / "centre_1" / "patient_099_node_4.tif")
    with pytest.raises(DataError, match="patient 99 belongs to centre 4"):
        create_dataset(f"camelyon17:{c17}")


def test_bcnb_five_targets_and_folds(tmp_path: Path) -> None:
    root = tmp_path / "BCNB"
    aln = ["N0", "N+(1-2)", "N+(>2)", "N0", "N0", "N+(1-2)", "N0", "N+(>2)", "N0", "N+(1-2)"]
    er = ["Positive", "Negative"] * 5
    ki = ["0.05", "0.3", "14%", "0.1", "40", "0.139", "0.2", "0.01", "0.5", "0.02"]
    lines = ["Patient ID,Age(years),ER,PR,HER2,Ki67,ALN status"]
    for i in range(10):
        lines.append(f"{i + 1},50,{er[i]},{er[(i + 1) % 10]},{'Positive' if i % 3 == 0 else 'Negative'},{ki[i]},"
                     f"{aln[i]}")
        (root / "WSIs").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 60, 3), 200 - i, dtype=np.uint8)).save(root / "WSIs" / f"{i + 1}.jpg")
    write_text(root / "patient-clinical-data.csv", "\n".join(lines) + "\n")
    ds = create_dataset(f"bcnb:{root}", target="ALN")
    assert ds.name == "bcnb-ALN" and ds.task.classes == ("N0", "N+")
    assert ds.labels() == [0, 1, 1, 0, 0, 1, 0, 1, 0, 1]
    t = ds.slide_meta[2]["targets"]
    assert t == {"ALN": 1, "ER": 1, "PR": 0, "HER2": 0, "Ki67": 1}  # 14% is high (>= 0.14)
    assert create_dataset(f"bcnb:{root}", target="ki67").labels() == [0, 1, 1, 0, 1, 0, 1, 0, 1, 0]
    assert create_dataset(f"bcnb:{root}", target="HER2").labels() == [1, 0, 0, 1, 0, 0, 1, 0, 0, 1]
    tests: list[int] = []
    for f in range(5):
        sp = create_dataset(f"bcnb:{root}", target="ER", fold=f).splits()
        assert sp is not None and [len(sp["train"]), len(sp["val"]), len(sp["test"])] == [7, 1, 2]  # 7:1:2
        tests += sp["test"]
    assert sorted(tests) == list(range(10))  # every patient tested exactly once over the five folds
    with pytest.raises(DataError, match="1.jpg: no pixel size"):  # JPEGs carry no pixel size
        ds.load(0)
    item = create_dataset(f"bcnb:{root}", mpp=0.5).load(3)
    assert item.image.shape == (40, 60) and item.meta["mpp"] == 0.5 and item.meta["targets"]["ER"] == 0
    write_text(root / "patient-clinical-data.csv", "\n".join(lines[:3] + [lines[3].replace("N+(>2)", "N?")]) + "\n")
    with pytest.raises(DataError, match=r"row 3 \(line 4\), column 'ALN status': value 'N\?'"):
        create_dataset(f"bcnb:{root}")
    with pytest.raises(ConfigError, match="target must be one of"):
        create_dataset(f"bcnb:{root}", target="grade")


def test_generic_slides_csv(tmp_path: Path) -> None:
    for i in range(4):
        write_slide(tmp_path / "s" / f"slide{i}.tif", 60 + i, mpp=None if i == 3 else 0.5)
    write_text(tmp_path / "slides.csv", "path,label,patient,split,mpp\ns/slide0.tif,1,p0,train,\n"
               "s/slide1.tif,0,p1,train,\ns/slide2.tif,0,p1,train,0.3\ns/slide3.tif,1,p2,test,0.25\n")
    ds = create_dataset(f"slides:{tmp_path / 'slides.csv'}", label_columns="label", patient_column="patient",
                        split_column="split", mpp_column="mpp")
    assert ds.labels() == [1, 0, 0, 1] and ds.splits() == {"train": [0, 1, 2], "test": [3]}
    assert [ds.load(i).meta["mpp"] for i in range(4)] == pytest.approx([0.5, 0.5, 0.3, 0.25])
    assert ds.load(3).meta["mpp_source"].startswith("option")
    plain = create_dataset(f"slides:{tmp_path / 'slides.csv'}", label_columns="label")
    with pytest.raises(DataError, match="slide3.tif: no pixel size"):
        plain.load(3)
    write_text(tmp_path / "bad.csv", "path,label,mpp\ns/slide0.tif,1,abc\n")
    with pytest.raises(DataError, match="column 'mpp': mpp 'abc'"):
        create_dataset(f"slides:{tmp_path / 'bad.csv'}", label_columns="label", mpp_column="mpp")
    write_text(tmp_path / "missing.csv", "path,label\ns/nothere.tif,1\n")
    with pytest.raises(DataError, match="listed files are missing"):
        create_dataset(f"slides:{tmp_path / 'missing.csv'}", label_columns="label")


def test_lesion_annotations_give_tile_labels(c16: Path, tmp_path: Path) -> None:
    """ASAP polygons (tumour minus the _2 exclusion) label tiles by their centre, for CAMELYON16's tumour slides."""
    from medprobe.data.annotations import read_asap_xml

    ann = write_text(c16 / "training" / "lesion_annotations" / "tumor_001.xml", ASAP)
    a = read_asap_xml(ann)
    assert len(a.tumour) == 1 and len(a.exclude) == 1
    assert a.exclude[0].tolist() == [[0, 0], [32, 0], [32, 32], [0, 32]]  # points sorted by their Order
    # 16-px tiles: centres (8, 8) excluded, (40, 8) and (40, 40) tumour, (72, 8) outside
    coords = np.array([[0, 0], [32, 0], [32, 32], [64, 0]])
    assert a.tile_labels(coords, 16).tolist() == [0, 1, 1, 0]

    ds = create_dataset(f"camelyon16:{c16}")
    ids = ds.ids()
    assert ds.meta["n_annotated_slides"] == 1
    assert ds.tile_labels(ids.index("tumor_001"), coords, 16).tolist() == [0, 1, 1, 0]
    assert ds.tile_labels(ids.index("normal_001"), coords, 16).tolist() == [0, 0, 0, 0]  # no lesion
    assert ds.tile_labels(ids.index("tumor_002"), coords, 16) is None  # tumour without its outline: unknown
    write_text(c16 / "training" / "lesion_annotations" / "tumor_001.xml", "<ASAP_Annotations><Annotations>")
    with pytest.raises(DataError, match="tumor_001.xml.*not a readable ASAP annotation file"):
        ds.tile_labels(ids.index("tumor_001"), coords, 16)
    (c16 / "training" / "lesion_annotations" / "tumor_001.xml").unlink()
    plain = create_dataset(f"camelyon16:{c16}")  # no annotation at all: tile labels unknown everywhere
    assert all(plain.tile_labels(i, coords, 16) is None for i in range(len(plain)))
