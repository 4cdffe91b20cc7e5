"""The machinery every extraction unit shares: effective precision, the entry spec (what a cache key covers),
preprocess resolution, the memory check, the encoder runner, ranks, the sharded-entry driver, and opening
(or dropping) a cache entry. The image, volume, tile and pair units (:mod:`medprobe.features.units`) import it;
it imports no unit.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medprobe.data.base import Dataset
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
from medprobe.features.units import ResolvedEntry
from medprobe.preprocess import PreprocessConfig
from medprobe.utils import Progress, atomic_save_npy, atomic_write_json, default_cache_dir, hash_obj

log = logging.getLogger("medprobe.features")


# ------------------------------------------------------------------------------------------ precision
def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype actually used (None = full precision)."""
    if amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if amp == "bf16" else torch.float16


DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


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
    return ad, f"torch autocast {DTYPE_NAMES[ad]} on {device.type} (amp={amp})"


def precision_facts(amp: str, storage: str, device: torch.device, encoder: Any) -> dict[str, Any]:
    """What the record states about the encoder's numerics: effective precision, what was asked, why."""
    ad, why = effective_amp(amp, device, encoder)
    return {"encoder": DTYPE_NAMES[ad] if ad is not None else "fp32", "amp_requested": amp, "why": why,
            "features_stored": storage}


# ------------------------------------------------------------------------------------------ entry spec
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


def device_of(encoder: Any, device: str | torch.device | None) -> torch.device:
    """The device asked for, else the encoder's (its first parameter's; the CPU for a parameter-less one or an
    :class:`~medprobe.encoders.EncoderInfo`)."""
    if device is not None:
        return torch.device(device)
    params = getattr(encoder, "parameters", None)
    return next(params(), torch.empty(0)).device if callable(params) else torch.device("cpu")


def cache_root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


