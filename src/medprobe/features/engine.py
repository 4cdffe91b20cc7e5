"""The extraction engine: dataset + encoder -> cached features (CLS, mean patch token, patch grids).

Slices of many volumes fill the same batches; outputs are reassembled per item, in order. Work is
split into shards of whole items: ``rank``/``world`` (``torchrun``) or ``--shard i/n`` (job arrays) take
disjoint shards, and whoever finds every shard complete writes the manifest.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medprobe.data.base import Dataset
from medprobe.encoders.base import Encoder
from medprobe.errors import ConfigError, MedprobeError
from medprobe.features.cache import (
    CorruptEntry,
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
from medprobe.features.config import ExtractConfig
from medprobe.preprocess import PreprocessConfig, Preprocessor
from medprobe.utils import Progress, atomic_save_npy, atomic_write_json, default_cache_dir, hash_obj

log = logging.getLogger("medprobe.features")


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype actually used (None = full precision)."""
    if amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if amp == "bf16" else torch.float16


_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def effective_amp(amp: str, device: torch.device, encoder: Any) -> tuple[torch.dtype | None, str]:
    """The autocast dtype this encoder really runs under (None = full precision) and why; computed once for
    both the cache key and the record. A family declaring ``autocast=False`` (ONNX graphs) runs in fp32."""
    from medprobe.encoders.families import get_family

    family = getattr(encoder.spec, "family", "")
    try:
        autocast = get_family(family).autocast
    except ConfigError:  # an ad-hoc spec outside the family table: autocast applies as asked
        autocast = True
    ad = amp_dtype(amp, device)
    if not autocast:
        why = (f"amp={amp} has no effect: {family} encoders run outside torch autocast (fp32 graph)"
               if ad is not None else f"{family} encoders run in fp32")
        return None, why
    if ad is None:
        return None, ("amp=off" if amp == "off" else f"amp=auto on {device.type}: no autocast")
    return ad, f"torch autocast {_DTYPE_NAMES[ad]} on {device.type} (amp={amp})"


def precision_facts(amp: str, storage: str, device: torch.device, encoder: Any) -> dict[str, Any]:
    """What the record states about the encoder's numerics: effective precision, what was asked, why."""
    ad, why = effective_amp(amp, device, encoder)
    return {"encoder": _DTYPE_NAMES[ad] if ad is not None else "fp32", "amp_requested": amp, "why": why,
            "features_stored": storage}


def entry_spec(dataset: Dataset, encoder: Any, pre: PreprocessConfig, cfg: ExtractConfig,
               device: torch.device) -> dict[str, Any]:
    """Everything that changes a feature value (hashed into the cache key); ``amp`` is the effective autocast
    (:func:`effective_amp`), so an option that cannot change this encoder's numbers does not split the cache."""
    ad, _ = effective_amp(cfg.amp, device, encoder)
    spec = {
        "encoder": encoder.spec.name,
        "weights": encoder.weights_id,
        "pretrained": encoder.pretrained,
        "preprocess": pre.to_dict(),
        "layers": list(encoder.resolve_layers(cfg.layers)),
        "tokens": sorted(cfg.tokens),
        "storage": cfg.storage,
        "amp": str(ad).replace("torch.", "") if ad else "off",
        "dataset_name": dataset.name,
        "dataset": dataset.fingerprint(),
        "items": hash_obj(dataset.ids(), n=16),
    }
    options = getattr(encoder, "options", None)
    if options:  # family build options (e.g. an ONNX graph's output tensor) change the features
        spec["encoder_options"] = {k: options[k] for k in sorted(options)}
    return spec


def resolve_preprocess(pre: PreprocessConfig, dataset: Dataset, encoder: Any) -> PreprocessConfig:
    """Fill encoder/dataset defaults; the dtype for 'auto' intensity is taken from the first item."""
    dtype: Any = np.float32
    if pre.intensity == "auto" and len(dataset):
        dtype = dataset.load(0).image.dtype
    res = pre.resolved(mean=encoder.spec.mean, std=encoder.spec.std,
                       native_resolution=encoder.fixed_resolution or encoder.spec.native_resolution,
                       modality=dataset.modality, dtype=dtype)
    h, w = res.resolution  # type: ignore[misc]
    encoder.check_input_size(h, w)
    return res


