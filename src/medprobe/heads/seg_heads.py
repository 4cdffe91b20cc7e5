"""Segmentation heads on frozen patch features (torch modules).

Every head takes the same inputs and returns voxel logits at the preprocessed image size:

* ``feats``: list (one per tapped layer) of ``(B, C_l, D, h, w)`` patch grids, D = slices (1 for 2D);
* ``image``: ``(B, V, D, H, W)`` preprocessed grey image (V views / channels), ``H = h * patch``;
* output: ``(B, K, D, H, W)`` logits for K classes (background included).

Heads (registry :func:`create_seg_head`):

* ``linear`` -- BatchNorm + 1x1 conv over the concatenated layers, bilinear upsampling (DINOv3's linear
  segmentation); slices are independent.
* ``decoder2d`` -- light 2D decoder: per-layer 1x1 projections, shallow conv blocks, bilinear upsampling
  stages, earlier layers re-enter as skips at finer stages; optionally (``use_image: true``) a tiny conv stem
  on the raw image at the last two stages so boundaries finer than the patch grid can be recovered.
* ``decoder3d`` -- pseudo-3D decoder: the stacked slice features form a ``C x D x h x w`` volume; 1x1x1
  reduction, 3D conv blocks, skip connections from the earlier layers (and the optional image stem), in-plane
  upsampling stages to full resolution.

Decoders are **feature-only by default** (``use_image: false``), as the study's decoders: they see the frozen
features and nothing else. The image stem is an explicit option, recorded with the head's parameters (and
labelled in reports): with it an untrained encoder and no encoder at all score alike, because the stem does
the work.

Any patch size works (16, 14, 8, ...): a patch of ``p`` pixels takes ``n = ceil(log2 p)`` upsampling stages;
stage ``k`` outputs ``H / 2**(n-k)`` (rounded up; the last stage exactly the image size), so a 14-px patch
goes grid x 1.75, then x 2 three times (16 -> 28 -> 56 -> 112 -> 224).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from medprobe.errors import ConfigError
from medprobe.heads.base import get_head_class, head_names, register_head

SEG_HEAD_ALIASES = {"seg-linear": "linear", "decoder-2d": "decoder2d", "decoder-3d": "decoder3d"}


def register_seg_head(name: str) -> Callable[[type[SegHead]], type[SegHead]]:
    """Class decorator: register a dense (segmentation) head in the one head registry."""

    def deco(cls: type[SegHead]) -> type[SegHead]:
        cls.head_name = name
        aliases = tuple(a for a, n in SEG_HEAD_ALIASES.items() if n == name)
        register_head(name, aliases=aliases)(cls)
        return cls

    return deco


def seg_head_names() -> list[str]:
    return head_names("dense")


def canonical_seg_head(name: str) -> str:
    return str(get_head_class(name, "dense").name)


def create_seg_head(name: str, in_dims: Sequence[int], n_classes: int, patch: int, n_views: int = 1,
                    **hp: Any) -> SegHead:
    """Build segmentation head ``name``; ``hp`` are the head's own options (unknown ones -> ConfigError)."""
    cls: type[SegHead] = get_head_class(name, "dense")  # type: ignore[assignment]
    bad = sorted(set(hp) - set(cls.defaults))
    if bad:
        raise ConfigError(f"unknown option(s) {', '.join(bad)} (allowed: {', '.join(sorted(cls.defaults))})",
                          f"head {name}")
    return cls(list(in_dims), n_classes, patch, n_views, **{**cls.defaults, **hp})


class SegHead(nn.Module):
    """Base: stores the constructor options so results can record them (``params``)."""

    head_name = "seg"
    name = "seg"
    input_kind = "dense"
    tasks: tuple[str, ...] = ("segmentation",)
    outputs: tuple[str, ...] = ("logits",)
    is_3d = False
    defaults: dict[str, Any] = {}

    def __init__(self, in_dims: list[int], n_classes: int, patch: int, n_views: int, **hp: Any) -> None:
        super().__init__()
        self.in_dims, self.n_classes, self.patch, self.n_views = in_dims, n_classes, patch, n_views
        self.params = dict(hp)

    def forward(self, feats: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def _fold(x: torch.Tensor) -> torch.Tensor:
    """(B, C, D, h, w) -> (B*D, C, h, w)."""
    b, c, d, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)


