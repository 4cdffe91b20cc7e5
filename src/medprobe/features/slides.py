"""Slide feature bags: every slide of a slide dataset -> tissue mask -> tile grid -> frozen-encoder features.

One cache entry per slide (content-addressed by the encoder, preprocessing, layers, tokens, tiling and tissue
options and the slide file's identity, so tasks sharing slides -- BCNB's five targets, CAMELYON16 train and
CAMELYON17 test runs -- share their features). A slide entry is an ordinary engine entry of one item whose rows
are its tiles (:class:`~medprobe.features.cache.FeatureStore` reads it); its shard folder also holds
``coords.npy`` ((N, 2) level-0 (x, y) top-left corners, int64), ``tissue_fraction.npy``, ``tissue.png`` (the
tissue mask), ``thumbnail.jpg`` and ``plan.json`` (the tiling and tissue facts).

A dataset's bags are one more entry (the *bag index*) whose manifest lists the slide entries' shard folders, so
the whole dataset opens as one ``FeatureStore`` (``store.bags()``: per slide its (N_i, C) tile vectors).

Resumable at slide granularity: a slide's entry is written (atomically) only once all its tiles are encoded; a
killed run leaves finished slides and recomputes the one it was on, from its first tile (features are a
deterministic function of the tile pixels). Slides are shared across ``torchrun`` ranks (slide ``k`` goes to rank
``k % world``) or job-array shards (``shard=(i, n)``); whoever finds every slide done writes the bag index.
Tiles are streamed (one batch of pixels per read; a whole level never sits in memory) and, with
``workers > 0``, read, resized and normalised in worker processes while the encoder runs.

The ``tile`` extraction unit (:class:`TileUnit`): it claims slide datasets (``dataset.unit == "slide"``) and takes
the unit options ``tiling`` (:class:`~medprobe.data.tiling.TilingConfig`) and ``tissue``
(:class:`~medprobe.preprocess.tissue.TissueConfig`), typed objects or their mappings (defaults when absent).
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medprobe.data.base import Dataset, Item
from medprobe.data.tiling import TilingConfig
from medprobe.encoders.base import Encoder
from medprobe.errors import ConfigError, DataError, MedprobeError
from medprobe.features.cache import (
    CorruptEntry,
    FeatureStore,
    ShardPlan,
    array_checksums,
    array_name,
    cache_key,
    remove_entry,
    shard_dir,
    write_manifest,
)
from medprobe.features.common import (
    Runner,
    cache_root,
    check_memory,
    device_of,
    effective_amp,
    entry_spec,
    found_entry,
    open_entry,
    open_or_drop,
    ranks,
    resolve_preprocess,
)
from medprobe.features.config import ExtractConfig
from medprobe.features.units import ExtractionUnit, ResolvedEntry, register_unit
from medprobe.preprocess import PreprocessConfig, Preprocessor
from medprobe.preprocess.tissue import TissueConfig
from medprobe.schema import parse_section
from medprobe.utils import Progress, atomic_save_npy, atomic_write_bytes, atomic_write_json

log = logging.getLogger("medprobe.features")

SLIDE_FORMAT = 1  # layout of a slide entry (coords, tissue mask, plan); part of every key


def slide_options(unit_options: Mapping[str, Any] | None = None, where: str | None = None) -> tuple[Any, Any]:
    """The tile unit's ``tiling`` and ``tissue`` options as typed objects: given (a
    :class:`~medprobe.data.tiling.TilingConfig` / :class:`~medprobe.preprocess.tissue.TissueConfig`, or a mapping
    parsed like a task section: a mistyped key is one line with the closest one), else the defaults."""
    opts = unit_options or {}
    return (parse_section(TilingConfig, opts.get("tiling"), "tiling", where),
            parse_section(TissueConfig, opts.get("tissue"), "tissue", where))


def _slide_identity(item: Item) -> dict[str, Any]:
    """What identifies a slide's pixels and scale: resolved path, size, mtime and the pixel size used."""
    path = Path(str(item.meta.get("slide_path") or item.source or item.id))
    try:
        st = path.stat()
        ident: dict[str, Any] = {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        ident = {"path": str(path), "id": item.id}
    mpp = item.meta.get("mpp")
    if mpp is None:
        mpp = getattr(item.image, "mpp", None)
    ident["mpp"] = None if mpp is None else float(mpp)
    ident["reader"] = f"{type(item.image).__module__}.{type(item.image).__qualname__}"  # a reader changing pixels
    return ident


def _base_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The encoder/preprocessing part of an engine entry spec (no dataset fields)."""
    return {k: v for k, v in spec.items() if k not in ("dataset_name", "dataset", "items")}


def slide_entry_spec(base: dict[str, Any], item: Item, tiling: Any, tissue: Any) -> dict[str, Any]:
    """Everything that changes a slide's tile features (hashed into its key)."""
    return {**base, "unit": "tile", "slide_format": SLIDE_FORMAT, "tiling": tiling.to_dict(),
            "tissue": tissue.to_dict(), "slide": _slide_identity(item)}


def bag_spec(spec: dict[str, Any], tiling: Any, tissue: Any) -> dict[str, Any]:
    """The key spec of a dataset's bag index: the engine's spec plus the slide options."""
    return {**spec, "unit": "tile", "slide_format": SLIDE_FORMAT, "tiling": tiling.to_dict(),
            "tissue": tissue.to_dict()}


def _specs(dataset: Dataset, spec: dict[str, Any], tiling: Any, tissue: Any
           ) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """(bag index spec, per-slide entry specs, per-slide keys); the index spec names its slides' keys, so a
    dataset whose slides read differently (another file, pixel size or reader) never reuses an index."""
    base = _base_spec(spec)
    slide_specs = [slide_entry_spec(base, dataset.load(i), tiling, tissue) for i in range(len(dataset))]
    keys = [cache_key(s) for s in slide_specs]
    return {**bag_spec(spec, tiling, tissue), "slides": keys}, slide_specs, keys


# ------------------------------------------------------------------------------------------ tile reading
class _TileSource:
    """Per process: plans slides and reads + preprocesses tile chunks (slides opened once, kept open)."""

    def __init__(self, dataset: Dataset, pre: PreprocessConfig, patch_size: int, tiling: Any, tissue: Any) -> None:
        self.dataset, self.pre_cfg, self.patch_size = dataset, pre, patch_size
        self.tiling, self.tissue = tiling, tissue
        self._pre: Preprocessor | None = None
        self._items: dict[int, Item] = {}

    def item(self, i: int) -> Item:
        if i not in self._items:
            if len(self._items) >= 4:  # a few open slides per process
                old = self._items.pop(next(iter(self._items)))
                close = getattr(old.image, "close", None)
                if callable(close):
                    close()
            self._items[i] = self.dataset.load(i)
        return self._items[i]

    def plan(self, i: int) -> tuple[Any, Any]:
        """(TilePlan, TissueMask) of slide ``i``."""
        from medprobe.data.tiling import plan_tiles
        from medprobe.preprocess.tissue import detect_tissue

        slide = self.item(i).image
        mask = detect_tissue(slide, self.tissue)  # type: ignore[arg-type]
        return plan_tiles(slide, self.tiling, mask), mask  # type: ignore[arg-type]

    def chunk(self, i: int, plan: Any) -> np.ndarray:
        """The preprocessed tiles of ``plan`` (a slice of a slide's plan): (B, 3, H, W) float32."""
        from medprobe.data.tiling import iter_tiles

        if self._pre is None:
            self._pre = Preprocessor(self.pre_cfg, patch_size=self.patch_size)
        it = self.item(i)
        out = []
        for _idx, tiles in iter_tiles(it.image, plan, batch_size=max(len(plan), 1)):  # type: ignore[arg-type]
            for t in tiles:
                tile = Item(id=it.id, image=t, spatial_dims=2, source=it.source)
                out.append(self._pre(tile)[:, 0])
        return torch.cat(out).numpy() if out else np.zeros((0, 3, *self.pre_cfg.resolution), np.float32)  # type: ignore[misc]


_WORKER: dict[str, _TileSource] = {}


def _worker_init(source: _TileSource) -> None:
    torch.set_num_threads(1)  # the encoder owns the cores; readers decode, resize and normalise
    _WORKER["src"] = source


def _worker_plan(i: int) -> tuple[Any, Any]:
    return _WORKER["src"].plan(i)


def _worker_chunk(i: int, plan: Any) -> np.ndarray:
    return _WORKER["src"].chunk(i, plan)


def _local(source: _TileSource, fn: Any) -> Any:
    """The in-process method a worker function stands for."""
    return source.plan if fn is _worker_plan else source.chunk


class _Inline(Executor):
    """Runs submitted work at once in this process (``workers=0`` on the CPU)."""

    def __init__(self, source: _TileSource) -> None:
        self.source = source

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        f: Future[Any] = Future()
        try:
            f.set_result(_local(self.source, fn)(*args))
        except BaseException as e:  # re-raised by result(), where the consumer is
            f.set_exception(e)
        return f


class _Threaded(Executor):
    """One background thread ahead of an accelerator (``workers=0`` on a GPU)."""

    def __init__(self, source: _TileSource) -> None:
        self.source = source
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medprobe-tiles")

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self.pool.submit(_local(self.source, fn), *args)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def _executor(source: _TileSource, workers: int, accelerator: bool) -> Executor:
    if workers <= 0:
        return _Threaded(source) if accelerator else _Inline(source)
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else "spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init, initargs=(source,))


def _stream(pool: Executor, slides: Sequence[int], batch_size: int, ahead: int) -> Iterator[tuple[Any, ...]]:
    """Events in slide order: ``("start", i, plan, mask)``, ``("tiles", i, x)`` per batch, ``("end", i)``.

    At most ``ahead`` tile batches are in flight (memory stays bounded whatever the slide size); the next slide's
    tissue mask is computed while the current one is encoded."""
    plans: dict[int, Future[Any]] = {}

    def tasks() -> Iterator[tuple[Any, ...]]:
        for pos, i in enumerate(slides):
            for j in slides[pos:pos + 2]:
                if j not in plans:
                    plans[j] = pool.submit(_worker_plan, j)
            plan, mask = plans.pop(i).result()
            yield ("start", i, plan, mask)
            for a in range(0, len(plan), batch_size):
                part = _sub_plan(plan, a, min(a + batch_size, len(plan)))
                yield ("tiles", i, pool.submit(_worker_chunk, i, part))
            yield ("end", i)

    q: deque[tuple[Any, ...]] = deque()
    gen = tasks()
    inflight, exhausted = 0, False
    while True:
        while not exhausted and inflight < ahead:
            ev = next(gen, None)
            if ev is None:
                exhausted = True
                break
            q.append(ev)
            inflight += ev[0] == "tiles"
        if not q:
            return
        ev = q.popleft()
        if ev[0] == "tiles":
            inflight -= 1
            yield ("tiles", ev[1], torch.from_numpy(ev[2].result()))
        else:
            yield ev


def _sub_plan(plan: Any, a: int, b: int) -> Any:
    """The plan restricted to tiles ``a:b`` (what one reader task needs; small to send to a worker)."""
    return replace(plan, coords=plan.coords[a:b], tissue_fraction=plan.tissue_fraction[a:b])


# ------------------------------------------------------------------------------------------ extraction
def _png(mask: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(rgb: np.ndarray, max_side: int = 2048) -> bytes:
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _write_slide(entry: Path, spec: dict[str, Any], item_id: str, arrays: dict[tuple[str, int], np.ndarray],
                 plan: Any, mask: Any, seconds: float, extra: dict[str, Any]) -> None:
    """One slide's entry: arrays + coords + tissue mask in shard-00000, then its manifest (atomic, last)."""
    entry.mkdir(parents=True, exist_ok=True)
    atomic_write_json(entry / "spec.json", {**spec, "shard_items": 1, "key": entry.name})
    d = shard_dir(entry, 0)
    d.mkdir(parents=True, exist_ok=True)
    names = []
    for (t, layer), a in arrays.items():
        atomic_save_npy(d / array_name(t, layer), a)
        names.append(array_name(t, layer))
    n = len(plan)
    atomic_save_npy(d / "rows.npy", np.asarray([n], dtype=np.int64))
    atomic_save_npy(d / "coords.npy", np.asarray(plan.coords, dtype=np.int64).reshape(n, 2))
    atomic_save_npy(d / "tissue_fraction.npy", np.asarray(plan.tissue_fraction, dtype=np.float32).reshape(n))
    atomic_write_bytes(d / "tissue.png", _png(mask.mask))
    thumb = getattr(mask, "thumbnail", None)
    if thumb is not None:
        atomic_write_bytes(d / "thumbnail.jpg", _jpeg(thumb))
    facts = {"plan": plan.to_dict(), "mask": {"shape": list(np.asarray(mask.mask).shape), "mpp": float(mask.mpp),
                                              "downsample": [float(v) for v in mask.downsample],
                                              "stats": _jsonable(getattr(mask, "stats", {}))}}
    atomic_write_json(d / "plan.json", facts)
    files = [*names, "rows.npy", "coords.npy", "tissue_fraction.npy"]
    atomic_write_json(d / "done.json", {"items": [0, 1], "rows": n, "seconds": seconds, "pid": os.getpid(),
                                        "files": array_checksums(d, files)})
    dim = next((int(a.shape[1]) for a in arrays.values()), 0)
    write_manifest(entry, spec, ShardPlan([(0, 1)]), {"ids": [item_id], "dim": dim, "grid": [0, 0],
                                                      "n_tiles": n, "unit": "tile", **extra})


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _slide_done(entry: Path) -> bool:
    return (entry / "manifest.json").is_file()


class TileUnit(ExtractionUnit):
    """Whole slides -> tissue mask -> tile grid -> one row per tile (claims slide datasets)."""

    name = "tile"
    dataset_unit = "slide"
    options = ("tiling", "tissue")

    def resolve(self, dataset: Any, encoder: Any, preprocess: Any, config: Any, *, options: dict[str, Any],
                device: Any) -> ResolvedEntry:
        """The bag index's entry; ``extra``: the typed ``tiling`` / ``tissue`` and the per-slide specs and keys."""
        cfg = _vector_tokens(config or ExtractConfig(), dataset)
        tiling, tissue = slide_options(options, getattr(dataset, "name", None))
        pre = resolve_preprocess(preprocess or PreprocessConfig(), dataset, encoder)
        spec, slide_specs, keys = _specs(dataset, entry_spec(dataset, encoder, pre, cfg, torch.device(device)),
                                         tiling, tissue)
        return ResolvedEntry(preprocess=pre, config=cfg, spec=spec, key=cache_key(spec),
                             extra={"tiling": tiling, "tissue": tissue, "slide_specs": slide_specs, "keys": keys})

    def lookup(self, dataset: Any, encoder: Any, preprocess: Any, config: Any, *, options: dict[str, Any],
               cache_dir: Any, device: Any) -> FeatureStore | None:
        r = self.resolve(dataset, encoder, preprocess, config, options=options, device=device)
        index = found_entry(cache_dir, r, what="slide features")
        return _open_index(index, r.preprocess, r.config) if index is not None else None

    def extract(self, dataset: Any, encoder: Any, preprocess: Any, config: Any, *, options: dict[str, Any],
                cache_dir: Any, device: Any, rank: int | None, world: int | None,
                shard: tuple[int, int] | None) -> FeatureStore | None:
        dev = device_of(encoder, device)
        r = self.resolve(dataset, encoder, preprocess, config, options=options, device=dev)
        pre, cfg, spec = r.preprocess, r.config, r.spec
        check_memory(encoder, pre.resolution, cfg.batch_size, dev)
        slide_specs, keys = r.extra["slide_specs"], r.extra["keys"]
        root = cache_root(cache_dir)
        index = root / r.key
        if (index / "manifest.json").is_file():
            store = _open_index(index, pre, cfg)
            if store is not None:
                return store

        dist, rank, world = ranks(rank, world, shard)

        n = len(dataset)
        ids = dataset.ids()
        mine = [i for i in range(n) if i % world == rank and not _usable(root / keys[i])]
        layers = spec["layers"]
        ad, _ = effective_amp(cfg.amp, dev, encoder)
        storage = np.dtype(cfg.storage)
        src = _TileSource(dataset, pre, encoder.patch_size, r.extra["tiling"], r.extra["tissue"])
        desc = f"extract {encoder.spec.name} (slides)" + (f" [rank {rank}/{world}]" if world > 1 else "")
        prog = Progress(len(mine), desc=desc, unit="slides", enabled=cfg.progress)
        t_start = time.perf_counter()
        n_tiles = 0
        pool = _executor(src, cfg.workers, dev.type != "cpu")
        try:
            runner = Runner(encoder, layers, cfg.tokens, dev, ad, storage)
            t_slide = time.perf_counter()
            current: tuple[Any, Any] | None = None
            ahead = max(2, 2 * max(cfg.workers, 1))
            for ev in _stream(pool, mine, cfg.batch_size, ahead):
                if ev[0] == "start":
                    current, t_slide = (ev[2], ev[3]), time.perf_counter()
                elif ev[0] == "tiles":
                    runner.run(ev[2])
                    n_tiles += len(ev[2])
                else:
                    i = ev[1]
                    assert current is not None
                    plan, mask = current
                    arrays = _take(runner, pre, len(plan))
                    _write_slide(root / keys[i], slide_specs[i], ids[i], arrays, plan, mask,
                                 time.perf_counter() - t_slide, {"encoder_info": encoder.describe(),
                                                                 "extract_config": asdict(cfg), "device": str(dev),
                                                                 "torch": torch.__version__})
                    dt = time.perf_counter() - t_start
                    prog.desc = f"{desc}: {n_tiles} tiles, {n_tiles / max(dt, 1e-9):.1f} tiles/s"
                    if getattr(prog, "_bar", None) is not None:  # a terminal: tqdm's bar shows its own description
                        prog._bar.set_description(prog.desc, refresh=False)
                    prog.update()
        except MedprobeError:
            raise  # bad input (a broken slide): finished slides stay valid entries of their own
        except OSError as e:
            raise ConfigError(f"cannot write the feature cache ({e.strerror or type(e).__name__}); finished slides "
                              "are kept and a rerun resumes from them", root) from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            prog.close()
        elapsed = time.perf_counter() - t_start

        if dist and shard is None:
            torch.distributed.barrier()
        if all(_slide_done(root / k) for k in keys):
            if (rank == 0 or shard is not None) and not (index / "manifest.json").is_file():
                _write_index(index, spec, root, keys, ids, {"encoder_info": encoder.describe(),
                                                            "extract_config": asdict(cfg), "device": str(dev),
                                                            "seconds_last_run": elapsed, "world": world,
                                                            "torch": torch.__version__, "tiles_this_run": n_tiles})
            if dist and shard is None:
                torch.distributed.barrier()
            return open_entry(index, pre, cfg, reused=False)
        return None


TILE = register_unit(TileUnit())


def extract_slides(dataset: Dataset, encoder: Encoder, preprocess: PreprocessConfig | None = None,
                   config: Any = None, *, cache_dir: str | Path | None = None,
                   device: str | torch.device | None = None, rank: int | None = None, world: int | None = None,
                   shard: tuple[int, int] | None = None, tiling: Any = None, tissue: Any = None) -> FeatureStore | None:
    """Tile features of every slide of ``dataset`` (or reuse them); returns the bag index as a
    :class:`FeatureStore` (``store.bags()``, :func:`slide_coords`), or ``None`` while other shards are missing.

    ``config``: the engine's :class:`~medprobe.features.config.ExtractConfig` (``batch_size`` = tiles per encoder
    batch, ``workers`` = reader processes); ``tiling`` / ``tissue``: :class:`~medprobe.data.tiling.TilingConfig`
    and :class:`~medprobe.preprocess.tissue.TissueConfig` (default: their defaults)."""
    return TILE.extract(dataset, encoder, preprocess, config, options=_given(tiling, tissue), cache_dir=cache_dir,
                        device=device, rank=rank, world=world, shard=shard)


def _given(tiling: Any, tissue: Any) -> dict[str, Any]:
    return {k: v for k, v in (("tiling", tiling), ("tissue", tissue)) if v is not None}


def _vector_tokens(cfg: Any, dataset: Any) -> Any:
    """The config with patch grids dropped: a slide keeps one vector per tile (cls / mean tokens)."""
    tokens = tuple(t for t in cfg.tokens if t != "patch")
    if not tokens:
        raise ConfigError("slides keep one vector per tile (cls / mean tokens); patch grids of every tile are not "
                          "cached", getattr(dataset, "name", "slides"))
    return replace(cfg, tokens=tokens) if tokens != tuple(cfg.tokens) else cfg


def _usable(entry: Path) -> bool:
    """A finished slide entry whose files pass their checksums (a damaged one is removed and recomputed)."""
    if not _slide_done(entry):
        return False
    try:
        FeatureStore(entry)
        return True
    except CorruptEntry as e:
        print(f"medprobe: cached slide features {entry.name} are damaged ({e.problem}): recomputing them",
              file=sys.stderr, flush=True)
        remove_entry(entry)
        return False


def _take(runner: Runner, pre: PreprocessConfig, n: int) -> dict[tuple[str, int], np.ndarray]:
    """The runner's rows of one slide; a slide without tissue tiles gets (0, C) arrays of the right width."""
    if n == 0:
        h, w = pre.resolution  # type: ignore[misc]
        runner.run(torch.zeros(1, 3, h, w))
        return {k: v[:0] for k, v in runner.take(1).items()}
    return runner.take(1)  # type: ignore[no-any-return]


def _write_index(index: Path, spec: dict[str, Any], root: Path, keys: list[str], ids: list[str],
                 extra: dict[str, Any]) -> None:
    """The bag index: a manifest whose shards are the slide entries' shard folders."""
    index.mkdir(parents=True, exist_ok=True)
    atomic_write_json(index / "spec.json", {**spec, "shard_items": 1, "key": index.name})
    shards, rows, slides = [], [], []
    dim = 0
    for i, k in enumerate(keys):
        mf = json.loads((root / k / "manifest.json").read_text(encoding="utf-8"))
        n = int(mf["n_rows"])
        dim = dim or int(mf.get("dim", 0))
        rows.append(n)
        shards.append({"dir": f"../{k}/{shard_dir(root / k, 0).name}", "items": [i, i + 1], "rows": n,
                       "seconds": mf["shards"][0].get("seconds")})
        slides.append({"id": ids[i], "key": k, "n_tiles": n})
    atomic_write_json(index / "manifest.json", {
        "key": index.name, "spec": spec, "slices_per_item": rows, "n_items": len(rows), "n_rows": int(sum(rows)),
        "shards": shards, "ids": ids, "dim": dim, "grid": [0, 0], "unit": "tile", "slides": slides,
        "shard_items": 1, **extra})


def _open_index(index: Path, pre: PreprocessConfig, cfg: Any) -> FeatureStore | None:
    """The complete bag index, or None after removing it when a slide entry is missing or damaged."""
    return open_or_drop(index, pre, cfg, "slide bag index {key} is damaged ({problem}): recomputing what is missing")


def lookup_slides(dataset: Dataset, encoder: Any, preprocess: PreprocessConfig | None = None, config: Any = None,
                  *, cache_dir: str | Path | None = None, device: str | torch.device = "cpu",
                  tiling: Any = None, tissue: Any = None) -> FeatureStore | None:
    """The complete bag index for these inputs, or ``None`` (``encoder`` may be an ``EncoderInfo``)."""
    return TILE.lookup(dataset, encoder, preprocess, config, options=_given(tiling, tissue), cache_dir=cache_dir,
                       device=device)


# ------------------------------------------------------------------------------------------ reading bags
def _slide_dir(store: FeatureStore, i: int) -> Path:
    return (store.path / store.manifest["shards"][i]["dir"]).resolve()


def slide_coords(store: FeatureStore, i: int) -> np.ndarray:
    """Level-0 (x, y) top-left corners of slide ``i``'s tiles, (N_i, 2) int64, in feature-row order."""
    return np.load(_slide_dir(store, i) / "coords.npy")


def slide_files(store: FeatureStore, i: int) -> dict[str, Any]:
    """Paths of slide ``i``'s tissue mask PNG and thumbnail JPEG, and its tiling/tissue facts (plan.json)."""
    d = _slide_dir(store, i)
    facts = json.loads((d / "plan.json").read_text(encoding="utf-8")) if (d / "plan.json").is_file() else {}
    return {"dir": d, "tissue_png": d / "tissue.png", "thumbnail": d / "thumbnail.jpg", **facts}


def is_bag_store(store: Any) -> bool:
    """True for a slide bag index (tile rows per slide, with coordinates)."""
    return isinstance(getattr(store, "manifest", None), dict) and store.manifest.get("unit") == "tile"


def export_h5(store: FeatureStore, out_dir: str | Path, token: str = "mean", layer: int | None = None) -> list[Path]:
    """One HDF5 file per slide in the CLAM / TRIDENT layout MIL code reads: ``coords`` (N, 2) level-0 (x, y) and
    ``features`` (N, D), with the tile size, level and target pixel size as attributes."""
    try:
        import h5py
    except ModuleNotFoundError:
        raise ConfigError("h5py is not installed (HDF5 export of slide bags): pip install 'medprobe[volumes]'",
                          "export_h5") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, sid in enumerate(store.ids):
        facts = slide_files(store, i).get("plan", {})
        p = out / f"{sid}.h5"
        with h5py.File(p, "w") as f:
            c = f.create_dataset("coords", data=slide_coords(store, i))
            f.create_dataset("features", data=np.asarray(store.item(i, token, layer), dtype=np.float32))
            c.attrs["patch_size"] = int(facts.get("tile_px", 0))
            c.attrs["patch_size_level0"] = int(facts.get("size0", 0))
            c.attrs["patch_level"] = int(facts.get("level", 0))
            c.attrs["target_mpp"] = float(facts.get("target_mpp", 0.0))
            c.attrs["downsample"] = float(facts.get("level_downsample", 1.0))  # CLAM's name for it
            if facts.get("mpp"):
                c.attrs["mpp"] = float(facts["mpp"])  # level-0 µm per pixel (TRIDENT's / CLAM's readers want it)
        written.append(p)
    return written


def import_h5(paths: Any) -> list[dict[str, Any]]:
    """Bags written by CLAM / TRIDENT (or :func:`export_h5`): one ``.h5`` per slide with ``features`` (N, D) and
    ``coords`` (N, 2) level-0 (x, y); a folder means its ``*.h5`` files in name order. Returns per slide
    ``{"id", "features" (float32), "coords" (int64), "attrs"}`` (the ``coords`` attributes), ready for the MIL
    heads' ``fit(bags, y)``. A file without those datasets, or with different lengths, is one line naming it."""
    try:
        import h5py
    except ModuleNotFoundError:
        raise ConfigError("h5py is not installed (HDF5 slide bags): pip install 'medprobe[volumes]'",
                          "import_h5") from None
    items = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    files: list[Path] = []
    for q in items:
        files += sorted(q.glob("*.h5")) if q.is_dir() else [q]
    if not files:
        raise DataError(f"{', '.join(map(str, items))}: no .h5 slide bags found")
    out = []
    for q in files:
        try:
            with h5py.File(q, "r") as f:
                if "features" not in f or "coords" not in f:
                    raise DataError(f"{q}: needs datasets 'features' and 'coords' (has {', '.join(f.keys())})")
                feats = np.asarray(f["features"][()], dtype=np.float32)
                coords = np.asarray(f["coords"][()])
                attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f["coords"].attrs.items()}
        except OSError as e:
            raise DataError(f"{q}: not a readable HDF5 file ({e})") from None
        if feats.ndim == 3 and feats.shape[0] == 1:  # some CLAM versions keep a leading batch axis
            feats = feats[0]
        if coords.ndim == 3 and coords.shape[0] == 1:
            coords = coords[0]
        if feats.ndim != 2 or coords.shape != (len(feats), 2):
            raise DataError(f"{q}: features {feats.shape} and coords {coords.shape} do not pair up (N, D) / (N, 2)")
        out.append({"id": q.stem, "features": feats, "coords": coords.astype(np.int64), "attrs": attrs})
    return out


__all__ = ["TILE", "TileUnit", "bag_spec", "export_h5", "extract_slides", "import_h5", "is_bag_store", "lookup_slides",
           "slide_coords", "slide_entry_spec", "slide_files", "slide_options"]
