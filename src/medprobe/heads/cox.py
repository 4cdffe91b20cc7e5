"""``cox``: ridge-penalised Cox proportional-hazards regression on frozen feature vectors (pooled slices /
tiles), scikit-learn style.

Features are standardised with the training mean and standard deviation (ddof 1; a constant feature gets sd 1),
as lifelines' ``CoxPHFitter`` does internally. The coefficients ``b`` (standardised scale) maximise

    ``loglik(b) - n * penalizer / 2 * ||b||^2``

with ``loglik`` the Cox partial log-likelihood (``ties: efron``, lifelines' and R's default, or ``breslow``), by
Newton-Raphson with step halving from ``b = 0`` until the step is below ``tol`` -- lifelines' objective with
``penalizer`` and ``l1_ratio = 0``, and scikit-survival's ``CoxPHSurvivalAnalysis(alpha = n * penalizer)`` on the
standardised features. ``coef_`` is on the original feature scale (``b / sd``, lifelines' ``params_``); the
risk score is the linear predictor ``(X - mean) @ coef_`` (higher = earlier event).

``penalizers`` (a list) picks the penalty on validation by Harrell's c-index (ties: the larger penalty); without a
validation set, on a seeded 20% hold-out of the training cases.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medprobe.errors import ConfigError
from medprobe.heads.base import Head, register_head
from medprobe.heads.mil import GatedAttentionMIL, _TorchBagHead, check_bags


def partial_likelihood(X: np.ndarray, time: np.ndarray, event: np.ndarray, beta: np.ndarray, ties: str = "efron"
                       ) -> tuple[float, np.ndarray, np.ndarray]:
    """Cox partial log-likelihood, its gradient and Hessian at ``beta`` (``X`` already standardised).

    Per distinct event time ``t`` (``D``: its events, ``R``: cases with time >= t), term ``l = 0..d-1`` has the
    denominator ``phi = S0(R) - c S0(D)`` with ``c = l / d`` (Efron) or 0 (Breslow), ``S0`` the summed
    ``exp(eta)``; the Hessian's second-moment part is ``X^T diag(exp(eta) (A - B)) X`` with ``A_i`` the summed
    ``1/phi`` of the terms whose risk set holds ``i`` and ``B_i`` the summed ``c/phi`` of ``i``'s own tie group.
    """
    n, d = X.shape
    eta = X @ beta
    shift = float(eta.max()) if n else 0.0
    w = np.exp(eta - shift)
    order = np.argsort(time, kind="stable")
    ts, ws, Xs = time[order], w[order], X[order]
    s0_suffix = np.r_[ws[::-1].cumsum()[::-1], 0.0]  # S0 of {k >= idx}
    s1_suffix = np.vstack([(ws[:, None] * Xs)[::-1].cumsum(axis=0)[::-1], np.zeros((1, d))])
    ev = np.flatnonzero(event)
    uniq, grp = np.unique(time[ev], return_inverse=True)
    d_j = np.bincount(grp, minlength=len(uniq)).astype(np.float64)
    s0_d = np.bincount(grp, weights=w[ev], minlength=len(uniq))
    s1_d = np.zeros((len(uniq), d))
    np.add.at(s1_d, grp, w[ev, None] * X[ev])
    first = np.searchsorted(ts, uniq, side="left")
    s0_r, s1_r = s0_suffix[first], s1_suffix[first]
    # one term per event: its tie group j and c = l / d_j
    term_j = np.repeat(np.arange(len(uniq)), d_j.astype(np.int64))
    rank = np.arange(len(term_j)) - np.r_[0, np.cumsum(d_j)[:-1]].astype(np.int64)[term_j]
    c = rank / d_j[term_j] if ties == "efron" else np.zeros(len(term_j))
    phi = s0_r[term_j] - c * s0_d[term_j]
    a = (s1_r[term_j] - c[:, None] * s1_d[term_j]) / phi[:, None]  # (m, d)
    ll = float(eta[ev].sum() - (np.log(phi) + shift).sum())
    grad = X[ev].sum(axis=0) - a.sum(axis=0)
    # A_i: terms whose event time is <= time_i; B_i: c / phi of the terms of i's own tie group (events only)
    inv_phi = 1.0 / phi
    cum_inv = np.r_[0.0, np.bincount(term_j, weights=inv_phi, minlength=len(uniq)).cumsum()]
    A = cum_inv[np.searchsorted(uniq, time, side="right")]
    B = np.zeros(n)
    B[ev] = np.bincount(term_j, weights=c * inv_phi, minlength=len(uniq))[grp]
    hess = -(X.T * (w * (A - B))) @ X + a.T @ a
    return ll, grad, hess


def fit_cox(X: np.ndarray, time: np.ndarray, event: np.ndarray, penalizer: float, ties: str = "efron",
            tol: float = 1e-9, max_iter: int = 100) -> tuple[np.ndarray, int]:
    """Newton-Raphson with step halving on the penalised partial likelihood; returns ``(beta, iterations)``."""
    n, d = X.shape
    lam = n * float(penalizer)
    beta = np.zeros(d)

    def objective(b: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        ll, g, h = partial_likelihood(X, time, event, b, ties)
        return ll - 0.5 * lam * float(b @ b), g - lam * b, h - lam * np.eye(d)

    f, g, h = objective(beta)
    for it in range(1, max_iter + 1):
        try:
            step = np.linalg.solve(-h, g)
        except np.linalg.LinAlgError:
            raise ConfigError("the Cox Hessian is singular (collinear features with no penalty?): set penalizer "
                              "> 0", "head cox") from None
        t = 1.0
        while True:
            cand = beta + t * step
            f_new, g_new, h_new = objective(cand)
            if f_new >= f - 1e-12 or t < 1e-10:
                break
            t *= 0.5
        beta, f, g, h = cand, f_new, g_new, h_new
        if float(np.abs(t * step).max(initial=0.0)) < tol:
            return beta, it
    return beta, max_iter


def survival_targets(y: Any, n: int, where: str, what: str = "y") -> tuple[np.ndarray, np.ndarray]:
    """``(N, 2)`` [time, event] -> (time, event as bool), checked (times >= 0, events 0/1, at least one event)."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2 or y.shape != (n, 2):
        raise ConfigError(f"{what} must be (N, 2) [time, event] for {n} cases, got shape {y.shape}", where)
    t, ev = y[:, 0], y[:, 1]
    if not np.isfinite(y).all() or (t < 0).any() or not np.isin(ev, (0.0, 1.0)).all():
        raise ConfigError(f"{what}: times must be finite and >= 0, events 0 or 1", where)
    e = ev.astype(bool)
    if not e.any():
        raise ConfigError(f"{what}: no event among the cases (all censored): a Cox model cannot be fitted", where)
    return t, e


