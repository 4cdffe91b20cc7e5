"""The few-shot protocol: ``budget: kshot:<k>x<draws>`` -- ``k`` labelled training cases per class, drawn
``draws`` times with seeded generators; every head is fitted on each draw and scored on the full test set; the
row's metrics are the mean over draws with a percentile bootstrap CI over the draws
(:func:`medprobe.metrics.mean_ci`, the package's one bootstrap engine).

Draw ``d`` of a task with seed ``s`` uses ``numpy.random.default_rng([s, d])`` and, per class in increasing
order, picks ``k`` of that class's training cases without replacement (all of them, with a note, when a class
has fewer). Draws come only from the training split (after the split's patient-level check), so they are
disjoint from test; the same seed gives the same draws in any process.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from medprobe.errors import ConfigError

_KSHOT = re.compile(r"^kshot:(\d+)x(\d+)$")


def parse_kshot(budget: Any) -> tuple[int, int] | None:
    """``"kshot:8x20"`` -> ``(8, 20)``; anything else -> None."""
    if not isinstance(budget, str):
        return None
    m = _KSHOT.match(budget.strip().lower())
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2))


def normalise_kshot(v: str, path: str) -> str:
    """The canonical ``kshot:<k>x<draws>`` (k >= 1, 1 <= draws <= 1000), else a one-line ConfigError."""
    got = parse_kshot(v)
    if got is None or got[0] < 1 or not 1 <= got[1] <= 1000:
        raise ConfigError(f"{path}: a few-shot budget is 'kshot:<k>x<draws>' with k >= 1 and 1..1000 draws "
                          f"(e.g. kshot:8x20), got {v!r}")
    return f"kshot:{got[0]}x{got[1]}"


def kshot_draws(train: list[int], labels: np.ndarray, k: int, n_draws: int, seed: int
                ) -> tuple[list[list[int]], dict[str, Any]]:
    """``n_draws`` sorted index lists of ``k`` training cases per class (module docstring) and facts to record
    (``short_classes``: classes with fewer than ``k`` training cases)."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ConfigError("a k-shot budget needs single-label classes (binary, multiclass, ordinal)")
    pool = np.asarray(sorted(train), dtype=np.int64)
    classes = sorted({int(c) for c in y[pool]})
    by_class = {c: pool[y[pool] == c] for c in classes}
    short = {str(c): int(len(v)) for c, v in by_class.items() if len(v) < k}
    draws = []
    for d in range(n_draws):
        rng = np.random.default_rng([int(seed), d])
        pick: list[int] = []
        for c in classes:
            cand = by_class[c]
            take = cand if len(cand) <= k else rng.choice(cand, size=k, replace=False)
            pick += [int(i) for i in take]
        draws.append(sorted(pick))
    return draws, {"k": k, "draws": n_draws, "classes": len(classes), "short_classes": short,
                   "n_train_per_draw": [len(p) for p in draws]}


def aggregate_draws(per_draw: list[dict[str, float]], n_resamples: int, seed: int, alpha: float
                    ) -> dict[str, tuple[float, float, float]]:
    """``{metric: (mean over draws, low, high)}``: a percentile bootstrap of the mean over draws; NaN draws are
    left out of each mean (undefined everywhere: NaN)."""
    from medprobe.metrics import mean_ci

    out: dict[str, tuple[float, float, float]] = {}
    for key in per_draw[0]:
        vals = np.asarray([m.get(key, np.nan) for m in per_draw], dtype=np.float64)
        if not np.isfinite(vals).any():
            out[key] = (float("nan"), float("nan"), float("nan"))
        elif n_resamples > 0 and len(vals) > 1:
            out[key] = mean_ci(vals, n_resamples=n_resamples, seed=seed, alpha=alpha)
        else:
            m = float(np.nanmean(vals))
            out[key] = (m, float("nan"), float("nan"))
    return out


__all__ = ["aggregate_draws", "kshot_draws", "normalise_kshot", "parse_kshot"]
