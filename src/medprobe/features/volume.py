"""Volume-in, features-out extraction for 3D encoders (an encoder family with ``volumetric=True``).

Each item is encoded whole: one ``(V, 1, D, H, W)`` input (V = 1, or one view per channel with
``per_channel``) -> one row per item and tapped stage: ``cls`` ``(C)``, ``mean`` ``(C)`` (the patch grid's
average) and ``patch`` ``(C, d, h, w)``; views are folded into the channel axis as for 2D. The entry is the
same content-addressed, sharded, resumable cache entry as 2D features (:mod:`medprobe.features.cache`), its key
over everything in :func:`~medprobe.features.common.entry_spec` plus the resolved volume geometry
(``spec["volume"]``). The ``volume`` extraction unit: it claims every encoder whose family is volumetric, so
:func:`medprobe.features.engine.extract` and ``lookup`` hand those here.

Manifest additions: ``grid`` is ``[d, h, w]`` of the last tapped stage, ``dims`` / ``grids`` per stage (stages
differ in width), ``volume``: the geometry, intensity, normalisation and feature contract (what results record).
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medprobe.data.base import Dataset
from medprobe.encoders.families import get_family
from medprobe.encoders.volume3d import native_size, volume_size
from medprobe.errors import ConfigError
from medprobe.features.cache import FeatureStore, ShardPlan, array_name, shard_dir
from medprobe.features.common import (
    Runner,
    available_memory,
    cache_root,
    device_of,
    effective_amp,
    entry_spec,
    found_entry,
    keyed,
    open_entry,
    open_or_drop,
    run_shards,
    write_shard,
)
from medprobe.features.config import ExtractConfig
from medprobe.features.units import ExtractionUnit, ResolvedEntry, register_unit
from medprobe.preprocess import PreprocessConfig
from medprobe.preprocess.intensity import resolve_intensity
from medprobe.preprocess.volume import VolumeGeometry, VolumePreprocessor, volume_geometry
from medprobe.utils import Progress


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


def _with_volume(store: FeatureStore | None) -> FeatureStore | None:
    if store is not None:
        store.volume = store.manifest.get("volume")  # type: ignore[attr-defined]
    return store


def volumes_per_batch(encoder: Any, size: tuple[int, int, int], asked: int, device: torch.device) -> int:
    """Volumes per forward pass: at most ``asked``, and no more than a rough memory bound allows (about 200
    input-sized float32 activations per volume: Swin's window attention at stage 0 alone holds ~140); batching
    changes no feature value."""
    per = int(np.prod(size)) * 4 * 200
    free = available_memory(device)
    fit = max(1, (free // 2) // per) if free else asked
    return max(1, min(asked, fit))


class VolumeUnit(ExtractionUnit):
    """Whole volumes through a 3D encoder: one row per volume (claims every volumetric encoder)."""

    name = "volume"

    def claims(self, dataset: Any, encoder: Any) -> bool:
        try:
            return bool(get_family(encoder.spec.family).volumetric)
        except (ConfigError, AttributeError):
            return False

    def check(self, dataset: Any, encoder: Any) -> None:
        if not self.claims(dataset, encoder):
            name = getattr(getattr(encoder, "spec", None), "name", "?")
            raise ConfigError(f"the volume extraction unit takes whole-volume (3D) encoders; {name} is 2D",
                              "features")

    def resolve(self, dataset: Any, encoder: Any, preprocess: Any, config: Any, *, options: dict[str, Any],
                device: Any) -> ResolvedEntry:
        cfg = config or ExtractConfig()
        pre, geom = resolve_volume(preprocess or PreprocessConfig(), dataset, encoder)
        spec = {**entry_spec(dataset, encoder, pre, cfg, torch.device(device)), "volume": geom.to_dict()}
        return keyed(pre, cfg, spec, geometry=geom)

    def item_shape(self, resolved: ResolvedEntry) -> tuple[int, ...]:
        return tuple(int(s) for s in resolved.extra["geometry"].size)

    def lookup(self, dataset: Any, encoder: Any, preprocess: Any, config: Any, *, options: dict[str, Any],
               cache_dir: Any, device: Any) -> FeatureStore | None:
        r = self.resolve(dataset, encoder, preprocess, config, options=options, device=device)
        entry = found_entry(cache_dir, r)
        return _with_volume(open_or_drop(entry, r.preprocess, r.config)) if entry is not None else None

    def extract(self, dataset: Any, encoder: Any, preprocess: Any, config: Any, *, options: dict[str, Any],
                cache_dir: Any, device: Any, rank: int | None, world: int | None,
                shard: tuple[int, int] | None) -> FeatureStore | None:
        dev = device_of(encoder, device)
        r = self.resolve(dataset, encoder, preprocess, config, options=options, device=dev)
        pre, cfg, spec, geom = r.preprocess, r.config, r.spec, r.extra["geometry"]
        entry = cache_root(cache_dir) / r.key
        if (entry / "manifest.json").is_file():
            store = _with_volume(open_or_drop(entry, pre, cfg))
            if store is not None:
                return store
        assert pre.mean is not None and pre.std is not None
        prep = VolumePreprocessor(pre.intensity, pre.channels, geom, pre.mean[0], pre.std[0], pre.slice_axis)
        ad, _ = effective_amp(cfg.amp, dev, encoder)
        per_batch = volumes_per_batch(encoder, geom.size, cfg.batch_size, dev)
        layers = list(spec["layers"])

        def work(k: int, bounds: tuple[int, int], prog: Progress) -> None:
            _shard(entry, k, bounds, dataset, encoder, prep, cfg, layers, dev, ad, per_batch, prog)

        def manifest(plan: ShardPlan, shard_items: int, elapsed: float, world: int) -> dict[str, Any]:
            dims, grids = _shapes(entry, plan, layers, cfg.tokens)
            last = str(layers[-1])
            return {"ids": dataset.ids(), "dim": dims.get(last, 0), "grid": grids.get(last, [0, 0, 0]),
                    "dims": dims, "grids": grids, "volume": _facts(encoder, pre, geom),
                    "encoder_info": encoder.describe(), "extract_config": asdict(cfg), "shard_items": shard_items,
                    "volumes_per_batch": per_batch, "device": str(dev), "seconds_last_run": elapsed,
                    "world": world, "torch": torch.__version__}

        done = run_shards(entry, spec, len(dataset), cfg.shard_items or 8, rank=rank, world=world, shard=shard,
                          progress=cfg.progress, desc=f"extract {encoder.spec.name}", unit="volumes", work=work,
                          manifest=manifest)
        return _with_volume(open_entry(entry, pre, cfg, reused=False)) if done else None


VOLUME = register_unit(VolumeUnit())


def lookup_volumes(dataset: Dataset, encoder: Any, preprocess: PreprocessConfig | None = None,
                   config: ExtractConfig | None = None, *, cache_dir: str | Path | None = None,
                   device: str | torch.device = "cpu") -> FeatureStore | None:
    """The complete cache entry of a volumetric encoder for these inputs, or ``None``."""
    return VOLUME.lookup(dataset, encoder, preprocess, config, options={}, cache_dir=cache_dir, device=device)


def extract_volumes(dataset: Dataset, encoder: Any, preprocess: PreprocessConfig | None = None,
                    config: ExtractConfig | None = None, *, cache_dir: str | Path | None = None,
                    device: str | torch.device | None = None, rank: int | None = None, world: int | None = None,
                    shard: tuple[int, int] | None = None) -> FeatureStore | None:
    """Extract (or reuse) whole-volume features of every item; same sharding, resume and return value as
    :func:`medprobe.features.engine.extract`."""
    return VOLUME.extract(dataset, encoder, preprocess, config, options={}, cache_dir=cache_dir, device=device,
                          rank=rank, world=world, shard=shard)


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


def _shard(entry: Path, k: int, bounds: tuple[int, int], dataset: Dataset, encoder: Any, prep: VolumePreprocessor,
           cfg: ExtractConfig, layers: list[int], dev: torch.device, ad: torch.dtype | None, per_batch: int,
           prog: Progress) -> None:
    t0 = time.perf_counter()
    start, stop = bounds
    runner = Runner(encoder, layers, cfg.tokens, dev, ad, np.dtype(cfg.storage))
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
            runner.run(torch.cat(pending))
            prog.update(len(pending))  # progress counts encoded volumes, not volumes read
            pending = []
    if pending:
        runner.run(torch.cat(pending))
        prog.update(len(pending))
    write_shard(entry, k, bounds, runner.take(views or 1), [1] * (stop - start), time.perf_counter() - t0)


__all__ = ["VOLUME", "VolumeUnit", "extract_volumes", "lookup_volumes", "resolve_volume", "volumes_per_batch"]
