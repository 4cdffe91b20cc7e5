"""The ``image`` extraction unit: one row per 2D image or per slice of a volume (CLS, mean patch token, patch
grids).

Slices of many volumes fill the same batches; outputs are reassembled per item, in order. Work is split into
shards of whole items: ``rank``/``world`` (``torchrun``) or ``--shard i/n`` (job arrays) take disjoint shards,
and whoever finds every shard complete writes the manifest.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medprobe.data.base import Dataset
from medprobe.errors import ConfigError
from medprobe.features.cache import FeatureStore, ShardPlan, array_name, shard_dir
from medprobe.features.common import (
    Runner,
    cache_root,
    check_memory,
    current_plan,
    device_of,
    effective_amp,
    entry_spec,
    found_entry,
    keyed,
    open_entry,
    open_or_drop,
    resolve_preprocess,
    run_shards,
    write_shard,
)
from medprobe.features.config import ExtractConfig
from medprobe.features.units import ExtractionUnit, ResolvedEntry, register_unit
from medprobe.preprocess import PreprocessConfig, Preprocessor
from medprobe.utils import Progress


class _ItemSource(torch.utils.data.Dataset):
    """Map-style dataset over one shard's items -> (index, (S, V, 3, H, W) tensor)."""

    def __init__(self, dataset: Dataset, pre: Preprocessor, start: int, stop: int) -> None:
        self.dataset, self.pre, self.start, self.stop = dataset, pre, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, j: int) -> tuple[int, torch.Tensor]:
        i = self.start + j
        return i, self.pre(self.dataset.load(i))


def _iter_items(src: _ItemSource, workers: int, prefetch: bool) -> Iterator[tuple[int, torch.Tensor]]:
    """Items in order. ``workers>0``: DataLoader worker processes. ``workers=0``: read + preprocess in this
    process -- inline on the CPU (the encoder already uses every core, and a second thread's OpenMP work only
    contends with it), or in one background thread ahead of an accelerator (``prefetch``)."""
    if workers <= 0 and not prefetch:
        for j in range(len(src)):
            yield src[j]
        return
    if workers <= 0:
        from concurrent.futures import ThreadPoolExecutor

        ahead = 8
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medprobe-prefetch") as pool:
            futures = [pool.submit(src.__getitem__, j) for j in range(min(ahead, len(src)))]
            for j in range(len(src)):
                item = futures[j].result()
                if j + ahead < len(src):
                    futures.append(pool.submit(src.__getitem__, j + ahead))
                futures[j] = None  # type: ignore[call-overload]
                yield item
        return
    loader = torch.utils.data.DataLoader(src, batch_size=None, shuffle=False, num_workers=workers,
                                         prefetch_factor=4, persistent_workers=False)
    yield from loader


class ImageUnit(ExtractionUnit):
    """2D images, and volumes slice by slice through a 2D encoder (the default unit)."""

    name = "image"

    def resolve(self, dataset: Any, encoder: Any, preprocess: Any, config: Any, *, options: dict[str, Any],
                device: Any) -> ResolvedEntry:
        cfg = config or ExtractConfig()
        pre = resolve_preprocess(preprocess or PreprocessConfig(), dataset, encoder)
        return keyed(pre, cfg, entry_spec(dataset, encoder, pre, cfg, torch.device(device)))

    def lookup(self, dataset: Any, encoder: Any, preprocess: Any, config: Any, *, options: dict[str, Any],
               cache_dir: Any, device: Any) -> FeatureStore | None:
        r = self.resolve(dataset, encoder, preprocess, config, options=options, device=device)
        entry = found_entry(cache_dir, r)
        return open_or_drop(entry, r.preprocess, r.config) if entry is not None else None

    def extract(self, dataset: Any, encoder: Any, preprocess: Any, config: Any, *, options: dict[str, Any],
                cache_dir: Any, device: Any, rank: int | None, world: int | None,
                shard: tuple[int, int] | None) -> FeatureStore | None:
        dev = device_of(encoder, device)
        r = self.resolve(dataset, encoder, preprocess, config, options=options, device=dev)
        pre, cfg, spec = r.preprocess, r.config, r.spec
        check_memory(encoder, pre.resolution, cfg.batch_size, dev)
        entry = cache_root(cache_dir) / r.key
        if found_entry(cache_dir, r) is not None:
            store = open_or_drop(entry, pre, cfg)
            if store is not None:
                return store
        layers = spec["layers"]
        prep = Preprocessor(pre, patch_size=encoder.patch_size)
        ad, _ = effective_amp(cfg.amp, dev, encoder)
        storage = np.dtype(cfg.storage)

        def work(k: int, bounds: tuple[int, int], prog: Progress) -> None:
            _extract_shard(entry, k, bounds, dataset, encoder, prep, cfg, layers, dev, ad, storage, prog)

        def manifest(plan: ShardPlan, shard_items: int, elapsed: float, world: int) -> dict[str, Any]:
            shapes = {layer: _grid_of(entry, plan, [layer]) for layer in layers}
            grid = shapes[layers[-1]]
            return {"ids": dataset.ids(), "dim": grid[0], "grid": list(grid[1:]),
                    "dims": {str(la): g[0] for la, g in shapes.items()},
                    "grids": {str(la): list(g[1:]) for la, g in shapes.items()},
                    "token_dims": _token_dims(entry, plan, layers, cfg.tokens),
                    "encoder_info": encoder.describe(), "extract_config": asdict(cfg),
                    "shard_items": shard_items, "device": str(dev), "seconds_last_run": elapsed,
                    "world": world, "torch": torch.__version__, **_batch_facts(cfg)}

        done = run_shards(entry, spec, len(dataset), cfg.shard_items or (256 if dataset.spatial_dims == 2 else 8),
                          rank=rank, world=world, shard=shard, progress=cfg.progress,
                          desc=f"extract {encoder.spec.name}", unit="items", work=work, manifest=manifest)
        return open_entry(entry, pre, cfg, reused=False) if done else None


