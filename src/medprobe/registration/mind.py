"""MIND-SSC (modality independent neighbourhood descriptor, self-similarity context; Heinrich et al. 2013)
for 2D and 3D images, as in the ConvexAdam package: 12 channels in 3D (pairs of the six-neighbourhood at
distance sqrt(2)), 4 in 2D. In 3D the channels are computed, averaged and ordered as the package does, so the
values are bitwise the package's: ConvexAdam's Adam stage (``lr=1``) turns 1e-7 differences in its input into
tenths of a voxel, so "the same MIND input" has to mean the same bits."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["mind_ssc"]


def _pairs(ndim: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Pairs (p, q) of the 2*ndim face neighbours (index coordinates in a 3^ndim kernel, centre 1) whose
    squared distance is 2, listed once each."""
    neigh = []
    for k in range(ndim):
        for s in (0, 2):
            v = [1] * ndim
            v[k] = s
            neigh.append(tuple(v))
    out = []
    for p, q in itertools.combinations(neigh, 2):
        if sum((a - b) ** 2 for a, b in zip(p, q)) == 2:
            out.append((p, q))
    return out


# the package's six-neighbourhood order, its pair listing (row-major over (i, j), i > j) and its output order
_PKG_SIX = ((0, 1, 1), (1, 1, 0), (1, 0, 1), (1, 1, 2), (2, 1, 1), (1, 2, 1))
_PKG_ORDER = (6, 8, 1, 11, 2, 10, 0, 7, 9, 4, 5, 3)


def _pairs_package() -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The 12 pairs of the 3D six-neighbourhood at squared distance 2, in the package's computation order."""
    six = _PKG_SIX
    return [(six[i], six[j]) for i in range(6) for j in range(6)
            if i > j and sum((a - b) ** 2 for a, b in zip(six[i], six[j])) == 2]


def _shift(padded: torch.Tensor, idx: tuple[int, ...], dilation: int, shape: tuple[int, ...]) -> torch.Tensor:
    sl: list[Any] = [Ellipsis, *(slice(i * dilation, i * dilation + n) for i, n in zip(idx, shape))]
    return padded[tuple(sl)]


def mind_ssc(img: torch.Tensor | np.ndarray, radius: int = 1, dilation: int = 2) -> torch.Tensor:
    """MIND-SSC of a 2D ``(H, W)`` or 3D ``(H, W, D)`` image (or ``(1, 1, *spatial)``); returns
    ``(1, n_pairs, *spatial)`` float32. ``radius``: patch half-width of the box filter; ``dilation``: the
    neighbour distance in voxels (package defaults r=1, d=2)."""
    x = torch.as_tensor(np.asarray(img, dtype=np.float32) if isinstance(img, np.ndarray) else img).float()
    if x.ndim in (2, 3):
        x = x[None, None]
    ndim = x.ndim - 2
    shape = tuple(x.shape[2:])
    pool = F.avg_pool3d if ndim == 3 else F.avg_pool2d
    padded = F.pad(x, [dilation] * (2 * ndim), mode="replicate")
    pairs = _pairs_package() if ndim == 3 else _pairs(ndim)
    diffs = [(_shift(padded, p, dilation, shape) - _shift(padded, q, dilation, shape)) ** 2 for p, q in pairs]
    d2 = torch.cat(diffs, dim=1)
    ssd = pool(F.pad(d2, [radius] * (2 * ndim), mode="replicate"), 2 * radius + 1, stride=1)
    mind = ssd - ssd.min(dim=1, keepdim=True)[0]
    var = mind.mean(dim=1, keepdim=True)
    m = var.mean().item() or 1.0  # a constant image: no self-similarity contrast
    var = var.clamp(m * 0.001, m * 1000)
    mind = torch.exp(-(mind / var))
    return mind[:, list(_PKG_ORDER)] if ndim == 3 else mind
