"""EM neuron instance metrics: VOI split / merge / total, adapted Rand error, boundary Dice, per-section CIs.

Definitions (CREMI, ``cremi.evaluation.NeuronIds``):

* ``voi_split`` = H(seg | gt), ``voi_merge`` = H(gt | seg), ``voi`` = their sum, in **bits** (log base 2);
* ``arand`` = 1 - F-score of the Rand pair precision and recall (scikit-image's pair counting: pairs of
  distinct voxels; every segment id, 0 included, is an ordinary segment);
* ``cremi_score`` = sqrt(voi x arand), CREMI's summary.

Background: ground-truth voxels labelled 0 (unlabelled / membrane / extracellular space; the loaders map
CREMI's "largest uint64 = unlabelled" to 0) are left out of every score, and so are gt voxels within
``border_nm`` of a gt label boundary (in-plane Euclidean distance per section, CREMI's
``border_threshold``; 0 = off, the default here). Predicted id 0 is an ordinary segment.
With ``border_nm = 0`` the numbers equal ``skimage.metrics.variation_of_information(gt, seg,
ignore_labels=(0,))`` and ``skimage.metrics.adapted_rand_error(gt, seg, ignore_labels=(0,))``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medprobe.errors import DataError
from medprobe.metrics.bootstrap import mean_ci
from medprobe.metrics.segmentation import adapted_rand_error, voi

INSTANCE_METRICS = ("voi_split", "voi_merge", "voi", "arand", "cremi_score")
LOWER_IS_BETTER = INSTANCE_METRICS


def mask_border(gt: np.ndarray, border_nm: float, spacing_nm: Sequence[float] | None = None) -> np.ndarray:
    """``gt`` with voxels within ``border_nm`` of an in-plane label boundary set to 0 (ignored).

    ``gt`` is ``(z, y, x)`` or ``(y, x)``; ``spacing_nm`` the in-plane ``(y, x)`` pixel size (default 1).
    A voxel is near a boundary when the in-plane Euclidean distance to a voxel of another label is at most
    ``border_nm`` (each section on its own, as CREMI does)."""
    if border_nm <= 0:
        return gt
    from scipy import ndimage

    g = np.asarray(gt)
    stack = g[None] if g.ndim == 2 else g
    sp = tuple(float(s) for s in (spacing_nm or (1.0, 1.0)))[-2:]
    out = stack.copy()
    for z, sec in enumerate(stack):
        edge = np.zeros(sec.shape, bool)
        for ax in (0, 1):
            d = np.diff(sec, axis=ax) != 0
            lo = [slice(None)] * 2
            hi = [slice(None)] * 2
            lo[ax], hi[ax] = slice(0, -1), slice(1, None)
            edge[tuple(lo)] |= d
            edge[tuple(hi)] |= d
        if edge.any():
            dist = ndimage.distance_transform_edt(~edge, sampling=sp)
            out[z][dist < border_nm] = 0  # edge voxels (distance 0) are inside any positive border
    return out[0] if g.ndim == 2 else out


def instance_metrics(seg: np.ndarray, gt: np.ndarray, *, border_nm: float = 0.0,
                     spacing_nm: Sequence[float] | None = None, case: str = "segmentation") -> dict[str, float]:
    """VOI split / merge / total (bits), ARAND and the CREMI score of one segmentation (rules above)."""
    seg, gt = np.asarray(seg), np.asarray(gt)
    if seg.shape != gt.shape:
        raise DataError(f"segmentation shape {seg.shape} differs from ground truth shape {gt.shape}", case)
    g = mask_border(gt, border_nm, spacing_nm)
    split, merge = voi(seg, g, ignore_gt=(0,))
    are = adapted_rand_error(seg, g, ignore_gt=(0,))
    total = split + merge
    score = math.sqrt(total * are) if np.isfinite(total) and np.isfinite(are) else math.nan
    return {"voi_split": split, "voi_merge": merge, "voi": total, "arand": are, "cremi_score": score}


def boundary_from_affinities(affs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Boundary map from affinities ``(C, ...)`` whose first channels are the nearest neighbours of the
    spatial axes in order (``(z, y, x)`` or ``(y, x)``): a voxel is boundary where its affinity to the
    neighbour at -1, or its +1 neighbour's affinity to it, is below ``threshold``."""
    a = np.asarray(affs)
    nd = a.ndim - 1
    low = a < threshold
    out = np.zeros(a.shape[1:], bool)
    n_nn = min(a.shape[0], nd)  # the first channels are the nearest neighbours of the last n_nn axes
    for c in range(n_nn):
        ax = nd - n_nn + c
        out |= low[c]
        sh = [slice(None)] * nd
        src = [slice(None)] * nd
        sh[ax], src[ax] = slice(0, -1), slice(1, None)
        out[tuple(sh)] |= low[c][tuple(src)]
    return out


def boundary_dice(pred_boundary: np.ndarray, gt_boundary: np.ndarray) -> float:
    """Dice of two boolean boundary maps (NaN when both are empty)."""
    p, g = np.asarray(pred_boundary, bool), np.asarray(gt_boundary, bool)
    denom = int(p.sum()) + int(g.sum())
    return 2.0 * int((p & g).sum()) / denom if denom else math.nan


def aggregate_sections(per_section: Sequence[Mapping[str, float]], n_resamples: int = 1000, seed: int | None = 0,
                       alpha: float = 0.05) -> dict[str, Any]:
    """Per-section metric dicts -> ``{metric: (mean, lo, hi)}`` with percentile bootstrap CIs over sections
    (NaN sections, e.g. fully unlabelled ones, are left out of each mean)."""
    keys: list[str] = []
    for row in per_section:
        keys += [k for k in row if k not in keys]
    out: dict[str, Any] = {}
    for k in keys:
        vals = np.array([float(r.get(k, math.nan)) for r in per_section], np.float64)
        vals = vals[np.isfinite(vals)]
        out[k] = mean_ci(vals, n_resamples, seed, alpha) if vals.size else (math.nan, math.nan, math.nan)
    return out


__all__ = ["INSTANCE_METRICS", "LOWER_IS_BETTER", "adapted_rand_error", "aggregate_sections", "boundary_dice",
           "boundary_from_affinities", "instance_metrics", "mask_border", "voi"]
