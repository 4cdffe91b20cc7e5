"""Bags of instance features: fixed pooling of slice features.

``pool_slices`` turns a volume's (S, C) slice features into one (C,) vector (mean / max). The gated-attention
MIL head (``abmil``, for 3D slice bags and slide tiles) lives in :mod:`medprobe.heads.mil` with the other bag
heads; it is re-exported here.
"""

from __future__ import annotations

import numpy as np

from medprobe.errors import ConfigError
from medprobe.heads.mil import ABMILHead


def pool_slices(feats: np.ndarray, method: str = "mean") -> np.ndarray:
    """Pool (S, C) per-slice features of one volume into a (C,) vector."""
    feats = np.asarray(feats)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ConfigError(f"slice features must be a non-empty (S, C) array, got shape {feats.shape}",
                          "pool_slices")
    if method == "mean":
        return feats.mean(0)
    if method == "max":
        return feats.max(0)
    raise ConfigError(f"unknown pooling {method!r} (use 'mean' or 'max')", "pool_slices")


__all__ = ["ABMILHead", "pool_slices"]
