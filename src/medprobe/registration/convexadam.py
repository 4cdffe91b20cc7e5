"""ConvexAdam (Siebert, Hansen, Heinrich 2021) on any feature channels, 2D or 3D.

Stage 1, coupled convex discrete optimisation: features average-pooled to a coarse grid (``grid_sp``), an SSD
cost volume over every integer displacement within ``disp_hw`` coarse voxels (box-filtered twice), then six
rounds that alternate a pointwise argmin of cost + coupling * ||d - smooth(d)||^2 with a 3-box smoothing.
With ``ic`` the same is done moving -> fixed and both fields are made inverse consistent. Stage 2, Adam
instance optimisation on a grid of spacing ``grid_sp_adam``: SSD of warped feature channels plus
``lambda_weight`` x diffusion regulariser, smoothed by three 3-box filters (a B-spline-like kernel).

The arithmetic follows the authors' package (``convexAdam.convex_adam_MIND.convex_adam_pt``, Apache-2.0),
written here for arbitrary channels and for 2D as well; ``tests/test_registration.py`` shows that on the same
3D MIND input (:func:`medprobe.registration.mind_ssc` is bitwise the package's) the displacement equals the
package's to float rounding on any shape, a multiple of the grid spacing or not (a real 34 x 47 x 43
hippocampus pair, non-divisible phantoms). The package has no 2D mode: in 2D the convex stage equals the
package's run on the pair embedded along a third axis, and the Adam stage is the same code as in 3D. Adam at
``lr=1`` makes the field chaotic in float rounding (a 1e-7 change of the features can move it by half a voxel),
so the loss and regulariser are built in the package's operation order. Fields are ``(ndim, *spatial)`` in
voxels along array axes, backward convention: ``warped(x) = moving(x + disp(x))``.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medprobe.errors import DataError

__all__ = ["ConvexAdamConfig", "convex_adam"]

_COUPLING = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass(frozen=True)
class ConvexAdamConfig:
    """The optimiser's settings; defaults are the package's (grid 6, half-width 4, lambda 1.25, 80 Adam steps
    at grid 2, inverse consistency on)."""

    grid_sp: int = 6
    disp_hw: int = 4
    lambda_weight: float = 1.25
    niter: int = 80
    grid_sp_adam: int = 2
    ic: bool = True
    ic_iter: int = 15
    cost_scale: float = 12.0  # the package's weight of the feature SSD in the Adam loss

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pool(ndim: int) -> Any:
    return F.avg_pool3d if ndim == 3 else F.avg_pool2d


def _mode(ndim: int) -> str:
    return "trilinear" if ndim == 3 else "bilinear"


def _box3(x: torch.Tensor, times: int = 1) -> torch.Tensor:
    pool = _pool(x.ndim - 2)
    for _ in range(times):
        x = pool(x, 3, stride=1, padding=1)
    return x


def _offsets(ndim: int, hw: int) -> torch.Tensor:
    """``(ndim, S)`` integer displacements, axis 0 varying fastest (the package's cost-volume order)."""
    r = range(-hw, hw + 1)
    rows = [o[::-1] for o in itertools.product(r, repeat=ndim)]  # last axis slowest
    return torch.tensor(rows, dtype=torch.float32).t().contiguous()


def _cost_volume(ff: torch.Tensor, fm: torch.Tensor, hw: int) -> torch.Tensor:
    """``(S, *coarse)`` box-filtered SSD between fixed features and moving features shifted by each offset
    (zero outside)."""
    ndim = ff.ndim - 2
    shape = ff.shape[2:]
    fm_p = F.pad(fm, [hw] * (2 * ndim))
    offs = _offsets(ndim, hw).long() + hw
    out = []
    for s in range(offs.shape[1]):
        sl: list[Any] = [Ellipsis, *(slice(int(o), int(o) + n) for o, n in zip(offs[:, s], shape))]
        out.append(((ff - fm_p[tuple(sl)]) ** 2).sum(1))
    ssd = torch.cat(out, 0)[:, None]
    return _box3(ssd, 2)[:, 0]


def _coupled_convex(ssd: torch.Tensor, mesh: torch.Tensor) -> torch.Tensor:
    """Six coupling rounds; returns ``(1, ndim, *coarse)`` in coarse voxels."""
    ndim, coarse = mesh.shape[0], ssd.shape[1:]
    flat = ssd.reshape(ssd.shape[0], -1)
    arg = flat.argmin(0)
    soft = _box3(mesh[:, arg].reshape(1, ndim, *coarse))
    for c in _COUPLING:
        d2 = ((mesh[:, :, None] - soft.reshape(ndim, 1, -1)) ** 2).sum(0)
        arg = (flat + c * d2).argmin(0)
        soft = _box3(mesh[:, arg].reshape(1, ndim, *coarse))
    return soft


def _identity_grid(shape: tuple[int, ...]) -> torch.Tensor:
    n = len(shape)
    return F.affine_grid(torch.eye(n, n + 1)[None], [1, 1, *shape], align_corners=False)


def _inverse_consistent(f1: torch.Tensor, f2: torch.Tensor, iters: int) -> torch.Tensor:
    """Symmetrised pair of fields (normalised coordinates, channels in grid order); returns the first."""
    ndim = f1.ndim - 2
    ident = _identity_grid(tuple(f1.shape[2:])).permute(0, ndim + 1, *range(1, ndim + 1))
    perm = (0, *range(2, ndim + 2), 1)
    a, b = f1.clone(), f2.clone()
    for _ in range(iters):
        a0, b0 = a.clone(), b.clone()
        a = 0.5 * (a0 - F.grid_sample(b0, (ident + a0).permute(*perm), align_corners=False))
        b = 0.5 * (b0 - F.grid_sample(a0, (ident + b0).permute(*perm), align_corners=False))
    return a


def _as_batch(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x.float()
    return t[None]


def convex_adam(feat_fixed: torch.Tensor | np.ndarray, feat_moving: torch.Tensor | np.ndarray,
                cfg: ConvexAdamConfig | None = None) -> np.ndarray:
    """Register moving to fixed from feature maps ``(C, *spatial)`` on one grid (2D or 3D);
    returns the displacement ``(ndim, *spatial)`` in voxels (float32)."""
    cfg = cfg or ConvexAdamConfig()
    ff, fm = _as_batch(feat_fixed), _as_batch(feat_moving)
    if ff.shape != fm.shape or ff.ndim not in (4, 5):
        raise DataError(f"fixed features {tuple(ff.shape)} and moving features {tuple(fm.shape)} must be one "
                        "(C, *spatial) shape, 2D or 3D")
    ndim = ff.ndim - 2
    shape = tuple(int(s) for s in ff.shape[2:])
    g, hw, ga = cfg.grid_sp, cfg.disp_hw, cfg.grid_sp_adam
    if min(shape) < 3 * g or min(shape) < 3 * ga:
        raise DataError(f"image shape {shape} needs at least 3 grid cells per axis (grid spacing {g}, Adam grid "
                        f"{ga}): lower grid_sp or resample the pair larger")
    pool = _pool(ndim)
    with torch.no_grad():
        cf, cm = pool(ff, g, stride=g), pool(fm, g, stride=g)
        coarse = tuple(int(s) for s in cf.shape[2:])
        mesh = _offsets(ndim, hw)
        soft = _coupled_convex(_cost_volume(cf, cm, hw), mesh)
        if cfg.ic:
            scale = (torch.tensor(coarse, dtype=torch.float32) - 1).view(1, ndim, *[1] * ndim) / 2
            scale = scale.clamp(min=0.5)
            soft_b = _coupled_convex(_cost_volume(cm, cf, hw), mesh)
            ice = _inverse_consistent((soft / scale).flip(1), (soft_b / scale).flip(1), cfg.ic_iter)
            disp = F.interpolate(ice.flip(1) * scale * g, size=shape, mode=_mode(ndim), align_corners=False)
        else:
            disp = F.interpolate(soft * g, size=shape, mode=_mode(ndim), align_corners=False)
    if cfg.lambda_weight > 0 and cfg.niter > 0:
        disp = _adam(ff, fm, disp, cfg)
    return disp[0].detach().numpy().astype(np.float32)


def _diffusion(sample: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam`` x mean squared forward difference of a ``(1, *small, ndim)`` field along each spatial axis.

    Written op for op as the package writes it (each difference indexes the batched field; axis 1, then 0,
    then 2): Adam at ``lr=1`` turns float rounding in near-zero gradients into whole steps, so the order in which
    autograd accumulates these terms decides whether the fields agree to 1e-5 voxel or drift apart by tenths."""
    nd = sample.ndim - 2
    reg: torch.Tensor | None = None
    for ax in (1, 0, 2) if nd == 3 else (1, 0):
        hi: list[Any] = [0, *[slice(None)] * nd]
        lo: list[Any] = list(hi)
        hi[1 + ax], lo[1 + ax] = slice(1, None), slice(None, -1)
        term = lam * ((sample[tuple(hi)] - sample[tuple(lo)]) ** 2).mean()
        reg = term if reg is None else reg + term
    assert reg is not None
    return reg


def _adam(ff: torch.Tensor, fm: torch.Tensor, disp: torch.Tensor, cfg: ConvexAdamConfig) -> torch.Tensor:
    ndim = ff.ndim - 2
    shape = tuple(ff.shape[2:])
    ga, lam = cfg.grid_sp_adam, cfg.lambda_weight
    pool = _pool(ndim)
    with torch.no_grad():
        pf, pm = pool(ff, ga, stride=ga), pool(fm, ga, stride=ga)
    small = tuple(int(s) for s in pf.shape[2:])
    lr = F.interpolate(disp, size=small, mode=_mode(ndim), align_corners=False)
    w = torch.nn.Parameter(lr / ga)
    opt = torch.optim.Adam([w], lr=1)
    grid0 = _identity_grid(small).reshape(-1, ndim)
    scale = ((torch.tensor(small, dtype=torch.float32) - 1) / 2).clamp(min=0.5)[None]
    perm = (0, *range(2, ndim + 2), 1)
    sample: torch.Tensor = w
    for _ in range(cfg.niter):
        opt.zero_grad()
        sample = _box3(w, 3).permute(*perm)  # (1, *small, ndim)
        reg = _diffusion(sample, lam)
        grid = grid0 + (sample.reshape(-1, ndim) / scale).flip(1)
        warped = F.grid_sample(pm, grid.view(1, *small, ndim), align_corners=False, mode="bilinear")
        loss = ((warped - pf) ** 2).mean(1).mul(cfg.cost_scale).mean()
        (loss + reg).backward()
        opt.step()
    fitted = sample.detach().permute(0, ndim + 1, *range(1, ndim + 1))
    return F.interpolate(fitted * ga, size=shape, mode=_mode(ndim), align_corners=False)
