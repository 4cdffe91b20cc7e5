"""Metrics with bootstrap confidence intervals.

Classification metrics and the bootstrap helpers are re-exported here. Segmentation metrics live in
``medprobe.metrics.segmentation`` (import them from there; not imported here so this package does not
depend on it).
"""

from medprobe.metrics.bootstrap import (
    bootstrap_ci,
    bootstrap_statistic,
    mean_ci,
    percentile_interval,
    resample_indices,
)
from medprobe.metrics.classification import classification_metrics
from medprobe.metrics.regression import regression_ci, regression_metrics

__all__ = [
    "bootstrap_ci",
    "bootstrap_statistic",
    "classification_metrics",
    "mean_ci",
    "percentile_interval",
    "regression_ci",
    "regression_metrics",
    "resample_indices",
]
