"""Regression metrics with percentile bootstrap confidence intervals over cases.

``regression_metrics(y_true, y_pred)`` -> ``{"mae", "rmse", "r2", "pearson_r"}``. Definitions per target
(scikit-learn's / SciPy's): ``mae`` mean absolute error, ``rmse`` root of the mean squared error, ``r2``
``1 - SSE / SST`` (``SST`` about the mean of ``y_true``), ``pearson_r`` the Pearson correlation of
``y_true`` and ``y_pred``. Several targets (``(N, T)`` arrays): each summary key is the plain mean over
targets (scikit-learn's ``multioutput="uniform_average"``) and ``<key>/<name>`` gives every target
(names ``0..T-1`` unless ``names`` is given).

Undefined values are NaN rather than scikit-learn's forced-finite 0/1: ``r2`` when ``y_true`` is
constant, ``pearson_r`` when either side is constant; a multi-target mean skips undefined targets (NaN if
none is defined). The CIs come from :func:`medprobe.metrics.bootstrap.bootstrap_weighted` and follow its
NaN rule: resamples whose statistic is undefined are dropped, and fewer than half finite gives NaN bounds.

Every metric comes from case-weighted sums ``W @ v`` with ``W (R, N)`` case multiplicities (``ones((1, N))``
for the point estimate), so all bootstrap resamples are evaluated at once -- no Python loop per resample.
Sums are taken about the full-sample means, which keeps them accurate for targets with a large offset.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medprobe.errors import ConfigError
from medprobe.metrics.bootstrap import Interval, bootstrap_weighted

KEYS = ("mae", "rmse", "r2", "pearson_r")


def _prepare(y_true: np.ndarray | Sequence, y_pred: np.ndarray | Sequence,
             names: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Validated ``(N, T)`` float64 arrays and the per-target names (``None`` for a single 1-D target)."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    for what, a in (("y_true", t), ("y_pred", p)):
        if a.dtype.kind not in "iufb":
            raise ConfigError(f"{what} must be numeric, got dtype {a.dtype}", "regression metrics")
        if a.ndim not in (1, 2):
            raise ConfigError(f"{what} must be (N,) or (N, T), got shape {a.shape}", "regression metrics")
    if t.shape != p.shape:
        raise ConfigError(f"y_true {t.shape} and y_pred {p.shape} differ in shape", "regression metrics")
    if t.shape[0] == 0 or (t.ndim == 2 and t.shape[1] == 0):
        raise ConfigError("regression metrics need at least one case and one target", "regression metrics")
    t, p = t.astype(np.float64), p.astype(np.float64)
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        raise ConfigError("y_true / y_pred contain NaN or inf", "regression metrics")
    multi = t.ndim == 2 and t.shape[1] > 1
    t, p = t.reshape(len(t), -1), p.reshape(len(p), -1)
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != t.shape[1]:
            raise ConfigError(f"{len(names)} target names for {t.shape[1]} targets", "regression metrics")
    elif multi:
        names = [str(j) for j in range(t.shape[1])]
    return t, p, names if multi else None


def _compute(t: np.ndarray, p: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
    """Per-target metrics ``(R, T)`` for case weights ``W (R, N)``; NaN where undefined."""
    tc = t - t.mean(0)
    pc = p - p.mean(0)
    e = p - t
    n = W.sum(1)[:, None]  # (R, 1), > 0: every row of W counts n_cases cases
    mae = (W @ np.abs(e)) / n
    mse = (W @ (e * e)) / n
    st, sp = W @ tc, W @ pc
    stt = W @ (tc * tc) - st * st / n  # weighted SST about the resample's own mean
    spp = W @ (pc * pc) - sp * sp / n
    stp = W @ (tc * pc) - st * sp / n
    with np.errstate(divide="ignore", invalid="ignore"):
        tiny_t = stt <= 1e-14 * (W @ (tc * tc) + 1e-300)
        tiny_p = spp <= 1e-14 * (W @ (pc * pc) + 1e-300)
        r2 = np.where(tiny_t, np.nan, 1.0 - mse * n / stt)
        r = np.where(tiny_t | tiny_p, np.nan, stp / np.sqrt(np.abs(stt * spp)))
    return {"mae": mae, "rmse": np.sqrt(mse), "r2": r2, "pearson_r": np.clip(r, -1.0, 1.0)}


def _summaries(per: dict[str, np.ndarray], names: list[str] | None) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key in KEYS:
        v = per[key]
        ok = np.isfinite(v)
        cnt = ok.sum(1)
        with np.errstate(invalid="ignore"):
            out[key] = np.where(cnt > 0, np.where(ok, v, 0.0).sum(1) / np.maximum(cnt, 1), np.nan)
    if names is not None:
        for key in KEYS:
            for j, name in enumerate(names):
                out[f"{key}/{name}"] = per[key][:, j]
    return out


def regression_metrics(y_true: np.ndarray | Sequence, y_pred: np.ndarray | Sequence,
                       names: Sequence[str] | None = None) -> dict[str, float]:
    """``{"mae", "rmse", "r2", "pearson_r"}`` (+ ``"<key>/<name>"`` per target for several targets)."""
    t, p, nm = _prepare(y_true, y_pred, names)
    vals = _summaries(_compute(t, p, np.ones((1, len(t)))), nm)
    return {k: float(v[0]) for k, v in vals.items()}


def regression_ci(y_true: np.ndarray | Sequence, y_pred: np.ndarray | Sequence, n_resamples: int = 1000,
                  seed: int | None = 0, alpha: float = 0.05,
                  names: Sequence[str] | None = None) -> dict[str, Interval]:
    """``{metric: (point, low, high)}``: percentile bootstrap over cases, all resamples vectorised.

    Same resampling as :func:`medprobe.metrics.bootstrap.bootstrap_ci` (seeded, identical resamples for a
    given ``(n_cases, n_resamples, seed)``); resamples where a metric is undefined are skipped.
    """
    t, p, nm = _prepare(y_true, y_pred, names)
    cis = bootstrap_weighted(lambda w: _summaries(_compute(t, p, w), nm), len(t), n_resamples, seed, alpha)
    return {k: ci.interval for k, ci in cis.items()}


__all__ = ["KEYS", "regression_ci", "regression_metrics"]
