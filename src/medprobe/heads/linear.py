"""``linear``: the study's linear probe -- one ``nn.Linear`` trained by AdamW (or SGD-momentum).

Two named recipes (``preset``), both recorded with the head's parameters (``recipe`` under ``selected``):

* ``improved`` (default): features standardised with the training mean/std (``mean_``/``std_``),
  cross-entropy over K logits for binary / multi-class / ordinal (``predict_proba`` is a softmax), the epoch
  with the best validation score kept when validation cases exist (``select_epoch``).
* ``study``: the study's recipe exactly -- BCE-with-logits (one logit for binary, one-vs-rest over K logits
  for multi-class / ordinal, per label for multi-label; ``predict_proba`` holds the sigmoid scores, which need
  not sum to 1), lr 0.005, batch 1024, 50 epochs, AdamW without weight decay, constant learning rate, raw
  (unstandardised) features, the last epoch.

``loss`` (``ce`` / ``bce``), ``standardize`` and ``select_epoch`` override a preset's choice one by one
(``None``: the preset's). Multi-label always uses BCE. Regression (``task="regression"``, targets ``(N,)`` or
``(N, T)`` floats): one output per target, MSE on targets standardised with the training mean/std
(``y_mean_``/``y_std_``); ``predict`` returns de-standardised values in the targets' layout, there are no
probabilities, and the epoch is selected on validation R^2 (``selection_metric`` ``r2``, ``mse`` or ``mae``;
``history_`` then holds R^2, or minus the MSE / MAE). Shuffling and initialisation use a seeded
``torch.Generator``. After ``fit``: ``recipe_`` (the effective loss, inputs, optimiser and schedule),
``train_loss_`` (mean training loss per epoch), ``final_loss_`` (the full-data training loss of the kept
weights under the recipe's loss) and ``steps_`` (optimiser steps).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medprobe.errors import ConfigError
from medprobe.heads.base import TASKS, Head, default_metric, register_head, score
from medprobe.heads.ridge import SELECTION_METRICS, check_regression_targets, regression_scores

PRESETS = ("improved", "study")
LOSSES = ("ce", "bce")


@register_head("linear")
class LinearHead(Head):
    """Linear layer on frozen features (lr 0.005, batch 1024, 50 epochs; ``preset`` improved or study)."""

    probe = "linear"
    tasks = (*TASKS, "regression")

    def __init__(self, task: str = "multiclass", n_classes: int | None = None, seed: int = 0,
                 optimizer: str = "adamw", lr: float = 0.005, batch_size: int = 1024, epochs: int = 50,
                 weight_decay: float = 0.0, momentum: float = 0.9, select_epoch: bool | None = None,
                 selection_metric: str | None = None, preset: str = "improved", loss: str | None = None,
                 standardize: bool | None = None) -> None:
        super().__init__(task=task, n_classes=n_classes, seed=seed)
        self.preset = preset
        self.loss = loss
        self.standardize = standardize
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
        if self.task == "multilabel" or self.loss_ == "ce":
            return (torch.sigmoid(z) if self.task == "multilabel" else torch.softmax(z, 1)).numpy()
        s = torch.sigmoid(z)  # bce: one logit for binary, one-vs-rest scores otherwise
        return (torch.cat([1 - s, s], 1) if s.shape[1] == 1 else s).numpy()

    def _recipe(self) -> tuple[str, bool, bool | None]:
        """(loss, standardise features, select the epoch on validation) from the preset and overrides."""
        if self.preset not in PRESETS:
            raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}", self._where())
        study = self.preset == "study"
        if self.task == "regression":
            if self.loss not in (None, "mse"):
                raise ConfigError(f"regression uses loss 'mse', got {self.loss!r}", self._where())
            loss = "mse"
        elif self.task == "multilabel":
            if self.loss not in (None, "bce"):
                raise ConfigError(f"multi-label targets need loss 'bce', got {self.loss!r}", self._where())
            loss = "bce"
        else:
            loss = self.loss if self.loss is not None else ("bce" if study else "ce")
            if loss not in LOSSES:
                raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}", self._where())
        std = (not study) if self.standardize is None else bool(self.standardize)
        select = (False if study else None) if self.select_epoch is None else bool(self.select_epoch)
        return loss, std, select

    def _metric(self) -> str:
        if self.task != "regression":
            return self.selection_metric or default_metric(self.task)
        metric = self.selection_metric or "r2"
        if metric not in SELECTION_METRICS:
            raise ConfigError(f"selection_metric for regression must be one of {', '.join(SELECTION_METRICS)}, "
                              f"got {metric!r}", self._where())
        return metric

    def _val_score(self, Xv: torch.Tensor, yv: np.ndarray, W: torch.Tensor, b: torch.Tensor, metric: str) -> float:
        z = self._logits(Xv, W, b)
        if self.task != "regression":
            return score(self.task, yv, self._to_proba(z), metric)
        pred = z.double().numpy() * self.y_std_ + self.y_mean_
        s = float(regression_scores(yv.reshape(len(yv), -1), pred)[metric])
        return s if metric == "r2" else -s

    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> LinearHead:
        X = self._check_X(X)
        regression = self.task == "regression"
        if regression:
            y = check_regression_targets(self, y, len(X), n_targets=self.n_classes)
            k = 1 if y.ndim == 1 else y.shape[1]
            Y = y.reshape(len(y), -1)
            self.y_mean_ = Y.mean(0)
            self.y_std_ = np.where(Y.std(0) > 0, Y.std(0), 1.0)
            self._one_d = y.ndim == 1
        else:
            y, k = self._check_y(y, len(X))
        metric = self._metric()
        loss_name, standardize, select = self._recipe()
        self.loss_ = loss_name
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}", self._where())
        Xt = torch.as_tensor(X, dtype=torch.float32)
        if standardize:
            self.mean_ = Xt.mean(0)
            self.std_ = Xt.std(0).clamp_min(1e-6)
        else:  # raw features (the study's recipe)
            self.mean_ = torch.zeros(X.shape[1])
            self.std_ = torch.ones(X.shape[1])
        Xs = (Xt - self.mean_) / self.std_
        out_k = k
        if regression:
            yt = torch.as_tensor((Y - self.y_mean_) / self.y_std_, dtype=torch.float32)
        elif self.task == "multilabel":
            yt = torch.as_tensor(y, dtype=torch.float32)
        elif loss_name == "bce":  # binary: one logit; multi-class / ordinal: one-vs-rest over one-hot targets
            out_k = 1 if k == 2 else k
            yt = (torch.as_tensor(y, dtype=torch.float32)[:, None] if out_k == 1
                  else F.one_hot(torch.as_tensor(y, dtype=torch.int64), k).float())
        else:
            yt = torch.as_tensor(y, dtype=torch.int64)
        use_val = X_val is not None and (select is None or select)
        if use_val:
            Xv = torch.as_tensor(self._check_X(X_val, "X_val", X.shape[1]), dtype=torch.float32)
            if regression:
                yv = check_regression_targets(self, y_val, len(Xv), "y_val", k)
            else:
                yv, _ = self._check_y(y_val, len(Xv), "y_val", k)
        g = torch.Generator().manual_seed(int(self.seed))
        bound = 1.0 / np.sqrt(X.shape[1])
        W = ((torch.rand(out_k, X.shape[1], generator=g) * 2 - 1) * bound).requires_grad_(True)
        b = torch.zeros(out_k, requires_grad=True)
        if self.optimizer == "adamw":
            opt: torch.optim.Optimizer = torch.optim.AdamW([W, b], lr=self.lr, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.SGD([W, b], lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

        def objective(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if loss_name == "mse":
                return F.mse_loss(z, t)
            if loss_name == "bce":
                return F.binary_cross_entropy_with_logits(z, t)
            return F.cross_entropy(z, t)

        best = (-np.inf, -1, W.detach().clone(), b.detach().clone())
        self.history_: list[float] = []
        self.train_loss_: list[float] = []
        steps = 0
        for epoch in range(int(self.epochs)):
            perm = torch.randperm(len(Xs), generator=g)
            total = 0.0
            for a in range(0, len(Xs), self.batch_size):
                i = perm[a:a + self.batch_size]
                loss = objective(Xs[i] @ W.T + b, yt[i])
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
                total += float(loss.detach()) * len(i)
            self.train_loss_.append(total / len(Xs))
            if use_val:
                with torch.no_grad():
                    s = self._val_score(Xv, yv, W, b, metric)
                self.history_.append(s)
                if s > best[0]:
                    best = (s, epoch, W.detach().clone(), b.detach().clone())
        if use_val:
            self.best_epoch_, self.coef_, self.intercept_ = best[1], best[2], best[3]
        else:
            self.best_epoch_, self.coef_, self.intercept_ = int(self.epochs) - 1, W.detach(), b.detach()
        with torch.no_grad():
            self.final_loss_ = float(objective(Xs @ self.coef_.T + self.intercept_, yt))
        self.n_features_in_ = X.shape[1]
        self.k_ = k
        self.steps_ = steps
        self.recipe_ = {
            "preset": self.preset, "loss": {"ce": "cross-entropy (softmax)", "mse": "MSE (standardised targets)",
                                            "bce": "BCE-with-logits" + ("" if self.task == "multilabel" else
                                                                        " (one logit)" if out_k == 1 else
                                                                        " (one-vs-rest)")}[loss_name],
            "inputs": "standardised (training mean/std)" if standardize else "raw features",
            "optimizer": self.optimizer, "lr": float(self.lr), "lr_schedule": "constant",
            "weight_decay": float(self.weight_decay), "batch_size": int(self.batch_size), "epochs": int(self.epochs),
            "steps": steps, "epoch_selection": "best validation epoch" if use_val else "last epoch"}
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Class index / multi-label 0-1 matrix (as ``Head.predict``); regression: the predicted values,
        ``(N,)`` for a 1-D training target, else ``(N, T)``."""
        if self.task != "regression":
            return super().predict(X)
        self._check_fitted("coef_")
        Xt = torch.as_tensor(self._check_X(X, dim=self.n_features_in_), dtype=torch.float32)
        with torch.no_grad():
            z = self._logits(Xt, self.coef_, self.intercept_).double().numpy()
        out = z * self.y_std_ + self.y_mean_
        return out[:, 0] if self._one_d else out

    def predict_proba(self, X: Any) -> np.ndarray:
        if self.task == "regression":
            raise ConfigError("a regression head has no class probabilities; use predict()", self._where())
        self._check_fitted("coef_")
        X = torch.as_tensor(self._check_X(X, dim=self.n_features_in_), dtype=torch.float32)
        with torch.no_grad():
            return self._to_proba(self._logits(X, self.coef_, self.intercept_))

    def selected_params(self) -> dict[str, Any]:
        if not hasattr(self, "best_epoch_"):
            return {}
        out: dict[str, Any] = {"epoch": self.best_epoch_ + 1, "recipe": dict(self.recipe_)}
        if self.history_:
            out["val_score"] = float(max(self.history_))
        return out
