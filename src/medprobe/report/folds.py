"""Aggregation over the folds of a k-fold cross-validation (rows of one setting that differ only in the fold).

Two views, both in the report's "Cross-validation" table:

* across folds: the mean of the per-fold scores with a t-interval over folds (``mean +- t_{k-1} * sd /
  sqrt(k)``): how much the score moves with the training data;
* over cases: every fold's test cases pooled (each case is tested exactly once in k-fold CV) -- the mean of the
  per-case values (segmentation) or the metric of the pooled predictions (classification) with a percentile
  bootstrap CI over the pooled cases.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medprobe.errors import MedprobeError
from medprobe.report.analyze import Table, fmt, metric_fn, primary_metric

FOLD_KEYS = ("task", "method", "resolution", "layer", "head", "budget_label", "seed")


def fold_of(point: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(fold, k)`` of a row whose split is k-fold, or whose dataset has its own folds (``data: {folds: k,
    fold: i}``, e.g. BCNB), else None."""
    cfg = point.get("config") or {}
    sp = cfg.get("split") or {}
    if sp.get("kind") == "folds" and sp.get("folds") is not None:
        return int(sp.get("fold", 0)), int(sp["folds"])
    data = cfg.get("data") or {}
    if data.get("folds") is not None and data.get("fold") is not None:
        return int(data["fold"]), int(data["folds"])
    return None


def t_interval(values: Sequence[float], alpha: float = 0.05) -> tuple[float, float, float]:
    """Mean and the two-sided (1 - alpha) t-interval of the mean (NaN bounds for a single value)."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if v.size < 2:
        return m, math.nan, math.nan
    from scipy import stats

    half = float(stats.t.ppf(1 - alpha / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return m, m - half, m + half


def _score(p: Mapping[str, Any], metric: str) -> float:
    v = (p.get("metrics") or {}).get(metric)
    if v is None:
        return math.nan
    x = v[0] if isinstance(v, (list, tuple)) else v
    return float(x) if x is not None else math.nan


def pooled_over_cases(db: Any, runs: Sequence[Mapping[str, Any]], metric: str, task_type: str,
                      n_boot: int = 1000, alpha: float = 0.05) -> tuple[float, float, float, int, str]:
    """Every fold's test cases pooled: ``(mean, low, high, n cases, how)``; NaNs and a reason when the stored
    predictions do not allow it."""
    from medprobe.metrics.bootstrap import bootstrap_statistic, mean_ci

    per_case: list[float] = []
    ys: list[np.ndarray] = []
    ss: list[np.ndarray] = []
    seen: set[str] = set()
    for r in runs:
        try:
            pr = db.load_predictions(r["run_id"])
        except MedprobeError as e:
            return math.nan, math.nan, math.nan, 0, f"predictions unavailable ({e})"
        ids = [str(i) for i in pr.get("ids", [])]
        dup = seen.intersection(ids)
        if dup:
            return math.nan, math.nan, math.nan, 0, f"case {sorted(dup)[0]} is tested in two folds"
        seen.update(ids)
        if "metric_names" in pr:
            names = [str(n) for n in pr["metric_names"]]
            if metric not in names:
                return math.nan, math.nan, math.nan, 0, f"no per-case {metric}"
            per_case += [float(v) for v in np.asarray(pr["values"])[:, names.index(metric)]]
        elif "y_true" in pr and "y_score" in pr:
            ys.append(np.asarray(pr["y_true"]))
            ss.append(np.asarray(pr["y_score"]))
        else:
            return math.nan, math.nan, math.nan, 0, "no per-case values stored"
    if per_case:
        m, lo, hi = mean_ci(np.asarray(per_case), n_resamples=max(n_boot, 1), seed=0, alpha=alpha)
        n = int(np.isfinite(per_case).sum())
        return float(m), float(lo), float(hi), n, "mean of per-case values, bootstrap over cases"
    y, s = np.concatenate(ys), np.concatenate(ss)
    fn = metric_fn(task_type, metric)
    full = fn(y, s)
    lo, hi = math.nan, math.nan
    if n_boot > 0:
        ci = bootstrap_statistic(lambda i: fn(y[i], s[i]), len(y), n_resamples=n_boot, seed=0, alpha=alpha)
        lo, hi = float(ci[1]), float(ci[2])
    return float(full), lo, hi, len(y), "metric of the pooled predictions, bootstrap over cases"


def fold_summaries(points: Sequence[dict[str, Any]], db: Any = None, n_boot: int = 1000,
                   alpha: float = 0.05) -> list[dict[str, Any]]:
    """One summary per setting run on >= 2 folds of a k-fold split: per-fold scores, mean and t-CI across
    folds, and (with ``db``) the pooled-case mean with its bootstrap CI."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for p in points:
        f = fold_of(p)
        if f is None:
            continue
        groups.setdefault((*(str(p.get(k)) for k in FOLD_KEYS), str(f[1])), []).append(p)
    out = []
    for key, ps in groups.items():
        by_fold: dict[int, dict[str, Any]] = {}
        for p in sorted(ps, key=lambda q: str(q.get("created") or "")):
            f = fold_of(p)
            assert f is not None
            by_fold[f[0]] = p  # latest row per fold
        if len(by_fold) < 2:
            continue
        runs = [by_fold[f] for f in sorted(by_fold)]
        metric, hib = primary_metric(runs)
        scores = [_score(r, metric) for r in runs]
        mean, lo, hi = t_interval(scores, alpha)
        row: dict[str, Any] = {"task": runs[0]["task"], "setting": f"{runs[0]['method']} {runs[0]['resolution']}px "
                               f"L{runs[0]['layer']} {runs[0]['head']} s{runs[0]['seed']}", "metric": metric,
                               "higher_is_better": hib, "k": int(key[-1]), "folds": sorted(by_fold),
                               "scores": scores, "mean": mean, "low": lo, "high": hi,
                               "sd": float(np.std(scores, ddof=1)) if len(scores) > 1 else math.nan,
                               "pretrained": bool(runs[0].get("pretrained")),
                               "run_ids": [r["run_id"] for r in runs]}
        if db is not None:
            pm, plo, phi, n, how = pooled_over_cases(db, runs, metric, str(runs[0]["task_type"]), n_boot, alpha)
            row.update(cases_mean=pm, cases_low=plo, cases_high=phi, n_cases=n, cases_how=how)
        out.append(row)
    return out


