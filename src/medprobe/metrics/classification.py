"""Classification metrics (MedMNIST definitions), computed from per-case weights.

Every metric is computed from a weight matrix ``W`` of shape ``(R, N)``: row ``r`` gives how many times each
of the ``N`` test cases is counted. ``W = ones((1, N))`` is the plain metric; rows of bootstrap
multiplicities give all bootstrap resamples at once (see :mod:`medprobe.metrics.bootstrap`), so the point
estimate and the resamples share one code path.

Definitions (``K`` classes, or ``L`` labels for multilabel):

* ``auc``: binary, ROC AUC of the positive class (``y_score[:, -1]``); multiclass/ordinal, macro mean of
  the one-vs-rest AUCs of each score column (scores are not renormalised); multilabel, mean per-label AUC.
  A class/label whose AUC is undefined (only one class present) is NaN in ``auc/<class>`` and left out
  of the mean; the mean is NaN only if no class/label is defined. AUC is tie-aware (ties count 1/2) and
  equals scikit-learn's ``roc_auc_score``; it is :func:`medprobe.numerics.weighted_auc`, the same AUC the
  heads use for model selection.
* Predictions: binary ``y_score[:, -1] > threshold``; multilabel ``y_score > threshold`` (strict, as
  MedMNIST); multiclass/ordinal ``argmax`` (first maximum on ties).
* ``acc``: fraction correct; multilabel, the mean over labels of per-label accuracy (MedMNIST).
* ``precision/recall/f1/jaccard``: zero_division=0. Binary/multiclass/ordinal ``*_macro`` average over the
  classes present in ``y_true`` or in the predictions (scikit-learn's default label set); multilabel
  averages over all labels. ``*_weighted`` weight by the number of true cases of each class/label.
* ``balanced_acc``: mean recall over the classes present in ``y_true``; multilabel, the mean over labels of
  each label's binary balanced accuracy.
* ``kappa_qw`` (ordinal only): quadratic-weighted Cohen's kappa with weights ``(i - j) ** 2`` on the class
  indices ``0..K-1``; NaN when undefined.
* Per class: ``auc/<c>``, ``precision/<c>``, ``recall/<c>``, ``f1/<c>`` for every class/label (binary: both
  classes), zero_division=0 for the last three.
* Calibration (lower is better): ``ece`` (equal-width bins), ``ece_mass`` (equal-mass bins), ``brier``, ``nll``;
  definitions in :mod:`medprobe.metrics.calibration` (NaN when the scores are not probabilities).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medprobe.errors import ConfigError
from medprobe.metrics.calibration import CALIBRATION_KEYS, CalibrationInputs, compute_calibration, prepare_calibration
from medprobe.numerics import AucColumn, auc_column, weighted_auc

TASKS = ("binary", "multiclass", "multilabel", "ordinal")

SUMMARY_KEYS = (
    "auc",
    "acc",
    "balanced_acc",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "jaccard_macro",
)


@dataclass(frozen=True)
class PreparedTask:
    """Validated inputs plus everything that does not depend on the case weights."""

    task: str
    n_cases: int
    names: tuple[str, ...]
    y_true: np.ndarray  # (N,) int, or (N, L) bool for multilabel
    y_pred: np.ndarray  # (N,) int, or (N, L) bool for multilabel
    auc_columns: tuple[AucColumn, ...]
    primary_auc_column: int | None  # binary: the positive column; else None (mean over columns)
    calibration: CalibrationInputs | None = None  # ece, ece_mass, brier, nll (metrics.calibration)

    def keys(self) -> list[str]:
        """Metric names, in output order."""
        keys = list(SUMMARY_KEYS)
        if self.task == "ordinal":
            keys.append("kappa_qw")
        if self.calibration is not None:
            keys.extend(CALIBRATION_KEYS)
        for prefix in ("auc", "precision", "recall", "f1"):
            keys.extend(f"{prefix}/{name}" for name in self.names)
        return keys


def _fail(problem: str) -> None:
    raise ConfigError(problem)


def _as_int_labels(y: np.ndarray, what: str) -> np.ndarray:
    if y.size and not np.all(np.isfinite(y)):
        _fail(f"{what} contains NaN or infinite values")
    yi = y.astype(np.int64)
    if not np.array_equal(yi, y):
        _fail(f"{what} must hold integer class labels")
    return yi


def prepare(
    y_true: np.ndarray | Sequence,
    y_score: np.ndarray | Sequence,
    task: str,
    threshold: float = 0.5,
    classes: Sequence[str] | None = None,
) -> PreparedTask:
    """Validate shapes and values, derive predictions and the AUC sort structures."""
    if task not in TASKS:
        _fail(f"unknown classification task {task!r}; expected one of {', '.join(TASKS)}")
    yt = np.asarray(y_true)
    ys = np.asarray(y_score, dtype=np.float64)
    if yt.ndim == 0 or ys.ndim == 0:
        _fail("y_true and y_score must be arrays with one row per case")
    n = yt.shape[0]
    if ys.shape[0] != n:
        _fail(f"y_true has {n} cases but y_score has {ys.shape[0]}")
    if n == 0:
        _fail("no cases to evaluate")
    if not np.all(np.isfinite(ys)):
        _fail("y_score contains NaN or infinite values")

    if task == "multilabel":
        if yt.ndim != 2 or ys.shape != yt.shape:
            _fail(f"multilabel needs y_true and y_score both of shape (N, L); got {yt.shape} and {ys.shape}")
        yt = _as_int_labels(yt, "y_true")
        if not np.all((yt == 0) | (yt == 1)):
            _fail("multilabel y_true must be 0/1")
        k = yt.shape[1]
        y_true_arr = yt.astype(bool)
        y_pred_arr = ys > threshold
        columns = [(ys[:, j], y_true_arr[:, j]) for j in range(k)]
        primary = None
    else:
        if yt.ndim == 2 and yt.shape[1] == 1:
            yt = yt[:, 0]
        if yt.ndim != 1:
            _fail(f"{task} y_true must have shape (N,) or (N, 1); got {yt.shape}")
        if task == "binary":
            if ys.ndim == 1:
                ys = np.stack([1.0 - ys, ys], axis=1)
            if ys.ndim != 2 or ys.shape[1] != 2:
                _fail(f"binary y_score must have shape (N,) or (N, 2); got {np.asarray(y_score).shape}")
        elif ys.ndim != 2 or ys.shape[1] < 2:
            _fail(f"{task} y_score must have shape (N, K) with K >= 2; got {ys.shape}")
        k = ys.shape[1]
        y_true_arr = _as_int_labels(yt, "y_true")
        if y_true_arr.min() < 0 or y_true_arr.max() >= k:
            lo, hi = y_true_arr.min(), y_true_arr.max()
            _fail(f"y_true labels must lie in 0..{k - 1} for {k} score columns; got {lo}..{hi}")
        if task == "binary":
            y_pred_arr = (ys[:, 1] > threshold).astype(np.int64)
            primary = 1
        else:
            y_pred_arr = np.argmax(ys, axis=1)
            primary = None
        columns = [(ys[:, j], y_true_arr == j) for j in range(k)]

    if classes is None:
        names = tuple(str(i) for i in range(k))
    else:
        names = tuple(str(c) for c in classes)
        if len(names) != k:
            _fail(f"{len(names)} class names given but the scores have {k} columns")
        if len(set(names)) != k:
            _fail("class names must be unique")
    auc_columns = tuple(auc_column(s, p) for s, p in columns)
    calibration = prepare_calibration(y_true_arr, ys, y_pred_arr, task)
    return PreparedTask(task, n, names, y_true_arr, y_pred_arr, auc_columns, primary, calibration)


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (zero_division=0)."""
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _masked_mean(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of x over the last axis where mask is true; NaN where no entry is."""
    count = mask.sum(axis=-1)
    total = np.where(mask, x, 0.0).sum(axis=-1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _confusion(prep: PreparedTask, w: np.ndarray) -> np.ndarray:
    """Weighted confusion matrices (R, K, K), rows = true class, columns = predicted class."""
    k = len(prep.names)
    r = w.shape[0]
    cell = prep.y_true * k + prep.y_pred
    flat = (cell[None, :] + (k * k) * np.arange(r)[:, None]).ravel()
    return np.bincount(flat, weights=w.ravel(), minlength=r * k * k).reshape(r, k, k)


def compute(prep: PreparedTask, w: np.ndarray, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """All metrics for each row of case weights ``w`` (R, N); returns ``{key: (R,) array}``."""
    w = np.asarray(w, dtype=np.float64)
    keys = prep.keys() if keys is None else list(keys)
    out: dict[str, np.ndarray] = {}
    names = prep.names
    total = w.sum(axis=1)

    if any(key.startswith("auc") for key in keys):
        aucs = np.stack([weighted_auc(col, w) for col in prep.auc_columns], axis=1)  # (R, K)
        if prep.primary_auc_column is not None:
            out["auc"] = aucs[:, prep.primary_auc_column]
        else:
            out["auc"] = _masked_mean(aucs, ~np.isnan(aucs))
        for j, name in enumerate(names):
            out[f"auc/{name}"] = aucs[:, j]

    if prep.task == "multilabel":
        yt = prep.y_true.astype(np.float64)
        yp = prep.y_pred.astype(np.float64)
        tp = w @ (yt * yp)
        fp = w @ ((1.0 - yt) * yp)
        fn = w @ (yt * (1.0 - yp))
        tn = total[:, None] - tp - fp - fn
        support = tp + fn
        out["acc"] = _div(tp + tn, total[:, None]).mean(axis=1)
        recall_neg = _div(tn, tn + fp)
        present = np.stack([support > 0, (tn + fp) > 0], axis=-1)
        per_label_bal = _masked_mean(np.stack([_div(tp, support), recall_neg], axis=-1), present)
        out["balanced_acc"] = _masked_mean(per_label_bal, ~np.isnan(per_label_bal))
        averaged = np.ones_like(tp, dtype=bool)  # multilabel: average over all labels
    else:
        cm = _confusion(prep, w)
        tp = np.diagonal(cm, axis1=1, axis2=2)
        support = cm.sum(axis=2)
        predicted = cm.sum(axis=1)
        fp = predicted - tp
        fn = support - tp
        out["acc"] = _div(tp.sum(axis=1), total)
        out["balanced_acc"] = _masked_mean(_div(tp, support), support > 0)
        averaged = (support + predicted) > 0  # scikit-learn's default label set
        if "kappa_qw" in keys:
            idx = np.arange(len(names), dtype=np.float64)
            wq = (idx[:, None] - idx[None, :]) ** 2
            safe_total = np.where(total > 0, total, 1.0)[:, None, None]
            expected = support[:, :, None] * predicted[:, None, :] / safe_total
            den = (wq * expected).sum(axis=(1, 2))
            num = (wq * cm).sum(axis=(1, 2))
            out["kappa_qw"] = np.where(den > 0, 1.0 - num / np.where(den > 0, den, 1.0), np.nan)

    per_class = {
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, tp + fn),
        "f1": _div(2.0 * tp, 2.0 * tp + fp + fn),
        "jaccard": _div(tp, tp + fp + fn),
    }
    cal = [k for k in keys if k in CALIBRATION_KEYS]
    if cal and prep.calibration is not None:
        out.update(compute_calibration(prep.calibration, w, cal))
    support_total = support.sum(axis=1)
    for metric, values in per_class.items():
        out[f"{metric}_macro"] = _masked_mean(values, averaged)
        if metric != "jaccard":
            out[f"{metric}_weighted"] = _div((values * support).sum(axis=1), support_total)
            for j, name in enumerate(names):
                out[f"{metric}/{name}"] = values[:, j]
    return {key: out[key] for key in keys}


def check_keys(prep: PreparedTask, metrics: Sequence[str] | None) -> list[str]:
    """The requested metric names, validated against what the task provides."""
    available = prep.keys()
    if metrics is None:
        return available
    unknown = [m for m in metrics if m not in available]
    if unknown:
        _fail(f"unknown metric(s) {', '.join(map(repr, unknown))} for task {prep.task!r}")
    return list(metrics)


def classification_metrics(
    y_true: np.ndarray | Sequence,
    y_score: np.ndarray | Sequence,
    task: str,
    threshold: float = 0.5,
    classes: Sequence[str] | None = None,
) -> dict[str, float]:
    """Classification metrics of one prediction set (see the module docstring for definitions).

    ``y_true``: (N,) or (N, 1) class indices, or (N, L) 0/1 for multilabel. ``y_score``: (N, K)
    probabilities; binary also accepts (N,) positive-class probabilities. Undefined values are NaN.
    """
    prep = prepare(y_true, y_score, task, threshold=threshold, classes=classes)
    values = compute(prep, np.ones((1, prep.n_cases)))
    return {key: float(v[0]) for key, v in values.items()}
