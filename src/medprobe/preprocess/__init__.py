"""Modality-aware preprocessing: intensity -> channels -> slices -> geometry -> encoder mean/std.

:class:`PreprocessConfig` holds every option (each changes the features, so each is part of the cache
key and stored with every result); :class:`Preprocessor` turns one :class:`~medprobe.data.Item` into a
``(S, V, 3, H, W)`` tensor: S slices (1 for 2D), V views (1, or one per channel with ``per_channel``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medprobe.errors import ConfigError, DataError
from medprobe.preprocess.intensity import CT_WINDOWS, apply_intensity, parse_intensity, resolve_intensity

CHANNEL_MODES = ("auto", "replicate", "keep", "per_channel", "first3")
RESIZE_MODES = ("stretch", "pad", "aspect_pad")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")


@dataclass(frozen=True)
class PreprocessConfig:
    """All preprocessing choices. ``None`` fields are filled from the encoder / dataset by :meth:`resolved`.

    * ``intensity``: see :mod:`medprobe.preprocess.intensity` (``auto`` resolved from modality and dtype).
    * ``channels``: ``auto`` (grey replicated to 3, RGB kept, RGBA -> RGB), ``replicate`` (first channel
      replicated), ``keep`` (needs 3 channels), ``per_channel`` (each channel encoded separately as a grey
      image, features concatenated: multi-modal volumes), ``first3`` (first three channels as RGB).
    * ``resize``: ``stretch`` to ``resolution``; ``pad`` zero-pads to it without scaling (MedMNIST+ style,
      images larger than the target are refused); ``aspect_pad`` scales the longer side to the target and
      zero-pads the other.
    * ``resolution``: ``(H, W)``; ``None`` -> the encoder's native (pre-training) resolution.
    * ``mean``/``std``: ``None`` -> the encoder's.
    * ``slice_axis``: for volumes, ``None`` -> each item's own (axial) axis.
    """

    intensity: str = "auto"
    channels: str = "auto"
    resize: str = "stretch"
    resolution: tuple[int, int] | None = None
    interpolation: str = "bilinear"
    antialias: bool = True
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    slice_axis: int | None = None

    def __post_init__(self) -> None:
        if self.channels not in CHANNEL_MODES:
            raise ConfigError(f"channels must be one of {CHANNEL_MODES}, got {self.channels!r}")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.intensity != "auto":
            parse_intensity(self.intensity)
        if self.resolution is not None:
            r = self.resolution
            res = (int(r), int(r)) if isinstance(r, (int, np.integer)) else tuple(int(v) for v in r)
            if len(res) != 2 or min(res) <= 0:
                raise ConfigError(f"resolution must be a positive size or (H, W), got {r!r}")
            object.__setattr__(self, "resolution", res)

    def resolved(self, *, mean: tuple[float, ...], std: tuple[float, ...], native_resolution: int,
                 modality: str = "generic", dtype: Any = np.float32) -> PreprocessConfig:
        """A copy with every ``None``/``auto`` replaced by the concrete value used."""
        return replace(
            self,
            intensity=resolve_intensity(self.intensity, modality, dtype),
            resolution=self.resolution or (native_resolution, native_resolution),
            mean=tuple(float(v) for v in (self.mean or mean)),  # type: ignore[arg-type]
            std=tuple(float(v) for v in (self.std or std)),  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("resolution", "mean", "std"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        d = dict(d)
        for k in ("resolution", "mean", "std"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


class Preprocessor:
    """Applies a *resolved* :class:`PreprocessConfig` to items."""

    def __init__(self, cfg: PreprocessConfig, patch_size: int = 1) -> None:
        if cfg.resolution is None or cfg.mean is None or cfg.std is None or cfg.intensity == "auto":
            raise ConfigError("Preprocessor needs a resolved config (call PreprocessConfig.resolved first)")
        self.cfg = cfg
        self.patch_size = patch_size
        self._mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1)

    def n_views(self, n_channels: int) -> int:
        return n_channels if self.cfg.channels == "per_channel" else 1

    def __call__(self, item: Any) -> torch.Tensor:
        """``Item`` -> ``(S, V, 3, H, W)`` float32, normalised with the encoder's mean/std."""
        img = np.asarray(item.image)
        src = item.source or item.id
        sd = item.spatial_dims
        has_c = img.ndim == sd + 1
        if img.ndim not in (sd, sd + 1) or img.size == 0:
            raise DataError(f"expected a {sd}D image (optionally with channels), got array of shape {img.shape}", src)
        if not np.issubdtype(img.dtype, np.number) or img.dtype == np.bool_:
            img = img.astype(np.float32)
        if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
            raise DataError("image contains NaN or infinite values", src)
        x = apply_intensity(img, self.cfg.intensity, has_channels=has_c)
        if x.ndim == sd:
            x = x[..., None]
        # slices first: (S, H, W, C)
        if sd == 3:
            axis = self.cfg.slice_axis if self.cfg.slice_axis is not None else item.slice_axis
            if not 0 <= axis < 3:
                raise ConfigError(f"slice_axis must be 0, 1 or 2, got {axis}")
            x = np.moveaxis(x, axis, 0)
        else:
            x = x[None]
        s, h, w, c = x.shape
        if h < self.patch_size or w < self.patch_size:
            raise DataError(f"image is {h}x{w} pixels, smaller than one {self.patch_size}-px patch", src)
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)  # S, C, H, W
        t = self._geometry(t, src)  # resize the stored channels, before grey is replicated to 3
        views = self._channels(t, src)  # S, V, 3, H', W'
        v = views.shape[1]
        sv = (views.reshape(s * v, 3, *t.shape[-2:]) - self._mean) / self._std
        return sv.reshape(s, v, 3, *sv.shape[-2:])

    def _channels(self, t: torch.Tensor, src: str) -> torch.Tensor:
        mode, c = self.cfg.channels, t.shape[1]
        if mode == "auto":
            if c == 1:
                mode = "replicate"
            elif c in (3, 4):
                t, c, mode = t[:, :3], 3, "keep"
            else:
                raise DataError(f"{c}-channel image: choose channels='per_channel' or 'first3'", src)
        if mode == "replicate":
            return t[:, :1].expand(-1, 3, -1, -1)[:, None]
        if mode == "keep":
            if c != 3:
                raise DataError(f"channels='keep' needs 3 channels, image has {c}", src)
            return t[:, None]
        if mode == "first3":
            if c < 3:
                raise DataError(f"channels='first3' needs >= 3 channels, image has {c}", src)
            return t[:, None, :3]
        return t[:, :, None].expand(-1, -1, 3, -1, -1)  # per_channel

    def _geometry(self, t: torch.Tensor, src: str) -> torch.Tensor:
        th, tw = self.cfg.resolution  # type: ignore[misc]
        h, w = t.shape[-2:]
        mode = self.cfg.resize
        if mode == "stretch":
            return self._resize(t, th, tw) if (h, w) != (th, tw) else t.contiguous()
        if mode == "aspect_pad":
            scale = min(th / h, tw / w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            t = self._resize(t, nh, nw) if (nh, nw) != (h, w) else t
            h, w = nh, nw
        elif h > th or w > tw:
            raise DataError(f"resize='pad' cannot fit a {h}x{w} image into {th}x{tw}; use stretch or aspect_pad",
                            src)
        top, left = (th - h) // 2, (tw - w) // 2
        return F.pad(t, (left, tw - w - left, top, th - h - top), value=0.0)

    def _resize(self, t: torch.Tensor, h: int, w: int) -> torch.Tensor:
        mode = self.cfg.interpolation
        kw: dict[str, Any] = {}
        if mode in ("bilinear", "bicubic"):
            # anti-aliasing only acts when shrinking; enlarging uses the (faster) plain kernel
            shrink = h < t.shape[-2] or w < t.shape[-1]
            kw = {"align_corners": False, "antialias": self.cfg.antialias and shrink}
        out = F.interpolate(t, size=(h, w), mode=mode, **kw)
        return out.clamp_(0.0, 1.0) if mode == "bicubic" else out


__all__ = ["CT_WINDOWS", "PreprocessConfig", "Preprocessor", "apply_intensity", "parse_intensity",
           "resolve_intensity"]
