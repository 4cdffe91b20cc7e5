"""Calibration metrics (issue 27): ECE checked by hand on a toy case, Brier / NLL against scikit-learn, the
bootstrap sharing the classification engine, reliability curves and temperature scaling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from calibration_reference import calibration_reference
from sklearn.metrics import brier_score_loss, log_loss

from medprobe.metrics import bootstrap_ci, classification_metrics
from medprobe.metrics.calibration import (
    apply_temperature,
    calibration_metrics,
    fit_temperature,
    reliability_curve,
)


def test_ece_by_hand_toy_case() -> None:
    """Four binary cases. p1 = .9 .8 .3 .6, y = 1 0 0 1 -> predictions 1 1 0 1, top-label confidences
    .9 .8 .7 .6, correct 1 0 1 1. Equal width (15 bins): each case has its own bin, ECE = mean |correct - conf|
    = (.1 + .8 + .3 + .4) / 4 = .4. Equal mass, 2 bins: {.6, .7} gaps +.4 +.3 = .7; {.8, .9} gaps -.8 +.1 = -.7;
    ECE = (.7 + .7) / 4 = .35. One bin: |.4 + .3 - .8 + .1| / 4 = 0."""
    y = np.array([1, 0, 0, 1])
    p1 = np.array([0.9, 0.8, 0.3, 0.6])
    m = calibration_metrics(y, p1, "binary")
    assert m["ece"] == pytest.approx(0.4, abs=1e-12)
    assert calibration_metrics(y, p1, "binary", n_bins=2)["ece_mass"] == pytest.approx(0.35, abs=1e-12)
    assert calibration_metrics(y, p1, "binary", n_bins=1)["ece_mass"] == pytest.approx(0.0, abs=1e-12)
    assert m["brier"] == pytest.approx((0.01 + 0.64 + 0.09 + 0.16) / 4, abs=1e-12)
    assert m["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.2) + math.log(0.7) + math.log(0.6)) / 4)


def test_multiclass_ece_by_hand() -> None:
    """Three classes, three cases: confidences .5 (right), .7 (wrong), .4 (right), one equal-width bin each
    (7, 10, 6): ECE = (.5 + .7 + .6) / 3 = .6."""
    y = np.array([0, 2, 1])
    s = np.array([[0.5, 0.3, 0.2], [0.7, 0.2, 0.1], [0.3, 0.4, 0.3]])
    assert calibration_metrics(y, s, "multiclass")["ece"] == pytest.approx(0.6, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_brier_and_nll_equal_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    p1 = np.clip(rng.random(300) * 0.7 + 0.3 * y, 0, 1)
    got = classification_metrics(y, p1, "binary")
    assert got["brier"] == pytest.approx(brier_score_loss(y, p1), abs=1e-12)
    assert got["nll"] == pytest.approx(log_loss(y, p1), abs=1e-12)
    k = 4
    yk = rng.integers(0, k, 300)
    z = rng.normal(size=(300, k)) + np.eye(k)[yk]
    s = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    got = classification_metrics(yk, s, "multiclass")
    assert got["brier"] == pytest.approx(brier_score_loss(yk, s, labels=list(range(k))), abs=1e-12)
    assert got["nll"] == pytest.approx(log_loss(yk, s, labels=list(range(k))), abs=1e-12)
    ref = calibration_reference(yk, s, "multiclass")
    assert got["ece"] == pytest.approx(ref["ece"], abs=1e-12)
    assert got["ece_mass"] == pytest.approx(ref["ece_mass"], abs=1e-12)


def test_calibration_cis_and_not_probabilities() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p1 = np.clip(rng.random(200) * 0.6 + 0.4 * y, 0, 1)
    ci = bootstrap_ci(y, p1, "binary", n_resamples=200, seed=1)
    for key in ("ece", "ece_mass", "brier", "nll"):
        v, lo, hi = ci[key]
        assert lo <= v <= hi and lo < hi, key
    scores = rng.normal(size=(200, 2))  # not probabilities: no calibration, the other metrics as before
    m = classification_metrics(y, scores, "multiclass")
    assert all(math.isnan(m[k]) for k in ("ece", "ece_mass", "brier", "nll"))
    assert 0.0 <= m["auc"] <= 1.0


def test_reliability_curve_counts_and_values() -> None:
    y = np.array([1, 0, 0, 1])
    p1 = np.array([0.9, 0.8, 0.3, 0.6])
    r = reliability_curve(y, p1, "binary", strategy="mass", n_bins=2)
    np.testing.assert_allclose(r.confidence, [0.65, 0.85])
    np.testing.assert_allclose(r.accuracy, [1.0, 0.5])
    assert r.count.tolist() == [2, 2]
    w = reliability_curve(y, p1, "binary", strategy="width")
    assert w.count.sum() == 4 and len(w.count) == 4


def test_temperature_scaling_fixes_overconfidence() -> None:
    """Logits sharpened 3x: the fitted temperature is about 3, and the NLL / ECE on new cases drop."""
    rng = np.random.default_rng(0)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        z = rng.normal(size=(n, 3)) * 1.5
        p_true = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        y = np.array([rng.choice(3, p=p) for p in p_true])
        sharp = np.exp(3 * z) / np.exp(3 * z).sum(1, keepdims=True)
        return y, sharp

    yv, pv = draw(3000)
    t = fit_temperature(pv, yv, "multiclass")
    assert 2.6 < t < 3.4
    yt, pt = draw(2000)
    before, after = classification_metrics(yt, pt, "multiclass"), classification_metrics(
        yt, apply_temperature(pt, t, "multiclass"), "multiclass")
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"]
    assert after["acc"] == before["acc"]  # a temperature never changes the argmax
    np.testing.assert_allclose(apply_temperature(pt, 1.0, "multiclass"), pt, atol=1e-9)
