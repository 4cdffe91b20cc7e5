"""Segmentation and EM-instance metrics in physical units, plus case aggregation with bootstrap CIs.

Per-class binary metrics on label maps (2D or 3D), with ``spacing`` in mm per axis (anisotropic allowed; ``None``:
one unit per pixel, so distances are in pixels -- :func:`distance_units` names the unit the record carries):

- ``dice`` = 2|P∩G| / (|P|+|G|), ``iou`` = |P∩G| / |P∪G|, ``precision`` = |P∩G| / |P|, ``recall`` = |P∩G| / |G|.
- Surfaces are MONAI's (no sub-voxel areas): the voxels of a mask removed by one binary erosion with the
  face-connected structuring element, the outside of the image counting as background.
- Directed distances: from every surface voxel of one mask to the nearest surface voxel of the other, in mm
  (exact Euclidean distance transform with ``sampling=spacing``, computed on the bounding box of both masks).
- ``hd95`` = max(P95(d(P→G)), P95(d(G→P))), linear-interpolated percentiles; this is exactly MONAI's
  ``compute_hausdorff_distance(percentile=95)`` (the larger of the two directed 95th percentiles, not a
  percentile over the pooled distances).
- ``asd`` = mean of the pooled distances d(P→G) ∪ d(G→P) (MONAI ``compute_average_surface_distance``,
  ``symmetric=True``).
- ``nsd`` = (#{d(P→G) ≤ τ} + #{d(G→P) ≤ τ}) / (#surface(P) + #surface(G)) at tolerance τ = ``nsd_tolerance_mm``
  (MONAI ``compute_surface_dice`` without sub-voxels).

Empty masks (``empty_policy``). "Overlap" metrics are dice, iou, precision, recall, nsd; "distance" metrics
are hd95, asd. When both masks are non-empty every policy gives the values above. Otherwise:

============================  ==========================  ===========================  ===========================
case (per class)              ``"nan"`` (default)         ``"one"``                    ``"worst"``
============================  ==========================  ===========================  ===========================
gt empty, pred empty          all NaN                     overlap 1.0, distances NaN   overlap 1.0, distances NaN
gt empty, pred non-empty      all NaN                     overlap 0.0, distances NaN   overlap 0.0, distances D
gt non-empty, pred empty      dice/iou/recall/nsd 0.0,    overlap 0.0, distances NaN   overlap 0.0, distances D
                              precision NaN,
                              distances NaN
============================  ==========================  ===========================  ===========================

``D`` = :func:`max_distance`, the diagonal of the image's physical extent, sqrt(Σ (n_i·spacing_i)²) mm.
``"nan"`` follows MONAI's ``ignore_empty=True`` for a class absent from the ground truth.

An *empty prediction* (the ground truth holds the class, the prediction none of it) has no surface to measure
from. ``empty_prediction`` decides its hd95 / asd whatever ``empty_policy`` says: ``"worst"`` gives ``D`` (the
largest distance the image allows: the miss counts as the worst case), ``"exclude"`` gives NaN (left out of the
means -- count such cases with :func:`empty_predictions` and record the count); ``None`` (the functions'
default) keeps the policy's own value from the table. The task default (``metrics.empty_prediction``) is
``"worst"``; runs without an empty prediction score the same under every choice. Class means
(keys without ``/``) are taken over classes with NaN ignored; a mean of only NaN is NaN. Label 0 is
background and never a class.

EM instance metrics: :func:`voi` (variation of information split/merge, bits by default) and
:func:`adapted_rand_error`; both ignore ground-truth label 0 by default as CREMI does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from medprobe.errors import ConfigError, DataError
from medprobe.metrics.bootstrap import check_args, mean_ci
from medprobe.numerics import dice_from_counts

__all__ = [
    "METRICS",
    "EMPTY_POLICIES",
    "EMPTY_PREDICTION",
    "adapted_rand_error",
    "aggregate_cases",
    "binary_metrics",
    "distance_units",
    "empty_predictions",
    "max_distance",
    "segmentation_metrics",
    "spacing_known",
    "surface_distances",
    "surface_voxels",
    "voi",
]

METRICS: tuple[str, ...] = ("dice", "iou", "hd95", "asd", "nsd", "precision", "recall")
EMPTY_POLICIES: tuple[str, ...] = ("nan", "one", "worst")
EMPTY_PREDICTION: tuple[str, ...] = ("worst", "exclude")  # hd95 / asd of a class the prediction misses
_OVERLAP = frozenset({"dice", "iou", "precision", "recall", "nsd"})
_DISTANCE = frozenset({"hd95", "asd"})
_NAN = float("nan")


# --------------------------------------------------------------------------- units
def spacing_known(item: object) -> bool:
    """True when an item's spacing is physical: volumes (from their headers) or 2D images whose loader names a
    ``meta['spacing_source']`` (a CSV column, a dataset option, a header); other 2D spacing is pixels."""
    meta = getattr(item, "meta", None) or {}
    return getattr(item, "spatial_dims", 2) == 3 or bool(meta.get("spacing_source"))


def distance_units(known: bool) -> dict[str, str]:
    """The unit of every distance metric (and of the NSD tolerance) for the record and the printed table."""
    u = "mm" if known else "px"
    return {"hd95": u, "asd": u, "nsd_tolerance": u}


# --------------------------------------------------------------------------- helpers


def _spacing(spacing: float | Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64)).ravel()
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ConfigError(f"spacing {tuple(sp.tolist())} must be {ndim} positive finite numbers (mm per axis)")
    return tuple(float(s) for s in sp)


def _check_include(include: Iterable[str]) -> tuple[str, ...]:
    inc = tuple(include)
    bad = [m for m in inc if m not in METRICS]
    if bad:
        raise ConfigError(f"unknown segmentation metric(s) {bad}; choose from {list(METRICS)}")
    return inc


def _check_policy(empty_policy: str, empty_prediction: str | None = None) -> None:
    if empty_policy not in EMPTY_POLICIES:
        raise ConfigError(f"empty_policy {empty_policy!r} must be one of {list(EMPTY_POLICIES)}")
    if empty_prediction is not None and empty_prediction not in EMPTY_PREDICTION:
        raise ConfigError(f"empty_prediction {empty_prediction!r} must be one of {list(EMPTY_PREDICTION)}")


def _bbox(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Bounding box of ``mask`` grown by ``margin`` (clipped to the array); None when empty."""
    out = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        idx = np.flatnonzero(mask.any(axis=other) if other else mask)
        if idx.size == 0:
            return None
        out.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, mask.shape[ax])))
    return tuple(out)


