"""Multinomial L2 logistic regression along a C path: truncated Newton with a Kronecker preconditioner.

The objective per C is scikit-learn's ``LogisticRegression`` (lbfgs, multinomial) up to its ``1/n`` scale:
``C * sum_i [logsumexp(z_i) - z_{i, y_i}] + 0.5 * ||W||^2`` with ``z_i = W^T x_i + b``, intercept not
penalised, float64. The solver works on an exact reparametrisation of it:

* **contrast basis**: the optimum has ``W 1 = 0`` (adding one vector to every class column leaves the loss
  unchanged and only grows the penalty), so ``W = Theta V^T`` with ``V`` (K x K-1) an orthonormal basis of
  the sum-zero vectors; ``||W|| = ||Theta||`` and the loss Hessian is non-singular in ``Theta``. The
  intercept is kept sum-zero too (softmax ignores a common shift).
* **centred features**: ``z = (X - mu) W + b'`` with ``b' = b + mu W`` (the intercept is free, so this is a
  change of variables) -- it decouples the intercept from the weights in the curvature.

Each C (ascending, warm-started, the start linearly extrapolated in ``log C`` from the previous two
solutions when that lowers the objective) runs Newton steps until the largest gradient entry of the mean
loss is below ``tol`` (``max|g| / (C n) < tol``, the binary path's test). A step solves
``H s = -g`` by preconditioned conjugate gradients on exact Hessian-vector products (two passes over a
float32 copy of the centred features; relative residual ``min(0.5, sqrt(|g| / (C n)))``, so the last
steps converge quadratically), then an Armijo backtracking line search on the float64 objective. Gradient,
objective and stopping test stay float64; the float32 parts only steer the steps.

Preconditioner: the data Hessian ``sum_i W_i (x) x_i x_i^T`` (``W_i`` the K-1 x K-1 softmax curvature
of sample i) lagged at some earlier iterate and replaced by its nearest Kronecker product ``A (x) G``:
``A = mean_i W_i`` and ``G = sum_i alpha_i x_i x_i^T`` with ``alpha_i = <W_i, A> / |A|^2`` (how much
curvature sample i still has). With ``G = Q diag(gamma) Q^T`` and ``A = U diag(a) U^T`` the inverse of
``C A (x) G + I`` is ``(Q (x) U) diag(1 / (C gamma a + 1)) (Q (x) U)^T`` for *every* C: one
eigendecomposition (of ``G``, or of the n x n kernel when n < D) serves the whole path until the
preconditioner is refreshed -- when the line search has to shorten a step, or when the CG count has grown
well past its count right after the last refresh and enough CG work has been spent since to pay for one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# CG iterations one refresh (a weighted Gram matrix + an eigendecomposition) is worth: a refresh is only
# bought once this much CG work was done since the last one (and the CG count per step has grown)
REFRESH_COST_CG = 40
MAX_CG = 250
_F32 = torch.float32


def contrast_basis(k: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(k, k-1)`` orthonormal basis of the sum-zero vectors (Helmert contrasts)."""
    V = np.zeros((k, k - 1))
    for j in range(1, k):
        V[:j, j - 1] = 1.0
        V[j, j - 1] = -float(j)
        V[:, j - 1] /= np.sqrt(j * (j + 1.0))
    return torch.as_tensor(V, dtype=dtype)


