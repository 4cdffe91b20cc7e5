"""The preprocessing transform: one :class:`~medprobe.data.Item` -> a ``(S, V, 3, H, W)`` tensor."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medprobe.errors import ConfigError, DataError
from medprobe.preprocess.config import PreprocessConfig
from medprobe.preprocess.intensity import CHANNEL_SEP, apply_channel_intensity, apply_intensity


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
        src = item.source or item.id
        if not isinstance(item.image, np.ndarray):
            raise DataError("a region-readable slide is encoded tile by tile (a tile family); it is not one image",
                            src)
        img = np.asarray(item.image)
        sd = item.spatial_dims
        has_c = img.ndim == sd + 1
        if img.ndim not in (sd, sd + 1) or img.size == 0:
            raise DataError(f"expected a {sd}D image (optionally with channels), got array of shape {img.shape}", src)
        if not np.issubdtype(img.dtype, np.number) or img.dtype == np.bool_:
            img = img.astype(np.float32)
        if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
            raise DataError("image contains NaN or infinite values", src)
        x = self._intensity(img, has_c, src)
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
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)  # S, C, H, W
        t = self._geometry(t, src)  # resize the stored channels, before grey is replicated to 3
        # a small source is fine when resized up (28-px MedMNIST for a stride-32 CNN); the encoder's input is not
        if t.shape[-2] < self.patch_size or t.shape[-1] < self.patch_size:
            raise DataError(f"image is {h}x{w} pixels and {t.shape[-2]}x{t.shape[-1]} after resizing, smaller than "
                            f"one {self.patch_size}-px patch", src)
        views = self._channels(t, src)  # S, V, 3, H', W'
        v = views.shape[1]
        sv = (views.reshape(s * v, 3, *t.shape[-2:]) - self._mean) / self._std
        return sv.reshape(s, v, 3, *sv.shape[-2:])

    def _intensity(self, img: np.ndarray, has_c: bool, src: str) -> np.ndarray:
        """Per channel (each its own option / statistics) for a per-channel list or ``per_channel`` input;
        else one option over the whole array (grey images, channels combined as colour)."""
        spec = self.cfg.intensity
        per_channel = has_c and (CHANNEL_SEP in spec or (self.cfg.channels == "per_channel" and img.shape[-1] > 1))
        try:
            if per_channel:
                return apply_channel_intensity(img, spec)
            return apply_intensity(img, spec, has_channels=has_c)
        except ConfigError as e:
            raise ConfigError(e.problem, e.source or src) from None

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
