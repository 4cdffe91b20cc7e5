"""``cosine``: image-to-image retrieval on frozen features -- the exact cosine search of the ``knn`` head
(:func:`medprobe.heads.knn.topk_cosine`, float32, chunked) returning ranked neighbours instead of votes.

``fit(X, y)`` stores the L2-normalised database; ``kneighbors(Q, k, exclude)`` gives each query's ``k`` most
similar database rows (similarity descending; ties as ``torch.topk``), never one listed in that query's
``exclude`` (itself, or cases the leakage audit found alike it). ``ks``: the cut-offs the retrieval family scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medprobe.errors import ConfigError
from medprobe.heads.base import Head, register_head
from medprobe.heads.knn import _normalise, topk_cosine

DEFAULT_KS = (1, 5, 10, 20)  # the retrieval cut-offs scored (medprobe.metrics.retrieval)


@register_head("cosine")
class CosineRetrievalHead(Head):
    """Exact cosine search of the training database (the k-NN head's search): ranked neighbours for retrieval."""

    outputs = ("neighbours",)

    def __init__(self, task: str = "multiclass", n_classes: int | None = None, seed: int = 0,
                 ks: list[int] | None = None, chunk_size: int = 1024, device: str = "auto") -> None:
        super().__init__(task=task, n_classes=n_classes, seed=seed)
        self.ks = ks
        self.chunk_size = chunk_size
        self.device = device

    def cutoffs(self) -> list[int]:
        """The sorted, distinct ``ks`` (default 1, 5, 10, 20), checked positive."""
        ks = sorted({int(k) for k in (self.ks if self.ks is not None else DEFAULT_KS)})
        if not ks or ks[0] < 1:
            raise ConfigError(f"ks must be positive integers, got {self.ks!r}", self._where())
        return ks

    def fit(self, X: Any, y: Any = None, X_val: Any = None, y_val: Any = None) -> CosineRetrievalHead:
        X = self._check_X(X)
        if self.chunk_size < 1:
            raise ConfigError("chunk_size must be >= 1", self._where())
        self.cutoffs()
        dev = "cuda" if self.device == "auto" and torch.cuda.is_available() else \
            ("cpu" if self.device == "auto" else self.device)
        self.device_ = dev
        self.n_features_in_ = X.shape[1]
        self.db_ = _normalise(X).to(dev)
        self.labels_ = None if y is None else np.asarray(y)
        return self

    def kneighbors(self, X: Any, k: int, exclude: Sequence[Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, indices)``, each ``(N, k')`` with ``k' = min(k, database size - the largest exclusion)``:
        every query's ``k'`` nearest database rows by cosine similarity, its ``exclude[i]`` rows skipped."""
        self._check_fitted("db_")
        q = _normalise(self._check_X(X, dim=self.n_features_in_))
        n_db = self.db_.shape[0]
        excl = [np.asarray(sorted(e), dtype=np.int64) if e is not None else np.zeros(0, np.int64)
                for e in (exclude if exclude is not None else [None] * len(q))]
        if len(excl) != len(q):
            raise ConfigError(f"exclude has {len(excl)} entries for {len(q)} queries", self._where())
        extra = max((len(e) for e in excl), default=0)
        k_out = max(0, min(int(k), n_db - extra))
        k_search = min(n_db, k_out + extra)
        scores = np.empty((len(q), k_out), np.float32)
        idx = np.empty((len(q), k_out), np.int64)
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # an exact float32 search (as the k-NN head)
        try:
            with torch.no_grad():
                for a in range(0, len(q), self.chunk_size):
                    s, i = topk_cosine(q[a:a + self.chunk_size].to(self.db_.device), self.db_, k_search)
                    s_np, i_np = s.cpu().numpy(), i.cpu().numpy()
                    for r in range(len(s_np)):
                        keep = ~np.isin(i_np[r], excl[a + r]) if len(excl[a + r]) else np.ones(k_search, bool)
                        scores[a + r] = s_np[r][keep][:k_out]
                        idx[a + r] = i_np[r][keep][:k_out]
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        return scores, idx

    def selected_params(self) -> dict[str, Any]:
        return {"device": self.device_} if hasattr(self, "device_") else {}
