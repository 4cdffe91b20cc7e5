"""Slide-level (multiple-instance) heads on bags of tile (or slice) vectors.

* ``abmil`` -- gated-attention MIL (Ilse et al., 2018) as the DINOv3 medical study states it: each instance
  ``x_k`` is linearly projected to ``h_k = P x_k`` in R^D (``projection: relu`` adds Ilse's ReLU), attention
  ``a_k = softmax_k(w^T (tanh(V h_k) * sigmoid(U h_k)))`` with ``U, V`` in R^{H x D} and ``w`` in R^H (no biases,
  as in the paper's formula), bag vector ``z = sum_k a_k h_k``, a linear slide head on ``z``, bag-level
  cross-entropy. Only the projection, the attention and the head are trained (the encoder is frozen upstream).
* ``transmil`` -- TransMIL (Shao et al., 2021): projection + ReLU, a class token, two pre-norm transformer layers
  with the PPEG positional block (depth-wise 7/5/3 convolutions on the tokens folded into a square) between
  them, LayerNorm, linear head on the class token. Attention is exact (PyTorch's fused kernel) rather than the
  paper's Nystrom approximation; the heat-map score of a tile is the class token's attention to it in the last
  layer, averaged over heads.
* ``meanpool`` -- the simple baseline: every bag mean-pooled to one vector, then the ``logreg`` head (DINOv3's
  C-swept logistic regression).

Every head standardises instance features with the training instances' mean and std (``standardize``), trains
with Adam(W) on seeded bag orders, and exposes ``attention(bags)``: per bag, one non-negative score per
instance summing to 1 (uniform for ``meanpool``) -- for heat-maps and tile-level AUC.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medprobe.errors import ConfigError
from medprobe.heads.base import Head, default_metric, register_head, score
from medprobe.heads.logreg import LogRegHead
from medprobe.utils import torch_seeded

PROJECTIONS = ("linear", "relu")


def check_bags(bags: Any, where: str, dim: int | None = None, what: str = "bags") -> list[np.ndarray]:
    """A non-empty list of non-empty, finite ``(S_i, C)`` arrays sharing ``C`` (``dim`` when given)."""
    if isinstance(bags, np.ndarray) and bags.ndim == 3:
        bags = list(bags)
    if not isinstance(bags, (list, tuple)) or not bags:
        raise ConfigError(f"{what} must be a non-empty list of (S_i, C) arrays", where)
    out = []
    for b in bags:
        a = np.asarray(b)
        if a.ndim != 2 or a.shape[0] == 0 or not np.issubdtype(a.dtype, np.number):
            raise ConfigError(f"{what} must be non-empty numeric (S_i, C) arrays, got shape {a.shape}", where)
        out.append(a)
    dims = {b.shape[1] for b in out}
    if len(dims) != 1:
        raise ConfigError(f"{what} must share one feature size (got {sorted(dims)})", where)
    if dim is not None and dims != {dim}:
        raise ConfigError(f"{what} have {dims.pop()} features, the head was fitted on {dim}", where)
    if not all(np.isfinite(b).all() for b in out):
        raise ConfigError(f"{what} contain NaN or inf", where)
    return out


class GatedAttentionMIL(nn.Module):
    """The study's ABMIL: projection P (C -> D), gated attention (U, V in R^{H x D}, w in R^H), linear head."""

    def __init__(self, dim: int, hidden: int, attn_dim: int, n_out: int, dropout: float = 0.0,
                 projection: str = "linear") -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.act: nn.Module = nn.ReLU() if projection == "relu" else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.V = nn.Linear(hidden, attn_dim, bias=False)
        self.U = nn.Linear(hidden, attn_dim, bias=False)
        self.w = nn.Linear(attn_dim, 1, bias=False)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, S, C), ``mask`` (B, S) True for real instances -> (logits (B, K), attention (B, S))."""
        h = self.drop(self.act(self.proj(x)))
        s = self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h)))[..., 0]
        a = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=1)
        return self.head(torch.einsum("bs,bsd->bd", a, h)), a


class _Attention(nn.Module):
    """Multi-head self-attention (fused kernel); also returns the class token's attention row."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"hidden size {dim} is not divisible by {heads} heads", "head transmil")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        cls_row = torch.softmax((q[:, :, :1] @ k.transpose(-2, -1)) / math.sqrt(d // self.heads), dim=-1)
        return self.out(y.transpose(1, 2).reshape(b, n, d)), cls_row[:, :, 0].mean(1)


