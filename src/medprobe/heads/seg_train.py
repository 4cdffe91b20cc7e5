"""Training and inference engine for segmentation heads on cached (memory-mapped) patch features.

Data never sits in RAM as a whole: :class:`SegData` memory-maps, per case, the feature grids of every tapped
layer (``FeatureStore.item``), the preprocessed grey image ``(S, V, H, W)`` and the label map resized to the
preprocessed size ``(S, H, W)`` (both written once by :func:`prepare_targets`, float16 / uint8). Training draws
random crops ``D x h x w`` (grid units) of all three, with random in-plane 90-degree rotations and flips,
Dice + CE loss, AdamW and a warm-up + cosine schedule; the epoch with the best validation mean Dice (at the
preprocessed size) is kept. Inference slides a window over slices (and in-plane when the grid is larger
than the crop) with overlap averaging of softmax probabilities; :func:`to_original` maps probabilities back
to the original in-plane size (undoing stretch / pad / aspect_pad) and the item's array order.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medprobe import numerics
from medprobe.data.base import Dataset, Item
from medprobe.errors import ConfigError, DataError
from medprobe.features.cache import FeatureStore
from medprobe.heads.seg_heads import SegHead
from medprobe.preprocess import PreprocessConfig, Preprocessor
from medprobe.utils import (
    Progress,
    atomic_save_npy,
    atomic_write_bytes,
    atomic_write_json,
    hash_obj,
    torch_seeded,
)

log = logging.getLogger("medprobe.seg")
IGNORE = 255


@dataclass(frozen=True)
class SegTrainConfig:
    """Training options (all recorded with results). ``crop_depth``: slices per crop (3D heads; 2D heads use 1
    per sample); ``crop_size``: in-plane crop in patch-grid cells (None = whole grid); ``iters_per_epoch``:
    None = enough crops to cover the training slices once; ``fg_fraction``: share of crops centred on a
    foreground voxel; ``warmup``: fraction of steps of linear warm-up before the cosine decay."""

    lr: float = 1e-4
    weight_decay: float = 1e-4
    epochs: int = 20
    iters_per_epoch: int | None = None
    batch_size: int = 2
    crop_depth: int = 16
    crop_size: int | None = None
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    warmup: float = 0.05
    augment: bool = True
    fg_fraction: float = 0.33
    overlap: float = 0.5
    infer_batch: int = 4
    amp: str = "off"  # 'bf16' autocast for the decoder
    grad_clip: float | None = 5.0
    val_cases: int | None = None  # validate on the first N validation cases only (None = all)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SegTrainConfig:
        d = dict(d or {})
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(d) - known)
        if bad:
            raise ConfigError(f"unknown training option(s) {bad}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------- geometry
def content_box(h: int, w: int, pre: PreprocessConfig) -> tuple[int, int, int, int]:
    """Where an ``h x w`` slice lands in the preprocessed image: ``(top, left, height, width)``."""
    th, tw = pre.resolution  # type: ignore[misc]
    if pre.resize == "stretch":
        return 0, 0, th, tw
    nh, nw = h, w
    if pre.resize == "aspect_pad":
        s = min(th / h, tw / w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
    return (th - nh) // 2, (tw - nw) // 2, nh, nw


def slices_first(a: np.ndarray, item: Item) -> np.ndarray:
    """Item-order spatial array -> ``(S, A, B)`` (2D: ``(1, H, W)``)."""
    if item.spatial_dims == 2:
        return a[None]
    return np.moveaxis(a, item.slice_axis, 0)


def item_order(a: np.ndarray, item: Item) -> np.ndarray:
    """Inverse of :func:`slices_first`."""
    if item.spatial_dims == 2:
        return a[0]
    return np.ascontiguousarray(np.moveaxis(a, 0, item.slice_axis))


def resize_labels(lab: np.ndarray, pre: PreprocessConfig) -> np.ndarray:
    """``(S, h, w)`` int labels -> ``(S, H, W)`` uint8 at the preprocessed size (nearest; padding = 0)."""
    s, h, w = lab.shape
    th, tw = pre.resolution  # type: ignore[misc]
    top, left, nh, nw = content_box(h, w, pre)
    t = torch.from_numpy(np.ascontiguousarray(lab, dtype=np.uint8))[:, None].float()
    t = F.interpolate(t, size=(nh, nw), mode="nearest-exact") if (nh, nw) != (h, w) else t
    out = np.zeros((s, th, tw), np.uint8)
    out[:, top:top + nh, left:left + nw] = t[:, 0].numpy().astype(np.uint8)
    return out


def to_original(prob: torch.Tensor, shape_sab: tuple[int, int, int], pre: PreprocessConfig,
                chunk: int = 16) -> np.ndarray:
    """``(K, S, H, W)`` probabilities at the preprocessed size -> ``(S, h, w)`` uint8/int32 labels at the
    original in-plane size (bilinear upsampling of probabilities, argmax), in chunks of slices."""
    k, s = prob.shape[:2]
    _, h, w = shape_sab
    top, left, nh, nw = content_box(h, w, pre)
    out = np.empty((s, h, w), np.uint8 if k < 256 else np.int32)
    for a in range(0, s, chunk):
        p = prob[:, a:a + chunk, top:top + nh, left:left + nw].permute(1, 0, 2, 3).float()
        if (nh, nw) != (h, w):
            p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
        out[a:a + chunk] = p.argmax(1).numpy()
    return out


# ---------------------------------------------------------------------------------------- data
def _targets_key(store: FeatureStore, ds: Dataset) -> str:
    return hash_obj({"features": store.path.name, "dataset": ds.fingerprint(), "v": 1}, n=20)


def prepare_targets(ds: Dataset, store: FeatureStore, indices: list[int], cache_dir: str | Path,
                    patch: int, pre: PreprocessConfig, progress: bool = True) -> Path:
    """Write (once) the preprocessed grey image ``(S, V, H, W)`` float16, the label map at the preprocessed
    size ``(S, H, W)`` uint8 and a sample of foreground voxels of every case in ``indices``; ``pre`` is the
    resolved preprocessing the features were made with."""
    root = Path(cache_dir) / "seg-targets" / _targets_key(store, ds)
    root.mkdir(parents=True, exist_ok=True)
    todo = [i for i in indices if not (root / f"{i}.json").is_file()]
    if not todo:
        return root
    prep = Preprocessor(pre, patch_size=patch)
    prog = Progress(len(todo), desc="prepare seg targets", unit="cases", enabled=progress)
    for i in todo:
        item = ds.load(i)
        if item.mask is None:
            raise DataError("segmentation case has no label map", item.id)
        x = prep(item)  # S, V, 3, H, W
        img = x.mean(2).numpy().astype(np.float16)
        if tuple(item.mask.shape) != item.spatial_shape:
            raise DataError(f"label shape {tuple(item.mask.shape)} != image shape {item.spatial_shape}", item.id)
        lab = slices_first(np.asarray(item.mask), item)
        lab_p = resize_labels(lab, pre)
        fg = np.argwhere(lab_p > 0)
        if len(fg) > 2000:
            fg = fg[np.random.default_rng(i).choice(len(fg), 2000, replace=False)]
        atomic_save_npy(root / f"{i}_img.npy", img)
        atomic_save_npy(root / f"{i}_lab.npy", lab_p)
        atomic_save_npy(root / f"{i}_fg.npy", fg.astype(np.int32))
        atomic_write_json(root / f"{i}.json", {"id": item.id, "shape_sab": list(lab.shape)})
        prog.update()
    prog.close()
    return root


class SegData:
    """Memory-mapped per-case features, images and labels for a set of case indices."""

    def __init__(self, store: FeatureStore, targets: Path, layers: list[int], patch: int) -> None:
        self.store, self.root, self.layers, self.patch = store, Path(targets), list(layers), patch
        self.dims = [int(store.item(0, "patch", layer).shape[1]) for layer in layers]
        self.grid = tuple(int(v) for v in store.item(0, "patch", layers[-1]).shape[2:])
        self.n_views = int(np.load(self.root / f"{self._first()}_img.npy", mmap_mode="r").shape[1])

    def _first(self) -> int:
        return int(next(self.root.glob("*.json")).stem)

    def feats(self, i: int) -> list[np.ndarray]:
        return [self.store.item(i, "patch", layer) for layer in self.layers]

    def image(self, i: int) -> np.ndarray:
        return np.load(self.root / f"{i}_img.npy", mmap_mode="r")

    def label(self, i: int) -> np.ndarray:
        return np.load(self.root / f"{i}_lab.npy", mmap_mode="r")

    def fg(self, i: int) -> np.ndarray:
        return np.load(self.root / f"{i}_fg.npy")

    def n_slices(self, i: int) -> int:
        return int(self.store.slices[i])

    def crop(self, i: int, d0: int, dn: int, y0: int, yn: int, x0: int, xn: int
             ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Features ``[(C, dn, yn, xn)]``, image ``(V, dn, yn*p, xn*p)``, label ``(dn, yn*p, xn*p)`` (grid units;
        slices beyond the case are zero features / ignored labels)."""
        p = self.patch
        s = self.n_slices(i)
        a, b = max(d0, 0), min(d0 + dn, s)
        pad = (a - d0, d0 + dn - b)
        fs = []
        for f in self.feats(i):
            t = torch.from_numpy(np.array(f[a:b, :, y0:y0 + yn, x0:x0 + xn], dtype=np.float32))
            fs.append(F.pad(t.permute(1, 0, 2, 3), (0, 0, 0, 0, *pad)))
        im = torch.from_numpy(np.array(self.image(i)[a:b, :, y0 * p:(y0 + yn) * p, x0 * p:(x0 + xn) * p],
                                         dtype=np.float32))
        im = F.pad(im.permute(1, 0, 2, 3), (0, 0, 0, 0, *pad))
        lab = torch.from_numpy(np.array(self.label(i)[a:b, y0 * p:(y0 + yn) * p, x0 * p:(x0 + xn) * p],
                                          dtype=np.int64))
        lab = F.pad(lab, (0, 0, 0, 0, *pad), value=IGNORE)
        return fs, im, lab


