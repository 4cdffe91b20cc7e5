"""EM instance data: CREMI-layout HDF5 and TIFF stacks through one path, section splits inside and across
volumes, CREMI's unlabelled marker, ISBI 2012 instances, one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medprobe.data import create_dataset
from medprobe.errors import ConfigError, DataError

h5py = pytest.importorskip("h5py")
tifffile = pytest.importorskip("tifffile")
ISBI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012-em"
UNLABELLED = np.iinfo(np.uint64).max


def stack(z: int = 6, y: int = 20, x: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (z, y, x), dtype=np.uint8)
    ids = np.zeros((z, y, x), np.uint64)
    ids[:, : y // 2] = 7
    ids[:, y // 2:, : x // 2] = 12
    ids[:, y // 2:, x // 2:] = 3
    return raw, ids


def write_cremi(path: Path, raw: np.ndarray, ids: np.ndarray, *, labels_key: str = "volumes/labels/neuron_ids",
                offset: tuple[int, ...] = (0, 0, 0)) -> Path:
    with h5py.File(path, "w") as f:
        r = f.create_dataset("volumes/raw", data=raw)
        r.attrs["resolution"] = (40.0, 4.0, 4.0)
        r.attrs["offset"] = (0.0, 0.0, 0.0)
        lab = f.create_dataset(labels_key, data=ids)
        lab.attrs["resolution"] = (40.0, 4.0, 4.0)
        lab.attrs["offset"] = offset
    return path


def test_cremi_hdf5_and_tiff_stack_give_the_same_sections(tmp_path: Path) -> None:
    raw, ids = stack()
    ids[1, 0, :3] = UNLABELLED  # CREMI's unlabelled marker -> background 0
    write_cremi(tmp_path / "sample_A.h5", raw, ids)
    tifffile.imwrite(tmp_path / "A_inputs.tif", raw, photometric="minisblack")
    tifffile.imwrite(tmp_path / "A_labels.tif", np.where(ids == UNLABELLED, 0, ids).astype(np.uint32),
                     photometric="minisblack")
    secs = {"train": [0, 4], "test": [4, None]}
    h5 = create_dataset(f"em:{tmp_path / 'sample_A.h5'}", target="instances", sections=secs)
    tif = create_dataset(f"em-tiff:{tmp_path}", target="instances", sections=secs, spacing=(4, 4, 40))
    for ds in (h5, tif):
        assert ds.task.type == "instances" and len(ds) == 6
        assert ds.splits() == {"train": [0, 1, 2, 3], "val": [], "test": [4, 5]}
        it = ds.load(1)
        assert it.spatial_dims == 2 and it.image.shape == (20, 24) and it.mask.dtype == np.int64
        np.testing.assert_array_equal(it.image, raw[1])
        assert set(np.unique(it.mask)) == {0, 3, 7, 12} and (it.mask[0, :3] == 0).all()
        assert it.spacing == pytest.approx((4e-6, 4e-6)) and it.meta["split"] == "train"
    assert h5.load(1).meta["n_unlabelled"] == 3
    assert h5.ids()[4] == "sample_A/z0004" and tif.ids()[4] == "A/z0004"
    assert h5.ranges() == [{"split": "train", "volume": "sample_A", "start": 0, "stop": 4},
                           {"split": "test", "volume": "sample_A", "start": 4, "stop": 6}]
    chunk = create_dataset(f"em:{tmp_path / 'sample_A.h5'}", target="instances", sections=secs, unit="chunk")
    assert len(chunk) == 2 and chunk.splits()["test"] == [1]
    c = chunk.load(1)
    assert c.spatial_dims == 3 and c.image.shape == (24, 20, 2) and c.mask.shape == (24, 20, 2)
    np.testing.assert_array_equal(c.image[..., 0], raw[4].T)


def test_sections_across_volumes(tmp_path: Path) -> None:
    for name, z in (("AC3", 5), ("AC4", 4)):
        raw, ids = stack(z=z, seed=z)
        tifffile.imwrite(tmp_path / f"{name}_inputs.tif", raw, photometric="minisblack")
        tifffile.imwrite(tmp_path / f"{name}_labels.tif", ids.astype(np.uint32), photometric="minisblack")
    ds = create_dataset(f"em-tiff:{tmp_path}", target="instances",
                        sections={"train": {"AC4": [0, 3]}, "val": {"AC4": [3, 4]}, "test": {"AC3": [0, -1]}})
    assert [len(v) for v in ds.splits().values()] == [3, 1, 4]
    assert ds.ids()[3] == "AC4/z0003" and ds.ids()[4] == "AC3/z0000"
    with pytest.raises(ConfigError, match="unknown volume 'AC5'"):
        create_dataset(f"em-tiff:{tmp_path}", target="instances", sections={"train": {"AC5": [0, 2]}})
    with pytest.raises(ConfigError, match="outside volume 'AC4' with 4 sections"):
        create_dataset(f"em-tiff:{tmp_path}", target="instances", sections={"train": {"AC4": [0, 9]}})
    with pytest.raises(ConfigError, match="section 2 of 'AC4' is in both train and test"):
        create_dataset(f"em-tiff:{tmp_path}", target="instances",
                       sections={"train": {"AC4": [0, 3]}, "test": {"AC4": [2, 4]}})
    with pytest.raises(ConfigError, match="sections.test must be"):
        create_dataset(f"em-tiff:{tmp_path}", target="instances", sections={"test": [1, 2, 3]})


def test_missing_key_and_shape_mismatch_are_one_line(tmp_path: Path) -> None:
    raw, ids = stack()
    write_cremi(tmp_path / "a.h5", raw, ids, labels_key="volumes/labels/other")
    with pytest.raises(DataError) as e:  # found when the sections are resolved (the header is read)
        create_dataset(f"em:{tmp_path / 'a.h5'}", target="instances", sections={"test": [0, 2]})
    assert "no dataset 'volumes/labels/neuron_ids'" in str(e.value) and "a.h5" in str(e.value)
    assert "\n" not in str(e.value)
    big = np.zeros((6, 30, 24), np.uint64)  # labels larger than the raw volume: no crop can fit them
    write_cremi(tmp_path / "b.h5", raw, big)
    ds = create_dataset(f"em:{tmp_path / 'b.h5'}", target="instances")
    with pytest.raises(DataError) as e:
        ds.load(0)
    assert str(e.value).startswith("b:") and "raw shape (6, 20, 24)" in str(e.value) and "\n" not in str(e.value)
    # a smaller label volume with a CREMI offset (nm, z y x) crops the raw volume to the labelled region
    write_cremi(tmp_path / "c.h5", raw, ids[1:5, 2:12, 2:14], offset=(40, 8, 8))
    it = create_dataset(f"em:{tmp_path / 'c.h5'}", target="instances", sections={"test": [0, 4]}).load(2)
    np.testing.assert_array_equal(it.image, raw[3, 2:12, 2:14])


@pytest.mark.skipif(not ISBI.is_dir(), reason="shared ISBI 2012 data not present")
def test_isbi_instances_are_components_of_the_non_membrane_label() -> None:
    ds = create_dataset(f"isbi2012:{ISBI}", target="instances", sections={"train": [0, 20], "test": [20, 30]})
    assert ds.task.type == "instances" and len(ds) == 30
    assert ds.splits() == {"train": list(range(20)), "val": [], "test": list(range(20, 30))}
    it = ds.load(25)
    assert it.id == "25" and it.meta["split"] == "test" and it.mask.shape == (512, 512)
    from scipy import ndimage

    sem = create_dataset(f"isbi2012:{ISBI}").load(25).mask  # 1 = membrane
    assert ((it.mask == 0) == (sem == 1)).all()
    assert it.mask.max() == ndimage.label(sem == 0)[1] > 20
