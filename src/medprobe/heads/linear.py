"""``linear``: the study's linear probe -- one ``nn.Linear`` trained by AdamW (or SGD-momentum).

Cross-entropy over K logits for binary / multi-class / ordinal (so ``predict_proba`` is (N, K)),
BCE-with-logits per label for multi-label. Features are standardised with the training mean/std
(kept in ``mean_``/``std_``). Shuffling and initialisation use a seeded ``torch.Generator``; with a
validation set the epoch with the best validation score is kept (``select_epoch``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medprobe.errors import ConfigError
from medprobe.heads.base import Head, default_metric, register_head, score


@register_head("linear")
class LinearHead(Head):
    """Linear layer on standardised frozen features (lr 0.005, batch 1024, 50 epochs by default)."""

    def __init__(self, task: str = "multiclass", n_classes: int | None = None, seed: int = 0,
                 optimizer: str = "adamw", lr: float = 0.005, batch_size: int = 1024, epochs: int = 50,
                 weight_decay: float = 0.0, momentum: float = 0.9, select_epoch: bool | None = None,
                 selection_metric: str | None = None) -> None:
        super().__init__(task=task, n_classes=n_classes, seed=seed)
        self.optimizer = optimizer
        self.lr = lr
        self.batch_size = batch_size
        self.epochs = epochs
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.select_epoch = select_epoch
        self.selection_metric = selection_metric

    def _logits(self, X: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ((X - self.mean_) / self.std_) @ W.T + b

    def _to_proba(self, z: torch.Tensor) -> np.ndarray:
        return (torch.sigmoid(z) if self.task == "multilabel" else torch.softmax(z, 1)).numpy()

    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> LinearHead:
        X = self._check_X(X)
        y, k = self._check_y(y, len(X))
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}", self._where())
        Xt = torch.as_tensor(X, dtype=torch.float32)
        self.mean_ = Xt.mean(0)
        self.std_ = Xt.std(0).clamp_min(1e-6)
        Xs = (Xt - self.mean_) / self.std_
        yt = torch.as_tensor(y, dtype=torch.float32 if self.task == "multilabel" else torch.int64)
        use_val = X_val is not None and (self.select_epoch is None or self.select_epoch)
        if use_val:
            Xv = torch.as_tensor(self._check_X(X_val, "X_val", X.shape[1]), dtype=torch.float32)
            yv, _ = self._check_y(y_val, len(Xv), "y_val", k)
        g = torch.Generator().manual_seed(int(self.seed))
        bound = 1.0 / np.sqrt(X.shape[1])
        W = ((torch.rand(k, X.shape[1], generator=g) * 2 - 1) * bound).requires_grad_(True)
        b = torch.zeros(k, requires_grad=True)
        if self.optimizer == "adamw":
            opt: torch.optim.Optimizer = torch.optim.AdamW([W, b], lr=self.lr, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.SGD([W, b], lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        metric = self.selection_metric or default_metric(self.task)
        best = (-np.inf, -1, W.detach().clone(), b.detach().clone())
        self.history_: list[float] = []
        for epoch in range(int(self.epochs)):
            perm = torch.randperm(len(Xs), generator=g)
            for a in range(0, len(Xs), self.batch_size):
                i = perm[a:a + self.batch_size]
                z = Xs[i] @ W.T + b
                loss = (F.binary_cross_entropy_with_logits(z, yt[i]) if self.task == "multilabel"
                        else F.cross_entropy(z, yt[i]))
                opt.zero_grad()
                loss.backward()
                opt.step()
            if use_val:
                with torch.no_grad():
                    s = score(self.task, yv, self._to_proba(self._logits(Xv, W, b)), metric)
                self.history_.append(s)
                if s > best[0]:
                    best = (s, epoch, W.detach().clone(), b.detach().clone())
        if use_val:
            self.best_epoch_, self.coef_, self.intercept_ = best[1], best[2], best[3]
        else:
            self.best_epoch_, self.coef_, self.intercept_ = int(self.epochs) - 1, W.detach(), b.detach()
        self.n_features_in_ = X.shape[1]
        self.k_ = k
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        self._check_fitted("coef_")
        X = torch.as_tensor(self._check_X(X, dim=self.n_features_in_), dtype=torch.float32)
        with torch.no_grad():
            return self._to_proba(self._logits(X, self.coef_, self.intercept_))

    def selected_params(self) -> dict[str, Any]:
        if not hasattr(self, "best_epoch_"):
            return {}
        out: dict[str, Any] = {"epoch": self.best_epoch_ + 1}
        if self.history_:
            out["val_score"] = float(max(self.history_))
        return out
