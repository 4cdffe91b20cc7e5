"""Warping with a displacement field, fields from normalised grids, and an affine baseline fitted by gradient
descent on feature maps (MIND by default: robust across modalities).

Fields are ``(ndim, *spatial)`` voxel displacements along array axes; ``warped(x) = moving(x + disp(x))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medprobe.errors import DataError

__all__ = ["affine_register", "grid_to_disp", "warp_image"]


def warp_image(image: np.ndarray, disp: np.ndarray, order: int = 1) -> np.ndarray:
    """``image(x + disp(x))`` by spline interpolation of ``order`` (border values extend outwards)."""
    image = np.asarray(image, dtype=np.float32)
    if disp.shape[1:] != image.shape or disp.shape[0] != image.ndim:
        raise DataError(f"displacement {disp.shape} does not fit image {image.shape}")
    coords = np.indices(image.shape, dtype=np.float32) + disp
    return ndimage.map_coordinates(image, coords, order=order, mode="nearest").astype(np.float32)


def grid_to_disp(grid: torch.Tensor) -> np.ndarray:
    """A ``grid_sample`` grid ``(1, *spatial, ndim)`` (normalised, align_corners=False, last axis first) as a
    voxel displacement ``(ndim, *spatial)``."""
    shape = tuple(grid.shape[1:-1])
    ndim = len(shape)
    g = grid[0].detach().flip(-1).numpy().astype(np.float64)  # array-axis order
    out = np.empty((ndim, *shape), dtype=np.float32)
    idx = np.indices(shape, dtype=np.float64)
    for k, n in enumerate(shape):
        out[k] = ((g[..., k] + 1) * n - 1) / 2 - idx[k]
    return out


def affine_register(feat_fixed: torch.Tensor | np.ndarray, feat_moving: torch.Tensor | np.ndarray,
                    iters: int = 100, lr: float = 0.01, levels: int = 2,
                    init_shift: Sequence[float] | None = None) -> np.ndarray:
    """Affine transform (normalised coordinates) minimising the SSD of feature maps ``(C, *spatial)``,
    coarse-to-fine over ``levels`` grids (the finest at half resolution when the image has >= 16 voxels a
    side, each further level halves it again), starting from a translation by ``init_shift`` voxels (array
    axes; e.g. the centre-of-mass offset); returns the voxel displacement."""
    ff = torch.as_tensor(np.asarray(feat_fixed, dtype=np.float32))[None]
    fm = torch.as_tensor(np.asarray(feat_moving, dtype=np.float32))[None]
    if ff.shape != fm.shape:
        raise DataError(f"fixed features {tuple(ff.shape[1:])} and moving features {tuple(fm.shape[1:])} differ")
    ndim = ff.ndim - 2
    pool = F.avg_pool3d if ndim == 3 else F.avg_pool2d
    start = torch.eye(ndim, ndim + 1)[None].clone()
    if init_shift is not None:  # normalised (align_corners=False) units, grid axis order (last array axis first)
        shape = ff.shape[2:]
        start[0, :, ndim] = torch.tensor([2.0 * float(s) / n for s, n in zip(init_shift, shape)][::-1])
    theta = torch.nn.Parameter(start)
    for lev in reversed(range(levels)):
        f, m = ff, fm
        for _ in range(lev + 1):
            if min(f.shape[2:]) >= 16:
                f, m = pool(f, 2), pool(m, 2)
        opt = torch.optim.Adam([theta], lr=lr)
        for _ in range(iters):
            opt.zero_grad()
            grid = F.affine_grid(theta, list(f.shape), align_corners=False)
            loss = ((F.grid_sample(m, grid, align_corners=False) - f) ** 2).mean()
            loss.backward()
            opt.step()
    grid = F.affine_grid(theta.detach(), list(ff.shape), align_corners=False)
    return grid_to_disp(grid)