def max_distance(shape: Sequence[int], spacing: float | Sequence[float] | None) -> float:
    """Diagonal of the image's physical extent in mm: sqrt(sum((n_i * spacing_i)**2))."""
    sp = _spacing(spacing, len(shape))
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, sp))))


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a binary mask: ``mask`` minus its face-connected erosion (outside = background)."""
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: float | Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (pred surface → gt surface, gt surface → pred surface).

    Both masks must be non-empty. Works on the bounding box of both masks (plus a 1-voxel margin).
    """
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    sp = _spacing(spacing, pred.ndim)
    box = _bbox(pred | gt)
    if box is None or not pred.any() or not gt.any():
        raise ValueError("surface_distances needs two non-empty masks")
    sp_pred, sp_gt = surface_voxels(pred[box]), surface_voxels(gt[box])
    return _nearest_distance(sp_pred, sp_gt, sp), _nearest_distance(sp_gt, sp_pred, sp)


def _nearest_distance(src: np.ndarray, dst: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance (mm) from every True voxel of ``src`` to the nearest True voxel of ``dst`` (non-empty).

    The exact Euclidean feature transform of ``~dst`` (``sampling=spacing``) gives each voxel's nearest
    ``dst`` voxel; distances are then formed only at the ``src`` voxels, not over the whole box.
    """
    ft = ndimage.distance_transform_edt(~dst, sampling=spacing, return_distances=False, return_indices=True)
    pts = np.nonzero(src)
    sq = np.zeros(pts[0].size, dtype=np.float64)
    for ax, s in enumerate(spacing):
        diff = (ft[ax][pts] - pts[ax]).astype(np.float64) * s
        sq += diff * diff
    return np.sqrt(sq)


def _empty_values(
    gt_any: bool, pred_any: bool, include: Sequence[str], empty_policy: str, worst: float,
    empty_prediction: str | None = None,
) -> dict[str, float]:
    """Metric values when at least one mask is empty (see the module docstring's table)."""
    out: dict[str, float] = {}
    both_empty = not gt_any and not pred_any
    missed = gt_any and not pred_any
    for m in include:
        if m in _DISTANCE and missed and empty_prediction is not None:
            out[m] = worst if empty_prediction == "worst" else _NAN
        elif m in _DISTANCE:
            out[m] = worst if (empty_policy == "worst" and not both_empty) else _NAN
        elif empty_policy == "nan":
            if not gt_any or m == "precision":
                out[m] = _NAN
            else:  # gt present, prediction missed it
                out[m] = 0.0
        else:
            out[m] = 1.0 if both_empty else 0.0
    return out


# --------------------------------------------------------------------------- per-class metrics


def binary_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    nsd_tolerance_mm: float = 1.0,
    empty_policy: str = "nan",
    include: Iterable[str] = METRICS,
    empty_prediction: str | None = None,
) -> dict[str, float]:
    """Metrics of one binary mask pair (same shape), keyed by metric name; see the module docstring."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise DataError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    inc = _check_include(include)
    _check_policy(empty_policy, empty_prediction)
    sp = _spacing(spacing, gt.ndim)
    if not math.isfinite(nsd_tolerance_mm) or nsd_tolerance_mm < 0:
        raise ConfigError(f"nsd_tolerance_mm {nsd_tolerance_mm} must be a finite number >= 0")
    box = _bbox(pred | gt)
    gt_any = box is not None and bool(gt[box].any())
    pred_any = box is not None and bool(pred[box].any())
    if not (gt_any and pred_any):
        wants_d = empty_policy == "worst" or (empty_prediction == "worst" and gt_any)
        worst = max_distance(gt.shape, sp) if wants_d else _NAN
        return _empty_values(gt_any, pred_any, inc, empty_policy, worst, empty_prediction)
    p, g = pred[box], gt[box]
    tp = int(np.count_nonzero(p & g))
    n_p, n_g = int(np.count_nonzero(p)), int(np.count_nonzero(g))
    out: dict[str, float] = {}
    need_surface = any(m in ("hd95", "asd", "nsd") for m in inc)
    if need_surface:
        d_pred, d_gt = surface_distances(p, g, sp)
    for m in inc:
        if m == "dice":
            out[m] = float(dice_from_counts(tp, n_p, n_g))
        elif m == "iou":
            out[m] = tp / (n_p + n_g - tp)
        elif m == "precision":
            out[m] = tp / n_p
        elif m == "recall":
            out[m] = tp / n_g
        elif m == "hd95":
            out[m] = float(max(np.percentile(d_pred, 95), np.percentile(d_gt, 95)))
        elif m == "asd":
            out[m] = float((d_pred.sum() + d_gt.sum()) / (d_pred.size + d_gt.size))
        elif m == "nsd":
            hits = np.count_nonzero(d_pred <= nsd_tolerance_mm) + np.count_nonzero(d_gt <= nsd_tolerance_mm)
            out[m] = float(hits / (d_pred.size + d_gt.size))
    return out


def _label_names(labels: Mapping[int, str] | Sequence[int]) -> dict[int, str]:
    if isinstance(labels, Mapping):
        names = {int(k): str(v) for k, v in labels.items()}
    else:
        names = {int(k): str(int(k)) for k in labels}
    names.pop(0, None)  # background is never a class
    if not names:
        raise ConfigError("labels name no foreground class (label 0 is background)")
    if len(set(names.values())) != len(names):
        raise ConfigError(f"class names must be unique, got {list(names.values())}")
    return names


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else _NAN


def segmentation_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    labels: Mapping[int, str] | Sequence[int],
    spacing: float | Sequence[float] | None,
    nsd_tolerance_mm: float = 1.0,
    empty_policy: str = "nan",
    include: Iterable[str] = METRICS,
    empty_prediction: str | None = None,
) -> dict[str, float]:
    """Per-class and class-mean metrics of two integer label maps (2D or 3D) of the same shape.

    ``labels``: ``{value: name}`` or a sequence of values (named ``str(value)``); label 0 is dropped.
    Returns ``{"<metric>/<name>": value, ..., "<metric>": mean over classes ignoring NaN}`` for each
    metric in ``include``. Empty-mask rules: module docstring.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise DataError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    if gt.ndim not in (2, 3):
        raise DataError(f"label maps must be 2D or 3D, got shape {gt.shape}")
    inc = _check_include(include)
    _check_policy(empty_policy, empty_prediction)
    sp = _spacing(spacing, gt.ndim)
    names = _label_names(labels)
    per_class = {
        name: binary_metrics(pred == value, gt == value, sp, nsd_tolerance_mm, empty_policy, inc, empty_prediction)
        for value, name in names.items()
    }
    out: dict[str, float] = {}
    for m in inc:
        for name, vals in per_class.items():
            out[f"{m}/{name}"] = vals[m]
        out[m] = _nanmean([vals[m] for vals in per_class.values()])
    return out


def empty_predictions(pred: np.ndarray, gt: np.ndarray, labels: Mapping[int, str] | Sequence[int]) -> list[str]:
    """Names of the classes the ground truth holds and the prediction misses entirely (an *empty prediction*:
    no surface to measure hd95 / asd from; ``empty_prediction`` decides their value)."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    return [name for value, name in _label_names(labels).items()
            if bool(np.any(gt == value)) and not bool(np.any(pred == value))]


# --------------------------------------------------------------------------- aggregation over cases


def aggregate_cases(
    per_case: Sequence[Mapping[str, float]], n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, tuple[float, float, float]]:
    """Mean over cases and a percentile-bootstrap (1 - alpha) CI for every key: ``{key: (mean, lo, hi)}``.

    NaN values (and keys missing from a case) are dropped first; the finite values of each key are then
    bootstrapped by :func:`medprobe.metrics.bootstrap.mean_ci` with ``seed`` (the same resamples for every
    key of the same size, so a key's CI does not depend on the other keys). No finite value → (nan, nan, nan).
    """
    check_args(1, n_resamples, alpha)
    keys: list[str] = []
    for case in per_case:
        keys.extend(k for k in case if k not in keys)
    out: dict[str, tuple[float, float, float]] = {}
    for key in keys:
        vals = np.array([float(case.get(key, _NAN)) for case in per_case], dtype=np.float64)
        vals = vals[~np.isnan(vals)]
        out[key] = mean_ci(vals, n_resamples, seed, alpha) if vals.size else (_NAN, _NAN, _NAN)
    return out


# --------------------------------------------------------------------------- EM instance metrics


def _contingency(
    seg: np.ndarray, gt: np.ndarray, ignore_gt: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joint counts of (gt, seg) label pairs over voxels whose gt label is not ignored.

    Returns (counts n_ij, gt index i of each pair, seg label of each pair); gt indices are 0..n_gt-1.
    """
    seg = np.asarray(seg)
    gt = np.asarray(gt)
    if seg.shape != gt.shape:
        raise DataError(f"segmentation shape {seg.shape} differs from ground truth shape {gt.shape}")
    s, g = seg.ravel(), gt.ravel()
    if len(ignore_gt):
        keep = ~np.isin(g, np.asarray(list(ignore_gt)))
        s, g = s[keep], g[keep]
    _, g_idx = np.unique(g, return_inverse=True)
    s_lab, s_idx = np.unique(s, return_inverse=True)
    n_s = max(s_lab.size, 1)
    keys, counts = np.unique(g_idx.astype(np.int64) * n_s + s_idx, return_counts=True)
    return counts.astype(np.float64), keys // n_s, s_lab[keys % n_s]


def voi(seg: np.ndarray, gt: np.ndarray, *, ignore_gt: Sequence[int] = (0,), base: float = 2.0) -> tuple[float, float]:
    """Variation of information as (split, merge) = (H(seg | gt), H(gt | seg)).

    Entropies in log ``base`` (2 = bits, as CREMI and scikit-image report them), over the voxels whose gt
    label is not in ``ignore_gt`` (CREMI ignores gt 0). Split grows with over-segmentation, merge with
    under-segmentation; VOI = split + merge. With ``ignore_gt=()`` this equals
    ``skimage.metrics.variation_of_information(gt, seg)``.
    """
    n_ij, g_inv, si = _contingency(seg, gt, ignore_gt)
    total = n_ij.sum()
    if total == 0:
        return (_NAN, _NAN)
    p_ij = n_ij / total
    _, s_inv = np.unique(si, return_inverse=True)
    p_g = np.bincount(g_inv, weights=p_ij)
    p_s = np.bincount(s_inv, weights=p_ij)
    log_b = math.log(base)
    # H(S|G) = -sum p_ij log(p_ij / p_g);  H(G|S) = -sum p_ij log(p_ij / p_s)
    split = -float(np.sum(p_ij * np.log(p_ij / p_g[g_inv]))) / log_b
    merge = -float(np.sum(p_ij * np.log(p_ij / p_s[s_inv]))) / log_b
    return (max(split, 0.0) + 0.0, max(merge, 0.0) + 0.0)  # clamp rounding and -0.0


def adapted_rand_error(
    seg: np.ndarray, gt: np.ndarray, *, ignore_gt: Sequence[int] = (0,), convention: str = "skimage"
) -> float:
    """Adapted Rand error: 1 - F-score of Rand precision and recall (0 = perfect).

    Voxels whose gt label is in ``ignore_gt`` are left out (gt 0 by default, as CREMI/SNEMI3D do).

    - ``"skimage"`` (default; equals ``skimage.metrics.adapted_rand_error``): pairs of distinct voxels;
      with n_ij the joint counts, a_i / b_j the gt / seg sizes,
      precision = Σ n_ij(n_ij-1) / Σ b_j(b_j-1), recall = Σ n_ij(n_ij-1) / Σ a_i(a_i-1).
      Every seg label, 0 included, is an ordinary segment.
    - ``"cremi"`` (the CREMI/SNEMI3D script): squared counts (self-pairs included), and seg-0 voxels inside
      the gt foreground count as singletons: with c = #(gt kept, seg 0) and N = all voxels of the image,
      precision = (Σ_{j≠0} n_ij² + c/N) / (Σ_{j≠0} b_j² + c/N), recall = (Σ_{j≠0} n_ij² + c/N) / Σ a_i².

    Returns NaN where the score is undefined (e.g. no kept voxel pair).
    """
    if convention not in ("skimage", "cremi"):
        raise ConfigError(f"convention {convention!r} must be 'skimage' or 'cremi'")
    n_ij, g_inv, si = _contingency(seg, gt, ignore_gt)
    if convention == "skimage":
        _, s_inv = np.unique(si, return_inverse=True)
        a = np.bincount(g_inv, weights=n_ij)
        b: np.ndarray = np.bincount(s_inv, weights=n_ij)
        both = float(np.sum(n_ij * (n_ij - 1)))
        sum_a, sum_b = float(np.sum(a * (a - 1))), float(np.sum(b * (b - 1)))
    else:
        n_all = float(np.asarray(gt).size)
        zero = si == 0
        c = float(n_ij[zero].sum()) / n_all if n_all else 0.0
        a = np.bincount(g_inv, weights=n_ij)
        _, s_inv = np.unique(si[~zero], return_inverse=True)
        b = np.bincount(s_inv, weights=n_ij[~zero]) if s_inv.size else np.zeros(0)
        both = float(np.sum(n_ij[~zero] ** 2)) + c
        sum_a, sum_b = float(np.sum(a**2)), float(np.sum(b**2)) + c
    if sum_a == 0 or sum_b == 0:
        return _NAN
    precision, recall = both / sum_b, both / sum_a
    if precision + recall == 0:
        return 1.0
    return float(1.0 - 2.0 * precision * recall / (precision + recall))