@register_head("cox")
class CoxPHHead(Head):
    """Ridge-penalised Cox proportional hazards (Efron or Breslow ties) on standardised features."""

    tasks = ("survival",)
    outputs = ("risk",)

    def __init__(self, task: str = "survival", n_classes: int | None = None, seed: int = 0,
                 penalizer: float = 0.1, penalizers: list[float] | None = None, ties: str = "efron",
                 tol: float = 1e-9, max_iter: int = 100, val_fraction: float = 0.2) -> None:
        super().__init__(task=task, n_classes=n_classes, seed=seed)
        self.penalizer = penalizer
        self.penalizers = penalizers
        self.ties = ties
        self.tol = tol
        self.max_iter = max_iter
        self.val_fraction = val_fraction

    def _targets(self, y: Any, n: int, what: str = "y") -> tuple[np.ndarray, np.ndarray]:
        return survival_targets(y, n, self._where(), what)

    def _fit_one(self, Z: np.ndarray, t: np.ndarray, e: np.ndarray, pen: float) -> tuple[np.ndarray, int]:
        return fit_cox(Z, t, e, pen, self.ties, self.tol, self.max_iter)

    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> CoxPHHead:
        if self.task != "survival":
            raise ConfigError(f"task {self.task!r} not supported (the cox head fits survival tasks)", self._where())
        if self.ties not in ("efron", "breslow"):
            raise ConfigError(f"ties must be 'efron' or 'breslow', got {self.ties!r}", self._where())
        pens = [float(p) for p in (self.penalizers if self.penalizers else [self.penalizer])]
        if any(not p >= 0 for p in pens):
            raise ConfigError(f"penalizer(s) must be >= 0, got {pens}", self._where())
        X = self._check_X(X).astype(np.float64)
        t, e = self._targets(y, len(X))
        self.n_features_in_ = X.shape[1]
        self.val_scores_: dict[str, float] = {}
        if len(pens) > 1:
            from medprobe.numerics import harrell_c_index

            if X_val is None:
                rng = np.random.default_rng(self.seed)
                perm = rng.permutation(len(X))
                n_va = max(2, int(round(self.val_fraction * len(X))))
                va, tr = perm[:n_va], perm[n_va:]
                Xtr, ttr, etr, Xva, tva, eva = X[tr], t[tr], e[tr], X[va], t[va], e[va]
            else:
                Xtr, ttr, etr = X, t, e
                Xva = self._check_X(X_val, "X_val", X.shape[1]).astype(np.float64)
                tva, eva = self._targets(y_val, len(Xva), "y_val")
            mean, sd = self._scale(Xtr)
            for p in pens:
                b, _ = self._fit_one((Xtr - mean) / sd, ttr, etr, p)
                self.val_scores_[str(p)] = harrell_c_index(tva, eva, ((Xva - mean) / sd) @ b)
            best = max(pens, key=lambda p: (np.nan_to_num(self.val_scores_[str(p)], nan=-1.0), p))
        else:
            best = pens[0]
        self.penalizer_ = best
        self.mean_, self.scale_ = self._scale(X)
        beta, self.n_iter_ = self._fit_one((X - self.mean_) / self.scale_, t, e, best)
        self.coef_std_ = beta
        self.coef_ = beta / self.scale_
        return self

    @staticmethod
    def _scale(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = X.mean(axis=0)
        sd = X.std(axis=0, ddof=1) if len(X) > 1 else np.ones(X.shape[1])
        return mean, np.where(sd > 0, sd, 1.0)

    def predict_risk(self, X: Any) -> np.ndarray:
        """The linear predictor ``(X - mean) @ coef_`` (higher = higher hazard)."""
        self._check_fitted("coef_")
        X = self._check_X(X, dim=self.n_features_in_).astype(np.float64)
        return np.asarray((X - self.mean_) @ self.coef_)

    def predict(self, X: Any) -> np.ndarray:
        return self.predict_risk(X)

    def selected_params(self) -> dict[str, Any]:
        if not hasattr(self, "coef_"):
            return {}
        out: dict[str, Any] = {"penalizer": self.penalizer_, "iterations": self.n_iter_}
        if self.val_scores_:
            out["val_c_index"] = self.val_scores_
        return out


# ---------------------------------------------------------------------------------- attention MIL + Cox loss
def cox_loss(risk: Any, time: Any, event: Any) -> Any:
    """Negative Cox partial log-likelihood (Breslow ties) of a batch, per event: ``-mean_{i: event}(r_i -
    log sum_{j: t_j >= t_i} exp r_j)`` (torch tensors; a batch without events gives 0)."""
    import torch

    at_risk = time[None, :] >= time[:, None]  # (i, j): j is in i's risk set
    lse = torch.logsumexp(torch.where(at_risk, risk[None, :], torch.full_like(at_risk, -torch.inf, dtype=risk.dtype)),
                          dim=1)
    ev = event > 0
    if not bool(ev.any()):
        return risk.sum() * 0.0
    return -(risk[ev] - lse[ev]).mean()


@register_head("abmil_cox")
class ABMILCoxHead(_TorchBagHead):
    """Gated-attention MIL (the ``abmil`` head's network) with one risk output, trained with the Cox partial
    likelihood (Breslow) over each batch of bags: slide / volume survival from tile or slice bags."""

    tasks = ("survival",)  # type: ignore[assignment]
    outputs = ("risk",)

    def __init__(self, task: str = "survival", n_classes: int | None = None, seed: int = 0, hidden: int = 128,
                 attn_dim: int = 128, projection: str = "linear", dropout: float = 0.0, lr: float = 1e-3,
                 weight_decay: float = 1e-4, epochs: int = 30, batch_size: int = 16, max_tiles: int | None = None,
                 standardize: bool = True) -> None:
        super().__init__(task=task, n_classes=n_classes, seed=seed)
        self.hidden, self.attn_dim, self.projection, self.dropout = hidden, attn_dim, projection, dropout
        self._init_common(lr, weight_decay, epochs, batch_size, max_tiles, standardize, "last")

    def _module(self, dim: int, k: int) -> Any:
        return GatedAttentionMIL(dim, int(self.hidden), int(self.attn_dim), 1, float(self.dropout), self.projection)

    def hyper_params(self) -> dict[str, Any]:
        names = ("seed", "hidden", "attn_dim", "projection", "dropout", "lr", "weight_decay", "epochs", "batch_size",
                 "max_tiles", "standardize")
        return {n: getattr(self, n) for n in names}

    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> ABMILCoxHead:  # type: ignore[override]
        import torch

        from medprobe.utils import torch_seeded

        if self.task != "survival":
            raise ConfigError(f"task {self.task!r} not supported (abmil_cox fits survival tasks)", self._where())
        bags = check_bags(X, self._where())
        t, e = survival_targets(y, len(bags), self._where())
        allx = torch.as_tensor(np.concatenate([np.asarray(b, dtype=np.float32) for b in bags]))
        dim = allx.shape[1]
        if self.standardize:
            self.mean_, self.std_ = allx.mean(0), allx.std(0).clamp_min(1e-6) if len(allx) > 1 else torch.ones(dim)
        else:
            self.mean_, self.std_ = torch.zeros(dim), torch.ones(dim)
        del allx
        self.n_features_in_, self.k_ = dim, 1
        tb = self._prep(bags)
        tt, et = torch.as_tensor(t, dtype=torch.float32), torch.as_tensor(e.astype(np.float32))
        with torch_seeded(int(self.seed)):
            self.model_ = self._module(dim, 1)
            g = torch.Generator().manual_seed(int(self.seed))
            opt = torch.optim.AdamW(self.model_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            self.model_.train()
            for _ in range(int(self.epochs)):
                perm = torch.randperm(len(tb), generator=g).tolist()
                for a in range(0, len(tb), int(self.batch_size)):
                    idx = perm[a:a + int(self.batch_size)]
                    if not bool(et[idx].any()):
                        continue  # no event in this batch: no partial likelihood
                    z, _ = self._logits([self._subsample(tb[i], g) for i in idx])
                    loss = cox_loss(z[:, 0], tt[idx], et[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        self.model_.eval()
        return self

    def predict_risk(self, X: Any) -> np.ndarray:
        """Per bag its risk score (higher = earlier event)."""
        self._check_fitted("model_")
        z, _ = self._forward(self._prep(check_bags(X, self._where(), self.n_features_in_)))
        return z[:, 0].numpy().astype(np.float64)

    def predict(self, X: Any) -> np.ndarray:
        return self.predict_risk(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        raise ConfigError("abmil_cox gives risk scores (predict_risk), not class probabilities", self._where())

    def selected_params(self) -> dict[str, Any]:
        return {}