def fold_table(points: Sequence[dict[str, Any]], db: Any = None, n_boot: int = 1000,
               alpha: float = 0.05) -> Table | None:
    """The report's cross-validation table (None when no setting was run on >= 2 folds)."""
    rows = fold_summaries(points, db, n_boot, alpha)
    if not rows:
        return None
    level = f"{100 * (1 - alpha):g}%"
    t = Table("cross-validation", "Cross-validation: aggregation over folds",
              ["task", "setting", "metric", "folds", "per fold", "mean over folds", f"{level} CI (t, folds)",
               "SD over folds", "cases", "mean over cases", f"{level} CI (bootstrap, cases)"],
              note="across folds: mean of the per-fold scores with a t-interval over folds; over cases: every "
                   "fold's test cases pooled (each tested once), bootstrap over cases",
              raw_columns=["task", "setting", "metric", "folds", "scores", "mean", "low", "high", "sd", "n_cases",
                           "cases_mean", "cases_low", "cases_high"])
    for r in rows:
        t.add([r["task"], r["setting"], r["metric"], f"{len(r['folds'])}/{r['k']}",
               ", ".join(fmt(s) for s in r["scores"]), fmt(r["mean"]), f"[{fmt(r['low'])}, {fmt(r['high'])}]",
               fmt(r["sd"]), str(r.get("n_cases", "-")), fmt(r.get("cases_mean", math.nan)),
               f"[{fmt(r.get('cases_low', math.nan))}, {fmt(r.get('cases_high', math.nan))}]"],
              [r["task"], r["setting"], r["metric"], len(r["folds"]), r["scores"], r["mean"], r["low"], r["high"],
               r["sd"], r.get("n_cases"), r.get("cases_mean"), r.get("cases_low"), r.get("cases_high")])
    return t


__all__ = ["fold_of", "fold_summaries", "fold_table", "pooled_over_cases", "t_interval"]
