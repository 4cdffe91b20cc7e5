"""Re-score a stored row from its stored predictions: the headline metrics come back from the prediction file
alone, by the definition the row's family declared (``record["report"]["rescore"]``):

- ``proba`` (classification): the metrics of ``y_score`` against ``y_true``; a k-shot row (``y_score_draws``):
  the mean over draws of each draw's metrics.
- ``proba_seeds`` (slides): the mean over seeds of each seed's metrics on ``y_score_seeds[s]`` (NaN seeds left
  out) -- the headline is *not* the metric of the seed-averaged ``y_score``.
- ``regression``: MAE / RMSE / R² / Pearson r of ``y_pred`` against ``y_true``.
- ``cases`` (segmentation, instances): per stored column (``metric_names`` / ``values``), the mean over cases
  (sections) of the finite values.
- ``columns`` (registration): per stored per-pair array, the mean of its finite values.

Point values only (no CI): :func:`rescore` gives them, :func:`rescore_run` pairs them with the stored ones.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from medprobe.errors import ConfigError

KINDS = ("proba", "proba_seeds", "regression", "cases", "columns")

__all__ = ["KINDS", "rescore", "rescore_kind", "rescore_run"]


def rescore_kind(row: Mapping[str, Any]) -> str:
    """The re-score definition a record (or a stored row, which keeps it under ``extra``) declares; "" none."""
    rep = row.get("report") or (row.get("extra") or {}).get("report") or {}
    return str(rep.get("rescore") or "")


def _nanmean(values: Any) -> float:
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def _class_means(y: np.ndarray, score: np.ndarray, task: str) -> dict[str, float]:
    from medprobe.metrics.classification import classification_metrics

    return {k: v for k, v in classification_metrics(y, score, task).items() if "/" not in k}


def _mean_over(sets: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in sets[0] if all(k in d for d in sets)]
    return {k: _nanmean([d[k] for d in sets]) for k in keys}


def rescore(row: Mapping[str, Any], predictions: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The row's metrics (class / target means: keys without ``/``, plus each stored per-case column)
    recomputed from ``predictions`` by the family's declared definition (see the module docstring)."""
    kind = rescore_kind(row)
    pr = {k: np.asarray(v) for k, v in predictions.items()}
    task = str(row.get("task_type") or "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if kind == "proba":
            if "y_score_draws" in pr:
                return _mean_over([_class_means(pr["y_true"], s, task) for s in pr["y_score_draws"]])
            return _class_means(pr["y_true"], pr["y_score"], task)
        if kind == "proba_seeds":
            return _mean_over([_class_means(pr["y_true"], s, task) for s in pr["y_score_seeds"]])
        if kind == "regression":
            from medprobe.metrics.regression import regression_metrics

            return {k: v for k, v in regression_metrics(pr["y_true"], pr["y_pred"]).items() if "/" not in k}
        if kind == "cases":
            names = [str(n) for n in pr["metric_names"]]
            values = pr["values"].reshape(len(pr["ids"]), len(names))
            return {n: _nanmean(values[:, j]) for j, n in enumerate(names)}
        if kind == "columns":
            n = len(pr["ids"])
            return {k: _nanmean(v) for k, v in pr.items()
                    if k != "ids" and v.shape[:1] == (n,) and np.issubdtype(v.dtype, np.number)}
    raise ConfigError(f"run {str(row.get('run_id', '?'))[:10]}: no re-score definition for its stored predictions "
                      f"({kind or 'none recorded'}; known: {', '.join(KINDS)})")


def rescore_run(db: Any, run_id: str) -> dict[str, tuple[float, float]]:
    """``{metric: (stored point value, re-scored value)}`` for every metric the row stores and its predictions
    give back."""
    row = db.get(run_id)
    again = rescore(row, db.load_predictions(row["run_id"]))
    stored = row.get("metrics") or {}
    return {k: (float(stored[k][0]), v) for k, v in again.items() if k in stored}
