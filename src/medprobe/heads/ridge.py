"""``ridge``: closed-form ridge regression along a whole alpha path, alpha chosen on validation.

Objective per alpha (scikit-learn's ``Ridge(alpha, fit_intercept=True)`` exactly, float64):
``||y - X w - b||^2 + alpha ||w||^2`` with the intercept ``b`` not penalised (features and targets are
centred on the training rows, ``b = ybar - xbar @ w``). Alphas default to :data:`DEFAULT_ALPHAS`
``= 10**linspace(-4, 6, 41)`` (four per decade).

The whole path costs one symmetric eigendecomposition of the centred training data:

* ``n >= d`` (primal): ``Xc^T Xc = V diag(lam) V^T`` (``n d^2 + d^3``), then
  ``w(alpha) = V diag(1 / (lam + alpha)) V^T Xc^T yc``;
* ``n < d`` (dual): ``Xc Xc^T = U diag(lam) U^T`` (``n^2 d + n^3``), then
  ``w(alpha) = Xc^T U diag(1 / (lam + alpha)) U^T yc``.

Validation predictions for every alpha are then a product of small matrices. Selection: the alpha with
the best validation ``selection_metric`` (``r2``: R^2 averaged over targets, as scikit-learn's
``r2_score``; ``mse`` or ``mae``: lowest mean over targets); ties go to the larger alpha (stronger
regularisation). Validation rows are ``X_val``/``y_val`` when given, otherwise a seeded random
``val_fraction`` of the training rows. The final model is fitted on the training rows at the chosen alpha:
with ``X_val`` it is the path's solution on ``X`` itself (``refit_on="train+val"`` refits on ``X`` and
``X_val`` together instead); with the internal holdout it is refitted on all rows of ``X``.

Targets: ``(N,)`` or ``(N, T)`` finite numbers (``n_classes``, when given, is the required ``T``);
``predict`` returns the same layout; one alpha serves all targets (chosen on their mean score).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medprobe.errors import ConfigError
from medprobe.heads.base import Head, register_head

DEFAULT_ALPHAS = 10.0 ** np.linspace(-4, 6, 41)
SELECTION_METRICS = ("r2", "mse", "mae")


def check_regression_targets(head: Head, y: Any, n: int, what: str = "y",
                             n_targets: int | None = None) -> np.ndarray:
    """Validate regression targets for ``head``: finite numbers, ``n`` rows, shape ``(N,)`` or ``(N, T)``.

    Returns them as float64 with their shape kept (``(N,)`` stays 1-D). ``n_targets`` (when given) is the
    required ``T`` (1 for a 1-D target).
    """
    y = np.asarray(y)
    if y.dtype.kind not in "iufb":
        raise ConfigError(f"{what} must hold numeric regression targets, got dtype {y.dtype}", head._where())
    if y.ndim not in (1, 2):
        raise ConfigError(f"{what} must be (N,) or (N, T) regression targets, got shape {y.shape}",
                          head._where())
    if y.shape[0] != n:
        raise ConfigError(f"{what} has {y.shape[0]} rows but the features have {n}", head._where())
    if y.ndim == 2 and y.shape[1] == 0:
        raise ConfigError(f"{what} has no target columns", head._where())
    y = y.astype(np.float64)
    if not np.isfinite(y).all():
        bad = int((~np.isfinite(y)).any(axis=1).sum()) if y.ndim == 2 else int((~np.isfinite(y)).sum())
        raise ConfigError(f"{what} contains NaN or inf regression targets ({bad} row(s))", head._where())
    t = 1 if y.ndim == 1 else y.shape[1]
    if n_targets is not None and t != n_targets:
        raise ConfigError(f"{what} has {t} target(s), expected {n_targets}", head._where())
    return y


def regression_scores(y: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Validation scores of stacked predictions: ``y (N, T)``, ``pred (..., N, T)`` -> arrays of shape (...).

    ``r2`` is the mean over targets of ``1 - SSE / SST``, skipping targets whose validation values are
    constant (when all are, ``-SSE``: the ranking then follows the squared error); ``mse`` / ``mae`` are
    means over rows and targets.
    """
    err = pred - y
    sse = (err * err).sum(-2)
    sst = ((y - y.mean(0)) ** 2).sum(0)
    ok = sst > 0
    r2 = (1.0 - sse[..., ok] / sst[ok]).mean(-1) if ok.any() else -sse.sum(-1)
    n = y.shape[0] * y.shape[1]
    return {"r2": r2, "mse": sse.sum(-1) / n, "mae": np.abs(err).sum((-2, -1)) / n}