def available_memory(device: torch.device) -> int | None:
    """Bytes free for one extraction: free GPU memory on CUDA, else the host's MemAvailable (None: unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def batch_memory(encoder: Any, resolution: tuple[int, int], batch_size: int, views: int = 1) -> int:
    """A lower bound on the bytes one encoder batch needs: the float32 input and a few token-sized
    activations per block boundary (what any ViT/CNN forward holds at once)."""
    h, w = resolution
    p = max(int(encoder.patch_size), 1)
    tokens = (h // p) * (w // p) + 1
    width = max(int(getattr(encoder.spec, "width", 0) or 0), 3)
    return int(batch_size * views * (3 * h * w * 4 * 2 + tokens * width * 4 * 6))


def check_memory(encoder: Any, resolution: tuple[int, int], batch_size: int, device: torch.device) -> None:
    """Refuse, before anything is written, an extraction whose single batch cannot fit in memory."""
    need = batch_memory(encoder, resolution, batch_size)
    free = available_memory(device)
    if free is not None and need > free:
        gb = 2**30
        raise ConfigError(f"resolution {resolution[0]}x{resolution[1]} with batch size {batch_size} needs at least "
                          f"{need / gb:.1f} GB for one batch, {free / gb:.1f} GB is free on {device}: lower the "
                          f"resolution or features.batch_size")


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


class _Runner:
    """Runs the encoder on batches of slices and collects per-token/per-layer outputs in row order."""

    def __init__(self, encoder: Encoder, layers: Sequence[int], tokens: Sequence[str], device: torch.device,
                 autocast: torch.dtype | None, storage: np.dtype) -> None:
        self.encoder, self.layers, self.tokens = encoder, tuple(layers), tuple(tokens)
        self.device, self.autocast, self.storage = device, autocast, storage
        self.chunks: dict[tuple[str, int], list[np.ndarray]] = {(t, layer): [] for t in tokens for layer in layers}

    @torch.inference_mode()
    def run(self, x: torch.Tensor) -> None:
        x = x.to(self.device, non_blocking=True)
        if self.autocast is not None:
            with torch.autocast(self.device.type, dtype=self.autocast):
                out = self.encoder.forward_features(x, self.layers)
        else:
            out = self.encoder.forward_features(x, self.layers)
        for layer in self.layers:
            p = out.patch[layer].float()
            for t in self.tokens:
                v = (out.cls[layer].float() if t == "cls" else p.mean((2, 3)) if t == "mean" else p).cpu()
                if v.untyped_storage().nbytes() > v.numel() * v.element_size():
                    v = v.clone()  # a view (e.g. token 0 of all tokens) would keep the whole batch output alive
                self.chunks[(t, layer)].append(v.numpy().astype(self.storage, copy=False))

    def take(self, views: int) -> dict[tuple[str, int], np.ndarray]:
        """Concatenate collected rows; fold V views of a slice into the channel axis."""
        res = {}
        for key, parts in self.chunks.items():
            a = np.concatenate(parts) if parts else np.zeros((0,), self.storage)
            if views > 1 and a.size:
                a = a.reshape(a.shape[0] // views, views * a.shape[1], *a.shape[2:])
            res[key] = a
            parts.clear()
        return res


def ranks(rank: int | None, world: int | None, shard: tuple[int, int] | None) -> tuple[bool, int, int]:
    """(torch.distributed in use, this process's rank, world size): ``shard`` (``--shard i/n``) wins, then the
    given rank/world, then the process group (``torchrun``), else a single process."""
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank is None or world is None:
        rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist else (0, 1)
    if shard is not None:
        rank, world = shard
        if not 0 <= rank < world:
            raise ConfigError(f"--shard must be i/n with 0 <= i < n, got {rank}/{world}")
    return dist, rank, world


def _volumetric(encoder: Any) -> bool:
    """True when the encoder's family encodes whole volumes (extraction then runs medprobe.features.volume)."""
    from medprobe.encoders.families import get_family

    try:
        return bool(get_family(encoder.spec.family).volumetric)
    except (ConfigError, AttributeError):
        return False


def lookup(dataset: Dataset, encoder: Any, preprocess: PreprocessConfig | None = None,
           config: ExtractConfig | None = None, *, cache_dir: str | Path | None = None,
           device: str | torch.device = "cpu") -> FeatureStore | None:
    """The complete cache entry for these inputs, or ``None``. ``encoder`` may be an
    :class:`~medprobe.encoders.EncoderInfo`, so a cached run never builds the network."""
    if getattr(dataset, "unit", None) == "slide":  # whole slides: tile bags (features/slides.py)
        from medprobe.features.slides import lookup_slides

        return lookup_slides(dataset, encoder, preprocess, config, cache_dir=cache_dir, device=device)
    if _volumetric(encoder):  # whole-volume encoders: medprobe.features.volume
        from medprobe.features.volume import lookup_volumes

        return lookup_volumes(dataset, encoder, preprocess, config, cache_dir=cache_dir, device=device)
    cfg = config or ExtractConfig()
    pre = resolve_preprocess(preprocess or PreprocessConfig(), dataset, encoder)
    spec = entry_spec(dataset, encoder, pre, cfg, torch.device(device))
    entry = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / cache_key(spec)
    if not (entry / "manifest.json").is_file():
        return None
    log.info("features cached: %s (skipping extraction)", entry)
    return _opened_or_dropped(entry, pre, cfg)


def _opened_or_dropped(entry: Path, pre: PreprocessConfig, cfg: ExtractConfig) -> FeatureStore | None:
    """The complete entry, or None after removing it when its files fail their checksums (one line says so)."""
    try:
        return _opened(entry, pre, cfg, reused=True)
    except CorruptEntry as e:
        print(f"medprobe: cached features {entry.name} are damaged ({e.problem}): recomputing them",
              file=sys.stderr, flush=True)
        log.warning("cache entry %s damaged: %s", entry, e.problem)
        remove_entry(entry)
        return None


def _opened(entry: Path, pre: PreprocessConfig, cfg: ExtractConfig, reused: bool) -> FeatureStore:
    """The store of a complete entry with the resolved configs it was made with (never read back from disk)."""
    store = FeatureStore(entry)
    store.reused = reused
    store.preprocess = pre
    store.extract_config = cfg
    return store


def extract(dataset: Dataset, encoder: Encoder, preprocess: PreprocessConfig | None = None,
            config: ExtractConfig | None = None, *, cache_dir: str | Path | None = None,
            device: str | torch.device | None = None, rank: int | None = None, world: int | None = None,
            shard: tuple[int, int] | None = None) -> FeatureStore | None:
    """Extract (or reuse) features of every item of ``dataset``; returns the :class:`FeatureStore` with the
    resolved configs it was made with (``store.preprocess``, ``store.extract_config``, ``store.layers``).

    ``rank``/``world`` default to torch.distributed's when it is initialised. With ``shard=(i, n)``
    only shards ``k % n == i`` are computed; the return value is ``None`` until all shards exist.
    """
    if getattr(dataset, "unit", None) == "slide":  # whole slides: tile bags (features/slides.py)
        from medprobe.features.slides import extract_slides

        return extract_slides(dataset, encoder, preprocess, config, cache_dir=cache_dir, device=device, rank=rank,
                              world=world, shard=shard)
    if _volumetric(encoder):  # whole-volume encoders: medprobe.features.volume
        from medprobe.features.volume import extract_volumes

        return extract_volumes(dataset, encoder, preprocess, config, cache_dir=cache_dir, device=device, rank=rank,
                               world=world, shard=shard)
    cfg = config or ExtractConfig()
    dev = torch.device(device) if device is not None else next(encoder.parameters(), torch.empty(0)).device
    pre = resolve_preprocess(preprocess or PreprocessConfig(), dataset, encoder)
    check_memory(encoder, pre.resolution, cfg.batch_size, dev)  # type: ignore[arg-type]
    spec = entry_spec(dataset, encoder, pre, cfg, dev)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = root / cache_key(spec)
    if (entry / "manifest.json").is_file():
        log.info("features cached: %s (skipping extraction)", entry)
        store = _opened_or_dropped(entry, pre, cfg)
        if store is not None:
            return store

    dist, rank, world = ranks(rank, world, shard)

    spec_file = entry / "spec.json"
    shard_items = cfg.shard_items or (256 if dataset.spatial_dims == 2 else 8)
    if spec_file.is_file():  # resume with the plan the entry was started with
        shard_items = int(json.loads(spec_file.read_text(encoding="utf-8"))["shard_items"])
    plan = ShardPlan.make(len(dataset), shard_items)
    if (rank == 0 or shard is not None) and not spec_file.is_file():  # job arrays: any shard may start first
        atomic_write_json(spec_file, {**spec, "shard_items": shard_items, "key": entry.name})

    layers = spec["layers"]
    prep = Preprocessor(pre, patch_size=encoder.patch_size)
    ad, _ = effective_amp(cfg.amp, dev, encoder)
    storage = np.dtype(cfg.storage)
    mine = [k for k in range(len(plan)) if k % world == rank and not shard_done(entry, k)]
    todo_items = sum(plan.bounds[k][1] - plan.bounds[k][0] for k in mine)
    prog = Progress(todo_items, desc=f"extract {encoder.spec.name}" + (f" [rank {rank}/{world}]" if world > 1 else ""),
                    unit="items", enabled=cfg.progress)
    t_start = time.perf_counter()
    try:
        for k in mine:
            _extract_shard(entry, k, plan.bounds[k], dataset, encoder, prep, cfg, layers, dev, ad, storage, prog)
    except MedprobeError:
        # bad input is deterministic: resuming would fail on the same case, so leave no partial entry
        remove_entry(entry)
        raise
    except OSError as e:  # full disk, cache folder removed under us: finished shards stay for a resumed run
        raise ConfigError(f"cannot write the feature cache ({e.strerror or type(e).__name__}); finished shards "
                          "are kept and a rerun resumes from them", entry) from None
    finally:
        prog.close()
    elapsed = time.perf_counter() - t_start

    if dist and shard is None:
        torch.distributed.barrier()
    if all(shard_done(entry, k) for k in range(len(plan))):
        if rank == 0 or shard is not None:
            if not (entry / "manifest.json").is_file():
                shapes = {layer: _grid_of(entry, plan, [layer]) for layer in layers}
                grid = shapes[layers[-1]]
                write_manifest(entry, spec, plan, {
                    "ids": dataset.ids(), "dim": grid[0], "grid": list(grid[1:]),
                    "dims": {str(la): g[0] for la, g in shapes.items()},
                    "grids": {str(la): list(g[1:]) for la, g in shapes.items()},
                    "token_dims": _token_dims(entry, plan, layers, cfg.tokens),
                    "encoder_info": encoder.describe(), "extract_config": asdict(cfg),
                    "shard_items": shard_items, "device": str(dev), "seconds_last_run": elapsed,
                    "world": world, "torch": torch.__version__,
                })
        if dist and shard is None:
            torch.distributed.barrier()
        return _opened(entry, pre, cfg, reused=False)
    return None


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


def _extract_shard(entry: Path, k: int, bounds: tuple[int, int], dataset: Dataset, encoder: Encoder,
                   prep: Preprocessor, cfg: ExtractConfig, layers: Sequence[int], dev: torch.device,
                   ad: torch.dtype | None, storage: np.dtype, prog: Progress) -> None:
    t0 = time.perf_counter()
    start, stop = bounds
    runner = _Runner(encoder, layers, cfg.tokens, dev, ad, storage)
    rows: list[int] = []
    views: int | None = None
    pending: list[torch.Tensor] = []
    n_pending = 0
    for _i, x in _iter_items(_ItemSource(dataset, prep, start, stop), cfg.workers, dev.type != "cpu"):
        s, v = x.shape[:2]
        if views is None:
            views = v
        elif v != views:
            raise ConfigError(f"items have {views} and {v} channels; per_channel needs the same count everywhere")
        rows.append(s)
        pending.append(x.reshape(s * v, *x.shape[2:]))
        n_pending += s * v
        while n_pending >= cfg.batch_size:
            flat = torch.cat(pending) if len(pending) > 1 else pending[0]
            runner.run(flat[: cfg.batch_size])
            rest = flat[cfg.batch_size:]
            pending, n_pending = ([rest] if len(rest) else []), len(rest)
        prog.update()
    if n_pending:
        runner.run(torch.cat(pending))
    out = runner.take(views or 1)
    d = shard_dir(entry, k)
    d.mkdir(parents=True, exist_ok=True)
    names = [array_name(t, layer) for (t, layer) in out]
    for (t, layer), a in out.items():
        atomic_save_npy(d / array_name(t, layer), a)
    atomic_save_npy(d / "rows.npy", np.asarray(rows, dtype=np.int64))
    atomic_write_json(d / "done.json", {"items": [start, stop], "rows": int(sum(rows)),
                                        "seconds": time.perf_counter() - t0, "pid": os.getpid(),
                                        "files": array_checksums(d, [*names, "rows.npy"])})
