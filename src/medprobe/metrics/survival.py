"""Survival metrics: Harrell's and Uno's concordance index, with bootstrap CIs over test cases.

Inputs: ``time`` (> 0), ``event`` (1 = the event was observed, 0 = censored) and a risk score per case (higher =
earlier event expected, e.g. a Cox model's linear predictor).

* Comparable pair ``(i, j)``: ``event_i = 1`` and ``time_i < time_j``, or ``time_i == time_j`` with ``j``
  censored (scikit-survival's rule). Concordant: ``risk_i > risk_j``; a risk tie (``|risk_i - risk_j| <= 1e-8``)
  counts one half.
* ``c_index`` (Harrell): concordant / comparable pairs (= ``sksurv.metrics.concordance_index_censored``; equal to
  ``lifelines.utils.concordance_index(time, -risk, event)`` when no two times tie).
* ``c_index_uno`` (Uno et al. 2011, IPCW): each pair weighted by ``1 / G(time_i)^2`` with ``G`` the Kaplan-Meier
  estimate of the *censoring* distribution fitted on the training cases (right-continuous step function; test
  times past the last training time take its last value) -- ``sksurv.metrics.concordance_index_ipcw`` without
  truncation (``tau``: only cases with ``time < tau`` weigh as the earlier case of a pair, as there).

Every value is a function of per-case weights (pairs weighted by the product of their cases' multiplicities), so
the bootstrap CIs come from :func:`medprobe.metrics.bootstrap.bootstrap_weighted`: each resample's value is the
statistic recomputed on that resample.
"""

from __future__ import annotations

import numpy as np

from medprobe.errors import ConfigError

TIED_TOL = 1e-8


def check_survival(y: np.ndarray, where: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 2)`` [time, event] -> (time float64, event bool), checked: finite times >= 0, events 0/1."""
    a = np.asarray(y, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ConfigError(f"survival targets must be (N, 2) [time, event], got shape {a.shape}", where)
    t, e = a[:, 0], a[:, 1]
    if not np.isfinite(a).all() or (t < 0).any():
        raise ConfigError("survival times must be finite and >= 0", where)
    if not np.isin(e, (0.0, 1.0)).all():
        raise ConfigError("survival events must be 0 (censored) or 1 (event)", where)
    return t, e.astype(bool)


def censoring_survival(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier of the censoring distribution: ``(times, G)`` with ``G[k] = P(C > times[k])`` (a censoring at
    ``t`` counts against those still at risk after the events at ``t``, as scikit-survival's reverse KM)."""
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=bool)
    uniq, inv = np.unique(t, return_inverse=True)
    n_ev = np.bincount(inv, weights=e.astype(float), minlength=len(uniq))
    n_cens = np.bincount(inv, weights=(~e).astype(float), minlength=len(uniq))
    total = np.bincount(inv, minlength=len(uniq)).astype(float)
    at_risk = total[::-1].cumsum()[::-1] - n_ev
    ratio = np.divide(n_cens, at_risk, out=np.zeros_like(n_cens), where=n_cens != 0)
    return uniq, np.cumprod(1.0 - ratio)


def ipcw_weights(train_time: np.ndarray, train_event: np.ndarray, time: np.ndarray, event: np.ndarray
                 ) -> np.ndarray:
    """Per test case ``1 / G(time)`` for events (0 for censored cases); ``G`` from the training cases."""
    uniq, g = censoring_survival(train_time, train_event)
    times = np.r_[-np.inf, uniq]
    probs = np.r_[1.0, g]
    idx = np.searchsorted(times, time, side="right") - 1
    gi = probs[np.clip(idx, 0, len(probs) - 1)]
    ev = np.asarray(event, dtype=bool)
    if (gi[ev] <= 0).any():
        raise ConfigError("the censoring survival function is 0 at a test event time (Uno's c-index undefined); "
                          "set a truncation time tau below the last censoring time")
    out = np.zeros(len(time))
    out[ev] = 1.0 / gi[ev]
    return out


def pair_matrix(time: np.ndarray, event: np.ndarray, risk: np.ndarray, weights: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(A, B)``, both ``(N, N)``: ``B[i, j]`` = comparable x weight_i, ``A[i, j]`` = ``B`` x concordance
    (1, 0.5 for a risk tie, 0)."""
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=bool)
    r = np.asarray(risk, dtype=np.float64)
    comp = e[:, None] & ((t[:, None] < t[None, :]) | ((t[:, None] == t[None, :]) & ~e[None, :]))
    diff = r[:, None] - r[None, :]
    tie = np.abs(diff) <= TIED_TOL
    conc = np.where(tie, 0.5, (diff > 0).astype(np.float64))
    w = np.ones(len(t)) if weights is None else np.asarray(weights, dtype=np.float64)
    b = comp * w[:, None]
    return b * conc, b


def weighted_concordance(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per row of case multiplicities ``w`` (R, N): ``sum_ij w_i w_j A_ij / sum_ij w_i w_j B_ij`` (NaN: no pair)."""
    num = ((w @ a.T) * w).sum(axis=1)
    den = ((w @ b.T) * w).sum(axis=1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def concordance_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's c-index (module docstring)."""
    a, b = pair_matrix(time, event, risk)
    return float(weighted_concordance(a, b, np.ones((1, len(a))))[0])


def concordance_index_uno(train_time: np.ndarray, train_event: np.ndarray, time: np.ndarray, event: np.ndarray,
                          risk: np.ndarray, tau: float | None = None) -> float:
    """Uno's IPCW c-index (module docstring)."""
    time, event, risk = np.asarray(time, float), np.asarray(event, bool), np.asarray(risk, float)
    keep = np.ones(len(time), bool) if tau is None else time < tau
    w = np.zeros(len(time))
    w[keep] = ipcw_weights(train_time, train_event, time[keep], event[keep]) ** 2
    a, b = pair_matrix(time, event, risk, w)
    return float(weighted_concordance(a, b, np.ones((1, len(a))))[0])


def survival_ci(train: np.ndarray, test: np.ndarray, risk: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                alpha: float = 0.05, tau: float | None = None) -> dict[str, tuple[float, float, float]]:
    """``{c_index, c_index_uno: (point, low, high)}`` bootstrapping the test cases (``n_resamples = 0``: no CI)."""
    from medprobe.metrics.bootstrap import bootstrap_weighted

    t_tr, e_tr = check_survival(train)
    t, e = check_survival(test)
    r = np.asarray(risk, dtype=np.float64)
    keep = np.ones(len(t), bool) if tau is None else t < tau
    a_h, b_h = pair_matrix(t, e, r)
    w_u = np.zeros(len(t))
    w_u[keep] = ipcw_weights(t_tr, e_tr, t[keep], e[keep]) ** 2
    a_u, b_u = pair_matrix(t, e, r, w_u)

    def fn(w: np.ndarray) -> dict[str, np.ndarray]:
        return {"c_index": weighted_concordance(a_h, b_h, w), "c_index_uno": weighted_concordance(a_u, b_u, w)}

    if n_resamples < 1:
        point = fn(np.ones((1, len(t))))
        return {k: (float(v[0]), float("nan"), float("nan")) for k, v in point.items()}
    cis = bootstrap_weighted(fn, len(t), n_resamples, seed, alpha)
    return {k: v.interval for k, v in cis.items()}


__all__ = ["censoring_survival", "check_survival", "concordance_index", "concordance_index_uno", "ipcw_weights",
           "pair_matrix", "survival_ci", "weighted_concordance"]
