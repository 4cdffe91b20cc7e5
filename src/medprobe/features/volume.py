"""Volume-in, features-out extraction for 3D encoders (an encoder family with ``volumetric=True``).

Each item is encoded whole: one ``(V, 1, D, H, W)`` input (V = 1, or one view per channel with
``per_channel``) -> one row per item and tapped stage: ``cls`` ``(C)``, ``mean`` ``(C)`` (the patch grid's
average) and ``patch`` ``(C, d, h, w)``; views are folded into the channel axis as for 2D. The entry is the
same content-addressed, sharded, resumable cache entry as 2D features (:mod:`medprobe.features.cache`), its key
over everything in :func:`~medprobe.features.engine.entry_spec` plus the resolved volume geometry
(``spec["volume"]``). :func:`medprobe.features.engine.extract` and ``lookup`` hand volumetric encoders here.

Manifest additions: ``grid`` is ``[d, h, w]`` of the last tapped stage, ``dims`` / ``grids`` per stage (stages
differ in width), ``volume``: the geometry, intensity, normalisation and feature contract (what results record).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medprobe.data.base import Dataset
from medprobe.encoders.families import get_family
from medprobe.encoders.volume3d import native_size, volume_size
from medprobe.errors import ConfigError, MedprobeError
from medprobe.features.cache import (
    FeatureStore,
    ShardPlan,
    array_checksums,
    array_name,
    cache_key,
    remove_entry,
    shard_dir,
    shard_done,
    write_manifest,
)
from medprobe.features.engine import (
    ExtractConfig,
    _opened,
    _opened_or_dropped,
    effective_amp,
    entry_spec,
    ranks,
)
from medprobe.preprocess import PreprocessConfig
from medprobe.preprocess.intensity import resolve_intensity
from medprobe.preprocess.volume import VolumeGeometry, VolumePreprocessor, volume_geometry
from medprobe.utils import Progress, atomic_save_npy, atomic_write_json, default_cache_dir

log = logging.getLogger("medprobe.features")


def is_volumetric(encoder: Any) -> bool:
    """True when the encoder's family takes whole volumes."""
    try:
        return bool(getattr(get_family(encoder.spec.family), "volumetric", False))
    except (ConfigError, AttributeError):
        return False


def resolve_volume(pre: PreprocessConfig, dataset: Dataset, encoder: Any) -> tuple[PreprocessConfig, VolumeGeometry]:
    """The resolved preprocessing (``resolution`` = the in-plane ``(H, W)``) and the volume geometry.

    ``intensity: auto`` on CT stored as HU (not 8-bit) takes the encoder's pre-training window
    (``hf_config["intensity"]``); otherwise auto resolves as for 2D. Size: ``resolution`` (H, W) or the native
    size, depth keeping the native ratio (:func:`~medprobe.encoders.volume3d.volume_size`)."""
    spec = encoder.spec
    if dataset.spatial_dims != 3:
        raise ConfigError(f"encoder {spec.name} encodes whole volumes; dataset {dataset.name} is 2D")
    dtype: Any = np.float32
    if pre.intensity == "auto" and len(dataset):
        dtype = dataset.load(0).image.dtype
    intensity = pre.intensity
    if intensity == "auto" and dataset.modality == "ct" and np.dtype(dtype) != np.uint8 and \
            spec.hf_config.get("intensity"):
        intensity = str(spec.hf_config["intensity"])
    intensity = resolve_intensity(intensity, dataset.modality, dtype)
    nd, nh, nw = native_size(spec)
    res = replace(pre, intensity=intensity).resolved(mean=spec.mean, std=spec.std, native_resolution=nh,
                                                     modality=dataset.modality, dtype=dtype)
    if pre.resolution is None:
        res = replace(res, resolution=(nh, nw))
    size = volume_size(spec, res.resolution)
    encoder.check_volume_size(size)
    geom = volume_geometry(size, spec.hf_config.get("spacing", (1.0, 1.0, 1.0)), res.resize, res.interpolation)
    return res, geom


def _facts(encoder: Any, pre: PreprocessConfig, geom: VolumeGeometry) -> dict[str, Any]:
    fam = get_family(encoder.spec.family)
    assert pre.mean is not None and pre.std is not None
    return {**geom.to_dict(), "input": [1, *geom.size], "intensity": pre.intensity,
            "mean": pre.mean[0], "std": pre.std[0], "channels": pre.channels,
            "encoder_family": fam.name, "contract": {"cls": fam.cls_feature, "patch": fam.patch_feature,
                                                     "taps": fam.taps}}


def _spec(dataset: Dataset, encoder: Any, pre: PreprocessConfig, geom: VolumeGeometry, cfg: ExtractConfig,
          device: torch.device) -> dict[str, Any]:
    return {**entry_spec(dataset, encoder, pre, cfg, device), "volume": geom.to_dict()}