def _sym_eig(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lam, Q = np.linalg.eigh(G)
    return np.clip(lam, 0.0, None), Q


@register_head("ridge")
class RidgeHead(Head):
    """Ridge regression with alpha chosen on validation from one eigendecomposition (see module docstring)."""

    precision = "fp64"  # recorded with each result

    tasks = ("regression",)
    input_kind = "vector"

    def __init__(self, task: str = "regression", n_classes: int | None = None, seed: int = 0,
                 alphas: list[float] | None = None, val_fraction: float = 0.1, selection_metric: str = "r2",
                 refit_on: str = "train") -> None:
        super().__init__(task=task, n_classes=n_classes, seed=seed)
        self.alphas = alphas
        self.val_fraction = val_fraction
        self.selection_metric = selection_metric
        self.refit_on = refit_on

    # -- solving ----------------------------------------------------------------------------------------
    @staticmethod
    def _path_factors(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
        """Centre, decompose once; returns ``(mu_x, mu_y, lam, apply)``.

        ``apply(Z, scale)`` maps rows ``Z`` (already centred by ``mu_x``) and per-eigenvalue scale factors
        ``scale (A, r)`` to predictions ``(A, len(Z), T)`` (intercept not added); ``apply(None, scale)``
        returns the coefficients ``(A, d, T)``.
        """
        mu_x, mu_y = X.mean(0), Y.mean(0)
        Xc = X - mu_x
        Yc = Y - mu_y
        n, d = X.shape
        if n >= d:
            lam, V = _sym_eig(Xc.T @ Xc)
            b = V.T @ (Xc.T @ Yc)  # (d, T)

            def apply(Z: np.ndarray | None, scale: np.ndarray) -> np.ndarray:
                coef_rot = scale[:, :, None] * b[None]  # (A, d, T)
                basis = V if Z is None else Z @ V
                return np.einsum("nr,art->ant", basis, coef_rot, optimize=True)
        else:
            lam, U = _sym_eig(Xc @ Xc.T)
            c = U.T @ Yc  # (n, T)
            XtU = Xc.T @ U  # (d, n)

            def apply(Z: np.ndarray | None, scale: np.ndarray) -> np.ndarray:
                coef_rot = scale[:, :, None] * c[None]  # (A, n, T)
                basis = XtU if Z is None else Z @ XtU
                return np.einsum("nr,art->ant", basis, coef_rot, optimize=True)

        return mu_x, mu_y, lam, apply

    @staticmethod
    def _solve(X: np.ndarray, Y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """One alpha: ``(coef (d, T), intercept (T,))`` by a Cholesky solve of the centred normal equations."""
        mu_x, mu_y = X.mean(0), Y.mean(0)
        Xc = X - mu_x
        Yc = Y - mu_y
        n, d = X.shape
        if n >= d:
            G = Xc.T @ Xc
            G[np.diag_indices_from(G)] += alpha
            coef = _spd_solve(G, Xc.T @ Yc)
        else:
            K = Xc @ Xc.T
            K[np.diag_indices_from(K)] += alpha
            coef = Xc.T @ _spd_solve(K, Yc)
        return coef, mu_y - mu_x @ coef

    # -- public API ---------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> RidgeHead:
        self._check_task()
        X = self._check_X(X).astype(np.float64)
        y = check_regression_targets(self, y, len(X), n_targets=self.n_classes)
        if self.selection_metric not in SELECTION_METRICS:
            raise ConfigError(f"selection_metric must be one of {', '.join(SELECTION_METRICS)}, "
                              f"got {self.selection_metric!r}", self._where())
        if self.refit_on not in ("train", "train+val"):
            raise ConfigError(f"refit_on must be 'train' or 'train+val', got {self.refit_on!r}", self._where())
        alphas = np.sort(np.asarray(DEFAULT_ALPHAS if self.alphas is None else self.alphas, dtype=np.float64))
        if alphas.ndim != 1 or alphas.size == 0 or not np.isfinite(alphas).all() or (alphas <= 0).any():
            raise ConfigError("alphas must be a non-empty list of positive numbers", self._where())
        Y = y.reshape(len(y), -1)
        if X_val is None:
            if not 0.0 < self.val_fraction < 1.0:
                raise ConfigError(f"val_fraction must lie strictly between 0 and 1, got {self.val_fraction}",
                                  self._where())
            if len(X) < 3:
                raise ConfigError(f"need at least 3 training rows for an internal holdout, got {len(X)}",
                                  self._where())
            rng = np.random.default_rng(self.seed)
            n_val = min(len(X) - 2, max(1, int(round(self.val_fraction * len(X)))))
            mask = np.zeros(len(X), bool)
            mask[rng.choice(len(X), n_val, replace=False)] = True
            Xtr, Ytr, Xva, Yva = X[~mask], Y[~mask], X[mask], Y[mask]
        else:
            Xva = self._check_X(X_val, "X_val", X.shape[1]).astype(np.float64)
            Yva = check_regression_targets(self, y_val, len(Xva), "y_val", Y.shape[1]).reshape(len(Xva), -1)
            Xtr, Ytr = X, Y
        if len(Xtr) < 2:
            raise ConfigError("ridge needs at least 2 training rows", self._where())
        mu_x, mu_y, lam, apply = self._path_factors(Xtr, Ytr)
        scale = 1.0 / (lam[None, :] + alphas[:, None])  # (A, r)
        preds = apply(Xva - mu_x, scale) + mu_y  # (A, n_val, T)
        scores = regression_scores(Yva, preds)
        key = self.selection_metric
        sel = scores[key] if key == "r2" else -scores[key]
        best = int(np.flatnonzero(sel == sel.max())[-1])  # ties -> the larger alpha
        self.alpha_ = float(alphas[best])
        self.alphas_ = alphas
        self.val_scores_ = scores[key]
        self.val_r2_ = scores["r2"]
        if X_val is None or self.refit_on == "train+val":
            X_all = X if X_val is None else np.concatenate([X, Xva])
            Y_all = Y if X_val is None else np.concatenate([Y, Yva])
            coef, intercept = self._solve(X_all, Y_all, self.alpha_)
        else:
            coef = apply(None, scale[best:best + 1])[0]
            intercept = mu_y - mu_x @ coef
        self._one_d = y.ndim == 1
        self.coef_ = coef.T.copy()  # (T, d), as scikit-learn's multi-target coef_
        self.intercept_ = intercept
        self.n_features_in_ = X.shape[1]
        self.n_targets_ = Y.shape[1]
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predicted values: ``(N,)`` when fitted on a 1-D target, else ``(N, T)``."""
        self._check_fitted("coef_")
        X = self._check_X(X, dim=self.n_features_in_).astype(np.float64)
        out = X @ self.coef_.T + self.intercept_
        return out[:, 0] if self._one_d else out

    def predict_proba(self, X: Any) -> np.ndarray:
        raise ConfigError("a regression head has no class probabilities; use predict()", self._where())

    def selected_params(self) -> dict[str, Any]:
        if not hasattr(self, "alpha_"):
            return {}
        best = int(np.flatnonzero(self.alphas_ == self.alpha_)[-1])
        out: dict[str, Any] = {"alpha": self.alpha_, "val_r2": float(self.val_r2_[best])}
        if self.selection_metric != "r2":
            out[f"val_{self.selection_metric}"] = float(self.val_scores_[best])
        return out


def _spd_solve(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Solve ``A x = B`` for the (positive definite) ridge system ``A``; least squares if it is singular."""
    try:
        return np.linalg.solve(A, B)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(A, B, rcond=None)[0]
