"""Slide bags to and from the CLAM / TRIDENT HDF5 layout (issue 25): medprobe's bags exported from the real slides in
../shared/data/wsi-samples read back equal, and bags written the way TRIDENT writes them (``features`` + ``coords``
with its attributes) run through medprobe's MIL heads with the same predictions as the bags they came from."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")
sys.path.insert(0, str(Path(__file__).parent))
from _dist_slides import make_slides  # noqa: E402

from medprobe.encoders import create_encoder  # noqa: E402
from medprobe.errors import DataError  # noqa: E402
from medprobe.features import ExtractConfig, extract  # noqa: E402
from medprobe.features.slides import export_h5, import_h5, slide_coords  # noqa: E402
from medprobe.heads import get_head_class  # noqa: E402
from medprobe.preprocess import PreprocessConfig  # noqa: E402

pytestmark = pytest.mark.shared_data


def test_export_import_round_trip_on_real_slides_and_mil_head(tmp_path: Path) -> None:
    from conftest import shared_data_path

    shared_data_path()
    store = extract(make_slides(), create_encoder("none"), PreprocessConfig(), ExtractConfig(batch_size=16,
                    progress=False), cache_dir=tmp_path / "cache", device="cpu")
    assert store is not None
    files = export_h5(store, tmp_path / "h5", token="mean")
    bags = import_h5(tmp_path / "h5")
    assert [b["id"] for b in bags] == sorted(store.ids)
    by_id = {b["id"]: b for b in bags}
    for i, sid in enumerate(store.ids):
        b = by_id[sid]
        np.testing.assert_array_equal(b["features"], store.item(i, "mean"))
        np.testing.assert_array_equal(b["coords"], slide_coords(store, i))
        assert b["coords"].dtype == np.int64 and b["attrs"]["patch_size"] == 224
        assert b["attrs"]["patch_level"] >= 0 and b["attrs"]["mpp"] > 0 and b["attrs"]["target_mpp"] == 0.5
    # the same bags as TRIDENT writes them (float32 features, coords with its attributes), read by the importer
    trident = tmp_path / "trident"
    trident.mkdir()
    for i, sid in enumerate(store.ids):
        with h5py.File(trident / f"{sid}.h5", "w") as f:
            c = f.create_dataset("coords", data=slide_coords(store, i).astype(np.int32))
            c.attrs.update({"patch_size": 224, "patch_size_level0": 448, "level0_magnification": 20,
                            "target_magnification": 20, "overlap": 0, "name": sid})
            f.create_dataset("features", data=store.item(i, "mean").astype(np.float32))
    tb = import_h5(sorted(trident.glob("*.h5")))
    for a, b in zip(tb, bags, strict=True):
        np.testing.assert_array_equal(a["features"], b["features"])
        np.testing.assert_array_equal(a["coords"], b["coords"])
    # imported bags through a MIL head: the same predictions as the store's own bags
    head_cls = get_head_class("abmil", "bag")
    own = [np.asarray(store.item(i, "mean"), np.float32) for i in range(store.n_items)]
    own, y = own + own, np.array([0, 1, 1, 0])
    p_own = head_cls(task="binary", n_classes=2, seed=0, epochs=3).fit(own, y).predict_proba(own)
    imp = [by_id[sid]["features"] for sid in store.ids] * 2
    p_imp = head_cls(task="binary", n_classes=2, seed=0, epochs=3).fit(imp, y).predict_proba(imp)
    np.testing.assert_array_equal(p_own, p_imp)
    assert len(files) == 2


def test_import_refuses_a_file_without_bags(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["features"] = np.zeros((3, 4), np.float32)
    with pytest.raises(DataError, match="x.h5: needs datasets 'features' and 'coords'"):
        import_h5(tmp_path / "x.h5")
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f["features"] = np.zeros((3, 4), np.float32)
        f["coords"] = np.zeros((2, 2), np.int64)
    with pytest.raises(DataError, match="do not pair up"):
        import_h5(tmp_path / "y.h5")


def test_export_features_cli_writes_importable_bags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import shared_data_path

    from medprobe.cli.main import main

    wsi = shared_data_path() / "wsi-samples"
    (tmp_path / "s.csv").write_text(
        "id,path,label,mpp\n"
        f"cmu,{wsi / 'cmu-1-small-region.svs'},0,\ntcga,{wsi / 'tcga-cr-7395-01a-01-ts1.svs'},1,0.25\n",
        encoding="utf-8")
    (tmp_path / "t.yaml").write_text(
        f"name: slides-export\nkind: slides\ndataset: slides:{tmp_path / 's.csv'}\n"
        "data: {label_columns: label, id_column: id, mpp_column: mpp, task: binary}\n"
        f"encoder: none\ndevice: cpu\nheads: [meanpool]\ncache_dir: {tmp_path / 'cache'}\n"
        "features: {batch_size: 16, progress: false}\n", encoding="utf-8")
    assert main(["export-features", str(tmp_path / "t.yaml"), "--out", str(tmp_path / "bags")]) == 0
    assert "wrote 2 slide bag(s)" in capsys.readouterr().out
    bags = {b["id"]: b for b in import_h5(tmp_path / "bags")}
    # 49 tissue tiles on CMU-1, 47 on the TCGA slide (tests/test_tissue.py)
    assert {k: len(b["features"]) for k, b in bags.items()} == {"cmu": 49, "tcga": 47}
    assert bags["tcga"]["attrs"]["mpp"] == 0.25 and bags["cmu"]["coords"].dtype == np.int64
    (tmp_path / "c.yaml").write_text(
        f"name: x\ndataset: phantom:xray2d-binary\nencoder: none\nheads: [logreg]\ncache_dir: {tmp_path / 'c2'}\n",
        encoding="utf-8")
    assert main(["export-features", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "no")]) == 2
    assert "export-features writes slide tile bags" in capsys.readouterr().err