def _open(entry: Path, pre: PreprocessConfig, cfg: ExtractConfig, reused: bool) -> FeatureStore | None:
    store = _opened_or_dropped(entry, pre, cfg) if reused else _opened(entry, pre, cfg, reused=False)
    if store is not None:
        store.volume = store.manifest.get("volume")  # type: ignore[attr-defined]
    return store


def lookup_volumes(dataset: Dataset, encoder: Any, preprocess: PreprocessConfig | None = None,
                   config: ExtractConfig | None = None, *, cache_dir: str | Path | None = None,
                   device: str | torch.device = "cpu") -> FeatureStore | None:
    """The complete cache entry of a volumetric encoder for these inputs, or ``None``."""
    cfg = config or ExtractConfig()
    pre, geom = resolve_volume(preprocess or PreprocessConfig(), dataset, encoder)
    spec = _spec(dataset, encoder, pre, geom, cfg, torch.device(device))
    entry = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / cache_key(spec)
    if not (entry / "manifest.json").is_file():
        return None
    log.info("features cached: %s (skipping extraction)", entry)
    return _open(entry, pre, cfg, reused=True)


def volumes_per_batch(encoder: Any, size: tuple[int, int, int], asked: int, device: torch.device) -> int:
    """Volumes per forward pass: at most ``asked``, and no more than a rough memory bound allows (about 200
    input-sized float32 activations per volume: Swin's window attention at stage 0 alone holds ~140); batching
    changes no feature value."""
    from medprobe.features.engine import available_memory

    per = int(np.prod(size)) * 4 * 200
    free = available_memory(device)
    fit = max(1, (free // 2) // per) if free else asked
    return max(1, min(asked, fit))


def extract_volumes(dataset: Dataset, encoder: Any, preprocess: PreprocessConfig | None = None,
                    config: ExtractConfig | None = None, *, cache_dir: str | Path | None = None,
                    device: str | torch.device | None = None, rank: int | None = None, world: int | None = None,
                    shard: tuple[int, int] | None = None) -> FeatureStore | None:
    """Extract (or reuse) whole-volume features of every item; same sharding, resume and return value as
    :func:`medprobe.features.engine.extract`."""
    cfg = config or ExtractConfig()
    dev = torch.device(device) if device is not None else next(encoder.parameters(), torch.empty(0)).device
    pre, geom = resolve_volume(preprocess or PreprocessConfig(), dataset, encoder)
    spec = _spec(dataset, encoder, pre, geom, cfg, dev)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = root / cache_key(spec)
    if (entry / "manifest.json").is_file():
        store = _open(entry, pre, cfg, reused=True)
        if store is not None:
            return store
    dist, rank, world = ranks(rank, world, shard)
    spec_file = entry / "spec.json"
    shard_items = cfg.shard_items or 8
    if spec_file.is_file():
        shard_items = int(json.loads(spec_file.read_text(encoding="utf-8"))["shard_items"])
    plan = ShardPlan.make(len(dataset), shard_items)
    if (rank == 0 or shard is not None) and not spec_file.is_file():
        atomic_write_json(spec_file, {**spec, "shard_items": shard_items, "key": entry.name})
    assert pre.mean is not None and pre.std is not None
    prep = VolumePreprocessor(pre.intensity, pre.channels, geom, pre.mean[0], pre.std[0], pre.slice_axis)
    ad, _ = effective_amp(cfg.amp, dev, encoder)
    per_batch = volumes_per_batch(encoder, geom.size, cfg.batch_size, dev)
    layers = list(spec["layers"])
    mine = [k for k in range(len(plan)) if k % world == rank and not shard_done(entry, k)]
    prog = Progress(sum(plan.bounds[k][1] - plan.bounds[k][0] for k in mine), desc=f"extract {encoder.spec.name}",
                    unit="volumes", enabled=cfg.progress)
    t0 = time.perf_counter()
    try:
        for k in mine:
            _shard(entry, k, plan.bounds[k], dataset, encoder, prep, cfg, layers, dev, ad, per_batch, prog)
    except MedprobeError:
        remove_entry(entry)
        raise
    except OSError as e:
        raise ConfigError(f"cannot write the feature cache ({e.strerror or type(e).__name__}); finished shards "
                          "are kept and a rerun resumes from them", entry) from None
    finally:
        prog.close()
    elapsed = time.perf_counter() - t0
    if dist and shard is None:
        torch.distributed.barrier()
    if not all(shard_done(entry, k) for k in range(len(plan))):
        return None
    if (rank == 0 or shard is not None) and not (entry / "manifest.json").is_file():
        dims, grids = _shapes(entry, plan, layers, cfg.tokens)
        last = str(layers[-1])
        write_manifest(entry, spec, plan, {
            "ids": dataset.ids(), "dim": dims.get(last, 0), "grid": grids.get(last, [0, 0, 0]),
            "dims": dims, "grids": grids, "volume": _facts(encoder, pre, geom),
            "encoder_info": encoder.describe(), "extract_config": asdict(cfg), "shard_items": shard_items,
            "volumes_per_batch": per_batch, "device": str(dev), "seconds_last_run": elapsed, "world": world,
            "torch": torch.__version__,
        })
    if dist and shard is None:
        torch.distributed.barrier()
    return _open(entry, pre, cfg, reused=False)


def _shapes(entry: Path, plan: ShardPlan, layers: list[int], tokens: tuple[str, ...]
            ) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Per tapped stage: the width of its vector rows (``cls``, else ``mean``, else the patch channels; CTViT's
    last ``cls`` is CT-CLIP's projected embedding, narrower or wider than its tokens) and its patch grid
    (``[0, 0, 0]`` when patches were not kept), read from the first non-empty shard."""
    dims: dict[str, int] = {}
    grids: dict[str, list[int]] = {}
    k = next((k for k, (a, b) in enumerate(plan.bounds) if b > a), None)
    if k is None:
        return dims, grids
    for layer in layers:
        shapes = {t: np.load(shard_dir(entry, k) / array_name(t, layer), mmap_mode="r").shape for t in tokens}
        first = next(t for t in ("cls", "mean", "patch") if t in shapes)
        dims[str(layer)] = int(shapes[first][1])
        grids[str(layer)] = [int(v) for v in shapes["patch"][2:5]] if "patch" in shapes else [0, 0, 0]
    return dims, grids


@torch.inference_mode()
def _run(encoder: Any, x: torch.Tensor, layers: list[int], tokens: tuple[str, ...], dev: torch.device,
         ad: torch.dtype | None, storage: np.dtype, out: dict[tuple[str, int], list[np.ndarray]]) -> None:
    x = x.to(dev, non_blocking=True)
    if ad is not None:
        with torch.autocast(dev.type, dtype=ad):
            o = encoder.forward_features(x, layers)
    else:
        o = encoder.forward_features(x, layers)
    for layer in layers:
        p = o.patch[layer].float()
        for t in tokens:
            v = o.cls[layer].float() if t == "cls" else p.mean((2, 3, 4)) if t == "mean" else p
            out[(t, layer)].append(v.cpu().numpy().astype(storage, copy=False))


def _shard(entry: Path, k: int, bounds: tuple[int, int], dataset: Dataset, encoder: Any, prep: VolumePreprocessor,
           cfg: ExtractConfig, layers: list[int], dev: torch.device, ad: torch.dtype | None, per_batch: int,
           prog: Progress) -> None:
    t0 = time.perf_counter()
    start, stop = bounds
    storage = np.dtype(cfg.storage)
    out: dict[tuple[str, int], list[np.ndarray]] = {(t, layer): [] for t in cfg.tokens for layer in layers}
    views: int | None = None
    pending: list[torch.Tensor] = []
    for i in range(start, stop):
        x = prep(dataset.load(i))  # (V, 1, D, H, W)
        if views is None:
            views = int(x.shape[0])
        elif x.shape[0] != views:
            raise ConfigError(f"volumes have {views} and {x.shape[0]} channels; per_channel needs the same count "
                              "everywhere")
        pending.append(x)
        if sum(int(p.shape[0]) for p in pending) >= per_batch:
            _run(encoder, torch.cat(pending), layers, cfg.tokens, dev, ad, storage, out)
            pending = []
        prog.update()
    if pending:
        _run(encoder, torch.cat(pending), layers, cfg.tokens, dev, ad, storage, out)
    d = shard_dir(entry, k)
    d.mkdir(parents=True, exist_ok=True)
    names = []
    v = views or 1
    for (t, layer), parts in out.items():
        a = np.concatenate(parts) if parts else np.zeros((0,), storage)
        if v > 1 and a.size:
            a = a.reshape(a.shape[0] // v, v * a.shape[1], *a.shape[2:])
        names.append(array_name(t, layer))
        atomic_save_npy(d / array_name(t, layer), a)
    atomic_save_npy(d / "rows.npy", np.ones(stop - start, dtype=np.int64))
    atomic_write_json(d / "done.json", {"items": [start, stop], "rows": stop - start,
                                        "seconds": time.perf_counter() - t0, "pid": os.getpid(),
                                        "files": array_checksums(d, [*names, "rows.npy"])})


__all__ = ["extract_volumes", "is_volumetric", "lookup_volumes", "resolve_volume", "volumes_per_batch"]