def _batch_facts(cfg: ExtractConfig) -> dict[str, Any]:
    """The batch the extraction ran with (``batch_size``: the one used last) and how it was chosen."""
    plan = current_plan()
    if plan is None:
        return {"batch_size": cfg.batch_size}
    return {"batch_size": plan.used, "batch": plan.facts()}


def _token_dims(entry: Path, plan: ShardPlan, layers: Sequence[int], tokens: Sequence[str]) -> dict[str, int]:
    """Width of every stored array (``cls_L11`` -> 384): cls / mean vectors may differ from the patch grid's
    channels (encoder ``none``: the flattened pixel grid), and ``cache verify`` checks each against it."""
    out: dict[str, int] = {}
    for k, (a, b) in enumerate(plan.bounds):
        if b > a:
            for t in tokens:
                for layer in layers:
                    f = shard_dir(entry, k) / array_name(t, layer)
                    if f.is_file():
                        out[f.name[:-4]] = int(np.load(f, mmap_mode="r").shape[1])
            break
    return out


def _grid_of(entry: Path, plan: ShardPlan, layers: Sequence[int]) -> tuple[int, int, int]:
    for k, (a, b) in enumerate(plan.bounds):
        if b > a:
            for t in ("patch", "cls", "mean"):
                f = shard_dir(entry, k) / array_name(t, layers[-1])
                if f.is_file():
                    shp = np.load(f, mmap_mode="r").shape
                    return (shp[1], shp[2], shp[3]) if t == "patch" else (shp[1], 0, 0)
    return (0, 0, 0)


def _extract_shard(entry: Path, k: int, bounds: tuple[int, int], dataset: Dataset, encoder: Any,
                   prep: Preprocessor, cfg: ExtractConfig, layers: Sequence[int], dev: torch.device,
                   ad: torch.dtype | None, storage: np.dtype, prog: Progress) -> None:
    t0 = time.perf_counter()
    start, stop = bounds
    runner = Runner(encoder, layers, cfg.tokens, dev, ad, storage)
    rows: list[int] = []
    views: int | None = None
    pending: list[torch.Tensor] = []
    n_pending = 0
    # progress counts encoded items: an item is done once its last row has been through the encoder
    ends: list[int] = []
    read = encoded = 0
    batch = cfg.batch_size if isinstance(cfg.batch_size, int) else 64  # the engine hands a planned number

    def encoded_rows(n: int) -> None:
        nonlocal encoded
        encoded += n
        done = 0
        while ends and ends[0] <= encoded:
            ends.pop(0)
            done += 1
        if done:
            prog.update(done)

    for _i, x in _iter_items(_ItemSource(dataset, prep, start, stop), cfg.workers, dev.type != "cpu"):
        s, v = x.shape[:2]
        if views is None:
            views = v
        elif v != views:
            raise ConfigError(f"items have {views} and {v} channels; per_channel needs the same count everywhere")
        rows.append(s)
        pending.append(x.reshape(s * v, *x.shape[2:]))
        n_pending += s * v
        read += s * v
        ends.append(read)
        while n_pending >= batch:
            flat = torch.cat(pending) if len(pending) > 1 else pending[0]
            encoded_rows(runner.run(flat[:batch]))
            rest = flat[batch:]
            pending, n_pending = ([rest] if len(rest) else []), len(rest)
    if n_pending:
        encoded_rows(runner.run(torch.cat(pending)))
    write_shard(entry, k, bounds, runner.take(views or 1), rows, time.perf_counter() - t0)


IMAGE = register_unit(ImageUnit())

__all__ = ["IMAGE", "ImageUnit"]
