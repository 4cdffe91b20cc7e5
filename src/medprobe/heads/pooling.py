"""Bags of instance features: fixed pooling of slice features, and the gated-attention MIL head.

``pool_slices`` turns a volume's (S, C) slice features into one (C,) vector (mean / max).
``abmil`` (Ilse et al., 2018): instance embedding ``h = ReLU(W x)``, gated attention
``a = softmax(w^T (tanh(V h) * sigmoid(U h)))`` over the bag, bag vector ``sum a h``, then a linear
classifier. Used for 3D slice bags and slide tiles; bags of different sizes are padded and masked.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medprobe.errors import ConfigError
from medprobe.heads.base import Head, register_head


def pool_slices(feats: np.ndarray, method: str = "mean") -> np.ndarray:
    """Pool (S, C) per-slice features of one volume into a (C,) vector."""
    feats = np.asarray(feats)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ConfigError(f"slice features must be a non-empty (S, C) array, got shape {feats.shape}",
                          "pool_slices")
    if method == "mean":
        return feats.mean(0)
    if method == "max":
        return feats.max(0)
    raise ConfigError(f"unknown pooling {method!r} (use 'mean' or 'max')", "pool_slices")


class _GatedAttentionMIL(nn.Module):
    def __init__(self, dim: int, hidden: int, attn: int, n_out: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.V = nn.Linear(hidden, attn)
        self.U = nn.Linear(hidden, attn)
        self.w = nn.Linear(attn, 1)
        self.cls = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(x)  # (B, S, H)
        a = self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h)))[..., 0]  # (B, S)
        a = torch.softmax(a.masked_fill(~mask, float("-inf")), dim=1)
        return self.cls((a[..., None] * h).sum(1)), a


@register_head("abmil")
class ABMILHead(Head):
    """Gated-attention MIL on bags (list of (S_i, C) arrays); Adam, seeded."""

    input_kind = "bag"

    def __init__(self, task: str = "multiclass", n_classes: int | None = None, seed: int = 0,
                 hidden: int = 128, attn_dim: int = 128, dropout: float = 0.0, lr: float = 1e-3,
                 weight_decay: float = 1e-4, epochs: int = 30, batch_size: int = 8) -> None:
        super().__init__(task=task, n_classes=n_classes, seed=seed)
        self.hidden = hidden
        self.attn_dim = attn_dim
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size

    def _check_bags(self, bags: Any, what: str = "bags") -> list[np.ndarray]:
        if isinstance(bags, np.ndarray) and bags.ndim == 3:
            bags = list(bags)
        if not isinstance(bags, (list, tuple)) or not bags:
            raise ConfigError(f"{what} must be a non-empty list of (S_i, C) arrays", self._where())
        out = [self._check_X(b, what) for b in bags]
        dims = {b.shape[1] for b in out}
        if len(dims) != 1 or any(len(b) == 0 for b in out):
            raise ConfigError(f"{what} must be non-empty and share one feature size (got {sorted(dims)})",
                              self._where())
        if hasattr(self, "n_features_in_") and dims != {self.n_features_in_}:
            raise ConfigError(f"{what} have {dims.pop()} features, the head was fitted on "
                              f"{self.n_features_in_}", self._where())
        return out

    def _pad(self, bags: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        s = max(len(b) for b in bags)
        x = torch.zeros(len(bags), s, bags[0].shape[1])
        mask = torch.zeros(len(bags), s, dtype=torch.bool)
        for i, b in enumerate(bags):
            x[i, : len(b)] = (torch.as_tensor(b, dtype=torch.float32) - self.mean_) / self.std_
            mask[i, : len(b)] = True
        return x, mask

    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> ABMILHead:
        bags = self._check_bags(X)
        y, k = self._check_y(y, len(bags))
        allx = torch.as_tensor(np.concatenate(bags), dtype=torch.float32)
        self.mean_, self.std_ = allx.mean(0), allx.std(0).clamp_min(1e-6)
        self.n_features_in_ = bags[0].shape[1]
        self.k_ = k
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed))
            self.model_ = _GatedAttentionMIL(self.n_features_in_, self.hidden, self.attn_dim, k, self.dropout)
            g = torch.Generator().manual_seed(int(self.seed))
            opt = torch.optim.Adam(self.model_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            yt = torch.as_tensor(y, dtype=torch.float32 if self.task == "multilabel" else torch.int64)
            self.model_.train()
            for _ in range(int(self.epochs)):
                perm = torch.randperm(len(bags), generator=g).tolist()
                for a in range(0, len(bags), self.batch_size):
                    idx = perm[a:a + self.batch_size]
                    x, mask = self._pad([bags[i] for i in idx])
                    z, _ = self.model_(x, mask)
                    loss = (F.binary_cross_entropy_with_logits(z, yt[idx]) if self.task == "multilabel"
                            else F.cross_entropy(z, yt[idx]))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        self.model_.eval()
        return self

    def _forward(self, bags: Any) -> tuple[torch.Tensor, list[np.ndarray]]:
        self._check_fitted("model_")
        bags = self._check_bags(bags)
        zs, atts = [], []
        with torch.no_grad():
            for a in range(0, len(bags), 64):
                chunk = bags[a:a + 64]
                x, mask = self._pad(chunk)
                z, att = self.model_(x, mask)
                zs.append(z)
                atts += [att[i, : len(b)].numpy() for i, b in enumerate(chunk)]
        return torch.cat(zs), atts

    def predict_proba(self, X: Any) -> np.ndarray:
        z, _ = self._forward(X)
        return (torch.sigmoid(z) if self.task == "multilabel" else torch.softmax(z, 1)).numpy()

    def attention(self, X: Any) -> list[np.ndarray]:
        """Per-bag attention weights (each sums to 1) -- which slices / tiles drove the prediction."""
        return self._forward(X)[1]
