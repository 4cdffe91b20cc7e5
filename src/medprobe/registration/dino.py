"""DINO-Reg style dense features: a frozen 2D encoder run on every slice (along one or all three axes for a
volume), patch grids upsampled to the image, then one PCA fitted jointly on the fixed and moving features,
keeping ``k`` channels (unit-norm per voxel, scaled to MIND-like magnitudes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["encoder_dense", "joint_pca", "normalise_intensity"]


def normalise_intensity(img: np.ndarray) -> np.ndarray:
    """Clip to the 0.5-99.5 percentiles and scale to [0, 1] (float32)."""
    img = np.asarray(img, dtype=np.float32)
    lo, hi = np.percentile(img, (0.5, 99.5))
    return np.clip((img - lo) / max(float(hi - lo), 1e-6), 0, 1).astype(np.float32)


def _slices_through(encoder: Any, slices: torch.Tensor, layer: int, size: int, batch: int) -> torch.Tensor:
    """``(S, H, W)`` slices in [0, 1] -> ``(S, C, H, W)`` patch features upsampled to the slice size."""
    spec = encoder.spec
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
    h, w = slices.shape[1:]
    out = []
    with torch.no_grad():
        for i in range(0, slices.shape[0], batch):
            x = slices[i:i + batch, None].float()
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
            grid = encoder.forward_features((x - mean) / std, [layer]).patch[layer]
            out.append(F.interpolate(grid.float(), size=(h, w), mode="bilinear", align_corners=False))
    return torch.cat(out, 0)


def encoder_dense(encoder: Any, image: np.ndarray, layer: int = -1, axes: Sequence[int] = (2,), size: int = 224,
                  batch: int = 16) -> torch.Tensor:
    """Dense features ``(C, *spatial)`` of a 2D image or a 3D volume (slices along each of ``axes``, averaged
    over axes), from block ``layer`` of ``encoder`` at a ``size`` x ``size`` input."""
    img = torch.from_numpy(normalise_intensity(image))
    layer = layer if layer >= 0 else max(encoder.spec.depth + layer, 0)  # blockless encoders: 0
    if img.ndim == 2:
        return _slices_through(encoder, img[None], layer, size, batch)[0]
    acc: torch.Tensor | None = None
    for ax in axes:
        moved = img.movedim(ax, 0)  # (S, a, b)
        feats = _slices_through(encoder, moved, layer, size, batch)  # (S, C, a, b)
        feats = feats.movedim(1, 0).movedim(1, ax + 1)  # (C, *spatial)
        acc = feats if acc is None else acc + feats
    assert acc is not None
    return acc / len(axes)


def joint_pca(fixed: torch.Tensor, moving: torch.Tensor, k: int = 12, max_fit: int = 50000,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Project ``(C, *spatial)`` fixed and moving features on the first ``k`` principal axes of both together
    (fitted on at most ``max_fit`` voxels); each voxel's k-vector is unit-normed then scaled by 0.3*sqrt(k)
    so a channel is ~0.3 like MIND. Returns both and ``{"k", "explained"}``."""
    c = fixed.shape[0]
    a, b = fixed.reshape(c, -1).t(), moving.reshape(c, -1).t()
    both = torch.cat([a, b], 0).double()
    g = torch.Generator().manual_seed(seed)
    fit = both[torch.randperm(both.shape[0], generator=g)[:max_fit]] if both.shape[0] > max_fit else both
    mu = fit.mean(0, keepdim=True)
    _, s, v = torch.linalg.svd(fit - mu, full_matrices=False)
    k = min(k, v.shape[0])
    basis = v[:k].t()
    explained = float((s[:k] ** 2).sum() / (s ** 2).sum().clamp(min=1e-12))

    def proj(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        p = (x.double() - mu) @ basis
        p = p / p.norm(dim=1, keepdim=True).clamp(min=1e-8) * (0.3 * k ** 0.5)
        return p.t().reshape(k, *like.shape[1:]).float()

    return proj(a, fixed), proj(b, moving), {"k": k, "explained": round(explained, 4)}
