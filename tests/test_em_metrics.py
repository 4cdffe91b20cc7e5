"""EM instance metrics: VOI split / merge / total and ARAND against scikit-image, background and border rules,
boundary Dice, per-section CIs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medprobe.errors import DataError
from medprobe.metrics.instances import (
    aggregate_sections,
    boundary_dice,
    boundary_from_affinities,
    instance_metrics,
    mask_border,
)

skm = pytest.importorskip("skimage.metrics")


@pytest.mark.parametrize("shape,n_gt,n_seg", [((40, 50), 6, 9), ((5, 24, 30), 12, 4), ((64, 64), 2, 30)])
def test_voi_and_arand_equal_skimage_on_random_volumes(shape: tuple[int, ...], n_gt: int, n_seg: int) -> None:
    rng = np.random.default_rng(len(shape) * 100 + n_gt)
    gt = rng.integers(0, n_gt, shape)  # 0 = background, ignored by both
    seg = rng.integers(0, n_seg, shape)  # predicted 0 is an ordinary segment for both
    m = instance_metrics(seg, gt)
    split_sk, merge_sk = skm.variation_of_information(gt, seg, ignore_labels=(0,))
    are_sk = skm.adapted_rand_error(gt, seg, ignore_labels=(0,))[0]
    assert abs(m["voi_split"] - split_sk) <= 1e-9
    assert abs(m["voi_merge"] - merge_sk) <= 1e-9
    assert abs(m["voi"] - (split_sk + merge_sk)) <= 1e-9
    assert abs(m["arand"] - are_sk) <= 1e-9
    assert m["cremi_score"] == pytest.approx(math.sqrt(m["voi"] * m["arand"]))


def test_background_rules() -> None:
    gt = np.array([[1, 1, 0, 2, 2], [1, 1, 0, 2, 2]])
    # whatever is predicted on gt background does not count
    perfect = np.array([[5, 5, 9, 7, 7], [5, 5, 5, 7, 7]])
    m = instance_metrics(perfect, gt)
    assert m["voi"] == 0.0 and m["arand"] == 0.0
    # one segment over both objects: one bit of merge, no split
    merged = np.ones_like(gt)
    m = instance_metrics(merged, gt)
    assert m["voi_split"] == 0.0 and m["voi_merge"] == pytest.approx(1.0)
    assert m["arand"] > 0.3
    # predicted id 0 is an ordinary segment (not ignored): labelling all 0 is a full merge as well
    assert instance_metrics(np.zeros_like(gt), gt) == instance_metrics(merged, gt)
    # nothing labelled: undefined, not 0
    assert math.isnan(instance_metrics(merged, np.zeros_like(gt))["voi"])
    with pytest.raises(DataError, match="case-7"):
        instance_metrics(merged[:, :3], gt, case="case-7")


def test_border_mask_ignores_voxels_near_label_boundaries() -> None:
    gt = np.zeros((1, 10, 10), np.int64)
    gt[:, :, :5], gt[:, :, 5:] = 1, 2
    masked = mask_border(gt, border_nm=8.0, spacing_nm=(4.0, 4.0))
    # in-plane distance to the 1|2 edge < 8 nm (2 pixels): columns 3..6 ignored
    assert (masked[0, :, 3:7] == 0).all() and (masked[0, :, :3] == 1).all() and (masked[0, :, 7:] == 2).all()
    seg = gt.copy()
    seg[:, :, 4] = 2  # an error inside the border band only
    assert instance_metrics(seg, gt)["voi"] > 0
    assert instance_metrics(seg, gt, border_nm=8.0, spacing_nm=(4, 4))["voi"] == 0.0


def test_boundary_dice_of_affinities() -> None:
    aff = np.ones((2, 6, 6), np.float32)
    aff[1, :, 3] = 0.0  # x-affinity between columns 2 and 3 broken
    b = boundary_from_affinities(aff)
    assert b[:, 2:4].all() and not b[:, :2].any() and not b[:, 4:].any()
    assert boundary_dice(b, b) == 1.0
    assert boundary_dice(b, ~b) == 0.0
    assert math.isnan(boundary_dice(np.zeros(3, bool), np.zeros(3, bool)))


def test_per_section_cis() -> None:
    rows = [{"voi": v, "arand": v / 10} for v in (1.0, 2.0, 3.0, 4.0)] + [{"voi": math.nan, "arand": math.nan}]
    agg = aggregate_sections(rows, n_resamples=500, seed=0)
    mean, lo, hi = agg["voi"]
    assert mean == pytest.approx(2.5) and 1.0 <= lo < mean < hi <= 4.0
    assert agg["arand"][0] == pytest.approx(0.25)
