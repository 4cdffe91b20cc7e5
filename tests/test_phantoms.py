"""Tests for the phantom generator (medprobe.data.phantoms)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from medprobe.data import create_dataset
from medprobe.data.phantoms import (
    LESION_TYPES,
    MASK_LABELS,
    default_spacing,
    jacobian_determinant,
    make_phantom,
    phantom_dataset,
    phantom_registration_pairs,
    warp,
)
from medprobe.errors import ConfigError

CASES = [("xray", 2), ("ct", 2), ("ct", 3), ("mri", 2), ("mri", 3), ("us", 2)]
DTYPES = {"xray": np.uint16, "ct": np.int16, "mri": np.float32, "us": np.uint8}


def _small(d: int) -> int | tuple[int, ...]:
    return 48 if d == 2 else (32, 32, 16)


@pytest.mark.parametrize("modality,d", CASES)
def test_make_phantom_deterministic_shapes_dtypes(modality: str, d: int) -> None:
    size = _small(d)
    a, ma = make_phantom(modality, d, size, seed=5, lesion="ring")
    b, mb = make_phantom(modality, d, size, seed=5, lesion="ring")
    c, _ = make_phantom(modality, d, size, seed=6, lesion="ring")
    assert a.dtype == DTYPES[modality] and a.shape == ma.shape
    assert a.shape == ((48, 48) if d == 2 else (32, 32, 16))
    assert np.array_equal(a, b) and np.array_equal(ma, mb)  # bitwise identical
    assert not np.array_equal(a, c)
    assert set(np.unique(ma)) == {0, 1, 2}
    assert np.isfinite(a.astype(np.float64)).all()


def test_default_sizes_and_tuple_size() -> None:
    assert make_phantom("ct", 3, None, 0)[0].shape == (48, 48, 24)
    assert make_phantom("mri", 3, 40, 0)[0].shape == (40, 40, 20)
    assert make_phantom("xray", 2, (40, 56), 0)[0].shape == (40, 56)
    assert make_phantom("us", 2, None, 0)[0].shape == (64, 64)


def test_ct_hounsfield_ranges() -> None:
    for d in (2, 3):
        for seed in range(3):
            img, mask = make_phantom("ct", d, None, seed)
            assert img.dtype == np.int16
            assert img.min() >= -1024 and img.max() <= 3071
            corner = img[(slice(0, 4),) * d].astype(float)
            assert abs(corner.mean() + 1000) < 15  # air
            organ = np.median(img[mask == 1])
            assert 20 <= organ <= 120  # liver, plain or contrast-enhanced
            assert 400 <= img.max() <= 1300  # bone present, not absurd
            body = ndi.binary_erosion(img > -500, iterations=2)
            assert np.mean((img[body] > -150) & (img[body] < -60)) > 0.05  # some fat


def test_mri_xray_us_ranges() -> None:
    mri, _ = make_phantom("mri", 2, None, 1)
    assert mri.min() >= 0 and mri.max() > 300
    xr, mask = make_phantom("xray", 2, None, 1)
    assert xr.max() <= 4095
    lungs, body = xr[mask == 1].mean(), np.median(xr[32:, :])  # lung fields darker than the rest
    assert lungs < body
    us, _ = make_phantom("us", 2, None, 1)
    assert us[0, 0] == 0 and us[0, -1] == 0 and us[40, 32] > 0  # fan-shaped field of view


@pytest.mark.parametrize("modality,d", CASES)
def test_lesion_only_changes_lesion_region(modality: str, d: int) -> None:
    for seed, kind in enumerate(LESION_TYPES):
        base, m0 = make_phantom(modality, d, None, seed)
        les, m1 = make_phantom(modality, d, None, seed, kind)
        assert (m0 == 2).sum() == 0 and (m1 == 2).sum() > 10
        assert np.array_equal(m0[m1 != 2], m1[m1 != 2])
        assert np.mean(m0[m1 == 2] == 1) > 0.8  # the lesion sits (mostly) inside the organ
        diff = np.abs(les.astype(np.float64) - base.astype(np.float64))
        near = ndi.binary_dilation(m1 == 2, iterations=3)
        assert diff[near].sum() > 0.9 * diff.sum() > 0  # mask aligns with the change
        assert diff[m1 == 2].mean() > 5 * diff[~near].mean() + 1e-9


def test_lesion_contrast_sign_by_type() -> None:
    ds = phantom_dataset("multiclass", "ct", 2, n=40, seed=3)
    signs: dict[str, list[float]] = {k: [] for k in LESION_TYPES}
    for i in range(len(ds)):
        it = ds.load(i)
        img = it.image.astype(float)
        les = it.mask == 2
        ring = ndi.binary_dilation(les, iterations=3) & ~ndi.binary_dilation(les, iterations=1) & (it.mask == 1)
        if ring.sum() < 5:
            continue
        signs[LESION_TYPES[it.label]].append(img[les].mean() - img[ring].mean())
        assert it.meta["lesion"] == LESION_TYPES[it.label]
    assert np.mean(np.array(signs["round_bright"]) > 0) >= 0.9
    assert np.mean(np.array(signs["round_dark"]) < 0) >= 0.9
    assert np.mean(np.array(signs["elongated"]) > 0) >= 0.8


def test_dataset_balance_splits_ids_and_determinism() -> None:
    ds = phantom_dataset("binary", "xray", 2, n=100, size=32, seed=1)
    y = np.array(ds.labels())
    assert len(ds) == 100 and y.sum() == 50
    sp = ds.splits()
    assert sp is not None and sorted(sp["train"] + sp["val"] + sp["test"]) == list(range(100))
    assert (len(sp["train"]), len(sp["val"]), len(sp["test"])) == (60, 20, 20)
    assert y[sp["train"]].sum() == 30 and y[sp["test"]].sum() == 10  # stratified
    assert ds.ids()[17] == "phantom-xray2d-000017" and ds.patients() == ds.ids()
    assert ds.modality == "xray" and ds.task.type == "binary" and ds.task.classes == ("no_lesion", "lesion")
    for i in range(10):
        it = ds.load(i)
        assert (it.mask == 2).any() == bool(it.label)
    again = phantom_dataset("binary", "xray", 2, n=100, size=32, seed=1)
    other = phantom_dataset("binary", "xray", 2, n=100, size=32, seed=2)
    assert again.fingerprint() == ds.fingerprint() != other.fingerprint()
    mc = phantom_dataset("multiclass", "mri", 2, n=80, size=32)
    assert np.bincount(mc.labels()).tolist() == [20] * 4 and mc.task.classes == LESION_TYPES
    seg = phantom_dataset("segmentation", "ct", 2, n=8, size=32, splits=(0.5, 0.25, 0.25))
    assert seg.task.type == "segmentation" and seg.task.classes == MASK_LABELS
    assert all((seg.load(i).mask == 2).any() for i in range(8))


def test_3d_dataset_item_geometry() -> None:
    ds = phantom_dataset("binary", "ct", 3, n=4, seed=0)
    it = ds.load(0)
    assert it.image.shape == (48, 48, 24) and it.slice_axis == 2 and it.spatial_dims == 3
    assert it.spacing == (0.8, 0.8, 2.5) == default_spacing("ct", 3)
    assert it.id == "phantom-ct3d-000000"


def test_registry_and_errors() -> None:
    ds = create_dataset("phantom:ct3d-binary", n=4, size=(32, 32, 16), seed=2)
    assert len(ds) == 4 and ds.spatial_dims == 3 and ds.modality == "ct"
    assert create_dataset("phantom:us2d-multiclass", n=4, size=32).task.type == "multiclass"
    assert create_dataset("phantom:mri2d", n=2, size=32).task.type == "binary"
    for bad in ("phantom:xray3d-binary", "phantom:foo", "phantom:ct2d-regression", "phantom:us3d"):
        with pytest.raises(ConfigError, match="valid"):
            create_dataset(bad, n=2)
    with pytest.raises(ConfigError):
        create_dataset("phantom:ct2d-binary", n=2, colour="red")
    with pytest.raises(ConfigError):
        phantom_dataset(splits=(0.5, 0.5, 0.5), n=4)
    with pytest.raises(ConfigError):
        make_phantom("ct", 2, 32, 0, lesion="square")
    with pytest.raises(ConfigError):
        make_phantom("pet", 2, 32, 0)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("modality,d", [("mri", 2), ("ct", 2), ("xray", 2), ("mri", 3)])
def test_registration_ground_truth(modality: str, d: int) -> None:
    size = 64 if d == 2 else (40, 40, 20)
    for p in phantom_registration_pairs(2, modality, d, size=size, seed=4, max_disp=4.0, noise=False):
        u, fixed, moving = p["displacement"], p["fixed"].astype(np.float32), p["moving"].astype(np.float32)
        assert u.shape == (d, *fixed.shape) and u.dtype == np.float32
        assert p["spacing"] == default_spacing(modality, d)
        mag = np.sqrt((u**2).sum(0))
        assert 0.5 < mag.max() <= 4.0 + 1e-3
        assert jacobian_determinant(u).min() > 0.3  # no folding
        warped = warp(moving, u)
        assert _corr(warped, fixed) > 0.97
        assert np.abs(warped - fixed).mean() < (0.6 if d == 2 else 0.7) * np.abs(moving - fixed).mean()
        wm = warp(p["moving_mask"], u, order=0)
        assert np.mean(wm == p["fixed_mask"]) > 0.995 > np.mean(p["moving_mask"] == p["fixed_mask"]) - 0.004
        assert wm.dtype == np.uint8


def test_registration_with_noise_and_determinism() -> None:
    a = phantom_registration_pairs(3, "mri", 2, size=48, seed=7)
    b = phantom_registration_pairs(3, "mri", 2, size=48, seed=7)
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in ("fixed", "moving", "displacement"))
    for p in a:
        f, m = p["fixed"], p["moving"]
        assert not np.array_equal(f, m)
        assert np.abs(warp(m, p["displacement"]) - f).mean() < 0.8 * np.abs(m - f).mean()
        assert jacobian_determinant(p["displacement"]).min() > 0
    flat = phantom_registration_pairs(1, "ct", 2, size=48, seed=7, max_disp=0.0)[0]
    assert np.abs(flat["displacement"]).max() == 0


def test_binary_task_learnable_but_not_trivial() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ds = phantom_dataset("binary", "ct", 2, n=240, size=48, seed=11)
    feats = []
    for i in range(len(ds)):  # intensity quantiles of the (blurred) organ region, no lesion mask used
        it = ds.load(i)
        v = ndi.gaussian_filter(it.image.astype(np.float32), 1.0)[it.mask > 0]
        q = np.percentile(v, [1, 5, 25, 50, 75, 95, 99])
        feats.append(np.r_[q - q[3], v.std()] / (q[4] - q[2] + 1e-6))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    acc = cross_val_score(clf, np.array(feats), np.array(ds.labels()), cv=5).mean()
    assert 0.6 < acc < 0.95, acc  # ~0.7: beats chance, far from perfect


def test_generation_speed() -> None:
    t = time.perf_counter()
    phantom_dataset("binary", "ct", 2, n=200, size=64)
    t2 = time.perf_counter()
    phantom_dataset("binary", "mri", 3, n=40)
    t3 = time.perf_counter()
    assert t2 - t < 3.0 and t3 - t2 < 5.0  # targets 1 s / 2 s, with slack for shared CPUs
