"""The shared numeric primitives (one AUC, one Dice) against independent references, and the bootstrap
engine's NaN rule as its module docstring states it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medprobe.analysis.stats import paired_bootstrap
from medprobe.heads.base import score
from medprobe.heads.seg_train import dice_per_class as seg_train_dice
from medprobe.metrics import bootstrap
from medprobe.metrics.bootstrap import (
    MIN_FINITE_FRACTION,
    bootstrap_ci,
    bootstrap_statistic,
    mean_ci,
    percentile_ci,
)
from medprobe.metrics.classification import classification_metrics
from medprobe.metrics.segmentation import aggregate_cases, segmentation_metrics
from medprobe.numerics import auc_column, dice_from_counts, dice_per_class, roc_auc, weighted_auc


# ------------------------------------------------------------------------------------------------ AUC
@pytest.mark.parametrize("seed", range(6))
def test_roc_auc_equals_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = np.round(rng.normal(size=n) + y, 1)  # rounding makes many ties, also across classes
    assert roc_auc(y == 1, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)  # 0/1 flags accepted
    const = np.zeros(n)  # all tied: 0.5
    assert roc_auc(y == 1, const) == pytest.approx(roc_auc_score(y, const)) == pytest.approx(0.5)


def test_roc_auc_undefined_is_nan_and_weights_equal_repeats() -> None:
    s = np.array([0.1, 0.4, 0.4, 0.9])
    assert math.isnan(roc_auc(np.zeros(4, bool), s)) and math.isnan(roc_auc(np.ones(4, bool), s))
    pos = np.array([False, True, False, True])
    w = np.array([[2.0, 1.0, 0.0, 3.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0]])
    got = weighted_auc(auc_column(s, pos), w)
    for row, value in zip(w, got):
        idx = np.repeat(np.arange(4), row.astype(int))
        ref = roc_auc_score(pos[idx], s[idx]) if 0 < pos[idx].sum() < idx.size else math.nan
        np.testing.assert_allclose(value, ref, atol=1e-12)
    with pytest.raises(ValueError):
        roc_auc(pos[:3], s)


def test_multiclass_ovr_macro_auc_equals_sklearn() -> None:
    rng = np.random.default_rng(3)
    n, k = 250, 4
    y = rng.integers(0, k, n)
    s = rng.dirichlet(np.ones(k), n)
    s[np.arange(n), y] += 0.4
    s = np.round(s / s.sum(1, keepdims=True), 2)
    s[:, -1] = 1.0 - s[:, :-1].sum(1)  # rows sum to 1 (sklearn's OvR requires it), with ties
    ref = roc_auc_score(y, s, multi_class="ovr", average="macro")
    assert np.mean([roc_auc(y == c, s[:, c]) for c in range(k)]) == pytest.approx(ref, abs=1e-12)
    assert classification_metrics(y, s, "multiclass")["auc"] == pytest.approx(ref, abs=1e-12)
    assert score("multiclass", y, s, "auc") == pytest.approx(ref, abs=1e-12)


def test_multilabel_mean_auc_equals_sklearn_and_heads_score_matches_metrics() -> None:
    rng = np.random.default_rng(4)
    n, n_labels = 200, 5
    y = rng.integers(0, 2, (n, n_labels))
    s = np.round(np.clip(y + rng.normal(0, 0.8, (n, n_labels)), 0, 1), 1)
    ref = roc_auc_score(y, s, average="macro")
    assert np.mean([roc_auc(y[:, j], s[:, j]) for j in range(n_labels)]) == pytest.approx(ref, abs=1e-12)
    assert classification_metrics(y, s, "multilabel")["auc"] == pytest.approx(ref, abs=1e-12)
    assert score("multilabel", y, s, "auc") == pytest.approx(ref, abs=1e-12)
    # binary: heads and metrics agree with sklearn; a degenerate label counts 0.5 in model selection
    yb = y[:, 0]
    pb = np.stack([1 - s[:, 0], s[:, 0]], 1)
    assert score("binary", yb, pb, "auc") == pytest.approx(roc_auc_score(yb, s[:, 0]), abs=1e-12)
    assert classification_metrics(yb, pb, "binary")["auc"] == pytest.approx(roc_auc_score(yb, s[:, 0]), abs=1e-12)
    y[:, 1] = 0
    expected = np.mean([roc_auc_score(y[:, j], s[:, j]) if j != 1 else 0.5 for j in range(n_labels)])
    assert score("multilabel", y, s, "auc") == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------------------------------------- Dice
def _dice_reference(pred: np.ndarray, gt: np.ndarray, c: int) -> float:
    """Dice from voxel coordinate sets, independent of numpy counting."""
    p = {tuple(i) for i in np.argwhere(pred == c)}
    g = {tuple(i) for i in np.argwhere(gt == c)}
    return math.nan if not p and not g else 2.0 * len(p & g) / (len(p) + len(g))


@pytest.mark.parametrize("shape", [(9, 11), (4, 6, 5)])
def test_dice_per_class_equals_set_reference_and_empty_rule(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape))
    gt = rng.integers(0, 4, shape)
    pred = np.where(rng.random(shape) < 0.7, gt, rng.integers(0, 4, shape))
    gt[gt == 3] = 255  # an ignore label: counts for no class
    pred[pred == 2] = 1  # class 2 absent from the prediction -> 0
    labels = [1, 2, 3, 4]  # 3: only predicted -> 0; 4: absent from both -> NaN
    got = dice_per_class(pred, gt, labels)
    ref = [_dice_reference(pred, gt, c) for c in labels]
    np.testing.assert_allclose(got, ref, atol=1e-12)
    assert got[1] == 0.0 and got[2] == 0.0 and math.isnan(got[3])
    np.testing.assert_allclose(seg_train_dice(pred, gt, 5), got, atol=0)
    with pytest.raises(ValueError):
        dice_per_class(pred, gt[:1], labels)


def test_dice_from_counts_and_segmentation_metrics_agree() -> None:
    np.testing.assert_allclose(dice_from_counts(np.array([3, 0, 0]), np.array([4, 0, 2]), np.array([5, 0, 0])),
                               [6 / 9, np.nan, 0.0])
    rng = np.random.default_rng(7)
    gt = rng.integers(0, 3, (12, 12))
    pred = np.where(rng.random((12, 12)) < 0.6, gt, rng.integers(0, 3, (12, 12)))
    seg = segmentation_metrics(pred, gt, [1, 2], spacing=None, include=("dice",))
    np.testing.assert_allclose([seg["dice/1"], seg["dice/2"]], dice_per_class(pred, gt, [1, 2]), atol=1e-12)


# ----------------------------------------------------------------------------------- bootstrap NaN rule
def test_nan_rule_as_documented() -> None:
    assert MIN_FINITE_FRACTION == 0.5 and "half" in (bootstrap.__doc__ or "")
    finite = np.arange(10, dtype=float)
    ci = percentile_ci(4.5, np.concatenate([finite, [np.nan, np.inf, -np.inf]]), 0.1)
    assert ci.n_dropped == 3 and ci.n_resamples == 13 and ci.n_valid == 10  # NaN and inf are dropped ...
    assert (ci.low, ci.high) == tuple(np.quantile(finite, [0.05, 0.95]))  # ... and the rest give the bounds
    half = percentile_ci(1.0, np.concatenate([finite, np.full(10, np.nan)]), 0.1)
    assert half.n_dropped == 10 and not math.isnan(half.low)  # exactly half finite: still an interval
    few = percentile_ci(1.0, np.concatenate([finite, np.full(11, np.nan)]), 0.1)
    assert few.n_dropped == 11 and math.isnan(few.low) and math.isnan(few.high) and few.point == 1.0
    none = percentile_ci(math.nan, np.full(5, np.nan), 0.1)
    assert none.n_dropped == 5 and all(math.isnan(v) for v in none.interval)


def _draws(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """The resamples the docs promise: rows of one seeded integers draw."""
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def test_nan_rule_in_the_helpers() -> None:
    n, r, seed = 10, 400, 5
    values = np.linspace(0.0, 1.0, n)
    hit = (_draws(n, r, seed) == 0).any(axis=1)  # ~65 % of the resamples contain case 0
    assert 0.5 < hit.mean() < 0.8
    # a statistic undefined whenever case 0 is drawn: < half finite -> NaN bounds
    p, low, high = bootstrap_statistic(lambda i: math.nan if 0 in i else float(values[i].mean()), n, r, seed)
    assert math.isnan(p) and math.isnan(low) and math.isnan(high)  # the full set holds case 0 too
    # a statistic undefined whenever case 0 is missing: > half finite -> quantiles of the finite ones
    ci = bootstrap_statistic(lambda i: float(values[i].mean()) if 0 in i else math.nan, n, r, seed)
    ref = np.quantile(values[_draws(n, r, seed)[hit]].mean(axis=1), [0.025, 0.975])
    np.testing.assert_allclose(ci[1:], ref, atol=1e-12)
    # mean_ci: the mean of a resample without a finite case is undefined
    v = np.full(n, np.nan)
    v[0] = 0.3
    np.testing.assert_allclose(mean_ci(v, r, seed), (0.3, 0.3, 0.3))
    # aggregate_cases drops NaN cases first, then is mean_ci of the rest
    cases = [{"x": float(x)} for x in values] + [{"x": math.nan}]
    assert aggregate_cases(cases, r, seed)["x"] == mean_ci(values, r, seed)


def test_nan_rule_in_classification_and_paired_bootstrap() -> None:
    y = np.zeros(30, int)
    y[0] = 1
    s = np.linspace(0, 1, 30)
    # AUC needs case 0, drawn in ~64 % of resamples: an interval on the finite ones
    auc = bootstrap_ci(y, s, "binary", n_resamples=300, seed=1, metrics=["auc"])["auc"]
    assert not math.isnan(auc[1])
    # the paired bootstrap reports n_valid; below half valid, no interval and no p-value
    y[1] = 1
    pos_scores = s[y == 1]

    def strict_auc(yy: np.ndarray, ss: np.ndarray) -> float:  # defined only if both positives were drawn
        return classification_metrics(yy, ss, "binary")["auc"] if np.isin(pos_scores, ss).all() else math.nan

    r = paired_bootstrap(y, s, s[::-1], strict_auc, n_resamples=300, seed=2)  # P(valid) < 0.41
    assert 0 < r["n_valid"] < 150 and r["delta"] == -1.0  # positives score lowest in s
    assert math.isnan(r["low"]) and math.isnan(r["high"]) and math.isnan(r["p_value"])
