"""Scaling verdicts ("does bigger / higher resolution / another layer help?") and cost/score Pareto fronts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medprobe.analysis.stats import kendall, spearman
from medprobe.errors import ConfigError

__all__ = ["trend_verdict", "pareto_front", "best_per_budget", "KENDALL_BELOW"]

KENDALL_BELOW = 8  # fewer points than this: Kendall's tau (exact null distribution); else Spearman's rho


def _fmt(x: float) -> str:
    return f"{x:g}"


def _per_x(x: np.ndarray, y: np.ndarray, lo: np.ndarray | None, hi: np.ndarray | None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Average repeated measurements (several seeds at one x) into one curve point per unique x."""
    ux = np.unique(x)
    if ux.size == x.size:
        order = np.argsort(x, kind="stable")
        return x[order], y[order], None if lo is None else lo[order], None if hi is None else hi[order]
    my = np.array([y[x == v].mean() for v in ux])
    mlo = None if lo is None else np.array([np.nanmean(lo[x == v]) for v in ux])
    mhi = None if hi is None else np.array([np.nanmean(hi[x == v]) for v in ux])
    return ux, my, mlo, mhi


def _above(i: int, j: int, y: np.ndarray, lo: np.ndarray | None, hi: np.ndarray | None, tol: float) -> bool:
    """Point ``i`` is clearly above ``j``: by more than ``tol`` and, if CIs are known, without overlap."""
    if not y[i] - y[j] > tol:
        return False
    if lo is not None and hi is not None and math.isfinite(lo[i]) and math.isfinite(hi[j]):
        return bool(lo[i] > hi[j])
    return True


def trend_verdict(x: Sequence[float], y: Sequence[float], y_low: Sequence[float] | None = None,
                  y_high: Sequence[float] | None = None, alpha: float = 0.05, flat_tol: float = 0.005,
                  higher_is_better: bool = True) -> dict[str, Any]:
    """Verdict on how a score moves along a scaling axis (model size, resolution, layer, label budget).

    Returns ``verdict`` (``"improves"``, ``"flat"``, ``"worsens"`` or ``"peaks at X"``), the rank
    correlation ``statistic`` between x and y with its two-sided ``p_value``, ``method`` and ``best_x``.

    Rules, applied in order (repeated x values -- e.g. seeds -- are averaged for the curve, but all points
    enter the correlation):

    1. ``"flat"`` if the curve's range (max - min of the per-x means) is below ``flat_tol``.
    2. ``"peaks at X"`` if the best score is at an interior x and it beats the worst point before it and the
       worst point after it each by more than ``flat_tol`` -- and, when ``y_low``/``y_high`` are given,
       its interval does not overlap theirs.
    3. ``"improves"`` / ``"worsens"`` (sign of the correlation) if the rank trend is significant
       (``p < alpha``). Test: Kendall's tau-b for fewer than ``KENDALL_BELOW`` (8) points, because its
       exact null distribution is valid for tiny samples where Spearman's t approximation is not;
       Spearman's rho from 8 points on. A rank test on 3-4 points can never reach p < 0.05, so when CIs
       are given a curve that never steps back by more than ``flat_tol`` and whose first and last
       intervals do not overlap (and differ by more than ``flat_tol``) also counts (``method`` then ends
       in ``"+ci"``).
    4. ``"flat"`` otherwise.

    With ``higher_is_better=False`` (losses, VOI, HD95) "improves" means the score goes down and the peak
    is the minimum; ``statistic`` stays the raw correlation of x with y.
    """
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    if xa.shape != ya.shape or xa.ndim != 1:
        raise ConfigError(f"trend_verdict: x and y must be 1-D of equal length (got {xa.shape}, {ya.shape})")
    lo = None if y_low is None else np.asarray(y_low, dtype=float)
    hi = None if y_high is None else np.asarray(y_high, dtype=float)
    for name, arr in (("y_low", lo), ("y_high", hi)):
        if arr is not None and arr.shape != ya.shape:
            raise ConfigError(f"trend_verdict: {name} has shape {arr.shape}, y has {ya.shape}")
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    lo = None if lo is None else lo[keep]
    hi = None if hi is None else hi[keep]
    sign = 1.0 if higher_is_better else -1.0
    n = xa.size
    method = "kendall" if n < KENDALL_BELOW else "spearman"
    if n == 0:
        return {"verdict": "flat", "statistic": math.nan, "p_value": math.nan, "method": method,
                "best_x": math.nan}

    cx, cy, clo, chi = _per_x(xa, ya, lo, hi)
    # work in "goodness" units g = sign * y, so the peak is always a maximum
    g = sign * cy
    glo, ghi = (clo, chi) if sign > 0 else (None if chi is None else -chi, None if clo is None else -clo)
    best = int(np.argmax(g))
    best_x = float(cx[best])

    if np.unique(xa).size >= 2 and np.ptp(ya) > 0:
        stat, p = (kendall if method == "kendall" else spearman)(xa, ya)
    else:
        stat, p = math.nan, math.nan
    out = {"statistic": stat, "p_value": p, "method": method, "best_x": best_x}

    if cx.size < 2 or np.ptp(cy) < flat_tol:
        return {"verdict": "flat", **out}
    if 0 < best < cx.size - 1:
        before = int(np.argmin(g[:best]))
        after = best + 1 + int(np.argmin(g[best + 1:]))
        if _above(best, before, g, glo, ghi, flat_tol) and _above(best, after, g, glo, ghi, flat_tol):
            return {"verdict": f"peaks at {_fmt(best_x)}", **out}
    direction = None
    if math.isfinite(p) and p < alpha:
        direction = stat
    elif glo is not None and ghi is not None:
        steps = np.diff(g)
        last, first = cx.size - 1, 0
        if np.all(steps > -flat_tol) and _above(last, first, g, glo, ghi, flat_tol):
            direction, out["method"] = sign, method + "+ci"
        elif np.all(steps < flat_tol) and _above(first, last, g, glo, ghi, flat_tol):
            direction, out["method"] = -sign, method + "+ci"
    if direction is None or direction == 0 or not math.isfinite(direction):
        return {"verdict": "flat", **out}
    goes_up = direction > 0  # y rises with x
    return {"verdict": "improves" if goes_up == higher_is_better else "worsens", **out}


