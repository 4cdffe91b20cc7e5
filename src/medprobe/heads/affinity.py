"""Affinity head on dense frozen features (EM neuron instances), its loss and its training / inference engine.

:class:`AffinityHead` (registered as the dense head ``affinity`` for ``instances`` tasks) wraps one decoder of
the segmentation family (``decoder``: ``decoder2d`` default, ``decoder3d`` or ``linear``; feature-only by
default, ``use_image: true`` adds the decoder's raw-image stem) whose outputs are affinity logits, one channel
per offset: nearest neighbours along y, x (and z for ``decoder3d``) first, then ``long_range`` offsets (e.g.
``[[0, -9], [-9, 0]]`` in 2D, ``[[0, -9, 0], ...]`` in 3D). Any patch size (16, 14, 8 ...) runs directly:
the decoders upsample by non-power-of-two factors themselves.

Loss (:func:`balanced_mse`): MALA's class-balanced weighted MSE on ``sigmoid(logits)``; per offset channel,
positives weigh ``1 / (2 f)`` and negatives ``1 / (2 (1 - f))`` with ``f`` the positive fraction of the
batch (clipped to [0.05, 0.95]); masked voxels (neighbour outside the crop, padded slices) weigh 0. Adam at
``lr`` 1e-3. Targets come from instance labels at the preprocessed size (affinity 1 where a voxel and its
neighbour carry the same non-zero id; see :mod:`medprobe.heads.agglomerate`), computed per batch after the
augmentation (rot90 / flips), so directions stay right.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from medprobe.errors import ConfigError
from medprobe.heads.base import get_head_class
from medprobe.heads.seg_heads import SegHead, register_seg_head
from medprobe.heads.seg_train import augment as augment_crop
from medprobe.heads.seg_train import crop_plan
from medprobe.utils import Progress, torch_seeded

DECODERS = ("decoder2d", "decoder3d", "linear")


def head_offsets(is_3d: bool, long_range: Sequence[Sequence[int]] = ()) -> list[tuple[int, ...]]:
    """Offsets predicted by an affinity head: ``(z, y, x)`` for 3D decoders, ``(y, x)`` for 2D ones."""
    from medprobe.heads.agglomerate import affinity_offsets

    return affinity_offsets(3 if is_3d else 2, long_range)


@register_seg_head("affinity")
class AffinityHead(SegHead):
    """Affinity logits ``(B, n_offsets, D, H, W)`` from a wrapped decoder (see the module docstring)."""

    tasks = ("instances",)
    outputs = ("affinities",)
    defaults = {"decoder": "decoder2d", "width": 64, "min_width": 8, "stem": 8, "use_image": False,
                "dropout": 0.0, "depth_kernel": 1, "long_range": []}

    def __init__(self, in_dims: list[int], n_classes: int, patch: int, n_views: int, **hp: Any) -> None:
        dec = str(hp["decoder"])
        if dec not in DECODERS:
            raise ConfigError(f"affinity decoder must be one of {', '.join(DECODERS)}, got {dec!r}", "head affinity")
        inner_cls: Any = get_head_class(dec, "dense")
        is_3d = bool(inner_cls.is_3d)
        offsets = head_offsets(is_3d, hp.get("long_range") or ())
        super().__init__(in_dims, len(offsets), patch, n_views, **hp)
        self.is_3d, self.offsets = is_3d, offsets
        inner_hp = {k: v for k, v in hp.items() if k in inner_cls.defaults}
        self.inner: nn.Module = inner_cls(list(in_dims), len(offsets), patch, n_views,
                                          **{**inner_cls.defaults, **inner_hp})

    def forward(self, feats: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(feats, image)
        return out


# ------------------------------------------------------------------------------------------- targets, loss
def torch_affinities(lab: torch.Tensor, offsets: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, D, H, W)`` int labels (-1 = no data) -> affinities and mask ``(B, C, D, H, W)`` float32; offsets
    are ``(y, x)`` or ``(z, y, x)`` (2D offsets act within each slice)."""
    b, d, h, w = lab.shape
    aff = lab.new_zeros((b, len(offsets), d, h, w), dtype=torch.float32)
    mask = torch.zeros_like(aff)
    for c, off in enumerate(offsets):
        o = (0, *off) if len(off) == 2 else tuple(off)
        here: list[slice] = []
        there: list[slice] = []
        for n, k in zip((d, h, w), o):
            if abs(k) >= n:
                break
            here.append(slice(-k, n) if k < 0 else slice(0, n - k))
            there.append(slice(0, n + k) if k < 0 else slice(k, n))
        else:
            ih: Any = (slice(None), *here)
            it: Any = (slice(None), *there)
            ic: Any = (slice(None), c, *here)
            a, bb = lab[ih], lab[it]
            aff[ic] = ((a == bb) & (a > 0)).float()
            mask[ic] = ((a >= 0) & (bb >= 0)).float()
    return aff, mask