class _TransLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads, dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, a = self.attn(self.norm(x))
        return x + y, a


class _PPEG(nn.Module):
    """Pyramid position encoding: depth-wise 7x7, 5x5 and 3x3 convolutions over the tokens laid out square."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(dim, dim, k, 1, k // 2, groups=dim) for k in (7, 5, 3)])

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        b, _, d = x.shape
        cls_tok, feat = x[:, :1], x[:, 1:]
        g = feat.transpose(1, 2).reshape(b, d, side, side)
        g = g + sum(c(g) for c in self.convs)
        return torch.cat([cls_tok, g.flatten(2).transpose(1, 2)], dim=1)


class TransMIL(nn.Module):
    """TransMIL for one bag at a time: (1, S, C) -> (logits (1, K), class-token attention (1, S))."""

    def __init__(self, dim: int, hidden: int, n_out: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
        self.layer1 = _TransLayer(hidden, heads, dropout)
        self.ppeg = _PPEG(hidden)
        self.layer2 = _TransLayer(hidden, heads, dropout)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.proj(x)
        n = h.shape[1]
        side = math.ceil(math.sqrt(n))
        pad = side * side - n
        if pad:  # fill the square by repeating the first tokens (as the authors do)
            h = torch.cat([h, h[:, :pad]], dim=1)
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
        h, _ = self.layer1(h)
        h = self.ppeg(h, side)
        h, a = self.layer2(h)
        z = self.norm(h)[:, 0]
        att = a[:, 1:n + 1]
        return self.head(z), att / att.sum(1, keepdim=True).clamp_min(1e-12)


class _TorchBagHead(Head):
    """Shared training of torch MIL heads: standardised instances, seeded bag order, Adam(W), bag-level CE
    (BCE for multi-label), optional best-epoch selection on validation bags."""

    input_kind = "bag"
    tasks = ("binary", "multiclass", "multilabel", "ordinal")
    batched = True  # bags padded + masked in one forward; False: one bag per forward, gradients accumulated

    def _init_common(self, lr: float, weight_decay: float, epochs: int, batch_size: int, max_tiles: int | None,
                     standardize: bool, select: str) -> None:
        if select not in ("last", "val"):
            raise ConfigError(f"select must be 'last' or 'val', got {select!r}", self._where())
        if int(epochs) < 1 or int(batch_size) < 1:
            raise ConfigError("epochs and batch_size must be >= 1", self._where())
        if max_tiles is not None and int(max_tiles) < 1:
            raise ConfigError("max_tiles must be >= 1 or null", self._where())
        self.lr, self.weight_decay, self.epochs, self.batch_size = lr, weight_decay, epochs, batch_size
        self.max_tiles, self.standardize, self.select = max_tiles, standardize, select

    def _module(self, dim: int, k: int) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def _prep(self, bags: list[np.ndarray]) -> list[torch.Tensor]:
        return [(torch.from_numpy(np.array(b, dtype=np.float32)) - self.mean_) / self.std_ for b in bags]

    @staticmethod
    def _pad(bags: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        s = max(len(b) for b in bags)
        x = torch.zeros(len(bags), s, bags[0].shape[1])
        mask = torch.zeros(len(bags), s, dtype=torch.bool)
        for i, b in enumerate(bags):
            x[i, : len(b)] = b
            mask[i, : len(b)] = True
        return x, mask

    def _logits(self, bags: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.batched:
            x, mask = self._pad(bags)
            z, a = self.model_(x, mask)
            return z, [a[i, : len(b)] for i, b in enumerate(bags)]
        outs = [self.model_(b[None]) for b in bags]
        return torch.cat([o[0] for o in outs]), [o[1][0] for o in outs]

    def _loss(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(z, y)
        return F.cross_entropy(z, y)

    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> _TorchBagHead:
        bags = check_bags(X, self._where())
        y, k = self._check_y(y, len(bags))
        allx = torch.as_tensor(np.concatenate([np.asarray(b, dtype=np.float32) for b in bags]))
        dim = allx.shape[1]
        if self.standardize:
            self.mean_, self.std_ = allx.mean(0), allx.std(0).clamp_min(1e-6)
        else:
            self.mean_, self.std_ = torch.zeros(dim), torch.ones(dim)
        del allx
        self.n_features_in_, self.k_ = dim, k
        tb = self._prep(bags)
        val = None
        if self.select == "val" and X_val is not None and y_val is not None:
            vb = check_bags(X_val, self._where(), dim, "validation bags")
            yv, _ = self._check_y(y_val, len(vb), "y_val", n_classes=k)
            val = (self._prep(vb), yv)
        ydt = torch.float32 if self.task == "multilabel" else torch.int64
        yt = torch.as_tensor(y, dtype=ydt)
        with torch_seeded(int(self.seed)):
            self.model_ = self._module(dim, k)
            g = torch.Generator().manual_seed(int(self.seed))
            opt = torch.optim.AdamW(self.model_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            best: tuple[float, int, dict[str, torch.Tensor]] | None = None
            self.val_scores_: list[float] = []
            for epoch in range(int(self.epochs)):
                self.model_.train()
                perm = torch.randperm(len(tb), generator=g).tolist()
                for a in range(0, len(tb), int(self.batch_size)):
                    idx = perm[a:a + int(self.batch_size)]
                    chosen = [self._subsample(tb[i], g) for i in idx]
                    z, _ = self._logits(chosen)
                    loss = self._loss(z, yt[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                if val is not None:
                    p = self._proba_of(val[0])
                    s = score(self.task, val[1], p, default_metric(self.task))
                    self.val_scores_.append(s)
                    if best is None or s > best[0]:
                        best = (s, epoch, {n: t.detach().clone() for n, t in self.model_.state_dict().items()})
        if best is not None:
            self.model_.load_state_dict(best[2])
            self.best_epoch_ = best[1] + 1
        self.model_.eval()
        return self

    def _subsample(self, b: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.max_tiles is None or len(b) <= int(self.max_tiles):
            return b
        return b[torch.randperm(len(b), generator=g)[: int(self.max_tiles)].sort().values]

    def _forward(self, bags: list[torch.Tensor]) -> tuple[torch.Tensor, list[np.ndarray]]:
        zs, atts = [], []
        was = self.model_.training
        self.model_.eval()
        with torch.no_grad():
            for a in range(0, len(bags), 32):
                z, att = self._logits(bags[a:a + 32])
                zs.append(z)
                atts += [t.numpy().astype(np.float64) for t in att]
        self.model_.train(was)
        return torch.cat(zs), atts

    def _proba_of(self, bags: list[torch.Tensor]) -> np.ndarray:
        z, _ = self._forward(bags)
        return (torch.sigmoid(z) if self.task == "multilabel" else torch.softmax(z, 1)).numpy()

    def predict_proba(self, X: Any) -> np.ndarray:
        self._check_fitted("model_")
        return self._proba_of(self._prep(check_bags(X, self._where(), self.n_features_in_)))

    def attention(self, X: Any) -> list[np.ndarray]:
        """Per bag, one score per instance (non-negative, summing to 1): which tiles drove the prediction."""
        self._check_fitted("model_")
        return self._forward(self._prep(check_bags(X, self._where(), self.n_features_in_)))[1]

    def selected_params(self) -> dict[str, Any]:
        if getattr(self, "best_epoch_", None) is None:
            return {}
        return {"epoch": self.best_epoch_, "val_score": float(max(self.val_scores_)),
                "metric": default_metric(self.task)}


@register_head("abmil")
class ABMILHead(_TorchBagHead):
    """Gated-attention MIL (the study's slide head); ``hidden`` = D, ``attn_dim`` = H."""

    def __init__(self, task: str = "multiclass", n_classes: int | None = None, seed: int = 0,
                 hidden: int = 128, attn_dim: int = 128, projection: str = "linear", dropout: float = 0.0,
                 lr: float = 1e-3, weight_decay: float = 1e-4, epochs: int = 30, batch_size: int = 8,
                 max_tiles: int | None = None, standardize: bool = True, select: str = "last") -> None:
        super().__init__(task=task, n_classes=n_classes, seed=seed)
        if projection not in PROJECTIONS:
            raise ConfigError(f"projection must be one of {', '.join(PROJECTIONS)}, got {projection!r}",
                              "head abmil")
        self.hidden, self.attn_dim, self.projection, self.dropout = hidden, attn_dim, projection, dropout
        self._init_common(lr, weight_decay, epochs, batch_size, max_tiles, standardize, select)

    def _module(self, dim: int, k: int) -> nn.Module:
        return GatedAttentionMIL(dim, int(self.hidden), int(self.attn_dim), k, float(self.dropout), self.projection)


@register_head("transmil")
class TransMILHead(_TorchBagHead):
    """TransMIL (one bag per forward; ``batch_size`` bags per optimiser step)."""

    batched = False

    def __init__(self, task: str = "multiclass", n_classes: int | None = None, seed: int = 0,
                 hidden: int = 512, heads: int = 8, dropout: float = 0.1, lr: float = 2e-4,
                 weight_decay: float = 1e-5, epochs: int = 30, batch_size: int = 1, max_tiles: int | None = None,
                 standardize: bool = True, select: str = "last") -> None:
        super().__init__(task=task, n_classes=n_classes, seed=seed)
        self.hidden, self.heads, self.dropout = hidden, heads, dropout
        self._init_common(lr, weight_decay, epochs, batch_size, max_tiles, standardize, select)

    def _module(self, dim: int, k: int) -> nn.Module:
        return TransMIL(dim, int(self.hidden), k, int(self.heads), float(self.dropout))


@register_head("meanpool")
class MeanPoolLogRegHead(Head):
    """Mean-pooled bag vectors -> the ``logreg`` head (C chosen on validation, or a 10 % hold-out)."""

    input_kind = "bag"
    tasks = ("binary", "multiclass", "multilabel", "ordinal")
    precision = "fp64 (fp32 Hessian steps)"

    def __init__(self, task: str = "multiclass", n_classes: int | None = None, seed: int = 0,
                 pooling: str = "mean", Cs: list[float] | None = None, selection_metric: str | None = None,
                 refit_on: str = "train+val", val_fraction: float = 0.1, max_iter: int = 200) -> None:
        super().__init__(task=task, n_classes=n_classes, seed=seed)
        if pooling not in ("mean", "max"):
            raise ConfigError(f"pooling must be 'mean' or 'max', got {pooling!r}", "head meanpool")
        self.pooling, self.Cs, self.selection_metric = pooling, Cs, selection_metric
        self.refit_on, self.val_fraction, self.max_iter = refit_on, val_fraction, max_iter

    def _pool(self, X: Any, dim: int | None = None) -> np.ndarray:
        bags = check_bags(X, self._where(), dim)
        f = np.mean if self.pooling == "mean" else np.max
        return np.stack([f(np.asarray(b, dtype=np.float64), axis=0) for b in bags]).astype(np.float32)

    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> MeanPoolLogRegHead:
        P = self._pool(X)
        self.n_features_in_ = P.shape[1]
        self.logreg_ = LogRegHead(task=self.task, n_classes=self.n_classes, seed=self.seed, Cs=self.Cs,
                                  selection_metric=self.selection_metric, refit_on=self.refit_on,
                                  val_fraction=self.val_fraction, max_iter=self.max_iter)
        Pv = self._pool(X_val, P.shape[1]) if X_val is not None and y_val is not None else None
        self.logreg_.fit(P, y, Pv, y_val if Pv is not None else None)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        self._check_fitted("logreg_")
        return self.logreg_.predict_proba(self._pool(X, self.n_features_in_))

    def attention(self, X: Any) -> list[np.ndarray]:
        """Uniform weights: mean pooling gives every tile the same say."""
        return [np.full(len(b), 1.0 / len(b)) for b in check_bags(X, self._where())]

    def selected_params(self) -> dict[str, Any]:
        return self.logreg_.selected_params() if hasattr(self, "logreg_") else {}


__all__ = ["ABMILHead", "GatedAttentionMIL", "MeanPoolLogRegHead", "TransMIL", "TransMILHead", "check_bags"]
