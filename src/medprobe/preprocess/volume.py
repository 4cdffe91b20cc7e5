"""Whole-volume preprocessing for 3D encoders: one :class:`~medprobe.data.Item` -> ``(V, 1, D, H, W)``.

Order: intensity (:func:`~medprobe.preprocess.intensity.apply_intensity`, over the whole volume) -> the slice
axis first (``D``; ``H``, ``W`` the other two axes in array order) -> channels -> geometry -> ``(x - mean) / std``.

Geometry (``resize`` of :class:`~medprobe.preprocess.PreprocessConfig`, read for volumes as):

* ``stretch`` -- resampled to ``size`` whatever the spacing;
* ``pad`` -- resampled to the encoder's native ``spacing`` (mm), then centre-cropped / zero-padded to ``size``
  (CT-CLIP's published preprocessing; zero = the lowest intensity, e.g. air after a CT window);
* ``aspect_pad`` -- scaled isotropically in millimetres so the whole volume fits ``size``, then zero-padded.

``interpolation``: ``bilinear`` is trilinear in 3D, ``nearest`` and ``area`` as named; ``bicubic`` has no 3D
kernel (refused). Anti-aliasing has no 3D form and does nothing here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medprobe.errors import ConfigError, DataError
from medprobe.preprocess.intensity import apply_intensity

_MODES = {"bilinear": "trilinear", "nearest": "nearest", "area": "area"}


@dataclass(frozen=True)
class VolumeGeometry:
    """The resolved 3D input of a volumetric encoder (recorded with the features)."""

    size: tuple[int, int, int]  # (D, H, W) voxels
    spacing: tuple[float, float, float]  # the encoder's native spacing (D, H, W) in mm, used by pad / aspect_pad
    resize: str
    interpolation: str  # the torch mode used: trilinear | nearest | area

    def to_dict(self) -> dict[str, Any]:
        return {"size": list(self.size), "spacing_mm": list(self.spacing), "resize": self.resize,
                "interpolation": self.interpolation, "axes": "D = slice axis, H/W = the other axes in array order"}


def volume_geometry(size: Sequence[int], spacing: Sequence[float], resize: str, interpolation: str) -> VolumeGeometry:
    if interpolation not in _MODES:
        raise ConfigError(f"interpolation {interpolation!r} has no 3D kernel for a volume encoder "
                          f"(use {', '.join(_MODES)}; bilinear is trilinear in 3D)")
    if resize not in ("stretch", "pad", "aspect_pad"):
        raise ConfigError(f"resize must be stretch, pad or aspect_pad, got {resize!r}")
    d, h, w = (int(v) for v in size)
    sd, sh, sw = (float(v) for v in spacing)
    return VolumeGeometry((d, h, w), (sd, sh, sw), resize, _MODES[interpolation])


class VolumePreprocessor:
    """Applies a resolved intensity option, channel mode and :class:`VolumeGeometry` to 3D items."""

    def __init__(self, intensity: str, channels: str, geometry: VolumeGeometry, mean: float, std: float,
                 slice_axis: int | None = None) -> None:
        if intensity == "auto":
            raise ConfigError("VolumePreprocessor needs a resolved intensity option")
        if channels not in ("auto", "replicate", "per_channel"):
            raise ConfigError(f"channels={channels!r} does not apply to a one-channel volume encoder "
                              "(use auto, replicate: the first channel, or per_channel: each channel encoded)")
        if std <= 0:
            raise ConfigError(f"std must be positive, got {std}")
        self.intensity, self.channels, self.geometry = intensity, channels, geometry
        self.mean, self.std, self.slice_axis = float(mean), float(std), slice_axis

    def __call__(self, item: Any) -> torch.Tensor:
        """``Item`` -> ``(V, 1, D, H, W)`` float32 (V = 1, or one view per channel with ``per_channel``)."""
        src = item.source or item.id
        img = item.image
        if not isinstance(img, np.ndarray) or item.spatial_dims != 3:
            raise DataError("a 3D encoder takes volumes; this item is not a 3D array", src)
        has_c = img.ndim == 4
        if img.ndim not in (3, 4) or img.size == 0:
            raise DataError(f"expected a 3D volume (optionally with channels), got array of shape {img.shape}", src)
        if not np.issubdtype(img.dtype, np.number) or img.dtype == np.bool_:
            img = img.astype(np.float32)
        if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
            raise DataError("volume contains NaN or infinite values", src)
        x = apply_intensity(img, self.intensity, has_channels=has_c)
        if x.ndim == 3:
            x = x[..., None]
        axis = self.slice_axis if self.slice_axis is not None else item.slice_axis
        if not 0 <= axis < 3:
            raise ConfigError(f"slice_axis must be 0, 1 or 2, got {axis}")
        x = np.moveaxis(x, axis, 0)  # (D, H, W, C)
        sp = [float(v) for v in (item.spacing or (1.0, 1.0, 1.0))[:3]]
        if len(sp) != 3 or min(sp) <= 0:
            raise DataError(f"volume spacing must be three positive numbers (mm), got {item.spacing}", src)
        spacing = (sp[axis], *[sp[i] for i in range(3) if i != axis])
        c = x.shape[-1]
        if self.channels == "replicate" or (self.channels == "auto" and c == 1):
            x = x[..., :1]
        elif self.channels == "auto":
            raise DataError(f"{c}-channel volume: choose channels='per_channel' (each encoded) or 'replicate' "
                            "(the first channel)", src)
        t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, 3, 0)))[:, None]  # (V, 1, D, H, W)
        t = self._geometry(t, spacing)
        return (t - self.mean) / self.std

    def _resample(self, t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        shape = tuple(max(1, int(v)) for v in shape)
        if tuple(t.shape[2:]) == shape:
            return t.contiguous()
        mode = self.geometry.interpolation
        kw: dict[str, Any] = {"align_corners": False} if mode == "trilinear" else {}
        return F.interpolate(t, size=shape, mode=mode, **kw)

    def _geometry(self, t: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
        g = self.geometry
        n = t.shape[2:]
        if g.resize == "stretch":
            return self._resample(t, g.size)
        extent = [n[i] * spacing[i] for i in range(3)]
        if g.resize == "pad":
            t = self._resample(t, [round(extent[i] / g.spacing[i]) for i in range(3)])
        else:  # aspect_pad: one scale (voxels per mm) for all axes, the largest that fits
            k = min(g.size[i] / extent[i] for i in range(3))
            t = self._resample(t, [min(g.size[i], round(extent[i] * k)) for i in range(3)])
        return center_crop_pad(t, g.size)


def center_crop_pad(t: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Centre-crop and/or zero-pad the last three axes of ``t`` to ``size``."""
    for ax, want in enumerate(size):
        dim = t.ndim - 3 + ax
        have = t.shape[dim]
        if have > want:
            start = (have - want) // 2
            t = t.narrow(dim, start, want)
        elif have < want:
            before = (want - have) // 2
            pad = [0, 0] * (t.ndim - 2)
            # F.pad lists the last axis first
            j = 2 * (t.ndim - 1 - dim)
            pad[j], pad[j + 1] = before, want - have - before
            t = F.pad(t, pad, value=0.0)
    return t.contiguous()


__all__ = ["VolumeGeometry", "VolumePreprocessor", "center_crop_pad", "volume_geometry"]
