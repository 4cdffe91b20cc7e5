"""Segmentation / registration / EM metrics: parity with MONAI (and scikit-image), empty policies, speed."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
from scipy import ndimage

from medprobe.errors import ConfigError, DataError
from medprobe.metrics.registration import (
    folding_fraction,
    jacobian_determinant,
    registration_metrics,
    warp_labels,
)
from medprobe.metrics.segmentation import (
    METRICS,
    adapted_rand_error,
    aggregate_cases,
    binary_metrics,
    max_distance,
    segmentation_metrics,
    surface_voxels,
    voi,
)

torch = pytest.importorskip("torch")
monai_metrics = pytest.importorskip("monai.metrics")

CASES = [((64, 80), (1.2, 0.7)), ((40, 36, 12), (0.5, 0.5, 7.5))]


def blob(shape: tuple[int, ...], seed: int, sigma: float = 3.0, level: float = 0.0) -> np.ndarray:
    """Smoothed Gaussian noise thresholded at ``level`` standard deviations."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
    return field > level * field.std()


def pair(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A ground-truth blob and a prediction that flips a few smaller blobs of it."""
    gt = blob(shape, seed)
    return gt ^ blob(shape, seed + 1000, sigma=1.5, level=1.5), gt


def _t(mask: np.ndarray):
    return torch.from_numpy(mask[None, None].astype(np.float32))


def monai_reference(pred: np.ndarray, gt: np.ndarray, spacing, tol: float) -> dict[str, float]:
    p, g, sp = _t(pred), _t(gt), list(spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "dice": monai_metrics.compute_dice(p, g, include_background=True).item(),
            "iou": monai_metrics.compute_iou(p, g, include_background=True).item(),
            "hd95": monai_metrics.compute_hausdorff_distance(
                p, g, include_background=True, percentile=95, spacing=sp
            ).item(),
            "asd": monai_metrics.compute_average_surface_distance(
                p, g, include_background=True, symmetric=True, spacing=sp
            ).item(),
            "nsd": monai_metrics.compute_surface_dice(
                p, g, class_thresholds=[tol], include_background=True, spacing=sp
            ).item(),
        }


# ----------------------------------------------------------------------------- parity with MONAI


@pytest.mark.parametrize("shape,spacing", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tol", [1.0, 2.0])
def test_binary_metrics_match_monai(shape, spacing, seed, tol):
    pred, gt = pair(shape, seed)
    ours = binary_metrics(pred, gt, spacing, nsd_tolerance_mm=tol)
    ref = monai_reference(pred, gt, spacing, tol)
    for key in ("dice", "iou"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key
    for key in ("hd95", "asd", "nsd"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-3), key
    tp = np.count_nonzero(pred & gt)
    assert ours["precision"] == pytest.approx(tp / pred.sum())
    assert ours["recall"] == pytest.approx(tp / gt.sum())
    assert 0 < ours["dice"] < 1 and ours["hd95"] > 0


def test_hd95_is_max_of_directed_percentiles_not_pooled():
    # a gt disc and a pred disc plus a far-away speck: the directed pred->gt 95th percentile dominates
    yy, xx = np.mgrid[:60, :60]
    gt = (yy - 20) ** 2 + (xx - 20) ** 2 < 100
    pred = gt.copy()
    pred[50:55, 50:55] = True
    ours = binary_metrics(pred, gt, (1.0, 2.0))
    ref = monai_reference(pred, gt, (1.0, 2.0), 1.0)
    assert ours["hd95"] == pytest.approx(ref["hd95"], abs=1e-3)
    assert ours["asd"] == pytest.approx(ref["asd"], abs=1e-3)


def test_surface_voxels_match_monai_edges():
    from monai.metrics.utils import get_mask_edges

    pred, gt = pair((40, 36, 12), 3)
    gt[0, 5:10, 3:6] = True  # touches the image border
    box_free_pred, box_free_gt = get_mask_edges(pred, gt, crop=False)
    np.testing.assert_array_equal(surface_voxels(pred), box_free_pred)
    np.testing.assert_array_equal(surface_voxels(gt), box_free_gt)


def test_spacing_changes_distances_but_not_overlap():
    pred, gt = pair((40, 36, 12), 4)
    iso = binary_metrics(pred, gt, 1.0)
    aniso = binary_metrics(pred, gt, (0.5, 0.5, 7.5))
    assert iso["dice"] == aniso["dice"] and iso["iou"] == aniso["iou"]
    assert iso["hd95"] != pytest.approx(aniso["hd95"])
    assert binary_metrics(pred, gt, 2.0)["asd"] == pytest.approx(2.0 * iso["asd"])


# ----------------------------------------------------------------------------- multi-class label maps


def test_multiclass_with_missing_classes_matches_binary_and_monai():
    shape, spacing = (40, 36, 12), (0.5, 0.5, 7.5)
    gt = np.zeros(shape, np.int16)
    pred = np.zeros(shape, np.int16)
    gt[blob(shape, 10)] = 1
    pred[blob(shape, 10) ^ blob(shape, 11, 1.5, 1.5)] = 1
    gt[blob(shape, 12, level=1.0)] = 2
    pred[blob(shape, 12, level=1.1)] = 2
    pred[blob(shape, 13, level=2.0)] = 4  # class 4: false positive (absent from gt); class 3 absent in both
    names = {1: "liver", 2: "spleen", 3: "kidney", 4: "tumour"}
    out = segmentation_metrics(pred, gt, names, spacing)
    assert set(out) == {f"{m}/{n}" for m in METRICS for n in names.values()} | set(METRICS)
    for value, name in ((1, "liver"), (2, "spleen")):
        ref = monai_reference(pred == value, gt == value, spacing, 1.0)
        for key in ("dice", "iou"):
            assert out[f"{key}/{name}"] == pytest.approx(ref[key], abs=1e-6)
        for key in ("hd95", "asd", "nsd"):
            assert out[f"{key}/{name}"] == pytest.approx(ref[key], abs=1e-3)
    for m in METRICS:  # policy "nan": classes absent from gt are NaN and excluded from the mean
        assert math.isnan(out[f"{m}/kidney"]) and math.isnan(out[f"{m}/tumour"])
        assert out[m] == pytest.approx((out[f"{m}/liver"] + out[f"{m}/spleen"]) / 2)
    # MONAI's multi-class Dice (one-hot, background excluded, ignore_empty) gives the same per-class values
    onehot = lambda a: torch.from_numpy(np.stack([a == c for c in range(5)])[None].astype(np.float32))  # noqa: E731
    ref_dice = monai_metrics.compute_dice(onehot(pred), onehot(gt), include_background=False)[0].numpy()
    ours = np.array([out[f"dice/{n}"] for n in names.values()])
    np.testing.assert_allclose(ours, ref_dice, atol=1e-6)
    one = segmentation_metrics(pred, gt, names, spacing, empty_policy="one")
    assert one["dice/kidney"] == 1.0 and one["dice/tumour"] == 0.0
    assert one["dice"] == pytest.approx((out["dice/liver"] + out["dice/spleen"] + 1.0 + 0.0) / 4)


def test_labels_sequence_drops_background_and_include_subset():
    gt = np.zeros((20, 20), np.uint8)
    gt[2:8, 2:8] = 1
    gt[10:15, 10:18] = 2
    out = segmentation_metrics(gt, gt, [0, 1, 2], (1.0, 1.0), include=("dice", "hd95"))
    assert out == {"dice/1": 1.0, "dice/2": 1.0, "dice": 1.0, "hd95/1": 0.0, "hd95/2": 0.0, "hd95": 0.0}


def test_input_errors():
    a = np.zeros((8, 8), np.uint8)
    with pytest.raises(DataError):
        segmentation_metrics(a, np.zeros((8, 9), np.uint8), [1], 1.0)
    with pytest.raises(ConfigError):
        segmentation_metrics(a, a, [1], (1.0, 1.0), empty_policy="zero")
    with pytest.raises(ConfigError):
        segmentation_metrics(a, a, [1], (1.0, 1.0, 1.0))
    with pytest.raises(ConfigError):
        segmentation_metrics(a, a, [1], (1.0, -1.0))
    with pytest.raises(ConfigError):
        segmentation_metrics(a, a, [0], (1.0, 1.0))
    with pytest.raises(ConfigError):
        segmentation_metrics(a, a, [1], (1.0, 1.0), include=("hd99",))
    with pytest.raises(ConfigError):
        segmentation_metrics(a, a, {1: "x", 2: "x"}, (1.0, 1.0))


# ----------------------------------------------------------------------------- empty-mask policies

NAN = float("nan")
_FULL = np.zeros((10, 12, 6), bool)
_FULL[2:6, 3:9, 1:4] = True
_EMPTY = np.zeros_like(_FULL)
_SPACING = (0.5, 0.5, 7.5)
_D = math.sqrt((10 * 0.5) ** 2 + (12 * 0.5) ** 2 + (6 * 7.5) ** 2)
# (gt, pred) -> policy -> (dice, iou, precision, recall, nsd, hd95, asd)
EXPECTED = {
    ("empty", "empty"): {
        "nan": (NAN,) * 7,
        "one": (1.0, 1.0, 1.0, 1.0, 1.0, NAN, NAN),
        "worst": (1.0, 1.0, 1.0, 1.0, 1.0, NAN, NAN),
    },
    ("empty", "full"): {
        "nan": (NAN,) * 7,
        "one": (0.0, 0.0, 0.0, 0.0, 0.0, NAN, NAN),
        "worst": (0.0, 0.0, 0.0, 0.0, 0.0, _D, _D),
    },
    ("full", "empty"): {
        "nan": (0.0, 0.0, NAN, 0.0, 0.0, NAN, NAN),
        "one": (0.0, 0.0, 0.0, 0.0, 0.0, NAN, NAN),
        "worst": (0.0, 0.0, 0.0, 0.0, 0.0, _D, _D),
    },
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
@pytest.mark.parametrize("policy", ["nan", "one", "worst"])
def test_empty_policies(case, policy):
    masks = {"empty": _EMPTY, "full": _FULL}
    gt, pred = masks[case[0]], masks[case[1]]
    out = binary_metrics(pred, gt, _SPACING, empty_policy=policy)
    keys = ("dice", "iou", "precision", "recall", "nsd", "hd95", "asd")
    got = tuple(out[k] for k in keys)
    np.testing.assert_allclose(got, EXPECTED[case][policy], equal_nan=True)
    assert max_distance(_FULL.shape, _SPACING) == pytest.approx(_D)
    # same rules through the label-map API, where the class mean of a single class equals it
    lab = segmentation_metrics(pred.astype(np.uint8), gt.astype(np.uint8), {1: "c"}, _SPACING, empty_policy=policy)
    np.testing.assert_allclose([lab[k] for k in keys], EXPECTED[case][policy], equal_nan=True)


def test_nan_policy_agrees_with_monai_where_monai_is_finite():
    # gt present, prediction empty: MONAI gives Dice 0, NSD 0 (and non-finite distances; "nan" reports NaN)
    ref = monai_reference(_EMPTY, _FULL, _SPACING, 1.0)
    out = binary_metrics(_EMPTY, _FULL, _SPACING)
    assert out["dice"] == ref["dice"] == 0.0 and out["nsd"] == ref["nsd"] == 0.0
    assert not math.isfinite(ref["hd95"]) and math.isnan(out["hd95"])
    # gt empty: MONAI (ignore_empty=True) gives NaN Dice and NaN for both-empty NSD
    assert math.isnan(monai_reference(_FULL, _EMPTY, _SPACING, 1.0)["dice"])
    assert math.isnan(monai_reference(_EMPTY, _EMPTY, _SPACING, 1.0)["nsd"])


# ----------------------------------------------------------------------------- aggregation


def test_aggregate_cases_mean_ci_and_nan_handling():
    rng = np.random.default_rng(0)
    dice = rng.uniform(0.6, 0.9, 40)
    cases = [{"dice": float(d), "hd95": NAN if i % 4 == 0 else float(10 * d)} for i, d in enumerate(dice)]
    cases.append({"dice": 0.75})  # key missing -> ignored for hd95
    agg = aggregate_cases(cases, n_resamples=500, seed=1)
    mean, lo, hi = agg["dice"]
    allv = np.append(dice, 0.75)
    assert mean == pytest.approx(allv.mean())
    assert lo < mean < hi
    se = allv.std(ddof=1) / math.sqrt(allv.size)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.25)
    hd = [10 * d for i, d in enumerate(dice) if i % 4 != 0]
    assert agg["hd95"][0] == pytest.approx(np.mean(hd))
    assert aggregate_cases(cases, n_resamples=500, seed=1) == agg  # seeded
    assert aggregate_cases(cases, n_resamples=500, seed=2)["dice"] != agg["dice"]
    # a key's CI does not depend on the other keys
    assert aggregate_cases([{"dice": c["dice"]} for c in cases], n_resamples=500, seed=1)["dice"] == agg["dice"]


def test_aggregate_cases_edge_cases():
    agg = aggregate_cases([{"a": NAN, "b": 0.5}, {"a": NAN, "b": 0.5}])
    assert all(math.isnan(v) for v in agg["a"])
    assert agg["b"] == (0.5, 0.5, 0.5)
    assert aggregate_cases([]) == {}
    with pytest.raises(ConfigError):
        aggregate_cases([{"a": 1.0}], alpha=1.5)


# ----------------------------------------------------------------------------- EM: VOI and adapted Rand


def test_voi_hand_computed():
    gt = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    assert voi(gt, gt) == (0.0, 0.0)
    assert voi(gt * 7 + 3, gt) == (0.0, 0.0)  # label values do not matter
    merged = np.ones_like(gt)
    assert voi(merged, gt) == pytest.approx((0.0, 1.0))  # one bit of merge
    split = np.array([[1, 3, 2, 4], [1, 3, 2, 4]])
    assert voi(split, gt) == pytest.approx((1.0, 0.0))  # one bit of split
    assert voi(split, gt, base=math.e) == pytest.approx((math.log(2), 0.0))
    # gt 0 is ignored by default, counted with ignore_gt=()
    gt0 = np.array([[0, 0, 1, 1]])
    seg0 = np.array([[5, 6, 1, 1]])
    assert voi(seg0, gt0) == (0.0, 0.0)
    assert voi(seg0, gt0, ignore_gt=())[0] == pytest.approx(0.5)


def test_adapted_rand_hand_computed():
    gt = np.array([[1, 1, 2, 2]])
    assert adapted_rand_error(gt, gt) == 0.0
    # all merged, ordered pairs of distinct voxels: together in both 4, in seg 12, in gt 4 -> P = 1/3, R = 1
    assert adapted_rand_error(np.ones_like(gt), gt) == pytest.approx(0.5)
    # CREMI convention, squared counts: n_ij^2 sums 8; seg sizes 16; gt sizes 8 -> P = 1/2, R = 1
    assert adapted_rand_error(np.ones_like(gt), gt, convention="cremi") == pytest.approx(1 - 2 * 0.5 / 1.5)
    # CREMI: seg 0 inside gt foreground are singletons: c = 2 voxels, N = 4 -> c/N = 0.5
    seg = np.array([[0, 0, 2, 2]])
    p = (4 + 0.5) / (4 + 0.5)
    r = (4 + 0.5) / 8
    assert adapted_rand_error(seg, gt, convention="cremi") == pytest.approx(1 - 2 * p * r / (p + r))
    with pytest.raises(ConfigError):
        adapted_rand_error(gt, gt, convention="snemi")


def test_voi_and_are_match_skimage():
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    for seed in range(3):
        gt = ndimage.label(blob((48, 40), seed, 2.0))[0] + 0
        seg = ndimage.label(blob((48, 40), seed, 2.0) & ~blob((48, 40), seed + 50, 1.0, 1.2))[0]
        seg[rng.random(seg.shape) < 0.02] = 99
        split, merge = voi(seg, gt, ignore_gt=())
        np.testing.assert_allclose([split, merge], skm.variation_of_information(gt, seg), atol=1e-10)
        ref_ign = skm.variation_of_information(gt, seg, ignore_labels=(0,))
        np.testing.assert_allclose(voi(seg, gt), ref_ign, atol=1e-10)
        assert adapted_rand_error(seg, gt) == pytest.approx(skm.adapted_rand_error(gt, seg)[0], abs=1e-12)
        assert adapted_rand_error(seg, gt, ignore_gt=()) == pytest.approx(
            skm.adapted_rand_error(gt, seg, ignore_labels=())[0], abs=1e-12
        )


# ----------------------------------------------------------------------------- registration


def affine_disp(a: np.ndarray, t: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """u(x) = (A - I) x + t on the voxel grid."""
    x = np.indices(shape, dtype=np.float64)
    return np.einsum("ij,j...->i...", a - np.eye(len(shape)), x) + t.reshape((-1,) + (1,) * len(shape))


def test_jacobian_of_identity_and_affine():
    assert np.all(jacobian_determinant(np.zeros((3, 6, 7, 5))) == 1.0)
    a3 = np.array([[1.1, 0.2, 0.0], [-0.1, 0.9, 0.3], [0.05, 0.0, 1.2]])
    det = jacobian_determinant(affine_disp(a3, np.array([1.0, -2.0, 0.5]), (9, 8, 7)), spacing=(0.5, 0.5, 7.5))
    np.testing.assert_allclose(det, np.linalg.det(a3), rtol=1e-10)
    a2 = np.array([[0.8, 0.3], [0.1, 1.4]])
    np.testing.assert_allclose(jacobian_determinant(affine_disp(a2, np.zeros(2), (10, 12))), np.linalg.det(a2))
    # the same field given in mm gives the same determinant
    disp_mm = affine_disp(a2, np.zeros(2), (10, 12)) * np.array([1.2, 0.7])[:, None, None]
    np.testing.assert_allclose(jacobian_determinant(disp_mm, (1.2, 0.7), units="mm"), np.linalg.det(a2))


def test_folding_detected():
    assert folding_fraction(np.zeros((2, 8, 8))) == 0.0
    flip = affine_disp(np.diag([-1.0, 1.0, 1.0]), np.zeros(3), (6, 6, 6))  # mirror: det = -1 everywhere
    assert folding_fraction(flip) == 1.0
    # local fold: a sharp bump along axis 0 that overtakes its neighbours
    disp = np.zeros((2, 32, 32))
    disp[0, 14:18, 10:20] = -6.0 * np.array([0, 1, 2, 3])[:, None]
    det = jacobian_determinant(disp)
    frac = folding_fraction(disp)
    assert 0 < frac < 0.1 and frac == np.count_nonzero(det <= 0) / det.size
    assert folding_fraction(disp, mask=np.zeros((32, 32), bool) | (np.arange(32) < 5)[:, None]) == 0.0


def test_warp_integer_shift_and_border():
    lab = np.zeros((12, 10, 8), np.uint8)
    lab[3:6, 2:5, 1:4] = 2
    lab[7:9, 6:9, 5:7] = 1
    disp = np.zeros((3,) + lab.shape)
    disp[0] = -2.0  # output(x) = lab(x - 2 e0): labels move by +2 along axis 0
    disp[2] = 1.0  # and by -1 along axis 2
    out = warp_labels(lab, disp)
    expected = np.zeros_like(lab)
    expected[2:, :, :-1] = lab[:-2, :, 1:]
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == lab.dtype
    far = warp_labels(lab, np.full((3,) + lab.shape, 100.0))
    assert not far.any()
    # the same shift given in mm
    sp = (0.5, 2.0, 3.0)
    np.testing.assert_array_equal(warp_labels(lab, disp * np.array(sp)[:, None, None, None], sp, units="mm"), out)


def test_registration_metrics():
    fixed = np.zeros((24, 20, 10), np.uint8)
    fixed[4:12, 4:12, 2:8] = 1
    fixed[14:20, 8:16, 3:7] = 2
    moving = np.roll(fixed, 1, axis=0)
    disp = np.zeros((3,) + fixed.shape)
    disp[0] = 1.0
    warped = warp_labels(moving, disp)
    out = registration_metrics(warped, fixed, disp, {1: "a", 2: "b"}, (1.0, 1.0, 2.5))
    assert out["dice"] == 1.0 and out["hd95"] == 0.0 and out["asd"] == 0.0
    assert out["folding_fraction"] == 0.0 and out["std_log_jacobian"] == pytest.approx(0.0, abs=1e-12)
    out = registration_metrics(moving, fixed, np.zeros_like(disp), {1: "a", 2: "b"}, (1.0, 1.0, 2.5))
    assert 0 < out["dice"] < 1 and out["hd95/a"] == pytest.approx(1.0)
    with pytest.raises(DataError):
        registration_metrics(fixed, fixed, np.zeros((2, 24, 20)), [1], 1.0)


# ----------------------------------------------------------------------------- speed


def test_128_cubed_three_classes_under_two_seconds():
    shape = (128, 128, 128)
    z = np.indices(shape, dtype=np.float32)
    gt = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    organs = [((40, 50, 60), (30, 22, 35)), ((90, 80, 60), (20, 25, 18)), ((64, 30, 100), (14, 12, 16))]
    wobble = ndimage.zoom(np.random.default_rng(0).standard_normal((16, 16, 16)), 8, order=1)
    for label, (c, r) in enumerate(organs, start=1):
        ell = sum(((z[i] - c[i]) / r[i]) ** 2 for i in range(3))
        gt[ell < 1] = label
        pred[ell + 0.15 * wobble < 1] = label
    t0 = time.process_time()  # CPU time of this process: robust to other jobs on a shared machine
    out = segmentation_metrics(pred, gt, {1: "a", 2: "b", 3: "c"}, (0.8, 0.8, 2.0))
    elapsed = time.process_time() - t0
    assert 0.8 < out["dice"] < 1.0 and out["hd95"] > 0
    assert elapsed < 2.0, f"all metrics on 128^3 x 3 classes took {elapsed:.2f} s CPU"
