"""``logreg``: DINOv3's logistic-regression protocol, solved fast along the whole C path.

Objective per C (scikit-learn's exactly): ``C * sum_i loss_i + 0.5 * ||W||^2``, intercept not
penalised, float64. C is swept over ``10**linspace(-6, 5, 45)`` from the strongest regularisation
upwards, each C warm-started from the previous solution:

* binary and one-vs-rest multi-label: Newton's method with a *lagged* data Hessian
  ``G = X^T diag(p(1-p)) X`` (formed in float32: it only steers the steps) -- the system
  ``(C G + I) d = -g`` is re-factorised per C (cheap,
  D^3/3) while ``G`` (N D^2) is only recomputed when convergence slows; Armijo backtracking.
* multi-class / ordinal: multinomial loss (as scikit-learn's lbfgs), truncated Newton (exact
  Hessian-vector products, preconditioned CG in float32, Armijo steps on the float64 objective) in the
  sum-zero contrast basis on centred features, preconditioned by a lagged Kronecker-factored Hessian
  whose one eigendecomposition serves every C until it is refreshed; each C starts from the previous
  solutions extrapolated in ``log C`` (:mod:`medprobe.heads.multinomial`).

Selection: the C with the best validation score (``selection_metric``, default AUC for
binary/multi-label, accuracy for multi-class/ordinal; ties -> the smaller C) on ``X_val``/``y_val``,
or on a seeded stratified 10 % of train when no validation set is given. Refit:
``refit_on="train+val"`` (default, DINOv3's choice) refits at the chosen C on train and validation
rows together; ``"train"`` keeps the model fitted on the rows the C was selected with.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np
import torch
import torch.nn.functional as F

from medprobe.errors import ConfigError
from medprobe.heads.base import Head, default_metric, holdout_split, register_head, score
from medprobe.heads.multinomial import multinomial_path

DEFAULT_CS = 10.0 ** np.linspace(-6, 5, 45)


def _grad(X: torch.Tensor, y: torch.Tensor, z: torch.Tensor, theta: torch.Tensor, C: float) -> torch.Tensor:
    r = torch.sigmoid(z) - y
    d = X.shape[1]
    return torch.cat([C * (X.T @ r) + theta[:d], (C * r.sum())[None]])


def _gram(X: torch.Tensor, Xf: torch.Tensor | None, s: torch.Tensor) -> torch.Tensor:
    """``[X 1]^T diag(s) [X 1]``; the D x D block from ``Xf`` (float32, ~2x faster) when given, else float64."""
    d = X.shape[1]
    G = torch.empty(d + 1, d + 1, dtype=X.dtype)
    if Xf is not None:
        Xs = Xf * s.to(Xf.dtype).sqrt()[:, None]
        G[:d, :d] = (Xs.T @ Xs).to(X.dtype)
    else:
        G[:d, :d] = X.T @ (X * s[:, None])
    G[:d, d] = G[d, :d] = X.T @ s
    G[d, d] = s.sum()
    return G


@overload
def _newton_factor(C: float, G: torch.Tensor, pen: torch.Tensor, jitter: Literal[False] = ...) -> torch.Tensor | None:
    ...


@overload
def _newton_factor(C: float, G: torch.Tensor, pen: torch.Tensor, jitter: Literal[True]) -> torch.Tensor:
    ...


def _newton_factor(C: float, G: torch.Tensor, pen: torch.Tensor, jitter: bool = False) -> torch.Tensor | None:
    """Cholesky factor of ``C G + diag(pen)`` (the intercept gets a 1e-10 ridge); ``None`` if it is not
    numerically positive definite. ``jitter``: add the smallest ridge (1e-12 .. 1e-2 x max diagonal) that
    makes it so -- the factor only steers Newton steps, the line search keeps the objective exact."""
    d = G.shape[0] - 1
    H = C * G + torch.diag(pen)
    H[d, d] += 1e-10 * (1 + H[d, d])
    chol, info = torch.linalg.cholesky_ex(H)
    if not int(info):
        return chol
    if not jitter:
        return None
    eye = torch.eye(d + 1, dtype=G.dtype) * float(H.diag().abs().max())
    for eps in (1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2):
        chol, info = torch.linalg.cholesky_ex(H + eps * eye)
        if not int(info):
            return chol
    raise FloatingPointError("logreg: the Newton system stays indefinite (non-finite features?)")


def _binary_path(X: torch.Tensor, y: torch.Tensor, Cs: np.ndarray, tol: float, max_iter: int,
                 theta0: torch.Tensor | None = None, refresh: float = 0.3) -> tuple[torch.Tensor, list[int]]:
    """Solve L2 binary logistic regression for each C (ascending, warm-started).

    Returns ``(thetas (len(Cs), D+1), iterations per C)``; ``theta = [w, b]``.
    """
    n, d = X.shape
    if theta0 is None:
        ybar = float(y.mean().clamp(1e-6, 1 - 1e-6))
        theta = torch.zeros(d + 1, dtype=X.dtype)
        theta[d] = np.log(ybar / (1 - ybar))
    else:
        theta = theta0.clone()
    pen = torch.ones(d + 1, dtype=X.dtype)
    pen[d] = 0.0
    z = X @ theta[:d] + theta[d]
    Xf: torch.Tensor | None = X.to(torch.float32)
    G: torch.Tensor | None = None
    out, iters = [], []
    n_refresh = 0

    def objective(zz: torch.Tensor, th: torch.Tensor, C: float) -> float:
        return float(C * (F.softplus(zz) - y * zz).sum() + 0.5 * th[:d].dot(th[:d]))

    for C in Cs:
        C = float(C)
        chol = None
        it = 0
        f = objective(z, theta, C)
        g = _grad(X, y, z, theta, C)
        for it in range(1, max_iter + 1):  # noqa: B007
            gmax = float(g.abs().max())
            if gmax / (C * n) < tol:
                it -= 1
                break
            if G is None:
                s = torch.sigmoid(z)
                s = s * (1 - s)
                # the (lagged) Hessian only steers the steps -- gradient, objective and stopping test
                # stay float64 -- so it is formed in float32, at about twice the float64 GEMM speed
                G = _gram(X, Xf, s)
                chol = None
                n_refresh += 1
            if chol is None:
                chol = _newton_factor(C, G, pen)
                if chol is None and Xf is not None:
                    # float32 rounding left C G + I indefinite (low-rank, offset features at large C):
                    # form G in float64 from here on
                    Xf = None
                    G = _gram(X, None, s)  # the same (lagged) weights, exact arithmetic
                    chol = _newton_factor(C, G, pen)
                if chol is None:
                    chol = _newton_factor(C, G, pen, jitter=True)
            step = -torch.cholesky_solve(g[:, None], chol)[:, 0]
            dz = X @ step[:d] + step[d]
            slope = float(g.dot(step))
            t = 1.0
            for _ in range(40):
                th_new = theta + t * step
                z_new = z + t * dz
                f_new = objective(z_new, th_new, C)
                if f_new <= f + 1e-4 * t * slope or abs(f_new - f) <= 1e-14 * abs(f):
                    break
                t *= 0.5
            theta, z, f = th_new, z_new, f_new
            g = _grad(X, y, z, theta, C)
            # the lagged Hessian is refreshed once it no longer gives fast (near-Newton) progress
            if t < 0.5 or float(g.abs().max()) > refresh * gmax:
                G = None
        out.append(theta.clone())
        iters.append(it)
    _binary_path.n_refresh = n_refresh  # type: ignore[attr-defined]
    return torch.stack(out), iters


@register_head("logreg")
class LogRegHead(Head):
    """L2 logistic regression with C chosen on validation (DINOv3 protocol), see module docstring."""

    precision = "fp64 (fp32 Hessian steps)"  # recorded with each result
    probe = "linear"

    tasks = ("binary", "multiclass", "multilabel", "ordinal")

    def __init__(self, task: str = "multiclass", n_classes: int | None = None, seed: int = 0,
                 Cs: list[float] | None = None, selection_metric: str | None = None,
                 refit_on: str = "train+val", val_fraction: float = 0.1, tol: float = 1e-7,
                 max_iter: int = 200) -> None:
        super().__init__(task=task, n_classes=n_classes, seed=seed)
        self.Cs = Cs
        self.selection_metric = selection_metric
        self.refit_on = refit_on
        self.val_fraction = val_fraction
        self.tol = tol
        self.max_iter = max_iter

    # -- solving ------------------------------------------------------------------------------------
    def _solve_path(self, X: torch.Tensor, y: np.ndarray, Cs: np.ndarray, warm: Any = None) -> list[Any]:
        """One model per C: binary -> theta (D+1,), multilabel -> (L, D+1), multinomial -> (W, b)."""
        it = self.max_iter
        if self.task == "binary":
            th, _ = _binary_path(X, torch.as_tensor(y, dtype=X.dtype), Cs, self.tol, it,
                                 None if warm is None else warm)
            return list(th)
        if self.task == "multilabel":
            per = [_binary_path(X, torch.as_tensor(y[:, j], dtype=X.dtype), Cs, self.tol, it,
                                None if warm is None else warm[j])[0] for j in range(y.shape[1])]
            return list(torch.stack(per, 1))
        models, _ = multinomial_path(X, torch.as_tensor(y), self.k_, Cs, self.tol, it, warm)
        return models

    def _proba(self, X: torch.Tensor, model: Any) -> np.ndarray:
        if self.task == "binary":
            p = torch.sigmoid(X @ model[:-1] + model[-1])
            return torch.stack([1 - p, p], 1).numpy()
        if self.task == "multilabel":
            return torch.sigmoid(X @ model[:, :-1].T + model[:, -1]).numpy()
        W, b = model
        return torch.softmax(X @ W + b, 1).numpy()

    # -- public API -----------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> LogRegHead:
        X = self._check_X(X)
        y, self.k_ = self._check_y(y, len(X))
        if self.refit_on not in ("train+val", "train"):
            raise ConfigError(f"refit_on must be 'train+val' or 'train', got {self.refit_on!r}", self._where())
        metric = self.selection_metric or default_metric(self.task)
        Cs = np.sort(np.asarray(DEFAULT_CS if self.Cs is None else self.Cs, dtype=np.float64))
        if Cs.size == 0 or (Cs <= 0).any():
            raise ConfigError("Cs must be a non-empty list of positive numbers", self._where())
        if X_val is None:
            tr, va = holdout_split(y, self.val_fraction, self.seed)
            Xtr, ytr, Xva, yva = X[tr], y[tr], X[va], y[va]
        else:
            Xva = self._check_X(X_val, "X_val", X.shape[1])
            yva, _ = self._check_y(y_val, len(Xva), "y_val", self.k_)
            Xtr, ytr = X, y
        if self.task == "binary" and len(np.unique(ytr)) < 2:
            raise ConfigError("training labels hold a single class", self._where())
        Xtr_t = torch.as_tensor(Xtr, dtype=torch.float64)
        Xva_t = torch.as_tensor(Xva, dtype=torch.float64)
        models = self._solve_path(Xtr_t, ytr, Cs)
        scores = np.array([score(self.task, yva, self._proba(Xva_t, m), metric) for m in models])
        best = int(np.argmax(scores))
        self.C_ = float(Cs[best])
        self.val_scores_ = scores
        self.Cs_ = Cs
        model = models[best]
        if self.refit_on == "train+val":
            Xall = torch.cat([Xtr_t, Xva_t])
            yall = np.concatenate([ytr, yva])
            model = self._solve_path(Xall, yall, Cs[best:best + 1], warm=model)[0]
        if self.task == "binary":
            self.coef_, self.intercept_ = model[None, :-1].numpy(), model[-1:].numpy()
        elif self.task == "multilabel":
            self.coef_, self.intercept_ = model[:, :-1].numpy(), model[:, -1].numpy()
        else:
            self.coef_, self.intercept_ = model[0].T.contiguous().numpy(), model[1].numpy()
        self.n_features_in_ = X.shape[1]
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        self._check_fitted("coef_")
        X = self._check_X(X, dim=self.n_features_in_).astype(np.float64)
        return X @ self.coef_.T + self.intercept_

    def predict_proba(self, X: Any) -> np.ndarray:
        z = torch.as_tensor(self.decision_function(X))
        if self.task == "binary":
            p = torch.sigmoid(z[:, 0])
            return torch.stack([1 - p, p], 1).numpy()
        if self.task == "multilabel":
            return torch.sigmoid(z).numpy()
        return torch.softmax(z, 1).numpy()

    def selected_params(self) -> dict[str, Any]:
        if not hasattr(self, "C_"):
            return {}
        return {"C": self.C_, "val_score": float(self.val_scores_.max()),
                "metric": self.selection_metric or default_metric(self.task)}
