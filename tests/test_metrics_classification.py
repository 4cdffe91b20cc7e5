"""Classification metrics against scikit-learn, and the bootstrap helpers."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
from calibration_reference import calibration_reference
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    jaccard_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from medprobe.errors import ConfigError
from medprobe.metrics import (
    bootstrap_ci,
    bootstrap_statistic,
    classification_metrics,
    mean_ci,
)

TOL = 1e-10
SEEDS = [0, 1, 2, 3]


def _make(task: str, seed: int, n: int = 120, k: int = 4, ties: bool = False):
    """Random labels and weakly informative scores; ``ties`` rounds scores to a coarse grid."""
    rng = np.random.default_rng(seed)
    if task == "binary":
        y = rng.integers(0, 2, n)
        s = np.clip(rng.random(n) * 0.8 + 0.2 * y, 0, 1)
        return y, (np.round(s * 4) / 4 if ties else s)
    if task == "multilabel":
        y = (rng.random((n, k)) < rng.uniform(0.1, 0.6, k)).astype(int)
        s = np.clip(rng.random((n, k)) * 0.8 + 0.2 * y, 0, 1)
        return y, (np.round(s * 4) / 4 if ties else s)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 0.8 * np.eye(k)[y]
    logits[:, -1] -= 1.5  # the last class is rarely the argmax: exercises absent predicted classes
    s = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, s


def _sklearn_reference(y, s, task: str, threshold: float = 0.5) -> dict[str, float]:
    """The expected metrics, computed with scikit-learn."""
    ref: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if task == "multilabel":
            pred = (s > threshold).astype(int)
            n_labels = y.shape[1]
            per_auc = [roc_auc_score(y[:, j], s[:, j]) for j in range(n_labels)]
            ref["auc"] = float(np.mean(per_auc))
            assert abs(ref["auc"] - roc_auc_score(y, s, average="macro")) < TOL
            ref["acc"] = float(np.mean([accuracy_score(y[:, j], pred[:, j]) for j in range(n_labels)]))
            ref["balanced_acc"] = float(
                np.mean([balanced_accuracy_score(y[:, j], pred[:, j]) for j in range(n_labels)])
            )
            labels = list(range(n_labels))
        else:
            if task == "binary":
                p1 = s if s.ndim == 1 else s[:, 1]
                pred = (p1 > threshold).astype(int)
                ref["auc"] = roc_auc_score(y, p1)
                n_classes = 2
                per_auc = [roc_auc_score(y == j, p1 if j == 1 else 1 - p1) for j in range(2)]
            else:
                pred = np.argmax(s, axis=1)
                n_classes = s.shape[1]
                ref["auc"] = roc_auc_score(y, s, multi_class="ovr", average="macro", labels=range(n_classes))
                per_auc = [roc_auc_score(y == j, s[:, j]) for j in range(n_classes)]
            ref["acc"] = accuracy_score(y, pred)
            ref["balanced_acc"] = balanced_accuracy_score(y, pred)
            labels = list(range(n_classes))
            if task == "ordinal":
                ref["kappa_qw"] = cohen_kappa_score(y, pred, weights="quadratic", labels=labels)
        for avg in ("macro", "weighted"):
            ref[f"precision_{avg}"] = precision_score(y, pred, average=avg, zero_division=0)
            ref[f"recall_{avg}"] = recall_score(y, pred, average=avg, zero_division=0)
            ref[f"f1_{avg}"] = f1_score(y, pred, average=avg, zero_division=0)
        ref["jaccard_macro"] = jaccard_score(y, pred, average="macro", zero_division=0)
        per = {
            "precision": precision_score(y, pred, average=None, labels=labels, zero_division=0),
            "recall": recall_score(y, pred, average=None, labels=labels, zero_division=0),
            "f1": f1_score(y, pred, average=None, labels=labels, zero_division=0),
        }
    for j in labels:
        ref[f"auc/{j}"] = per_auc[j]
        for name, values in per.items():
            ref[f"{name}/{j}"] = values[j]
    ref.update(calibration_reference(y, s, task, threshold))
    return {key: float(v) for key, v in ref.items()}


def _assert_matches(got: dict[str, float], ref: dict[str, float]) -> None:
    assert set(got) == set(ref)
    for key, expected in ref.items():
        if math.isnan(expected):
            assert math.isnan(got[key]), key
        else:
            assert abs(got[key] - expected) < TOL, (key, got[key], expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("task", ["binary", "multiclass", "ordinal", "multilabel"])
@pytest.mark.parametrize("n", [25, 150])
def test_metrics_equal_sklearn(task: str, seed: int, n: int) -> None:
    k = 5 if task == "ordinal" else 4
    y, s = _make(task, seed, n=n, k=k)
    if task in ("multiclass", "ordinal") and len(np.unique(y)) < k:
        y[:k] = np.arange(k)  # multiclass OvR AUC in scikit-learn needs every class present
    _assert_matches(classification_metrics(y, s, task), _sklearn_reference(y, s, task))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("task", ["multiclass", "ordinal"])
def test_class_absent_from_truth_and_predictions(task: str, seed: int) -> None:
    """Macro averages skip a class seen nowhere (as scikit-learn); its AUC is NaN, left out of the mean."""
    y, s = _make(task, seed, n=60, k=4)
    y = np.where(y == 2, 1, y)  # class 2 never true ...
    s[:, 2] = 0.0  # ... and never predicted
    got = classification_metrics(y, s, task)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = np.argmax(s, axis=1)
        assert 2 not in pred
        for avg in ("macro", "weighted"):
            assert abs(got[f"f1_{avg}"] - f1_score(y, pred, average=avg, zero_division=0)) < TOL
            assert abs(got[f"precision_{avg}"] - precision_score(y, pred, average=avg, zero_division=0)) < TOL
            assert abs(got[f"recall_{avg}"] - recall_score(y, pred, average=avg, zero_division=0)) < TOL
        assert abs(got["jaccard_macro"] - jaccard_score(y, pred, average="macro", zero_division=0)) < TOL
        assert abs(got["balanced_acc"] - balanced_accuracy_score(y, pred)) < TOL
        if task == "ordinal":
            kappa = cohen_kappa_score(y, pred, weights="quadratic", labels=range(4))
            assert abs(got["kappa_qw"] - kappa) < TOL
    assert math.isnan(got["auc/2"]) and got["f1/2"] == 0.0
    defined = [roc_auc_score(y == j, s[:, j]) for j in (0, 1, 3)]
    assert abs(got["auc"] - np.mean(defined)) < TOL


@pytest.mark.parametrize("seed", SEEDS)
def test_binary_accepts_both_score_shapes_and_threshold(seed: int) -> None:
    y, p = _make("binary", seed)
    two_col = np.stack([1 - p, p], axis=1)
    one = classification_metrics(y, p, "binary", threshold=0.3)
    two = classification_metrics(y, two_col, "binary", threshold=0.3)
    _assert_matches(one, _sklearn_reference(y, p, "binary", threshold=0.3))
    _assert_matches(two, one)
    # (N, 1) labels (MedMNIST layout) are accepted too
    _assert_matches(classification_metrics(y[:, None], p, "binary", threshold=0.3), one)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_auc_with_ties_equals_sklearn(task: str, seed: int) -> None:
    y, s = _make(task, seed, ties=True)
    assert len(np.unique(s)) <= 5  # heavy ties
    _assert_matches(classification_metrics(y, s, task), _sklearn_reference(y, s, task))


def test_multiclass_auc_with_tied_columns_equals_sklearn() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 200)
    s = rng.integers(0, 3, (200, 3)).astype(float) + 1.0
    s /= s.sum(axis=1, keepdims=True)
    got = classification_metrics(y, s, "multiclass")
    assert abs(got["auc"] - roc_auc_score(y, s, multi_class="ovr")) < TOL
    for j in range(3):
        assert abs(got[f"auc/{j}"] - roc_auc_score(y == j, s[:, j])) < TOL


def test_class_names_and_key_sets() -> None:
    y, s = _make("ordinal", 0, k=3)
    got = classification_metrics(y, s, "ordinal", classes=["mild", "moderate", "severe"])
    assert list(got)[:11] == [
        "auc", "acc", "balanced_acc", "precision_macro", "recall_macro", "f1_macro",
        "precision_weighted", "recall_weighted", "f1_weighted", "jaccard_macro", "kappa_qw",
    ]
    for prefix in ("auc", "precision", "recall", "f1"):
        assert {f"{prefix}/{c}" for c in ("mild", "moderate", "severe")} <= set(got)
    assert "kappa_qw" not in classification_metrics(y, s, "multiclass")
    assert list(got)[11:15] == ["ece", "ece_mass", "brier", "nll"]  # calibration (metrics.calibration)
    assert len(got) == 11 + 4 + 4 * 3


def test_undefined_values_are_nan_and_rest_computed() -> None:
    y, s = _make("multilabel", 1, k=4)
    y[:, 2] = 0  # label 2 has no positives: its AUC is undefined
    got = classification_metrics(y, s, "multilabel", classes=list("abcd"))
    assert math.isnan(got["auc/c"])
    defined = [roc_auc_score(y[:, j], s[:, j]) for j in (0, 1, 3)]
    assert abs(got["auc"] - np.mean(defined)) < TOL  # mean over the defined labels
    ref = _sklearn_reference(np.delete(y, 2, 1), np.delete(s, 2, 1), "multilabel")
    assert abs(got["auc/d"] - ref["auc/2"]) < TOL
    assert all(not math.isnan(v) for key, v in got.items() if key != "auc/c")

    yb = np.ones(30, dtype=int)
    gotb = classification_metrics(yb, np.linspace(0, 1, 30), "binary")
    assert math.isnan(gotb["auc"]) and math.isnan(gotb["auc/1"])
    assert abs(gotb["acc"] - accuracy_score(yb, np.linspace(0, 1, 30) > 0.5)) < TOL

    yo = np.zeros(20, dtype=int)
    so = np.tile([1.0, 0.0, 0.0], (20, 1))
    assert math.isnan(classification_metrics(yo, so, "ordinal")["kappa_qw"])


@pytest.mark.parametrize(
    ("y", "s", "task", "kw", "match"),
    [
        (np.zeros(10), np.zeros(9), "binary", {}, "10 cases but y_score has 9"),
        (np.zeros((10, 3)), np.zeros((10, 4)), "multilabel", {}, "same shape|both of shape"),
        (np.zeros(10), np.zeros((10, 3)), "binary", {}, r"\(N,\) or \(N, 2\)"),
        (np.full(10, 3), np.full((10, 3), 1 / 3), "multiclass", {}, "0..2"),
        (np.zeros(10), np.zeros(10), "regression", {}, "unknown classification task"),
        (np.zeros(10), np.zeros((10, 2)), "multiclass", {"classes": ["a"]}, "1 class names"),
        (np.full(4, 0.5), np.zeros(4), "binary", {}, "integer class labels"),
        (np.zeros(4), np.array([0.1, np.nan, 0.2, 0.3]), "binary", {}, "NaN"),
        (np.zeros((4, 2)) + 2, np.zeros((4, 2)), "multilabel", {}, "0/1"),
    ],
)
def test_shape_and_value_errors(y, s, task, kw, match) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        classification_metrics(y, s, task, **kw)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError):
        bootstrap_ci(y, s, task, n_resamples=5, **kw)


@pytest.mark.parametrize("task", ["binary", "multiclass", "ordinal", "multilabel"])
def test_bootstrap_reproducible_and_brackets_point(task: str) -> None:
    y, s = _make(task, 5, n=300)
    a = bootstrap_ci(y, s, task, n_resamples=300, seed=11)
    b = bootstrap_ci(y, s, task, n_resamples=300, seed=11)
    c = bootstrap_ci(y, s, task, n_resamples=300, seed=12)
    assert a == b
    assert a["auc"] != c["auc"] and a["acc"] != c["acc"]
    point = classification_metrics(y, s, task)
    assert set(a) == set(point)
    for key, (p, low, high) in a.items():
        assert p == pytest.approx(point[key], abs=TOL), key
        assert low <= high, key
    for key in ("auc", "acc", "f1_macro", "balanced_acc"):
        p, low, high = a[key]
        assert low <= p <= high and low < high, key


@pytest.mark.parametrize("task", ["binary", "multiclass", "ordinal", "multilabel"])
def test_vectorised_bootstrap_equals_per_resample_metrics(task: str) -> None:
    """bootstrap_ci (all resamples at once) == recomputing every resample with classification_metrics."""
    y, s = _make(task, 3, n=40)
    if task == "binary":
        y[:] = 0
        y[:3] = 1  # rare positives: some resamples have none and must be skipped for AUC
    fast = bootstrap_ci(y, s, task, n_resamples=60, seed=4, alpha=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        slow = bootstrap_statistic(
            lambda idx: classification_metrics(y[idx], s[idx], task), 40, n_resamples=60, seed=4, alpha=0.1
        )
    assert set(fast) == set(slow)
    for key in fast:
        np.testing.assert_allclose(fast[key], slow[key], atol=TOL, rtol=0, err_msg=key)
    assert all(np.isfinite(fast["auc"]))


def test_bootstrap_metric_selection_and_errors() -> None:
    y, s = _make("multiclass", 0)
    got = bootstrap_ci(y, s, "multiclass", n_resamples=50, metrics=["auc", "f1/1"], classes=None)
    assert list(got) == ["auc", "f1/1"]
    with pytest.raises(ConfigError, match="kappa_qw"):
        bootstrap_ci(y, s, "multiclass", n_resamples=50, metrics=["kappa_qw"])
    with pytest.raises(ConfigError, match="alpha"):
        bootstrap_ci(y, s, "multiclass", n_resamples=50, alpha=1.5)
    with pytest.raises(ConfigError, match="n_resamples"):
        bootstrap_ci(y, s, "multiclass", n_resamples=0)


def test_mean_ci_matches_generic_bootstrap_and_ignores_nan() -> None:
    rng = np.random.default_rng(2)
    values = rng.random(200)
    values[::17] = np.nan
    point, low, high = mean_ci(values, n_resamples=400, seed=3)
    assert point == pytest.approx(np.nanmean(values), abs=TOL)
    assert low <= point <= high
    assert mean_ci(values, n_resamples=400, seed=3) == (point, low, high)
    assert mean_ci(values, n_resamples=400, seed=4) != (point, low, high)
    generic = bootstrap_statistic(lambda idx: float(np.nanmean(values[idx])), 200, n_resamples=400, seed=3)
    np.testing.assert_allclose(generic, (point, low, high), atol=1e-12, rtol=0)
    named = bootstrap_statistic(
        lambda idx: {"mean": float(np.nanmean(values[idx]))}, 200, n_resamples=400, seed=3
    )
    np.testing.assert_allclose(named["mean"], generic, atol=0, rtol=0)
    assert all(math.isnan(v) for v in mean_ci([np.nan, np.nan], n_resamples=10))


def test_bootstrap_is_fast() -> None:
    """1000 resamples of 2000 cases x 14 labels must take seconds, not minutes (loose bound: shared CPU)."""
    y, s = _make("multilabel", 0, n=2000, k=14)
    start = time.perf_counter()
    out = bootstrap_ci(y, s, "multilabel", n_resamples=1000, seed=0)
    assert time.perf_counter() - start < 15.0
    assert out["auc"][1] < out["auc"][0] < out["auc"][2]
