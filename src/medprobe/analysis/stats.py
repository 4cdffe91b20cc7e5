"""Statistical tests on result tables: paired bootstrap, signed-rank, multiple-testing correction,
rank correlations and the Friedman / Nemenyi machinery of Demšar (2006) for many-task comparisons.

All functions are pure (no I/O) and deterministic given their ``seed``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from medprobe.errors import ConfigError
from medprobe.metrics.bootstrap import check_args, percentile_ci, resample_statistic

__all__ = ["paired_bootstrap", "wilcoxon_signed_rank", "holm", "spearman", "kendall", "mean_ranks",
           "friedman_test", "nemenyi_q", "nemenyi_cd"]


def _safe_metric(metric_fn: Callable[[Any, Any], float], y: Any, s: Any) -> float:
    try:
        v = float(metric_fn(y, s))
    except (ValueError, ZeroDivisionError):  # e.g. AUC of a resample holding one class only
        return math.nan
    return v


def paired_bootstrap(y_true: Any, score_a: Any, score_b: Any, metric_fn: Callable[[Any, Any], float],
                     n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """Paired case-resampling bootstrap of ``metric_fn(y, a) - metric_fn(y, b)``.

    Each resample draws the same test cases (rows, with replacement) for both encoders, so case
    difficulty cancels out; the resamples and the interval come from the package's one bootstrap engine
    (:mod:`medprobe.metrics.bootstrap`, same ``seed`` -> same case indices as every other CI there).
    Returns ``delta`` (on the full set), the percentile ``(1 - alpha)`` interval ``low``/``high``, a
    two-sided ``p_value`` and ``n_valid`` (resamples where both metrics were defined; resamples where
    ``metric_fn`` raises ``ValueError`` / ``ZeroDivisionError`` or returns NaN are dropped). By the
    engine's NaN rule, ``low``/``high``/``p_value`` are NaN when fewer than half the resamples are valid
    or ``delta`` itself is undefined.

    p-value: the share of valid resampled deltas on the other side of 0 from ``delta`` (0 itself
    included), times 2, capped at 1 -- i.e. ``2 * min(P*(d <= 0), P*(d >= 0))``. ``delta == 0`` gives 1.
    Its resolution is ``1 / n_valid``; 0 means "below that".
    """
    y = np.asarray(y_true)
    a = np.asarray(score_a)
    b = np.asarray(score_b)
    n = len(y)
    if n == 0 or len(a) != n or len(b) != n:
        raise ConfigError(f"paired_bootstrap: y_true, score_a, score_b need the same non-zero length "
                          f"(got {len(y)}, {len(a)}, {len(b)})")
    check_args(n, n_resamples, alpha)

    def diff(idx: np.ndarray) -> dict[str, float]:
        yi = y[idx]
        return {"delta": _safe_metric(metric_fn, yi, a[idx]) - _safe_metric(metric_fn, yi, b[idx])}

    delta = diff(np.arange(n))["delta"]
    deltas = resample_statistic(diff, n, n_resamples, seed)["delta"]
    ci = percentile_ci(delta, deltas, alpha)
    deltas = deltas[np.isfinite(deltas)]
    if not math.isfinite(delta) or math.isnan(ci.low):
        return {"delta": delta, "low": math.nan, "high": math.nan, "p_value": math.nan, "n_valid": ci.n_valid}
    if delta > 0:
        p = 2.0 * float(np.mean(deltas <= 0))
    elif delta < 0:
        p = 2.0 * float(np.mean(deltas >= 0))
    else:
        p = 1.0
    return {"delta": float(delta), "low": ci.low, "high": ci.high, "p_value": min(1.0, p), "n_valid": ci.n_valid}


def wilcoxon_signed_rank(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Two-sided Wilcoxon signed-rank test of paired scores (e.g. per seed or fold).

    A thin wrapper of :func:`scipy.stats.wilcoxon` with its defaults (``zero_method="wilcox"``: zero
    differences dropped; tied |differences| get average ranks; exact p-value for small samples without
    ties, normal approximation otherwise), so results equal scipy's. Every difference zero returns
    ``statistic=0, p_value=1`` directly (what scipy >= 1.13 gives, older versions raise / return NaN).
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ConfigError(f"wilcoxon_signed_rank: a and b must be 1-D and paired "
                          f"(got {x.shape} and {y.shape})")
    if np.all(x - y == 0):
        return {"statistic": 0.0, "p_value": 1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # small-sample / ties notices
        res = sps.wilcoxon(x, y)
    return {"statistic": float(res.statistic), "p_value": float(res.pvalue)}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values, in the input order.

    Sorted ascending, ``p_(i)`` (1-based ``i`` of ``m``) becomes ``max_{j<=i} min(1, (m - j + 1) p_(j))``,
    which is monotone in the sorted order and capped at 1. NaNs stay NaN and do not count in ``m``.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out.tolist()
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman's rho and its two-sided p-value, exactly :func:`scipy.stats.spearmanr`."""
    res = sps.spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