# ------------------------------------------------------------------------------------------ memory
def _proc_kb(path: str, key: str) -> int | None:
    try:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _address_space_left() -> int | None:
    """Bytes this process may still map under an address-space limit (``ulimit -v`` / RLIMIT_AS), or None."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft in (resource.RLIM_INFINITY, -1) or soft <= 0:
        return None
    used = _proc_kb("/proc/self/status", "VmSize")
    return max(int(soft) - (used or 0), 0)


def available_memory(device: torch.device) -> int | None:
    """Bytes free for one extraction: free GPU memory on CUDA, else the host's MemAvailable, lowered to what
    an address-space limit (``ulimit -v``) still allows this process (None: unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    free = _proc_kb("/proc/meminfo", "MemAvailable")
    if free is None:
        try:
            free = int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            free = None
    left = _address_space_left()
    if left is not None:
        free = left if free is None else min(free, left)
    return free


def batch_memory(encoder: Any, resolution: tuple[int, int], batch_size: int, views: int = 1) -> int:
    """A lower bound on the bytes one encoder batch needs: the float32 input and a few token-sized
    activations per block boundary (what any ViT/CNN forward holds at once)."""
    h, w = resolution
    p = max(int(encoder.patch_size), 1)
    tokens = (h // p) * (w // p) + 1
    width = max(int(getattr(encoder.spec, "width", 0) or 0), 3)
    return int(batch_size * views * (3 * h * w * 4 * 2 + tokens * width * 4 * 6))


HEADROOM = 0.6  # share of the free memory an automatic batch may plan to use (the rest: the host, the store)
AUTO_CAP = {"cpu": 64, "cuda": 128}  # the largest automatic batch (a bigger one buys no speed)


@dataclass
class BatchPlan:
    """How one extraction batches: ``asked`` ('auto' or a number), ``batch`` (planned from the encoder's memory
    model), ``used`` (after the first batch's measurement and any halving on an allocation failure),
    ``model_per_item`` / ``measured_per_item`` (bytes), ``budget`` (bytes an automatic batch may use)."""

    asked: int | str
    batch: int
    used: int
    model_per_item: int
    budget: int | None
    measured_per_item: int | None = None
    halvings: int = 0

    def facts(self) -> dict[str, Any]:
        return {"asked": self.asked, "planned": self.batch, "used": self.used,
                "model_mb_per_item": round(self.model_per_item / 2**20, 1),
                "measured_mb_per_item": (round(self.measured_per_item / 2**20, 1)
                                         if self.measured_per_item is not None else None),
                "halvings": self.halvings}


_PLAN: ContextVar[BatchPlan | None] = ContextVar("medprobe_batch_plan", default=None)


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def plan_batch(encoder: Any, shape: Sequence[int], asked: int | str, device: torch.device,
               views: int = 1) -> BatchPlan:
    """The batch of one extraction from the encoder family's memory model
    (:func:`medprobe.encoders.families.model_of`) and the free memory (:func:`available_memory`).

    ``asked='auto'``: the largest batch whose need fits ``HEADROOM`` of the free memory (at most
    ``AUTO_CAP``); an explicit number is kept. Either is refused in one line, before any work, when it cannot
    fit (one item for 'auto'), naming the memory it needs."""
    from medprobe.encoders.families import model_of

    model = model_of(encoder, shape)
    per = model.per_item * max(int(views), 1)
    free = available_memory(device)
    what = "x".join(str(int(s)) for s in shape)
    name = getattr(getattr(encoder, "spec", None), "name", "the encoder")
    if asked == "auto":
        cap = AUTO_CAP.get(device.type, 64)
        if free is None:
            return BatchPlan(asked, min(cap, 16), min(cap, 16), per, None)
        budget = int(free * HEADROOM)
        n = max(1, min(cap, (budget - model.params) // max(per, 1)))
        need = model.params + per
        if need > free:
            raise ConfigError(f"{name} at {what} needs {_gb(need)} for one item ({_gb(model.params)} parameters + "
                              f"{_gb(per)} activations: {model.why}); {_gb(free)} is free on {device}: lower "
                              "the resolution or use a machine with more memory")
        return BatchPlan(asked, int(n), int(n), per, budget)
    n = int(asked)
    need = model.params + n * per
    if free is not None and need > free:
        fit = max(0, (free - model.params) // max(per, 1))
        hint = f"batch_size {fit} fits" if fit >= 1 else "not even one item fits: lower the resolution"
        raise ConfigError(f"{name} at {what} with batch_size {n} needs {_gb(need)} ({_gb(model.params)} parameters "
                          f"+ {_gb(per)} per item: {model.why}); {_gb(free)} is free on {device}: {hint} "
                          "(or batch_size: auto)")
    return BatchPlan(asked, n, n, per, None)


@contextmanager
def batch_plan(plan: BatchPlan) -> Iterator[BatchPlan]:
    """Make ``plan`` the one the :class:`Runner` objects of this extraction follow (measure, halve, record)."""
    token = _PLAN.set(plan)
    try:
        yield plan
    finally:
        _PLAN.reset(token)


def current_plan() -> BatchPlan | None:
    """The :class:`BatchPlan` of the extraction in progress (None outside one)."""
    return _PLAN.get()


def check_memory(encoder: Any, resolution: tuple[int, int], batch_size: int | str, device: torch.device) -> None:
    """Refuse, before anything is written, an extraction whose single batch cannot fit in memory
    (:func:`plan_batch` with the family's memory model; the lower bound :func:`batch_memory` as well)."""
    plan = current_plan()
    asked = plan.used if plan is not None and batch_size == "auto" else batch_size
    if asked == "auto":
        plan_batch(encoder, resolution, "auto", device)
        return
    plan_batch(encoder, resolution, int(asked), device)
    need = batch_memory(encoder, resolution, int(asked))
    free = available_memory(device)
    if free is not None and need > free:
        raise ConfigError(f"resolution {resolution[0]}x{resolution[1]} with batch size {asked} needs at least "
                          f"{_gb(need)} for one batch, {_gb(free)} is free on {device}: lower the "
                          f"resolution or features.batch_size")


def _alloc_failure(e: BaseException) -> bool:
    """An allocation failure a smaller batch can avoid (CPU "can't allocate", CUDA out of memory)."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("can't allocate" in text or "out of memory" in text
                                            or "not enough memory" in text or "failed to allocate" in text)


def _reset_peak() -> int | None:
    """Reset this process's peak RSS (Linux clear_refs 5); the RSS now, or None when it cannot be measured."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return None
    return _proc_kb("/proc/self/status", "VmRSS")


# ------------------------------------------------------------------------------------------ the runner
class Runner:
    """Runs the encoder on batches (2D images / slices / tiles ``(B, 3, H, W)``, or volumes ``(B, 1, D, H, W)``)
    and collects per-token/per-layer outputs in row order: ``cls``, ``mean`` (the patch grid's average over its
    spatial axes) and ``patch``."""

    def __init__(self, encoder: Any, layers: Sequence[int], tokens: Sequence[str], device: torch.device,
                 autocast: torch.dtype | None, storage: np.dtype) -> None:
        self.encoder, self.layers, self.tokens = encoder, tuple(layers), tuple(tokens)
        self.device, self.autocast, self.storage = device, autocast, storage
        self.chunks: dict[tuple[str, int], list[np.ndarray]] = {(t, layer): [] for t in tokens for layer in layers}

    def run(self, x: torch.Tensor) -> int:
        """Encode the rows of ``x``; returns how many. Follows the extraction's :class:`BatchPlan`: the first
        forward of an automatic batch is a small probe whose measured peak confirms (or lowers) the batch, and a
        forward that fails to allocate is retried in halves (rows are independent: no feature value changes)."""
        plan = current_plan()
        if plan is None:
            self._forward(x)
            return len(x)
        a = 0
        while a < len(x):
            if plan.measured_per_item is None and plan.budget is not None:
                k = min(2, len(x) - a, plan.used)
                self._measured(x[a:a + k], plan)
                a += k
                continue
            k = min(plan.used, len(x) - a)
            try:
                self._forward(x[a:a + k])
            except (RuntimeError, MemoryError) as e:
                if not _alloc_failure(e) or k <= 1:
                    raise
                plan.used, plan.halvings = max(1, k // 2), plan.halvings + 1
                log.warning("encoder batch of %d failed to allocate; retrying with %d", k, plan.used)
                continue
            a += k
        return len(x)

    def _measured(self, x: torch.Tensor, plan: BatchPlan) -> None:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            base: int | None = int(torch.cuda.memory_allocated(self.device))
        else:
            base = _reset_peak()
        self._forward(x)
        peak = (int(torch.cuda.max_memory_allocated(self.device)) if cuda
                else _proc_kb("/proc/self/status", "VmHWM"))
        if base is None or peak is None:
            plan.measured_per_item = plan.model_per_item
            return
        per = max((peak - base) // max(len(x), 1), 1)
        plan.measured_per_item = int(per)
        if plan.budget is not None:
            fit = max(1, plan.budget // per)
            if fit < plan.used:
                log.info("measured %.1f MB per item: batch %d -> %d", per / 2**20, plan.used, fit)
                plan.used = int(fit)

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> None:
        x = x.to(self.device, non_blocking=True)
        if self.autocast is not None:
            with torch.autocast(self.device.type, dtype=self.autocast):
                out = self.encoder.forward_features(x, self.layers)
        else:
            out = self.encoder.forward_features(x, self.layers)
        for layer in self.layers:
            p = out.patch[layer].float()
            for t in self.tokens:
                v = (out.cls[layer].float() if t == "cls" else p.mean(tuple(range(2, p.ndim))) if t == "mean"
                     else p).cpu()
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


# ------------------------------------------------------------------------------------------ entries
def open_entry(entry: Path, pre: PreprocessConfig, cfg: Any, reused: bool) -> FeatureStore:
    """The store of a complete entry with the resolved configs it was made with (never read back from disk)."""
    store = FeatureStore(entry)
    store.reused = reused
    store.preprocess = pre
    store.extract_config = cfg
    return store


DAMAGED = "cached features {key} are damaged ({problem}): recomputing them"


def open_or_drop(entry: Path, pre: PreprocessConfig, cfg: Any, message: str = DAMAGED) -> FeatureStore | None:
    """The complete entry, or None after removing it when its files fail their checksums (one line says so:
    ``message`` with ``{key}`` and ``{problem}`` filled in)."""
    try:
        store = open_entry(entry, pre, cfg, reused=True)
    except CorruptEntry as e:  # one line for the event (printed), nothing else said about it
        print("medprobe: " + message.format(key=entry.name, problem=e.problem), file=sys.stderr, flush=True)
        log.debug("cache entry %s damaged: %s", entry, e.problem)
        remove_entry(entry)
        return None
    log.info("features cached: %s (skipping extraction)", entry)  # said once the entry proved whole
    return store


def found_entry(cache_dir: str | Path | None, resolved: ResolvedEntry, what: str = "features") -> Path | None:
    """The folder of the complete entry ``resolved`` names (its manifest exists), else None."""
    entry = cache_root(cache_dir) / resolved.key
    if not (entry / "manifest.json").is_file():
        return None
    log.debug("%s found: %s", what, entry)  # reuse is said once the entry opens (open_or_drop)
    return entry


def run_shards(entry: Path, spec: dict[str, Any], n_items: int, shard_items: int, *, rank: int | None,
               world: int | None, shard: tuple[int, int] | None, progress: bool, desc: str, unit: str,
               work: Callable[[int, tuple[int, int], Progress], None],
               manifest: Callable[[ShardPlan, int, float, int], dict[str, Any]]) -> bool:
    """Drive one sharded entry: shards of ``shard_items`` whole items (the plan an entry was started with wins on
    resume), this process's shards (``k % world == rank``) not yet done run ``work(k, bounds, progress)``;
    whoever finds every shard done writes the manifest (``manifest(plan, shard_items, seconds, world)``: its
    extra fields). Returns True when the entry is complete.

    Bad input (:class:`MedprobeError`) leaves no partial entry; an ``OSError`` (full disk) keeps finished shards
    for a resumed run."""
    dist, rank, world = ranks(rank, world, shard)
    spec_file = entry / "spec.json"
    if spec_file.is_file():  # resume with the plan the entry was started with
        shard_items = int(json.loads(spec_file.read_text(encoding="utf-8"))["shard_items"])
    plan = ShardPlan.make(n_items, shard_items)
    if (rank == 0 or shard is not None) and not spec_file.is_file():  # job arrays: any shard may start first
        atomic_write_json(spec_file, {**spec, "shard_items": shard_items, "key": entry.name})
    mine = [k for k in range(len(plan)) if k % world == rank and not shard_done(entry, k)]
    todo = sum(plan.bounds[k][1] - plan.bounds[k][0] for k in mine)
    prog = Progress(todo, desc=desc + (f" [rank {rank}/{world}]" if world > 1 else ""), unit=unit, enabled=progress)
    t_start = time.perf_counter()
    try:
        for k in mine:
            work(k, plan.bounds[k], prog)
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
    if not all(shard_done(entry, k) for k in range(len(plan))):
        return False
    if (rank == 0 or shard is not None) and not (entry / "manifest.json").is_file():
        write_manifest(entry, spec, plan, manifest(plan, shard_items, elapsed, world))
    if dist and shard is None:
        torch.distributed.barrier()
    return True


def write_shard(entry: Path, k: int, bounds: tuple[int, int], arrays: Mapping[tuple[str, int], np.ndarray],
                rows: Sequence[int], seconds: float) -> None:
    """Shard ``k`` of an entry (items ``bounds``): one array per (token, layer), ``rows.npy`` (rows per item),
    then ``done.json`` with every file's size and CRC-32 (written last: the shard is complete)."""
    start, stop = bounds
    d = shard_dir(entry, k)
    d.mkdir(parents=True, exist_ok=True)
    names = [array_name(t, layer) for (t, layer) in arrays]
    for (t, layer), a in arrays.items():
        atomic_save_npy(d / array_name(t, layer), a)
    atomic_save_npy(d / "rows.npy", np.asarray(rows, dtype=np.int64))
    atomic_write_json(d / "done.json", {"items": [start, stop], "rows": int(sum(rows)), "seconds": seconds,
                                        "pid": os.getpid(), "files": array_checksums(d, [*names, "rows.npy"])})


def keyed(resolved_pre: PreprocessConfig, cfg: Any, spec: dict[str, Any], **extra: Any) -> ResolvedEntry:
    """A :class:`ResolvedEntry` whose key is the spec's cache key."""
    return ResolvedEntry(preprocess=resolved_pre, config=cfg, spec=spec, key=cache_key(spec), extra=extra)


__all__ = ["AUTO_CAP", "DTYPE_NAMES", "HEADROOM", "BatchPlan", "Runner", "amp_dtype", "available_memory",
           "batch_memory", "batch_plan", "cache_root", "check_memory", "current_plan", "plan_batch",
           "device_of", "effective_amp", "entry_spec", "found_entry", "keyed", "open_entry", "open_or_drop",
           "precision_facts", "ranks", "resolve_preprocess", "run_shards", "write_shard"]
