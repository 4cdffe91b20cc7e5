"""Percentile bootstrap confidence intervals over test cases.

Cases are resampled with replacement by a seeded ``numpy.random.Generator``; the same ``(n_cases,
n_resamples, seed)`` always gives the same resamples, whichever helper uses them, so ``mean_ci``,
``bootstrap_statistic`` and ``bootstrap_ci`` agree on a common seed. The point estimate is the statistic on
the full set; ``low``/``high`` are the ``alpha/2`` and ``1 - alpha/2`` percentiles (linear interpolation)
of the resampled statistics, skipping resamples where the statistic is undefined (NaN). A percentile
interval need not contain the point estimate for strongly skewed statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from medprobe.errors import ConfigError
from medprobe.metrics.classification import check_keys, compute, prepare

Interval = tuple[float, float, float]

_CHUNK_ELEMENTS = 2_000_000  # resample rows x cases held in memory at once


def _check(n_cases: int, n_resamples: int, alpha: float) -> None:
    if n_cases < 1:
        raise ConfigError("bootstrap needs at least one case")
    if n_resamples < 1:
        raise ConfigError(f"n_resamples must be >= 1; got {n_resamples}")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must lie strictly between 0 and 1; got {alpha}")


def resample_indices(n_cases: int, n_resamples: int, seed: int | None) -> Iterator[np.ndarray]:
    """Yield blocks of resampled case indices, shape (rows, n_cases), n_resamples rows in total."""
    rng = np.random.default_rng(seed)
    block = max(1, _CHUNK_ELEMENTS // n_cases)
    done = 0
    while done < n_resamples:
        rows = min(block, n_resamples - done)
        yield rng.integers(0, n_cases, size=(rows, n_cases))
        done += rows


def _multiplicities(idx: np.ndarray, n_cases: int) -> np.ndarray:
    """How often each case occurs in each resample: (rows, n_cases) indices -> (rows, n_cases) counts."""
    rows = idx.shape[0]
    flat = (idx + n_cases * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n_cases).reshape(rows, n_cases).astype(np.float64)


def percentile_interval(point: float, samples: np.ndarray, alpha: float) -> Interval:
    """(point, low, high) from resampled values, ignoring NaN; low/high are NaN if none is defined."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float(point), float("nan"), float("nan")
    low, high = np.quantile(samples, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(point), float(low), float(high)


def bootstrap_statistic(
    fn: Callable[[np.ndarray], float | Mapping[str, float]],
    n_cases: int,
    n_resamples: int = 1000,
    seed: int | None = 0,
    alpha: float = 0.05,
) -> Interval | dict[str, Interval]:
    """Percentile bootstrap of any statistic of the cases.

    ``fn(idx)`` gets an int array of ``n_cases`` case indices (``arange(n_cases)`` for the point
    estimate) and returns a float, or a mapping of named floats (then a dict of intervals is returned).
    Generic but one Python call per resample; prefer the vectorised helpers where they apply.
    """
    _check(n_cases, n_resamples, alpha)
    point = fn(np.arange(n_cases))
    named = isinstance(point, Mapping)
    keys = list(point) if named else [None]
    samples: dict = {key: [] for key in keys}
    for block in resample_indices(n_cases, n_resamples, seed):
        for idx in block:
            value = fn(idx)
            for key in keys:
                samples[key].append(value[key] if named else value)
    if not named:
        return percentile_interval(float(point), np.array(samples[None], dtype=np.float64), alpha)
    return {key: percentile_interval(float(point[key]), np.array(samples[key], dtype=np.float64), alpha)
            for key in keys}


def mean_ci(
    values: np.ndarray | Sequence[float],
    n_resamples: int = 1000,
    seed: int | None = 0,
    alpha: float = 0.05,
) -> Interval:
    """Mean of per-case values (e.g. Dice per case) with a percentile bootstrap CI.

    NaN values are ignored (mean over the finite values of the set or resample); the mean is NaN when a
    set has no finite value. Vectorised; equals ``bootstrap_statistic(lambda i: nanmean(values[i]), ...)``.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    _check(v.size, n_resamples, alpha)
    finite = np.isfinite(v)
    v0 = np.where(finite, v, 0.0)
    point = float(v0.sum() / finite.sum()) if finite.any() else float("nan")
    stats = []
    for idx in resample_indices(v.size, n_resamples, seed):
        counts = _multiplicities(idx, v.size)
        n_finite = counts @ finite.astype(np.float64)
        stats.append(np.where(n_finite > 0, (counts @ v0) / np.maximum(n_finite, 1.0), np.nan))
    return percentile_interval(point, np.concatenate(stats), alpha)


def bootstrap_ci(
    y_true: np.ndarray | Sequence,
    y_score: np.ndarray | Sequence,
    task: str,
    n_resamples: int = 1000,
    seed: int | None = 0,
    alpha: float = 0.05,
    metrics: Sequence[str] | None = None,
    **kw,
) -> dict[str, Interval]:
    """``{metric: (point, low, high)}`` for the classification metrics, bootstrapping test cases.

    ``metrics`` picks metric names (default: all of ``classification_metrics``); ``kw`` (``threshold``,
    ``classes``) is passed on to it. All resamples are evaluated at once from case multiplicities, so
    1000 resamples of thousands of cases take about a second.
    """
    prep = prepare(y_true, y_score, task, **kw)
    keys = check_keys(prep, metrics)
    _check(prep.n_cases, n_resamples, alpha)
    point = compute(prep, np.ones((1, prep.n_cases)), keys)
    samples: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    for idx in resample_indices(prep.n_cases, n_resamples, seed):
        values = compute(prep, _multiplicities(idx, prep.n_cases), keys)
        for key in keys:
            samples[key].append(values[key])
    return {
        key: percentile_interval(float(point[key][0]), np.concatenate(samples[key]), alpha) for key in keys
    }
