"""Image-to-image retrieval metrics from ranked neighbour lists (per query; CIs by bootstrapping queries).

A query's ranked list holds database cases by decreasing cosine similarity (the query itself and the cases the
leakage audit found alike it are never in it). Relevance: the same class (multi-label: at least one shared
positive label). ``R_q``: the number of relevant cases in the query's database (same exclusions).

* ``acc@k`` (top-k accuracy): 1 when at least one of the first ``k`` is relevant.
* ``map@k``: the mean over queries of ``AP@k = sum_{i <= k} P@i * rel_i / min(k, R_q)`` (``P@i``: precision of
  the first ``i``); a query with ``R_q = 0`` has no AP (NaN, left out of the mean).
* ``mv@k`` (majority vote): 1 when the most frequent class among the first ``k`` is the query's (a tie goes to
  the class ranked first among the tied); single-label tasks only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_KS = (1, 5, 10, 20)


def relevance(query_labels: np.ndarray, neighbour_labels: np.ndarray) -> np.ndarray:
    """``(N, k)`` 0/1: is each neighbour relevant to its query (same class; multi-label: a shared label)."""
    q = np.asarray(query_labels)
    nb = np.asarray(neighbour_labels)
    if q.ndim == 2:  # multi-label: (N, L) queries, (N, k, L) neighbours
        return ((nb * q[:, None, :]).sum(axis=2) > 0).astype(np.float64)
    return (nb == q[:, None]).astype(np.float64)


def average_precision_at_k(rel: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per query ``AP@k`` (module docstring) from ``(N, >=k)`` relevance; NaN where ``n_relevant`` is 0."""
    r = rel[:, :k]
    prec = np.cumsum(r, axis=1) / np.arange(1, r.shape[1] + 1)
    den = np.minimum(k, np.asarray(n_relevant, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (prec * r).sum(axis=1) / den, np.nan)


def majority_vote(neighbour_labels: np.ndarray, k: int) -> np.ndarray:
    """Per query the most frequent class among its first ``k`` neighbours (ties: the one ranked first)."""
    nb = np.asarray(neighbour_labels)[:, :k]
    out = np.empty(len(nb), dtype=nb.dtype)
    for i, row in enumerate(nb):
        vals, first, counts = np.unique(row, return_index=True, return_counts=True)
        best = np.lexsort((first, -counts))[0]
        out[i] = vals[best]
    return out


def retrieval_values(query_labels: np.ndarray, neighbour_labels: np.ndarray, n_relevant: np.ndarray,
                     ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per-query values of every metric for every ``k`` (``k`` larger than a list is cut to the list)."""
    rel = relevance(query_labels, neighbour_labels)
    out: dict[str, np.ndarray] = {}
    single = np.asarray(query_labels).ndim == 1
    for k in ks:
        out[f"acc@{k}"] = (rel[:, :k].sum(axis=1) > 0).astype(np.float64)
        out[f"map@{k}"] = average_precision_at_k(rel, n_relevant, k)
        if single:
            out[f"mv@{k}"] = (majority_vote(neighbour_labels, k) == query_labels).astype(np.float64)
    return out


__all__ = ["DEFAULT_KS", "average_precision_at_k", "majority_vote", "relevance", "retrieval_values"]