def _num(p: Mapping[str, Any], key: str) -> float:
    try:
        return float(p[key])
    except KeyError:
        raise ConfigError(f"point {dict(p)!r}: missing {key!r}") from None
    except (TypeError, ValueError):
        return math.nan


def pareto_front(points: Sequence[Mapping[str, Any]], cost_key: str = "gflops", score_key: str = "score",
                 higher_is_better: bool = True) -> list[Mapping[str, Any]]:
    """The non-dominated points (no other point is at most as costly and at least as good, one of them
    strictly), sorted by cost then by score (best first). Points with NaN cost or score are skipped;
    exact duplicates are all kept. Returns the input dicts themselves."""
    sign = 1.0 if higher_is_better else -1.0
    valid = [(c, sign * s, i, p) for i, p in enumerate(points)
             if math.isfinite(c := _num(p, cost_key)) and math.isfinite(s := _num(p, score_key))]
    valid.sort(key=lambda t: (t[0], -t[1], t[2]))
    front: list[Mapping[str, Any]] = []
    best_g = -math.inf
    best_cost = math.nan
    for c, g, _, p in valid:
        # sorted by cost asc then goodness desc: p is dominated iff a cheaper-or-equal point is better,
        # or an equally good point is strictly cheaper
        if g > best_g:
            front.append(p)
            best_g, best_cost = g, c
        elif g == best_g and c == best_cost:
            front.append(p)  # exact duplicate of a front point
    return front


def best_per_budget(points: Sequence[Mapping[str, Any]], budgets: Sequence[float], cost_key: str = "gflops",
                    score_key: str = "score", higher_is_better: bool = True
                    ) -> dict[float, Mapping[str, Any] | None]:
    """For each cost budget, the best-scoring point costing at most that much (cheaper wins a tie), or
    ``None`` when nothing fits."""
    front = pareto_front(points, cost_key, score_key, higher_is_better)
    out: dict[float, Mapping[str, Any] | None] = {}
    for budget in budgets:
        fits = [p for p in front if _num(p, cost_key) <= budget]
        out[budget] = fits[-1] if fits else None  # front is sorted by cost with score strictly improving
    return out