def _unfold(x: torch.Tensor, b: int) -> torch.Tensor:
    """(B*D, C, H, W) -> (B, C, D, H, W)."""
    bd, c, h, w = x.shape
    return x.reshape(b, bd // b, c, h, w).permute(0, 2, 1, 3, 4)


def _groups(c: int) -> int:
    return math.gcd(c, 8)


@register_seg_head("linear")
class LinearSegHead(SegHead):
    """BatchNorm + 1x1 conv on the concatenated layers, bilinear upsampling to the image size."""

    probe = "linear"
    defaults = {"dropout": 0.0}

    def __init__(self, in_dims: list[int], n_classes: int, patch: int, n_views: int, **hp: Any) -> None:
        super().__init__(in_dims, n_classes, patch, n_views, **hp)
        c = sum(in_dims)
        self.bn = nn.BatchNorm2d(c)
        self.drop = nn.Dropout2d(float(hp["dropout"]))
        self.conv = nn.Conv2d(c, n_classes, 1)

    def forward(self, feats: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        b = feats[0].shape[0]
        x = _fold(torch.cat(feats, 1))
        x = self.conv(self.drop(self.bn(x)))
        x = F.interpolate(x, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return _unfold(x, b)


class _Block2d(nn.Sequential):
    """``convs`` x (3x3 conv, GroupNorm, GELU)."""

    def __init__(self, cin: int, cout: int, convs: int = 2) -> None:
        layers: list[nn.Module] = []
        for j in range(convs):
            layers += [nn.Conv2d(cin if j == 0 else cout, cout, 3, padding=1, bias=False),
                       nn.GroupNorm(_groups(cout), cout), nn.GELU()]
        super().__init__(*layers)


class _Block3d(nn.Sequential):
    """``convs`` x (3D conv of kernel ``k``, GroupNorm, GELU)."""

    def __init__(self, cin: int, cout: int, k: tuple[int, int, int], convs: int = 2) -> None:
        pad = (k[0] // 2, k[1] // 2, k[2] // 2)
        layers: list[nn.Module] = []
        for j in range(convs):
            layers += [nn.Conv3d(cin if j == 0 else cout, cout, k, padding=pad, bias=False),
                       nn.GroupNorm(_groups(cout), cout), nn.GELU()]
        super().__init__(*layers)


def _stage_widths(width: int, n: int, min_width: int) -> list[int]:
    return [max(min_width, width >> k) for k in range(n + 1)]


def _n_up(patch: int) -> int:
    """Upsampling stages for a ``patch``-px patch: ``ceil(log2 patch)`` (4 for 14 and 16, 3 for 8)."""
    if int(patch) < 1:
        raise ConfigError(f"decoders need a positive patch size, got {patch}")
    return max(0, math.ceil(math.log2(int(patch)) - 1e-9))


def stage_sizes(size: tuple[int, int] | Sequence[int], n: int) -> list[tuple[int, int]]:
    """In-plane output size of each of the ``n`` upsampling stages for an image of ``size`` (the last stage:
    exactly ``size``; stage ``k``: ``ceil(size / 2**(n - k))``)."""
    h, w = int(size[0]), int(size[1])
    return [(math.ceil(h / 2 ** (n - k)), math.ceil(w / 2 ** (n - k))) for k in range(1, n + 1)]


@register_seg_head("decoder2d")
class Decoder2d(SegHead):
    """Light 2D decoder over multi-layer patch features (+ optional raw-image stem); slices independent."""

    defaults = {"width": 128, "min_width": 8, "stem": 8, "use_image": False, "dropout": 0.0}

    def __init__(self, in_dims: list[int], n_classes: int, patch: int, n_views: int, **hp: Any) -> None:
        super().__init__(in_dims, n_classes, patch, n_views, **hp)
        self.n = _n_up(patch)
        w = _stage_widths(int(hp["width"]), self.n, int(hp["min_width"]))
        self.proj = nn.ModuleList(nn.Sequential(nn.BatchNorm2d(c), nn.Conv2d(c, w[0], 1)) for c in in_dims)
        self.skips = len(in_dims) - 1  # earlier layers re-enter at stages 1..skips
        self.inp = _Block2d(w[0], w[0])
        self.use_image = bool(hp["use_image"])
        st = int(hp["stem"])
        self.stem = nn.Sequential(nn.Conv2d(n_views, st, 3, padding=1), nn.GELU()) if self.use_image else None
        ups = []
        for k in range(1, self.n + 1):
            cin = w[k - 1] + (w[0] if k <= self.skips else 0) + (st if self.use_image and k >= self.n - 1 else 0)
            ups.append(_Block2d(cin, w[k], 2 if k <= self.n - 2 else 1))
        self.ups = nn.ModuleList(ups)
        self.drop = nn.Dropout2d(float(hp["dropout"]))
        self.out = nn.Conv2d(w[self.n], n_classes, 1)

    def forward(self, feats: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        b = feats[0].shape[0]
        p = [proj(_fold(f)) for proj, f in zip(self.proj, feats)]
        x = self.inp(self.drop(p[-1]))
        img = _fold(image) if self.stem is not None else None
        for k, (up, size) in enumerate(zip(self.ups, stage_sizes(image.shape[-2:], self.n)), start=1):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            parts = [x]
            if k <= self.skips:
                parts.append(F.interpolate(p[self.skips - k], size=size, mode="bilinear", align_corners=False))
            if self.stem is not None and k >= self.n - 1:
                assert img is not None
                im = img if k == self.n else F.adaptive_avg_pool2d(img, size)
                parts.append(self.stem(im))
            x = up(torch.cat(parts, 1))
        return _unfold(self.out(x), b)


@register_seg_head("decoder3d")
class Decoder3d(SegHead):
    """Pseudo-3D decoder: stacked slice features -> 3D conv blocks with skips -> in-plane x2 upsampling.

    Stages at the patch grid and the first upsampled level use ``3x3x3`` kernels; finer stages use
    ``depth_kernel x 3 x 3`` (default 1: in-plane only, cheap at full resolution).
    """

    is_3d = True
    defaults = {"width": 96, "min_width": 8, "stem": 8, "use_image": False, "dropout": 0.0, "depth_kernel": 1}

    def __init__(self, in_dims: list[int], n_classes: int, patch: int, n_views: int, **hp: Any) -> None:
        super().__init__(in_dims, n_classes, patch, n_views, **hp)
        self.n = _n_up(patch)
        w = _stage_widths(int(hp["width"]), self.n, int(hp["min_width"]))
        self.proj = nn.ModuleList(nn.Sequential(nn.Conv3d(c, w[0], 1, bias=False), nn.GroupNorm(_groups(w[0]), w[0]))
                                  for c in in_dims)
        self.skips = len(in_dims) - 1
        self.inp = _Block3d(w[0], w[0], (3, 3, 3))
        self.use_image = bool(hp["use_image"])
        st = int(hp["stem"])
        self.stem = nn.Sequential(nn.Conv3d(n_views, st, (3, 3, 3), padding=1), nn.GELU()) if self.use_image else None
        dk = int(hp["depth_kernel"])
        ups = []
        for k in range(1, self.n + 1):
            cin = w[k - 1] + (w[0] if k <= self.skips else 0) + (st if self.use_image and k >= self.n - 1 else 0)
            ups.append(_Block3d(cin, w[k], (3, 3, 3) if k <= 1 else (dk, 3, 3), 2 if k <= self.n - 2 else 1))
        self.ups = nn.ModuleList(ups)
        self.drop = nn.Dropout3d(float(hp["dropout"]))
        self.out = nn.Conv3d(w[self.n], n_classes, 1)

    def forward(self, feats: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        p = [proj(f) for proj, f in zip(self.proj, feats)]
        x = self.inp(self.drop(p[-1]))
        d = x.shape[2]
        for k, (up, size) in enumerate(zip(self.ups, stage_sizes(image.shape[-2:], self.n)), start=1):
            x = F.interpolate(x, size=(d, *size), mode="trilinear", align_corners=False)
            parts = [x]
            if k <= self.skips:
                parts.append(F.interpolate(p[self.skips - k], size=(d, *size), mode="trilinear",
                                           align_corners=False))
            if self.stem is not None and k >= self.n - 1:
                im = image if k == self.n else F.adaptive_avg_pool3d(image, (image.shape[2], *size))
                parts.append(self.stem(im))
            x = up(torch.cat(parts, 1))
        return self.out(x)


__all__ = ["Decoder2d", "Decoder3d", "LinearSegHead", "SegHead", "canonical_seg_head", "create_seg_head",
           "register_seg_head", "seg_head_names", "stage_sizes"]
