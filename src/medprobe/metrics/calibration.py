"""Calibration of predicted probabilities: ECE (equal-width and equal-mass bins), Brier score, NLL, reliability
curves and temperature scaling.

Definitions (``N`` cases; ``B = N_BINS = 15`` bins, the count of Guo et al. 2017):

* Single-label tasks (binary, multiclass, ordinal) are scored on the *top label*: the confidence of a case is
  the probability of its predicted class (the prediction the classification metrics use: binary
  ``p1 > threshold``, else argmax), ``correct`` is 1 when that prediction is right.
  ``ece = sum_b |sum_{i in b} (correct_i - conf_i)| / N``.
* Multi-label tasks: each label is a binary problem scored on the positive-class probability against the 0/1
  truth; every calibration metric is the mean over labels.
* ``ece``: equal-width bins ``[0, 1/B), ..., [(B-1)/B, 1]``. ``ece_mass``: equal-mass bins: the cases sorted by
  confidence (stable) and cut into ``B`` runs of (nearly) equal size, ``bin = floor(rank * B / N)``. A bootstrap
  resample is binned as its own cases (a case drawn m times fills m consecutive ranks), so each resample's
  value is the statistic recomputed on that resample.
* ``brier``: scikit-learn's ``brier_score_loss`` (``scale_by_half='auto'``): binary ``mean (p1 - y)^2``;
  multiclass / ordinal ``mean sum_k (p_k - [y = k])^2`` (range 0..2).
* ``nll``: ``-mean log p_y`` (binary: log p1 or log(1 - p1)) with probabilities clipped to
  ``[eps, 1 - eps]`` (float64 eps, as scikit-learn's ``log_loss``).

Scores that are not probabilities (outside [0, 1] by more than 1e-6, or single-label rows not summing to 1 within
1e-3) have no
calibration: every calibration metric is NaN.

Everything is a function of per-case weights ``w`` (R, N) like :mod:`medprobe.metrics.classification`, so the
bootstrap CIs come from the same engine and the same resamples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medprobe.errors import ConfigError

N_BINS = 15
CALIBRATION_KEYS = ("ece", "ece_mass", "brier", "nll")
_EPS = float(np.finfo(np.float64).eps)
_SUM_TOL = 1e-3


@dataclass(frozen=True)
class CalibrationInputs:
    """Per-case pieces of the calibration metrics, fixed for the full test set (weights change, bins do not)."""

    gap: np.ndarray  # (N, L) correct - confidence (top label; multilabel: y - p per label)
    bin_width: np.ndarray  # (N, L) equal-width bin per case and label
    order: np.ndarray  # (N, L) cases by increasing confidence (stable), per label: equal-mass bins
    brier: np.ndarray  # (N,) per-case Brier contribution
    nll: np.ndarray  # (N,) per-case negative log-likelihood
    n_bins: int
    valid: bool  # False: the scores are not probabilities (every value NaN)


def is_probability(ys: np.ndarray, task: str) -> bool:
    """Scores in [0, 1] (within 1e-6) and, for single-label tasks with K >= 2 columns, rows summing to 1 (within
    1e-3)."""
    if ys.size == 0 or ys.min() < -1e-6 or ys.max() > 1 + 1e-6:  # float32 heads round to ~1e-7
        return False
    if task != "multilabel" and ys.ndim == 2 and ys.shape[1] >= 2:
        return bool(np.all(np.abs(ys.sum(axis=1) - 1.0) <= _SUM_TOL))
    return True


def mass_bins(conf: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Equal-mass bin of each value: its stable rank among ``conf``, cut into ``n_bins`` runs."""
    n = len(conf)
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(conf, kind="stable")] = np.arange(n)
    return np.minimum(rank * n_bins // max(n, 1), n_bins - 1)


def width_bins(conf: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Equal-width bin of each value in [0, 1] (1.0 falls in the last bin)."""
    return np.clip(np.floor(np.asarray(conf, dtype=np.float64) * n_bins).astype(np.int64), 0, n_bins - 1)


def prepare_calibration(y_true: np.ndarray, ys: np.ndarray, y_pred: np.ndarray, task: str,
                        n_bins: int = N_BINS) -> CalibrationInputs:
    """The per-case pieces from validated arrays (as :func:`medprobe.metrics.classification.prepare` holds them:
    ``y_true`` int (N,) or bool (N, L), ``ys`` (N, K) or (N, L), ``y_pred`` the predictions)."""
    ys = np.asarray(ys, dtype=np.float64)
    n = ys.shape[0]
    valid = is_probability(ys, task)
    p = np.clip(ys, 0.0, 1.0)
    if task == "multilabel":
        yt = np.asarray(y_true, dtype=np.float64)
        conf = p
        gap = yt - p
        brier = ((p - yt) ** 2).mean(axis=1)
        pc = np.clip(p, _EPS, 1 - _EPS)
        nll = -(yt * np.log(pc) + (1 - yt) * np.log(1 - pc)).mean(axis=1)
    else:
        yt_i = np.asarray(y_true, dtype=np.int64)
        rows = np.arange(n)
        conf = p[rows, y_pred][:, None]
        gap = (y_pred == yt_i).astype(np.float64)[:, None] - conf
        onehot = np.zeros_like(p)
        onehot[rows, yt_i] = 1.0
        sq = ((p - onehot) ** 2).sum(axis=1)
        brier = sq / 2.0 if task == "binary" else sq  # scikit-learn's scale_by_half="auto"
        nll = -np.log(np.clip(p[rows, yt_i], _EPS, 1 - _EPS))
    bw = width_bins(conf, n_bins)
    order = np.stack([np.argsort(conf[:, j], kind="stable") for j in range(conf.shape[1])], axis=1)
    return CalibrationInputs(gap, bw, order, brier, nll, n_bins, valid)


def _ece_width(ci: CalibrationInputs, w: np.ndarray, j: int, safe: np.ndarray) -> np.ndarray:
    n = len(ci.gap)
    m = np.zeros((n, ci.n_bins))
    m[np.arange(n), ci.bin_width[:, j]] = ci.gap[:, j]
    return np.abs(w @ m).sum(axis=1) / safe  # per-bin weighted sums of the gaps (R, B)


def _ece_mass(ci: CalibrationInputs, w: np.ndarray, j: int, safe: np.ndarray) -> np.ndarray:
    """Copies of a case fill consecutive ranks ``[start, start + w)`` in confidence order; rank ``r`` is in bin
    ``floor(r B / N)``, i.e. bin ``b`` holds ranks ``ceil(bN/B) .. ceil((b+1)N/B) - 1``. With ``G(x)`` the summed
    gap of the ranks below ``x`` (piecewise linear: one batched ``searchsorted`` finds the case holding ``x``),
    bin ``b`` sums to ``G(hi_b) - G(lo_b)``."""
    order = ci.order[:, j]
    g = ci.gap[order, j]
    ws = w[:, order]
    r, n = ws.shape
    end = np.empty((r, n + 1))  # end[:, i + 1]: where case i's ranks end; end[:, 0] = 0
    end[:, 0] = 0.0
    np.cumsum(ws, axis=1, out=end[:, 1:])
    ws *= g
    cum = np.empty((r, n + 1))
    cum[:, 0] = 0.0
    np.cumsum(ws, axis=1, out=cum[:, 1:])
    n_r = np.rint(end[:, -1]).astype(np.int64)
    b = np.arange(ci.n_bins + 1)
    x = (-(-b[None, :] * n_r[:, None] // ci.n_bins)).astype(np.float64)  # (R, B + 1) bin edges in ranks
    pos = np.stack([np.searchsorted(end[i, 1:], x[i], side="right") for i in range(r)])  # case holding rank x
    rows = np.arange(r)[:, None]
    part = np.where(pos < n, g[np.minimum(pos, n - 1)] * (x - end[rows, pos]), 0.0)
    big_g = cum[rows, pos] + part
    return np.abs(np.diff(big_g, axis=1)).sum(axis=1) / safe


def compute_calibration(ci: CalibrationInputs, w: np.ndarray, keys: Sequence[str] = CALIBRATION_KEYS
                        ) -> dict[str, np.ndarray]:
    """The calibration metrics for each row of case weights ``w`` (R, N): ``{key: (R,)}``."""
    w = np.asarray(w, dtype=np.float64)
    r = w.shape[0]
    total = w.sum(axis=1)
    safe = np.where(total > 0, total, 1.0)
    out: dict[str, np.ndarray] = {}
    if not ci.valid:
        return {k: np.full(r, np.nan) for k in keys}
    n_lab = ci.gap.shape[1]
    for key, fn in (("ece", _ece_width), ("ece_mass", _ece_mass)):
        if key in keys:
            out[key] = np.stack([fn(ci, w, j, safe) for j in range(n_lab)], axis=1).mean(axis=1)
    if "brier" in keys:
        out["brier"] = (w @ ci.brier) / safe
    if "nll" in keys:
        out["nll"] = (w @ ci.nll) / safe
    return {k: np.where(total > 0, out[k], np.nan) for k in keys}


def calibration_metrics(y_true: np.ndarray | Sequence, y_score: np.ndarray | Sequence, task: str,
                        threshold: float = 0.5, n_bins: int = N_BINS) -> dict[str, float]:
    """ECE (equal width, equal mass), Brier and NLL of one prediction set (module docstring)."""
    yt, ys, pred = _inputs(y_true, y_score, task, threshold)
    ci = prepare_calibration(yt, ys, pred, task, n_bins)
    return {k: float(v[0]) for k, v in compute_calibration(ci, np.ones((1, len(ys)))).items()}


def _inputs(y_true: np.ndarray | Sequence, y_score: np.ndarray | Sequence, task: str, threshold: float
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, (N, K) scores and the predictions the classification metrics make (binary ``p1 > threshold``,
    multi-label ``p > threshold``, else argmax)."""
    ys = np.asarray(y_score, dtype=np.float64)
    yt = np.asarray(y_true)
    if task == "binary" and ys.ndim == 1:
        ys = np.stack([1.0 - ys, ys], axis=1)
    if ys.ndim != 2 or len(ys) != len(yt) or len(ys) == 0:
        raise ConfigError(f"y_score must be (N, K) for N = {len(yt)} cases, got shape {ys.shape}")
    if task == "multilabel":
        return yt.astype(bool), ys, ys > threshold
    yt = yt.reshape(len(yt), -1)[:, 0].astype(np.int64)
    pred = (ys[:, 1] > threshold).astype(np.int64) if task == "binary" else np.argmax(ys, axis=1)
    return yt, ys, pred


@dataclass(frozen=True)
class Reliability:
    """A reliability curve: per non-empty bin its mean confidence, its accuracy (observed frequency) and count."""

    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray
    strategy: str

    def to_dict(self) -> dict[str, list[float]]:
        return {"confidence": self.confidence.tolist(), "accuracy": self.accuracy.tolist(),
                "count": self.count.tolist(), "strategy": [self.strategy]}  # type: ignore[list-item]


def reliability_curve(y_true: np.ndarray | Sequence, y_score: np.ndarray | Sequence, task: str,
                      strategy: str = "width", n_bins: int = N_BINS, threshold: float = 0.5) -> Reliability:
    """Points of a reliability diagram (top label; multi-label: every case x label pooled)."""
    if strategy not in ("width", "mass"):
        raise ConfigError(f"reliability strategy must be 'width' or 'mass', got {strategy!r}")
    yt, ys, pred = _inputs(y_true, y_score, task, threshold)
    ys = np.clip(ys, 0.0, 1.0)
    if task == "multilabel":
        conf = ys.ravel()
        hit = yt.astype(np.float64).ravel()
    else:
        conf = ys[np.arange(len(ys)), pred]
        hit = (pred == yt).astype(np.float64)
    bins = width_bins(conf, n_bins) if strategy == "width" else mass_bins(conf, n_bins)
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    keep = count > 0
    c = np.bincount(bins, weights=conf, minlength=n_bins)[keep] / count[keep]
    a = np.bincount(bins, weights=hit, minlength=n_bins)[keep] / count[keep]
    return Reliability(c, a, count[keep].astype(np.int64), strategy)


# ---------------------------------------------------------------------------------- temperature scaling
def _logits(p: np.ndarray, task: str) -> np.ndarray:
    pc = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(pc / (1 - pc)) if task == "multilabel" else np.log(pc)


def apply_temperature(proba: np.ndarray, temperature: float, task: str) -> np.ndarray:
    """Probabilities rescaled by a temperature: single-label ``softmax(log p / T)``; multi-label
    ``sigmoid(logit p / T)``. ``T = 1`` returns (renormalised) ``proba``."""
    z = _logits(proba, task) / float(temperature)
    if task == "multilabel":
        return 1.0 / (1.0 + np.exp(-z))
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(proba: np.ndarray, y: np.ndarray, task: str, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature minimising the NLL of ``apply_temperature(proba, T)`` on (validation) labels ``y``:
    a bounded 1-D search over log T (Brent), deterministic."""
    from scipy.optimize import minimize_scalar

    z = _logits(proba, task)
    y = np.asarray(y)
    if len(y) == 0:
        raise ConfigError("temperature scaling needs validation cases")

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        if task == "multilabel":
            return float(np.mean(np.logaddexp(0.0, -s) * y + np.logaddexp(0.0, s) * (1 - y)))
        s = s - s.max(axis=1, keepdims=True)
        lse = np.log(np.exp(s).sum(axis=1))
        return float(np.mean(lse - s[np.arange(len(y)), y.astype(np.int64)]))

    res = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-6})
    return float(np.exp(res.x))


__all__ = ["CALIBRATION_KEYS", "N_BINS", "CalibrationInputs", "Reliability", "apply_temperature",
           "calibration_metrics", "compute_calibration", "fit_temperature", "is_probability", "mass_bins",
           "prepare_calibration", "reliability_curve", "width_bins"]