def _centred_f32(X: torch.Tensor, mu: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """``(X - mu)`` as float32, built in row chunks (no full-size float64 temporary)."""
    out = torch.empty(X.shape, dtype=_F32)
    for i in range(0, X.shape[0], chunk):
        out[i:i + chunk] = X[i:i + chunk] - mu
    return out


class _KronPreconditioner:
    """Inverse of ``C (A (x) G) + I`` on the weights and ``C n A`` (exact) on the intercepts (see module docstring).

    ``Q`` (D x r) holds the eigenvectors of ``G`` with non-negligible eigenvalues ``gamma``; on the rest of
    feature space the preconditioner is the identity (the penalty's curvature)."""

    def __init__(self, Xc: torch.Tensor, P: torch.Tensor, V: torch.Tensor) -> None:
        n, d = Xc.shape
        PV = P @ V  # (N, m)
        A = V.T @ (V * P.mean(0)[:, None]) - PV.T @ PV / n  # mean_i V^T (diag p_i - p_i p_i^T) V
        B = V @ A @ V.T  # <W_i, A> = sum_k p_ik B_kk - p_i^T B p_i
        alpha = (P @ B.diagonal() - ((P @ B) * P).sum(1)) / max(float((A * A).sum()), 1e-30)
        alpha = alpha.clamp_min(0)
        a, U = torch.linalg.eigh(A)
        self.a = a.clamp_min(0).to(_F32)
        self.U = U.to(_F32)
        self.n = n
        self.c = float(alpha.sum())
        w = alpha.to(_F32).sqrt()
        M = Xc * w[:, None]
        if n < d:  # eigenvectors of M^T M from the n x n kernel
            lam, E = torch.linalg.eigh((M @ M.T).double())
            keep = lam > 1e-7 * max(float(lam.max()), 1e-30)
            lam, E = lam[keep], E[:, keep]
            Q = (M.T @ E.to(_F32)) / lam.sqrt().to(_F32)
        else:
            lam, Q64 = torch.linalg.eigh((M.T @ M).double())
            keep = lam > 1e-7 * max(float(lam.max()), 1e-30)
            lam, Q = lam[keep], Q64[:, keep].to(_F32)
        self.gamma = lam.to(_F32)
        self.Q = Q.contiguous()
        self.C = -1.0

    def set_C(self, C: float) -> None:
        if C != self.C:
            self.C = C
            self.scale = 1.0 / (C * self.gamma[:, None] * self.a[None, :] + 1.0) - 1.0  # (r, m)
            ca = C * self.n * self.a  # the intercepts' curvature sum_i W_i = n A
            self.inv_b = 1.0 / (ca + 1e-10 * (1.0 + float(ca.max())))

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        """``r``: (D+1, m) float32 residual -> preconditioned direction."""
        d = self.Q.shape[0]
        out = torch.empty_like(r)
        ru = r[:d] @ self.U
        out[:d] = r[:d] + (self.Q @ ((self.Q.T @ ru) * self.scale)) @ self.U.T
        out[d] = ((r[d] @ self.U) * self.inv_b) @ self.U.T
        return out


def multinomial_path(X: torch.Tensor, y: torch.Tensor, k: int, Cs: np.ndarray, tol: float = 1e-7,
                     max_iter: int = 200, start: tuple[torch.Tensor, torch.Tensor] | None = None,
                     stats: dict[str, Any] | None = None
                     ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[int]]:
    """Multinomial L2 logistic regression for each C of ``Cs`` (ascending, warm-started).

    ``X`` (N, D) float64, ``y`` (N,) class indices in ``0..k-1``; ``start``: ``(W (D, K), b (K,))`` to
    start the first C from. Returns ``[(W (D, K), b (K,)) per C]`` (columns of ``W`` and ``b`` sum to
    zero) and the Newton iterations per C; ``stats`` (if given) gets the CG and refresh counts.
    """
    n, d = X.shape
    m = k - 1
    V = contrast_basis(k, X.dtype)
    Vf = V.to(_F32)
    mu = X.mean(0)
    Xc = _centred_f32(X, mu)
    rows = torch.arange(n)
    y = y.to(torch.int64)

    def lin(S: torch.Tensor) -> torch.Tensor:  # [X - mu, 1] S, float64
        return X @ S[:d] + (S[d] - mu @ S[:d])

    def lin_t(R: torch.Tensor) -> torch.Tensor:  # [X - mu, 1]^T R, float64
        s = R.sum(0)
        return torch.cat([(R.T @ X).T - torch.outer(mu, s), s[None]])

    def objective(Z: torch.Tensor, T: torch.Tensor, C: float) -> float:
        return float(C * (torch.logsumexp(Z, 1).sum() - Z[rows, y].sum()) + 0.5 * T[:d].square().sum())

    def gradient(P: torch.Tensor, T: torch.Tensor, C: float) -> torch.Tensor:
        R = P.clone()
        R[rows, y] -= 1.0
        g = C * lin_t(R @ V)
        g[:d] += T[:d]
        return g

    T = torch.zeros(d + 1, m, dtype=X.dtype)
    if start is None:
        prior = torch.bincount(y, minlength=k).to(X.dtype).clamp_min(1e-6).log()
        T[d] = prior @ V
    else:
        W0, b0 = start
        T[:d] = W0 @ V
        T[d] = (b0 + mu @ W0) @ V
    Z = lin(T) @ V.T
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    iters: list[int] = []
    history: list[tuple[float, torch.Tensor]] = []
    pre: _KronPreconditioner | None = None
    cg_total = refreshes = cg_since = 0
    cg_first: int | None = None
    for C in (float(c) for c in Cs):
        f = objective(Z, T, C)
        if len(history) == 2:  # extrapolate the path in log C
            (c1, T1), (c2, T2) = history
            guess = T2 + (np.log(C / c2) / np.log(c2 / c1)) * (T2 - T1)
            Zg = lin(guess) @ V.T
            fg = objective(Zg, guess, C)
            if fg < f:
                T, Z, f = guess, Zg, fg
        P = torch.softmax(Z, 1)
        g = gradient(P, T, C)
        it = 0
        for it in range(1, max_iter + 1):  # noqa: B007
            if float(g.abs().max()) / (C * n) < tol:
                it -= 1
                break
            if pre is None:
                pre = _KronPreconditioner(Xc, P.to(_F32), Vf)
                refreshes += 1
                cg_since, cg_first = 0, None
            pre.set_C(C)
            step, n_cg = _pcg(Xc, None, P.to(_F32), Vf, C, g.to(_F32), pre)
            cg_total += n_cg
            cg_since += n_cg
            if cg_first is None:
                cg_first = n_cg
            step64 = step.to(X.dtype)
            dZ = lin(step64) @ V.T
            slope = float((g * step64).sum())
            t = 1.0
            for _ in range(40):
                T_new, Z_new = T + t * step64, Z + t * dZ
                f_new = objective(Z_new, T_new, C)
                if f_new <= f + 1e-4 * t * slope or abs(f_new - f) <= 1e-14 * abs(f):
                    break
                t *= 0.5
            T, Z, f = T_new, Z_new, f_new
            P = torch.softmax(Z, 1)
            g = gradient(P, T, C)
            if t < 0.5 or (cg_since > REFRESH_COST_CG and (n_cg > max(2 * cg_first, cg_first + 4) or n_cg >= MAX_CG)):
                pre = None
        history = [*history[-1:], (C, T.clone())]
        W = T[:d] @ V.T
        out.append((W, T[d] @ V.T - mu @ W))
        iters.append(it)
    if stats is not None:
        stats.update(newton=int(sum(iters)), cg=cg_total, refreshes=refreshes)
    return out, iters


def _pcg(Xc: torch.Tensor, mu: torch.Tensor | None, P: torch.Tensor, V: torch.Tensor, C: float, g: torch.Tensor,
         pre: _KronPreconditioner) -> tuple[torch.Tensor, int]:
    """Preconditioned CG on ``H s = -g`` (float32, exact Hessian-vector products at probabilities ``P``).

    Stops at relative residual ``min(0.5, sqrt(|g| / (C n)))`` (at most ``MAX_CG`` iterations; any CG
    iterate is a descent direction). Returns (step, iterations)."""
    n, d = Xc.shape

    def hv(S: torch.Tensor) -> torch.Tensor:
        shift = S[d] if mu is None else S[d] - mu @ S[:d]
        dZ = (Xc @ S[:d] + shift) @ V.T
        PdZ = P * dZ
        R = (PdZ - P * PdZ.sum(1, keepdim=True)) @ V
        s = R.sum(0)
        top = (R.T @ Xc).T if mu is None else (R.T @ Xc).T - torch.outer(mu, s)
        h = torch.cat([top, s[None]]) * C
        h[:d] += S[:d]
        return h

    gn = float(g.norm())
    target = min(0.5, float(np.sqrt(gn / (C * n)))) * gn
    x = torch.zeros_like(g)
    r = -g
    z = pre(r.to(_F32)).to(g.dtype)
    p = z.clone()
    rz = float((r * z).sum())
    it = 0
    for it in range(1, MAX_CG + 1):  # noqa: B007
        q = hv(p)
        pq = float((p * q).sum())
        if not pq > 0:  # float32 rounding on a (numerically) flat direction
            if it == 1:
                x = z
            break
        alpha = rz / pq
        x += alpha * p
        r -= alpha * q
        if float(r.norm()) <= target:
            break
        z = pre(r.to(_F32)).to(g.dtype)
        rz_new = float((r * z).sum())
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, it
