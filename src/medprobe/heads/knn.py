"""``knn``: the DINOv2/v3 weighted k-NN protocol on frozen features.

Features are L2-normalised; neighbours are the top-k by cosine similarity (chunked torch matmul +
``topk``, memory bounded by ``chunk_size`` x N_train); neighbour weights are ``softmax(sim / T)``
over the k neighbours, and a class's probability is the summed weight of neighbours of that class
(multi-label: the weighted vote of the neighbours' 0/1 labels, per label).

The protocol evaluates k in {10, 20, 100, 200} with k = 20 as the headline: ``predict_proba`` gives the
headline ``k`` (or the one ``select_k`` chose on validation), ``predict_proba_ks`` gives every k of ``ks``
from one top-max(k) search, so the four-k protocol costs one search, not four.

Search (``search="bf16"``, opt-in; ``"auto"`` = float32 for now): candidates are the top
``k + margin`` by a bfloat16 matmul (about twice the float32 GEMM speed), re-scored exactly in float32.
The result is exact, not approximate: for unit vectors a bfloat16 similarity is within
``BF16_ERR`` of the float32 one, so a row whose (k + margin)-th candidate score + ``2 * BF16_ERR``
lies below its exact k-th score cannot have missed a neighbour; any other row is searched again in
float32. ``search="exact"`` always uses float32.

``device="auto"`` runs the search on CUDA when torch sees a GPU (float32, never TF32), else on the CPU;
the device used is recorded with the head's selected parameters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medprobe.errors import ConfigError
from medprobe.heads.base import Head, default_metric, holdout_split, register_head, score

# |bf16 dot - fp32 dot| for unit vectors: two bf16 roundings (2 * 2^-9 relative each product, summed
# |q_i x_i| <= 1) plus float32 accumulation; 2x safety factor.
BF16_ERR = 2 * (2.0 ** -8 + 1e-4)


def _normalise(X: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(X), dtype=torch.float32)
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _bf16_fast() -> bool:
    """True where oneDNN has native bfloat16 GEMM (AVX512-BF16 / AMX); elsewhere bf16 is slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover
        return False


DEFAULT_KS = (10, 20, 100, 200)