def kendall(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Kendall's tau-b and its two-sided p-value, exactly :func:`scipy.stats.kendalltau` (exact p for
    small samples without ties)."""
    res = sps.kendalltau(x, y)
    return float(res.statistic), float(res.pvalue)


def _score_matrix(scores: Mapping[str, Mapping[str, float]]) -> tuple[list[str], list[str], np.ndarray]:
    tasks = list(scores)
    if not tasks:
        raise ConfigError("scores: no tasks")
    methods = list(scores[tasks[0]])
    for t in tasks:
        if set(scores[t]) != set(methods):
            raise ConfigError(f"scores[{t!r}]: methods {sorted(scores[t])} differ from {sorted(methods)}; "
                              f"every task needs a score for every method")
    mat = np.array([[float(scores[t][m]) for m in methods] for t in tasks])
    if np.isnan(mat).any():
        t, j = np.argwhere(np.isnan(mat))[0]
        raise ConfigError(f"scores[{tasks[t]!r}][{methods[j]!r}]: NaN score")
    return tasks, methods, mat


def _rank_matrix(scores: Mapping[str, Mapping[str, float]], higher_is_better: bool
                 ) -> tuple[list[str], np.ndarray]:
    _, methods, mat = _score_matrix(scores)
    ranks = sps.rankdata(-mat if higher_is_better else mat, method="average", axis=1)
    return methods, ranks


def mean_ranks(scores: Mapping[str, Mapping[str, float]], higher_is_better: bool = True) -> dict[str, float]:
    """Mean rank of each method over tasks (rank 1 = best on a task; ties share the average rank).

    ``scores[task][method]`` must hold a score for every (task, method) pair.
    """
    methods, ranks = _rank_matrix(scores, higher_is_better)
    return {m: float(r) for m, r in zip(methods, ranks.mean(axis=0))}


def friedman_test(scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Friedman test that all methods rank equally over tasks (needs >= 3 methods and >= 2 tasks).

    Returns ``statistic`` / ``p_value`` (chi-square form, :func:`scipy.stats.friedmanchisquare`, tie
    corrected), plus Iman & Davenport's less conservative F form ``f_statistic`` / ``f_p_value`` that
    Demšar (2006) recommends, and ``n_tasks`` / ``n_methods``. The statistic does not depend on whether
    higher is better.
    """
    _, methods, mat = _score_matrix(scores)
    n, k = mat.shape
    if k < 3 or n < 2:
        raise ConfigError(f"friedman_test needs >= 3 methods and >= 2 tasks (got {k} methods, {n} tasks)")
    if np.all(mat == mat[:, :1]):  # every task ties every method: no evidence of any difference
        return {"statistic": 0.0, "p_value": 1.0, "f_statistic": 0.0, "f_p_value": 1.0,
                "n_tasks": n, "n_methods": k}
    res = sps.friedmanchisquare(*mat.T)
    chi2 = float(res.statistic)
    denom = n * (k - 1) - chi2
    if denom <= 0:
        f_stat, f_p = math.inf, 0.0
    else:
        f_stat = (n - 1) * chi2 / denom
        f_p = float(sps.f.sf(f_stat, k - 1, (k - 1) * (n - 1)))
    return {"statistic": chi2, "p_value": float(res.pvalue), "f_statistic": float(f_stat), "f_p_value": f_p,
            "n_tasks": n, "n_methods": k}


def nemenyi_q(n_methods: int, alpha: float = 0.05) -> float:
    """Critical value ``q_alpha`` of the Nemenyi test: the studentised range quantile (``k`` groups,
    infinite degrees of freedom) divided by sqrt(2) -- e.g. 2.569 for k=4 at alpha=0.05 (Demšar's table)."""
    if n_methods < 2:
        raise ConfigError(f"nemenyi: need >= 2 methods (got {n_methods})")
    return float(sps.studentized_range.ppf(1 - alpha, n_methods, np.inf) / math.sqrt(2))


def nemenyi_cd(n_methods: int, n_tasks: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of mean ranks (Demšar 2006): ``q_alpha * sqrt(k (k + 1) / (6 N))``.

    Two methods whose mean ranks over ``N`` tasks differ by more than this differ significantly.
    """
    if n_tasks < 1:
        raise ConfigError(f"nemenyi_cd: need >= 1 task (got {n_tasks})")
    k = n_methods
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6.0 * n_tasks))
