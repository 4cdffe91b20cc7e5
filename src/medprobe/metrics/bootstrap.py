"""The one bootstrap engine of the package: percentile confidence intervals over resampled test cases.

Every confidence interval in medprobe comes from here: classification CIs (:func:`bootstrap_ci`), means of
per-case values (:func:`mean_ci`, used by ``metrics.segmentation.aggregate_cases``), any statistic of the
cases (:func:`bootstrap_statistic`) and the paired encoder comparison (``analysis.stats.paired_bootstrap``,
which draws the same case indices for both encoders through :func:`resample_statistic`).

Resampling. Cases are drawn with replacement by ``numpy.random.default_rng(seed)``: resample ``r`` is row
``r`` of ``rng.integers(0, n_cases, size=(n_resamples, n_cases))`` (drawn in blocks of rows to bound
memory; the blocks give the same numbers as one draw). The same ``(n_cases, n_resamples, seed)`` therefore
gives the same resamples whichever helper uses them. Vectorised helpers turn the indices into per-case
multiplicities (:func:`resample_counts`) and evaluate all resamples at once as weighted statistics.

Interval. The point estimate is the statistic on the full set; ``low``/``high`` are the ``alpha/2`` and
``1 - alpha/2`` quantiles (linear interpolation) of the resampled statistics. A percentile interval need
not contain the point estimate for strongly skewed statistics.

NaN rule (:func:`percentile_ci`, the only place it is applied). A resample whose statistic is NaN or
infinite (e.g. an AUC of a resample holding one class only) is dropped, and the number dropped is
reported (``BootstrapCI.n_dropped``; ``n_valid`` in the paired bootstrap). If fewer than
``MIN_FINITE_FRACTION`` (one half) of the resamples are finite, the surviving ones are a small, biased
(conditional) sample and ``low``/``high`` are NaN; so are they when no resample is finite. The point
estimate is reported as computed either way (NaN if undefined on the full set).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, overload

import numpy as np

from medprobe.errors import ConfigError
from medprobe.metrics.classification import check_keys, compute, prepare

log = logging.getLogger(__name__)

Interval = tuple[float, float, float]

MIN_FINITE_FRACTION = 0.5  # below this share of finite resample statistics the bounds are NaN

_CHUNK_ELEMENTS = 2_000_000  # resample rows x cases held in memory at once


class BootstrapCI(NamedTuple):
    """A percentile bootstrap interval and how many resamples it rests on."""

    point: float
    low: float
    high: float
    n_resamples: int
    n_dropped: int  # resamples with an undefined (NaN / infinite) statistic, left out of the quantiles

    @property
    def n_valid(self) -> int:
        return self.n_resamples - self.n_dropped

    @property
    def interval(self) -> Interval:
        return (self.point, self.low, self.high)


def check_args(n_cases: int, n_resamples: int, alpha: float) -> None:
    """Raise ``ConfigError`` unless there is a case, a resample and ``0 < alpha < 1``."""
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


def resample_counts(idx: np.ndarray, n_cases: int) -> np.ndarray:
    """How often each case occurs in each resample: (rows, n_cases) indices -> (rows, n_cases) float counts."""
    rows = idx.shape[0]
    flat = (idx + n_cases * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n_cases).reshape(rows, n_cases).astype(np.float64)


def percentile_ci(point: float, samples: np.ndarray | Sequence[float], alpha: float) -> BootstrapCI:
    """Apply the NaN rule (module docstring) to all resampled statistics ``samples`` and take quantiles."""
    values = np.asarray(samples, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    n_dropped = int(values.size - finite.size)
    if finite.size == 0 or finite.size < MIN_FINITE_FRACTION * values.size:
        return BootstrapCI(float(point), math.nan, math.nan, int(values.size), n_dropped)
    low, high = np.quantile(finite, [alpha / 2.0, 1.0 - alpha / 2.0])
    return BootstrapCI(float(point), float(low), float(high), int(values.size), n_dropped)


def percentile_interval(point: float, samples: np.ndarray | Sequence[float], alpha: float) -> Interval:
    """``(point, low, high)`` of :func:`percentile_ci`."""
    return percentile_ci(point, samples, alpha).interval


def resample_statistic(
    fn: Callable[[np.ndarray], Mapping[str, float]], n_cases: int, n_resamples: int, seed: int | None
) -> dict[str, np.ndarray]:
    """``fn(idx)`` on every resample's case indices -> ``{key: (n_resamples,) values}``.

    One Python call per resample; use it for statistics that cannot take case weights. Two statistics
    evaluated inside one ``fn`` see the same cases (the paired bootstrap relies on this).
    """
    samples: dict[str, list[float]] = {}
    for block in resample_indices(n_cases, n_resamples, seed):
        for idx in block:
            for key, value in fn(idx).items():
                samples.setdefault(key, []).append(float(value))
    return {key: np.asarray(v, dtype=np.float64) for key, v in samples.items()}


def resample_weighted(
    fn: Callable[[np.ndarray], Mapping[str, np.ndarray]], n_cases: int, n_resamples: int, seed: int | None
) -> dict[str, np.ndarray]:
    """``fn(W)`` on blocks of resample multiplicities ``W`` (rows, n_cases) -> ``{key: (n_resamples,)}``.

    ``fn`` maps each row of case weights to one value per key; ``fn(ones((1, n_cases)))`` is the point
    estimate. Same resamples as :func:`resample_statistic` for the same seed.
    """
    samples: dict[str, list[np.ndarray]] = {}
    for idx in resample_indices(n_cases, n_resamples, seed):
        for key, values in fn(resample_counts(idx, n_cases)).items():
            samples.setdefault(key, []).append(np.asarray(values, dtype=np.float64).ravel())
    return {key: np.concatenate(v) for key, v in samples.items()}


def _log_dropped(cis: Mapping[str, BootstrapCI]) -> None:
    for key, ci in cis.items():
        if ci.n_dropped:
            log.debug("bootstrap %s: %d of %d resamples undefined, dropped%s", key or "statistic", ci.n_dropped,
                      ci.n_resamples, "; interval NaN" if math.isnan(ci.low) else "")


def bootstrap_weighted(
    fn: Callable[[np.ndarray], Mapping[str, np.ndarray]],
    n_cases: int,
    n_resamples: int = 1000,
    seed: int | None = 0,
    alpha: float = 0.05,
) -> dict[str, BootstrapCI]:
    """Percentile CIs of statistics given as functions of case weights (see :func:`resample_weighted`)."""
    check_args(n_cases, n_resamples, alpha)
    point = fn(np.ones((1, n_cases)))
    samples = resample_weighted(fn, n_cases, n_resamples, seed)
    cis = {key: percentile_ci(float(np.asarray(point[key]).ravel()[0]), samples[key], alpha) for key in point}
    _log_dropped(cis)
    return cis


@overload
def bootstrap_statistic(
    fn: Callable[[np.ndarray], float], n_cases: int, n_resamples: int = ..., seed: int | None = ...,
    alpha: float = ...,
) -> Interval: ...


@overload
def bootstrap_statistic(
    fn: Callable[[np.ndarray], Mapping[str, float]], n_cases: int, n_resamples: int = ..., seed: int | None = ...,
    alpha: float = ...,
) -> dict[str, Interval]: ...


def bootstrap_statistic(
    fn: Callable[[np.ndarray], float] | Callable[[np.ndarray], Mapping[str, float]],
    n_cases: int,
    n_resamples: int = 1000,
    seed: int | None = 0,
    alpha: float = 0.05,
) -> Interval | dict[str, Interval]:
    """Percentile bootstrap of any statistic of the cases.

    ``fn(idx)`` gets an int array of ``n_cases`` case indices (``arange(n_cases)`` for the point
    estimate) and returns a float -- then ``(point, low, high)`` is returned -- or a mapping of named
    floats -- then ``{name: (point, low, high)}``. Generic but one Python call per resample; prefer the
    vectorised helpers where they apply.
    """
    check_args(n_cases, n_resamples, alpha)

    def as_named(value: float | Mapping[str, float]) -> Mapping[str, float]:
        return value if isinstance(value, Mapping) else {"": value}

    point = fn(np.arange(n_cases))
    samples = resample_statistic(lambda idx: as_named(fn(idx)), n_cases, n_resamples, seed)
    cis = {key: percentile_ci(float(p), samples[key], alpha) for key, p in as_named(point).items()}
    _log_dropped(cis)
    if not isinstance(point, Mapping):
        return cis[""].interval
    return {key: ci.interval for key, ci in cis.items()}


def mean_ci(
    values: np.ndarray | Sequence[float],
    n_resamples: int = 1000,
    seed: int | None = 0,
    alpha: float = 0.05,
) -> Interval:
    """Mean of per-case values (e.g. Dice per case) with a percentile bootstrap CI.

    NaN values stay in the resampled cases but are ignored in each mean (mean over the finite values of
    the set or resample); a resample with no finite value has an undefined mean (NaN rule of the module).
    Vectorised; equals ``bootstrap_statistic(lambda i: nanmean(values[i]), ...)``.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(v).astype(np.float64)
    v0 = np.where(finite > 0, v, 0.0)

    def nanmean(w: np.ndarray) -> dict[str, np.ndarray]:
        n_finite = w @ finite
        return {"mean": np.where(n_finite > 0, (w @ v0) / np.maximum(n_finite, 1.0), np.nan)}

    return bootstrap_weighted(nanmean, v.size, n_resamples, seed, alpha)["mean"].interval


def bootstrap_ci(
    y_true: np.ndarray | Sequence[Any],
    y_score: np.ndarray | Sequence[Any],
    task: str,
    n_resamples: int = 1000,
    seed: int | None = 0,
    alpha: float = 0.05,
    metrics: Sequence[str] | None = None,
    **kw: Any,
) -> dict[str, Interval]:
    """``{metric: (point, low, high)}`` for the classification metrics, bootstrapping test cases.

    ``metrics`` picks metric names (default: all of ``classification_metrics``); ``kw`` (``threshold``,
    ``classes``) is passed on to it. All resamples are evaluated at once from case multiplicities, so
    1000 resamples of thousands of cases take about a second.
    """
    prep = prepare(y_true, y_score, task, **kw)
    keys = check_keys(prep, metrics)
    cis = bootstrap_weighted(lambda w: compute(prep, w, keys), prep.n_cases, n_resamples, seed, alpha)
    return {key: cis[key].interval for key in keys}