# ---------------------------------------------------------------------------------------- loss
def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, dice_w: float = 1.0, ce_w: float = 1.0
                 ) -> torch.Tensor:
    """CE (ignoring label 255) + batch soft Dice over the foreground classes."""
    logits = logits.float()
    k = logits.shape[1]
    loss = ce_w * F.cross_entropy(logits, target, ignore_index=IGNORE) if ce_w else logits.new_zeros(())
    if dice_w and k > 1:
        valid = (target != IGNORE).unsqueeze(1).float()
        prob = logits.softmax(1) * valid
        onehot = F.one_hot(target.clamp(max=k - 1) * (target != IGNORE), k).movedim(-1, 1).float() * valid
        dims = (0, *range(2, logits.ndim))
        inter = (prob * onehot).sum(dims)[1:]
        denom = (prob + onehot).sum(dims)[1:]
        loss = loss + dice_w * (1.0 - ((2 * inter + 1e-5) / (denom + 1e-5)).mean())
    return loss


# ---------------------------------------------------------------------------------------- training
def augment(fs: list[torch.Tensor], im: torch.Tensor, lab: torch.Tensor, rng: np.random.Generator
            ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The same random in-plane rotation (quarter turns; half turns for non-square crops) and flips applied to
    features, image and labels of one crop."""
    square = lab.shape[-1] == lab.shape[-2] and fs[0].shape[-1] == fs[0].shape[-2]
    k = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
    flip = [d for d in (-1, -2) if rng.random() < 0.5]

    def tf(t: torch.Tensor) -> torch.Tensor:
        if k:
            t = torch.rot90(t, k, dims=(-2, -1))
        if flip:
            t = torch.flip(t, dims=flip)
        return t.contiguous()

    return [tf(f) for f in fs], tf(im), tf(lab)


def _sample(data: SegData, items: list[int], weights: np.ndarray, depth: int, crop: tuple[int, int],
            cfg: SegTrainConfig, rng: np.random.Generator) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    i = items[int(rng.choice(len(items), p=weights))]
    s = data.n_slices(i)
    gh, gw = data.grid
    ch, cw = crop
    fg = data.fg(i) if rng.random() < cfg.fg_fraction else np.zeros((0, 3))
    if len(fg):
        z, y, x = fg[int(rng.integers(len(fg)))]
        p = data.patch
        d0 = int(np.clip(z - depth // 2 + rng.integers(-(depth // 4), depth // 4 + 1), min(0, s - depth),
                         max(0, s - depth)))
        y0 = int(np.clip(y // p - ch // 2, 0, gh - ch))
        x0 = int(np.clip(x // p - cw // 2, 0, gw - cw))
    else:
        d0 = int(rng.integers(min(0, s - depth), max(0, s - depth) + 1)) if s >= depth else 0
        y0, x0 = int(rng.integers(gh - ch + 1)), int(rng.integers(gw - cw + 1))
    fs, im, lab = data.crop(i, d0, depth, y0, ch, x0, cw)
    if cfg.augment:
        fs, im, lab = augment(fs, im, lab, rng)
    return fs, im, lab


def _autocast(amp: str) -> Any:
    if amp == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


def crop_plan(data: Any, train: list[int], is_3d: bool, crop_depth: int, crop_size: int | None, batch_size: int,
              iters_per_epoch: int | None, uniform_volumes: bool = False
              ) -> tuple[int, tuple[int, int], np.ndarray, int]:
    """Training crops of dense heads: ``(depth, (h, w) in grid cells, per-case sampling weights, iterations per
    epoch)``. Cases are drawn in proportion to their slices (uniformly per volume with ``uniform_volumes`` for
    3D heads); an epoch covers about as many grid cells as the training cases hold."""
    depth = crop_depth if is_3d else 1
    gh, gw = data.grid
    crop = (min(crop_size or gh, gh), min(crop_size or gw, gw))
    sl = np.array([data.n_slices(i) for i in train], dtype=np.float64)
    weights = np.full(len(train), 1.0 / len(train)) if is_3d and uniform_volumes else sl / sl.sum()
    per_sample = depth * crop[0] * crop[1] / (gh * gw)
    ipe = iters_per_epoch or max(1, math.ceil(sl.sum() / (per_sample * batch_size)))
    return depth, crop, weights, ipe


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_checkpoint(path: Path | None) -> dict[str, Any] | None:
    """A training checkpoint (tensors and plain data only: ``weights_only=True``), or None when absent or
    unreadable (a damaged checkpoint only costs the epochs it held)."""
    if path is None or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: train from the start
        log.warning("checkpoint %s unreadable (%s): training from the first epoch", path, type(e).__name__)
        return None
    return state if isinstance(state, dict) and "epoch" in state else None


def fit(head: SegHead, data: SegData, train: list[int], val: list[int], cfg: SegTrainConfig, seed: int = 0,
        device: torch.device | str = "cpu", progress: bool = True, checkpoint: Path | None = None
        ) -> dict[str, Any]:
    """Train ``head`` on crops of the ``train`` cases; keep the epoch with the best validation mean Dice.
    Returns the history (loss and val Dice per epoch, best epoch, seconds).

    ``checkpoint``: a file written atomically after every epoch (model, optimiser, schedule, both RNGs, best
    state, history); when it exists, training resumes after its epoch and ends as an uninterrupted run would.
    torch's random stream is seeded with ``seed`` for the training only (:func:`medprobe.utils.torch_seeded`)."""
    with torch_seeded(seed, device):
        return _fit(head, data, train, val, cfg, seed, device, progress, checkpoint)


def _fit(head: SegHead, data: SegData, train: list[int], val: list[int], cfg: SegTrainConfig, seed: int,
         device: torch.device | str, progress: bool, checkpoint: Path | None) -> dict[str, Any]:
    if not train:
        raise ConfigError("segmentation needs at least one training case")
    device = torch.device(device)
    rng = np.random.default_rng(seed)
    head.to(device)
    depth, crop, weights, ipe = crop_plan(data, train, head.is_3d, cfg.crop_depth, cfg.crop_size, cfg.batch_size,
                                          cfg.iters_per_epoch, uniform_volumes=True)
    total = ipe * cfg.epochs
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = int(round(cfg.warmup * total))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    hist: dict[str, Any] = {"loss": [], "val_dice": [], "iters_per_epoch": ipe, "crop": [depth, *crop]}
    best, best_state, best_epoch = -math.inf, None, -1
    t0 = time.perf_counter()
    step, first = 0, 0
    ck = _load_checkpoint(checkpoint)
    if ck is not None:
        head.load_state_dict(ck["head"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        rng.bit_generator.state = ck["rng_np"]
        torch.set_rng_state(ck["rng_torch"])
        hist, best, best_epoch, best_state = ck["hist"], ck["best"], ck["best_epoch"], ck["best_state"]
        step, first = ck["step"], ck["epoch"] + 1
        t0 -= float(ck.get("seconds", 0.0))
        log.info("resuming %s training after epoch %d from %s", head.head_name, ck["epoch"], checkpoint)
    prog = Progress(total - step, desc=f"train {head.head_name}", unit="crops", enabled=progress)
    try:
        for ep in range(first, cfg.epochs):
            head.train()
            losses = []
            for _ in range(ipe):
                batch = [_sample(data, train, weights, depth, crop, cfg, rng) for _ in range(cfg.batch_size)]
                fs = [torch.stack([b[0][k] for b in batch]).to(device) for k in range(len(data.layers))]
                im = torch.stack([b[1] for b in batch]).to(device)
                lab = torch.stack([b[2] for b in batch]).to(device)
                with _autocast(cfg.amp):
                    logits = head(fs, im)
                loss = dice_ce_loss(logits, lab, cfg.dice_weight, cfg.ce_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()
                step += 1
                losses.append(float(loss.detach()))
                prog.update()
            hist["loss"].append(round(float(np.mean(losses)), 5))
            if val:
                d = validate(head, data, val[: cfg.val_cases or None], cfg, device)
                hist["val_dice"].append(round(d, 5))
                if d > best:
                    best, best_epoch = d, ep
                    best_state = copy.deepcopy(head.state_dict())
            log.info("epoch %d: loss %.4f val dice %s", ep, hist["loss"][-1], hist["val_dice"][-1:] or "-")
            if checkpoint is not None:
                _save_checkpoint(Path(checkpoint), {
                    "epoch": ep, "step": step, "head": head.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "rng_np": rng.bit_generator.state, "rng_torch": torch.get_rng_state(),
                    "hist": hist, "best": best, "best_epoch": best_epoch, "best_state": best_state,
                    "seconds": time.perf_counter() - t0})
    finally:
        prog.close()
    if best_state is not None:
        head.load_state_dict(best_state)
    else:
        best_epoch = cfg.epochs - 1
    hist.update(best_epoch=best_epoch, best_val_dice=None if best == -math.inf else round(best, 5),
                seconds=round(time.perf_counter() - t0, 3), steps=step)
    head.eval()
    return hist


def _windows(n: int, win: int, overlap: float) -> list[int]:
    if n <= win:
        return [0]
    stride = max(1, int(win * (1 - overlap)))
    starts = list(range(0, n - win + 1, stride))
    if starts[-1] != n - win:
        starts.append(n - win)
    return starts


@torch.no_grad()
def predict_proba(head: SegHead, data: SegData, i: int, cfg: SegTrainConfig, device: torch.device | str = "cpu"
                  ) -> torch.Tensor:
    """Softmax probabilities ``(K, S, H, W)`` (preprocessed size) of case ``i`` by overlapping windows."""
    head.eval()
    s = data.n_slices(i)
    gh, gw = data.grid
    p = data.patch
    if head.is_3d:
        depth, overlap = cfg.crop_depth, cfg.overlap
    else:
        depth, overlap = min(s, max(1, cfg.crop_depth)), 0.0
    ch, cw = min(cfg.crop_size or gh, gh), min(cfg.crop_size or gw, gw)
    acc = torch.zeros(head.n_classes, s, gh * p, gw * p)
    cnt = torch.zeros(1, s, gh * p, gw * p)
    wins = [(d, y, x) for d in (_windows(s, depth, overlap) if s > depth else [0])
            for y in _windows(gh, ch, cfg.overlap) for x in _windows(gw, cw, cfg.overlap)]
    for a in range(0, len(wins), cfg.infer_batch):
        chunk = wins[a:a + cfg.infer_batch]
        crops = [data.crop(i, d, depth, y, ch, x, cw) for d, y, x in chunk]
        fs = [torch.stack([c[0][k] for c in crops]).to(device) for k in range(len(data.layers))]
        im = torch.stack([c[1] for c in crops]).to(device)
        with _autocast(cfg.amp):
            prob = head(fs, im).float().softmax(1).cpu()
        for (d, y, x), pr in zip(chunk, prob):
            n = min(depth, s - d)
            acc[:, d:d + n, y * p:(y + ch) * p, x * p:(x + cw) * p] += pr[:, :n]
            cnt[:, d:d + n, y * p:(y + ch) * p, x * p:(x + cw) * p] += 1
    return acc / cnt.clamp(min=1)


def dice_per_class(pred: np.ndarray, gt: np.ndarray, k: int) -> list[float]:
    """Dice of classes 1..k-1 (NaN when absent from both): :func:`medprobe.numerics.dice_per_class`."""
    return [float(d) for d in numerics.dice_per_class(pred, gt, range(1, k))]


def validate(head: SegHead, data: SegData, items: list[int], cfg: SegTrainConfig,
             device: torch.device | str = "cpu") -> float:
    """Mean over cases of the class-mean Dice at the preprocessed size (selection metric)."""
    scores = []
    for i in items:
        pred = predict_proba(head, data, i, cfg, device).argmax(0).numpy()
        d = dice_per_class(pred, np.asarray(data.label(i)), head.n_classes)
        if not all(math.isnan(v) for v in d):
            scores.append(float(np.nanmean(d)))
    return float(np.mean(scores)) if scores else 0.0


def load_shape(targets: Path, i: int) -> tuple[int, int, int]:
    return tuple(json.loads((Path(targets) / f"{i}.json").read_text(encoding="utf-8"))["shape_sab"])  # type: ignore[return-value]


__all__ = ["IGNORE", "SegData", "SegTrainConfig", "content_box", "dice_ce_loss", "dice_per_class", "fit",
           "item_order", "load_shape", "predict_proba", "prepare_targets", "resize_labels", "slices_first",
           "to_original", "validate"]
