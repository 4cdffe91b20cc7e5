"""Pure-numpy primitives shared by the heads (model selection) and the metrics (reported scores).

This module sits below both ``heads`` and ``metrics`` in the package flow and imports nothing from
``medprobe``, so either may use it. It holds the one ROC-AUC and the one Dice of the package.

ROC AUC (:func:`roc_auc`, :func:`weighted_auc`)
    Rank-based (Mann-Whitney) AUC of one score column against a boolean "positive" flag: the probability
    that a random positive scores above a random negative, ties counting 1/2. This equals
    scikit-learn's ``roc_auc_score`` (trapezoidal ROC area) for binary targets. It is undefined (NaN) when
    the positives or the negatives are missing (or carry zero weight). :func:`weighted_auc` evaluates many
    rows of per-case weights at once from one sort (bootstrap multiplicities), :func:`roc_auc` is the
    unweighted case.

Dice (:func:`dice_from_counts`, :func:`dice_per_class`)
    ``2 |P ∩ G| / (|P| + |G|)``. Empty rule: a class absent from both prediction and ground truth has an
    undefined Dice, NaN (0 / 0); a class present in only one of them scores 0. Callers that want another
    convention for empty classes (e.g. ``metrics.segmentation``'s ``empty_policy``) apply it themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["AucColumn", "auc_column", "dice_from_counts", "dice_per_class", "harrell_c_index", "roc_auc",
           "weighted_auc"]


# --------------------------------------------------------------------------------------------- ROC AUC
@dataclass(frozen=True)
class AucColumn:
    """Sort structure of one score column, independent of any case weights."""

    order: np.ndarray  # cases sorted by ascending score (stable)
    is_pos_sorted: np.ndarray  # bool, positive flag in sorted order
    group_end: np.ndarray  # last sorted position of each tie group
    pos_sorted: np.ndarray  # sorted positions of the positives
    pos_group: np.ndarray  # tie group of each positive


def auc_column(score: np.ndarray, positive: np.ndarray) -> AucColumn:
    """Sort ``score`` (N,) once and record its tie groups and where the ``positive`` (N,) cases fall."""
    score = np.asarray(score).ravel()
    positive = np.asarray(positive, dtype=bool).ravel()
    if score.shape != positive.shape:
        raise ValueError(f"score has {score.size} entries but positive has {positive.size}")
    order = np.argsort(score, kind="mergesort")
    sorted_score = score[order]
    is_pos = positive[order]
    starts_group = np.ones(len(score), dtype=bool)
    starts_group[1:] = sorted_score[1:] != sorted_score[:-1]
    group_id = np.cumsum(starts_group) - 1
    group_end = np.append(np.flatnonzero(starts_group)[1:], len(score)) - 1
    pos_sorted = np.flatnonzero(is_pos)
    return AucColumn(order, is_pos, group_end, pos_sorted, group_id[pos_sorted])


def weighted_auc(col: AucColumn, w: np.ndarray) -> np.ndarray:
    """Tie-aware AUC for each row of case weights ``w`` (R, N) -> (R,); NaN where one class has no weight.

    A row of integer weights counts each case that many times (a bootstrap resample); ``ones((1, N))``
    gives the plain AUC.
    """
    w = np.asarray(w, dtype=np.float64)
    ws = w[:, col.order]
    neg_cum = np.cumsum(np.where(col.is_pos_sorted, 0.0, ws), axis=1)
    neg_at_end = neg_cum[:, col.group_end]  # negative weight with score <= each tie group
    neg_below = np.zeros_like(neg_at_end)
    neg_below[:, 1:] = neg_at_end[:, :-1]  # negative weight with score < each tie group
    credit = 0.5 * (neg_below + neg_at_end)  # below + half of the tied ones
    pos_w = ws[:, col.pos_sorted]
    num = (pos_w * credit[:, col.pos_group]).sum(axis=1)
    den = pos_w.sum(axis=1) * neg_cum[:, -1]
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of ``score`` (N,) for the cases flagged by ``positive`` (N,) (bool, or 0/1 with 1 positive).

    Equals ``sklearn.metrics.roc_auc_score(positive, score)`` where that is defined; NaN when all cases
    are positive or all negative (scikit-learn raises there).
    """
    col = auc_column(score, positive)
    return float(weighted_auc(col, np.ones((1, col.order.size)))[0])


# ------------------------------------------------------------------------------------------------ Dice
def dice_from_counts(tp: np.ndarray | float, n_pred: np.ndarray | float, n_gt: np.ndarray | float
                     ) -> np.ndarray:
    """Dice ``2 tp / (n_pred + n_gt)`` from voxel counts (any broadcastable shapes); NaN where both are 0."""
    tp_a = np.asarray(tp, dtype=np.float64)
    den = np.asarray(n_pred, dtype=np.float64) + np.asarray(n_gt, dtype=np.float64)
    return np.where(den > 0, 2.0 * tp_a / np.where(den > 0, den, 1.0), np.nan)


def dice_per_class(pred: np.ndarray, gt: np.ndarray, labels: Iterable[int]) -> np.ndarray:
    """Dice of each label value in ``labels`` between two label maps of the same shape -> (len(labels),).

    A voxel counts for class ``c`` in the prediction where ``pred == c`` and in the ground truth where
    ``gt == c`` (so ground-truth values outside ``labels``, e.g. an ignore label, count for no class).
    Empty rule: NaN for a class absent from both maps, 0 for a class in only one (module docstring).
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    values = [int(c) for c in labels]
    tp = np.empty(len(values))
    n_pred = np.empty(len(values))
    n_gt = np.empty(len(values))
    for i, c in enumerate(values):
        p, g = pred == c, gt == c
        tp[i], n_pred[i], n_gt[i] = np.count_nonzero(p & g), np.count_nonzero(p), np.count_nonzero(g)
    return dice_from_counts(tp, n_pred, n_gt)


# --------------------------------------------------------------------------------------------- concordance
def harrell_c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray, tied_tol: float = 1e-8) -> float:
    """Harrell's concordance index of risk scores (higher = earlier event): over comparable pairs (``event_i`` and
    ``time_i < time_j``, or equal times with ``j`` censored), the share with ``risk_i > risk_j`` (risk ties count
    1/2); NaN without a comparable pair. The Cox head selects its penalty with it; the reported c-indices and their
    CIs are :mod:`medprobe.metrics.survival` (same definition)."""
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=bool)
    r = np.asarray(risk, dtype=np.float64)
    comp = e[:, None] & ((t[:, None] < t[None, :]) | ((t[:, None] == t[None, :]) & ~e[None, :]))
    diff = r[:, None] - r[None, :]
    conc = np.where(np.abs(diff) <= tied_tol, 0.5, (diff > 0).astype(np.float64))
    n = comp.sum()
    return float((conc * comp).sum() / n) if n else float("nan")