def topk_cosine(q: torch.Tensor, db: torch.Tensor, k: int, db_bf16: torch.Tensor | None = None,
                margin: int = 16, buf: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` (scores descending, indices) of ``q @ db.T`` for unit rows, float32 scores.

    With ``db_bf16`` the search runs in bfloat16 on ``k + margin`` candidates that are re-scored in
    float32, and rows whose candidate set cannot be proven to hold the exact top-k are redone in float32.
    ``buf`` (at least ``len(q)`` x ``len(db)`` float32) receives the similarity matrix, so a chunked search
    reuses one allocation instead of faulting in a fresh one per chunk.
    """
    n = db.shape[0]
    k = min(k, n)
    if db_bf16 is None or k + margin >= n:
        if buf is None:
            return (q @ db.T).topk(k, dim=1)
        sims = buf[:len(q), :n]
        torch.mm(q, db.T, out=sims)
        return sims.topk(k, dim=1)
    m = k + margin
    cand_s, cand = (q.to(torch.bfloat16) @ db_bf16.T).topk(m, dim=1)
    exact = torch.einsum("bd,bmd->bm", q, db[cand])
    top, pos = exact.topk(k, dim=1)
    idx = cand.gather(1, pos)
    bad = (cand_s[:, -1].float() + 2 * BF16_ERR >= top[:, -1]).nonzero()[:, 0]
    if len(bad):
        top[bad], idx[bad] = (q[bad] @ db.T).topk(k, dim=1)
    return top, idx


@register_head("knn")
class KNNHead(Head):
    """Cosine k-NN with temperature-softmax weighted votes (``k=20``, ``temperature=0.07``)."""

    outputs = ("proba", "proba_ks")  # predict_proba_ks: the protocol's k = 10/20/100/200 from one search

    def __init__(self, task: str = "multiclass", n_classes: int | None = None, seed: int = 0,
                 k: int = 20, ks: list[int] | None = None, select_k: bool = False,
                 temperature: float = 0.07, selection_metric: str | None = None,
                 val_fraction: float = 0.1, chunk_size: int = 1024, search: str = "auto",
                 device: str = "auto") -> None:
        super().__init__(task=task, n_classes=n_classes, seed=seed)
        self.k = k
        self.ks = ks
        self.select_k = select_k
        self.temperature = temperature
        self.selection_metric = selection_metric
        self.val_fraction = val_fraction
        self.chunk_size = chunk_size
        self.search = search
        self.device = device

    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> KNNHead:
        X = self._check_X(X)
        y, self.k_classes_ = self._check_y(y, len(X))
        if self.temperature <= 0 or self.k < 1 or self.chunk_size < 1:
            raise ConfigError("k and chunk_size must be >= 1 and temperature > 0", self._where())
        if self.search not in ("auto", "exact", "bf16"):
            raise ConfigError(f"search must be 'auto', 'exact' or 'bf16', got {self.search!r}", self._where())
        self.device_ = self._resolve_device()
        self.n_features_in_ = X.shape[1]
        self.k_ = int(self.k)
        self.val_scores_: dict[int, float] = {}
        if self.select_k:
            ks = self._ks()
            if X_val is None:
                tr, va = holdout_split(y, self.val_fraction, self.seed)
                self._store(X[tr], y[tr])
                Xva, yva = X[va], y[va]
            else:
                self._store(X, y)
                Xva = self._check_X(X_val, "X_val", X.shape[1])
                yva, _ = self._check_y(y_val, len(Xva), "y_val", self.k_classes_)
            probas = self._vote(Xva, ks)
            metric = self.selection_metric or default_metric(self.task)
            self.val_scores_ = {k: score(self.task, yva, p, metric) for k, p in zip(ks, probas)}
            self.k_ = max(ks, key=lambda k: (self.val_scores_[k], -k))
        self._store(X, y)
        return self

    def _resolve_device(self) -> str:
        """``"auto"``: CUDA when present (the similarity GEMM is the whole cost), else CPU."""
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        try:
            dev = torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"device {self.device!r} is not a torch device ({e})", self._where()) from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} asked for, but torch sees no CUDA device", self._where())
        return str(dev)

    def _ks(self, ks: Any = None) -> list[int]:
        """Sorted distinct ``ks`` (default: the head's ``ks``, else 10/20/100/200), checked positive."""
        out = sorted({int(v) for v in (ks if ks is not None else self.ks or DEFAULT_KS)})
        if not out or out[0] < 1:
            raise ConfigError(f"ks must be positive integers, got {out}", self._where())
        return out

    def _store(self, X: np.ndarray, y: np.ndarray) -> None:
        self.train_feats_ = _normalise(X).to(self.device_)
        # "auto" is float32: on the 2-core AVX512-BF16 dev box the bf16 path measured 4.1 s vs 2.1 s
        # (candidate gather + re-scoring outweigh the faster GEMM), so bf16 is opt-in until that changes
        use = self.search == "bf16"
        self._train_bf16 = self.train_feats_.to(torch.bfloat16) if use else None
        if self.task == "multilabel":
            self.train_targets_ = torch.as_tensor(y, dtype=torch.float32, device=self.device_)
        else:
            self.train_targets_ = torch.nn.functional.one_hot(torch.as_tensor(y, device=self.device_),
                                                              self.k_classes_).float()

    def _vote(self, X: np.ndarray, ks: list[int]) -> list[np.ndarray]:
        """Class probabilities for each k in ``ks`` (one top-max(k) search)."""
        q = _normalise(X)
        n_train = self.train_feats_.shape[0]
        kmax = min(max(ks), n_train)
        outs = [np.empty((len(q), self.train_targets_.shape[1]), np.float32) for _ in ks]
        bf16 = getattr(self, "_train_bf16", None)
        dev = self.train_feats_.device
        buf = torch.empty(min(self.chunk_size, len(q)), n_train, device=dev) if bf16 is None else None
        tf32 = torch.backends.cuda.matmul.allow_tf32
        # TF32 would round similarities to ~1e-3 on a GPU: keep the search float32-exact, then restore
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            self._search_votes(q, ks, kmax, outs, bf16, buf, dev)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        return outs

    def _search_votes(self, q: torch.Tensor, ks: list[int], kmax: int, outs: list[np.ndarray],
                      bf16: torch.Tensor | None, buf: torch.Tensor | None, dev: torch.device) -> None:
        with torch.no_grad():
            for a in range(0, len(q), self.chunk_size):
                top, idx = topk_cosine(q[a:a + self.chunk_size].to(dev), self.train_feats_, kmax, bf16,
                                       buf=buf)  # sorted, descending
                tgt = self.train_targets_[idx]  # (B, kmax, K)
                for o, k in zip(outs, ks):
                    kk = min(k, kmax)
                    w = torch.softmax(top[:, :kk] / self.temperature, dim=1)
                    o[a:a + len(top)] = torch.einsum("bk,bkc->bc", w, tgt[:, :kk]).cpu().numpy()

    def predict_proba(self, X: Any) -> np.ndarray:
        self._check_fitted("train_feats_")
        X = self._check_X(X, dim=self.n_features_in_)
        return self._vote(X, [self.k_])[0]

    def predict_proba_ks(self, X: Any, ks: list[int] | None = None) -> dict[int, np.ndarray]:
        """``{k: probabilities}`` for every k of ``ks`` (default: the head's ``ks``, else 10/20/100/200,
        plus the fitted ``k_``) from one search; each equals ``predict_proba`` of a head fitted with that k."""
        self._check_fitted("train_feats_")
        X = self._check_X(X, dim=self.n_features_in_)
        ks = sorted(set(self._ks(ks)) | {self.k_})
        return dict(zip(ks, self._vote(X, ks)))

    def selected_params(self) -> dict[str, Any]:
        if not hasattr(self, "k_"):
            return {}
        out: dict[str, Any] = {"k": self.k_, "device": self.device_}
        if self.val_scores_:
            out["val_scores"] = {str(k): v for k, v in self.val_scores_.items()}
        return out