def balanced_mse(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MALA's class-balanced weighted MSE of ``sigmoid(logits)`` (weights per offset channel; module doc)."""
    pred = torch.sigmoid(logits.float())
    dims = (0, *range(2, target.ndim))
    n = mask.sum(dims).clamp(min=1)
    frac = ((target * mask).sum(dims) / n).clamp(0.05, 0.95)
    shape = (1, -1) + (1,) * (target.ndim - 2)
    w = torch.where(target > 0.5, (0.5 / frac).view(shape), (0.5 / (1 - frac)).view(shape)) * mask
    return (w * (pred - target) ** 2).sum() / mask.sum().clamp(min=1)


# ------------------------------------------------------------------------------------------- engine
@dataclass(frozen=True)
class AffinityTrainConfig:
    """Training / inference options of the affinity head (recorded with results). ``crop_size``: in-plane
    crop in grid cells (None = the whole grid); ``crop_depth``: slices per crop for 3D decoders;
    ``iters_per_epoch`` None = enough crops to cover the training slices once."""

    lr: float = 1e-3
    epochs: int = 20
    batch_size: int = 4
    iters_per_epoch: int | None = None
    crop_size: int | None = None
    crop_depth: int = 8
    augment: bool = True
    infer_batch: int = 8

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> AffinityTrainConfig:
        d = dict(d or {})
        bad = sorted(set(d) - set(cls.__dataclass_fields__))
        if bad:
            raise ConfigError(f"unknown training option(s) {bad}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AffinityData:
    """Per case: memory-mapped feature grids ``[(S, C, h, w)]``, preprocessed image ``(S, V, H, W)`` and instance
    labels at the preprocessed size ``(S, H, W)`` (int32; -1 = no data)."""

    def __init__(self, store: Any, layers: list[int], patch: int, images: dict[int, np.ndarray],
                 labels: dict[int, np.ndarray]) -> None:
        self.store, self.layers, self.patch = store, list(layers), patch
        self.images, self.labels = images, labels
        first = store.item(0, "patch", layers[-1])
        self.dims = [int(store.item(0, "patch", layer).shape[1]) for layer in layers]
        self.grid = (int(first.shape[2]), int(first.shape[3]))
        self.n_views = int(next(iter(images.values())).shape[1])

    def n_slices(self, i: int) -> int:
        return int(self.store.slices[i])

    def crop(self, i: int, d0: int, dn: int, y0: int, yn: int, x0: int, xn: int
             ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Features ``[(C, dn, yn, xn)]``, image ``(V, dn, yn*p, xn*p)``, labels ``(dn, yn*p, xn*p)`` (slices
        beyond the case: zero features, label -1)."""
        p, s = self.patch, self.n_slices(i)
        a, b = max(d0, 0), min(d0 + dn, s)
        pad = (a - d0, d0 + dn - b)
        fs = []
        for layer in self.layers:
            f = self.store.item(i, "patch", layer)
            t = torch.from_numpy(np.array(f[a:b, :, y0:y0 + yn, x0:x0 + xn], dtype=np.float32))
            fs.append(F.pad(t.permute(1, 0, 2, 3), (0, 0, 0, 0, *pad)))
        im = torch.from_numpy(np.array(self.images[i][a:b, :, y0 * p:(y0 + yn) * p, x0 * p:(x0 + xn) * p],
                                         dtype=np.float32))
        im = F.pad(im.permute(1, 0, 2, 3), (0, 0, 0, 0, *pad))
        lab = torch.from_numpy(np.array(self.labels[i][a:b, y0 * p:(y0 + yn) * p, x0 * p:(x0 + xn) * p],
                                          dtype=np.int64))
        lab = F.pad(lab, (0, 0, 0, 0, *pad), value=-1)
        return fs, im, lab


def _batch(data: AffinityData, samples: list[tuple[int, int, int, int]], depth: int, crop: tuple[int, int],
           augment: bool, rng: np.random.Generator | None
           ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    parts = []
    for i, d0, y0, x0 in samples:
        fs, im, lab = data.crop(i, d0, depth, y0, crop[0], x0, crop[1])
        if augment and rng is not None:
            fs, im, lab = augment_crop(fs, im, lab, rng)
        parts.append((fs, im, lab))
    fs = [torch.stack([p[0][k] for p in parts]) for k in range(len(data.layers))]
    return fs, torch.stack([p[1] for p in parts]), torch.stack([p[2] for p in parts])


def fit_affinity(head: AffinityHead, data: AffinityData, train: list[int], val: list[int],
                 cfg: AffinityTrainConfig, seed: int = 0, device: torch.device | str = "cpu",
                 progress: bool = True) -> dict[str, Any]:
    """Adam on random crops of the ``train`` cases; keeps the epoch with the lowest validation loss (the last
    epoch without validation cases). Returns the history. torch's random stream is seeded with ``seed`` for the
    training only (:func:`medprobe.utils.torch_seeded`)."""
    with torch_seeded(seed, device):
        return _fit_affinity(head, data, train, val, cfg, seed, device, progress)


def _fit_affinity(head: AffinityHead, data: AffinityData, train: list[int], val: list[int],
                  cfg: AffinityTrainConfig, seed: int, device: torch.device | str, progress: bool
                  ) -> dict[str, Any]:
    if not train:
        raise ConfigError("affinity training needs at least one training case")
    device = torch.device(device)
    rng = np.random.default_rng(seed)
    head.to(device)
    depth, crop, weights, ipe = crop_plan(data, train, head.is_3d, cfg.crop_depth, cfg.crop_size, cfg.batch_size,
                                          cfg.iters_per_epoch)
    gh, gw = data.grid
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    hist: dict[str, Any] = {"loss": [], "val_loss": [], "iters_per_epoch": ipe, "crop": [depth, *crop]}
    best, best_state, best_epoch = math.inf, None, cfg.epochs - 1
    prog = Progress(ipe * cfg.epochs, desc="train affinity", unit="crops", enabled=progress)
    t0 = time.perf_counter()
    try:
        for ep in range(cfg.epochs):
            head.train()
            losses = []
            for _ in range(ipe):
                samples = []
                for _ in range(cfg.batch_size):
                    i = train[int(rng.choice(len(train), p=weights))]
                    s = data.n_slices(i)
                    d0 = int(rng.integers(0, max(1, s - depth + 1)))
                    samples.append((i, d0, int(rng.integers(gh - crop[0] + 1)), int(rng.integers(gw - crop[1] + 1))))
                fs, im, lab = _batch(data, samples, depth, crop, cfg.augment, rng)
                aff, mask = torch_affinities(lab, head.offsets)
                loss = balanced_mse(head([f.to(device) for f in fs], im.to(device)), aff.to(device), mask.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                prog.update()
            hist["loss"].append(round(float(np.mean(losses)), 5))
            if val:
                vl = validation_loss(head, data, val, cfg, device)
                hist["val_loss"].append(round(vl, 5))
                if vl < best:
                    best, best_epoch, best_state = vl, ep, copy.deepcopy(head.state_dict())
    finally:
        prog.close()
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    hist.update(best_epoch=best_epoch, seconds=round(time.perf_counter() - t0, 3))
    return hist


@torch.no_grad()
def predict_affinities(head: AffinityHead, data: AffinityData, i: int, cfg: AffinityTrainConfig,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """Affinities ``(C, S, H, W)`` in [0, 1] at the preprocessed size: 2D heads slice by slice, 3D heads by
    overlapping windows of ``crop_depth`` slices (averaged)."""
    head.eval()
    s = data.n_slices(i)
    gh, gw = data.grid
    p = data.patch
    depth = min(cfg.crop_depth, s) if head.is_3d else 1
    starts = list(range(0, max(1, s - depth + 1), max(1, depth // 2) if head.is_3d else 1))
    if starts[-1] != max(0, s - depth):
        starts.append(max(0, s - depth))
    acc = torch.zeros(head.n_classes, s, gh * p, gw * p)
    cnt = torch.zeros(1, s, gh * p, gw * p)
    for a in range(0, len(starts), cfg.infer_batch):
        chunk = starts[a:a + cfg.infer_batch]
        fs, im, _ = _batch(data, [(i, d, 0, 0) for d in chunk], depth, (gh, gw), False, None)
        out = torch.sigmoid(head([f.to(device) for f in fs], im.to(device)).float()).cpu()
        for d, o in zip(chunk, out):
            n = min(depth, s - d)
            acc[:, d:d + n] += o[:, :n]
            cnt[:, d:d + n] += 1
    return acc / cnt.clamp(min=1)


@torch.no_grad()
def validation_loss(head: AffinityHead, data: AffinityData, items: list[int], cfg: AffinityTrainConfig,
                    device: torch.device | str = "cpu") -> float:
    """Mean balanced MSE over the validation cases at the preprocessed size."""
    losses = []
    for i in items:
        prob = predict_affinities(head, data, i, cfg, device)
        lab = torch.from_numpy(np.asarray(data.labels[i], np.int64))[None]
        aff, mask = torch_affinities(lab, head.offsets)
        logits = torch.logit(prob.clamp(1e-6, 1 - 1e-6))[None]
        losses.append(float(balanced_mse(logits, aff, mask)))
    return float(np.mean(losses)) if losses else math.nan


__all__ = ["AffinityData", "AffinityHead", "AffinityTrainConfig", "balanced_mse", "fit_affinity", "head_offsets",
           "predict_affinities", "torch_affinities", "validation_loss"]
