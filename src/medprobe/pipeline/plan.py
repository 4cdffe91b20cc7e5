"""What ``medprobe run`` would do, without doing it (``medprobe run --dry-run``).

The task is resolved the way :func:`medprobe.pipeline.run.run_task` resolves it (dataset, family, heads, family
defaults, extraction options); then, per head, its config hash and whether the results database already holds
that row; whether the features are in the cache; and, when they are not, what would be extracted and how long
it would take: the encoder's GFLOPs per image times the images, at the speed of one measured batch.
Nothing is written to the results database or the cache.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medprobe.pipeline.task import TaskSpec
from medprobe.preprocess.tissue import KEPT_WARNING

MAX_SLICE_PROBE = 16  # volumes opened to count slices; more items: the mean of these, times the item count
MAX_SLIDE_PROBE = 4  # slides whose tissue is detected and tiles planned; more slides: the mean, times the count


@dataclass
class HeadPlan:
    name: str
    config_hash: str
    stored_run: str | None = None  # run id of the stored row with this hash
    stored_created: str | None = None


@dataclass
class Plan:
    """The resolved task and what running it would do."""

    spec: TaskSpec  # family-resolved (defaults made explicit)
    family: str
    family_from: str  # "kind" (given) or the dataset's task type
    dataset: str
    n_items: int
    n_rows: int  # images, or slices of volumes, the engine would encode
    rows_exact: bool
    resolution: tuple[int, int] | None
    layers: list[int]
    tokens: tuple[str, ...]
    cache_key: str | None
    cached: bool
    cache_path: str | None
    heads: list[HeadPlan] = field(default_factory=list)
    gflops: float | None = None  # per image, to the deepest tapped block
    measured: dict[str, Any] | None = None  # {rows, seconds, rows_per_s}
    estimate_s: float | None = None
    notes: list[str] = field(default_factory=list)
    row_unit: str | None = None  # what a row is when not an image or slice ("tiles" of slides)

    @property
    def to_extract(self) -> int:
        """Images/slices the run would encode (0 when the features are cached)."""
        return 0 if self.cached else self.n_rows


def _batch_number(batch_size: int | str) -> int:
    """The items one timed dry-run batch holds: the number asked, or 8 for ``auto`` (sized by the engine)."""
    return 8 if batch_size == "auto" else int(batch_size)


def _count_rows(ds: Any, slice_axis: int | None) -> tuple[int, bool]:
    """Images the engine encodes: one per 2D item, one per slice of a volume (counted on up to
    ``MAX_SLICE_PROBE`` volumes, extrapolated beyond)."""
    n = len(ds)
    if getattr(ds, "spatial_dims", 2) == 2 or not n:
        return n, True
    probe = list(range(n)) if n <= MAX_SLICE_PROBE else [round(i * (n - 1) / (MAX_SLICE_PROBE - 1))
                                                          for i in range(MAX_SLICE_PROBE)]
    counts = []
    for i in probe:
        it = ds.load(i)
        axis = slice_axis if slice_axis is not None else it.slice_axis
        counts.append(int(it.image.shape[axis]))
    if len(probe) == n:
        return sum(counts), True
    return round(sum(counts) / len(counts) * n), False


def _spread(n: int, k: int) -> list[int]:
    """Up to ``k`` indices spread evenly over ``range(n)`` (all of them when ``n <= k``)."""
    return list(range(n)) if n <= k else sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


@dataclass
class _SlideProbe:
    """Tiles counted on some slides (the tile unit's tissue mask and tile plan), and what the timing probe reads."""

    rows: int
    exact: bool
    probed: int
    mask_s: float  # seconds per slide for its thumbnail, tissue mask and tile plan
    first: tuple[Any, Any] | None = None  # (slide, plan) of the first probed slide with tiles, left open
    kept: list[float] = field(default_factory=list)  # the probed slides' tissue kept fractions


def _slide_rows(ds: Any, unit_options: dict[str, Any]) -> _SlideProbe:
    """Tiles the tile unit would encode: tissue mask and tile plan of up to ``MAX_SLIDE_PROBE`` slides (spread over
    the dataset), extrapolated to every slide."""
    from medprobe.data.tiling import TilingConfig, plan_tiles
    from medprobe.preprocess.tissue import TissueConfig, detect_tissue

    tiling = unit_options.get("tiling") or TilingConfig()
    tissue = unit_options.get("tissue") or TissueConfig()
    n = len(ds)
    probe = _spread(n, MAX_SLIDE_PROBE)
    counts: list[int] = []
    out = _SlideProbe(0, True, len(probe), 0.0)
    t0 = time.perf_counter()
    for i in probe:
        slide = ds.load(i).image
        tm = detect_tissue(slide, tissue)
        plan = plan_tiles(slide, tiling, tm)
        counts.append(len(plan))
        out.kept.append(float(tm.stats.get("kept_fraction", 1.0)))
        if out.first is None and len(plan):
            out.first = (slide, plan)
        elif callable(getattr(slide, "close", None)):
            slide.close()
    out.mask_s = (time.perf_counter() - t0) / max(len(probe), 1)
    out.exact = len(probe) == n
    out.rows = sum(counts) if out.exact else round(sum(counts) / max(len(counts), 1) * n)
    return out


def _measure_tiles(ds: Any, probe: _SlideProbe, enc: Any, rspec: TaskSpec, cfg: Any, device: Any,
                   tmp: str) -> tuple[int, float]:
    """Read one batch of the first probed slide's tiles (as the tile unit reads them) and encode them through the
    image unit into the throw-away cache ``tmp``; returns (tiles, seconds)."""
    from medprobe.data.base import ArrayDataset
    from medprobe.data.tiling import iter_tiles
    from medprobe.features.engine import extract

    assert probe.first is not None
    slide, plan = probe.first
    k = max(1, min(len(plan), _batch_number(cfg.batch_size)))
    part = dataclasses.replace(plan, coords=plan.coords[:k], tissue_fraction=plan.tissue_fraction[:k])
    t0 = time.perf_counter()
    tiles = [t for _, batch in iter_tiles(slide, part, batch_size=k) for t in batch]
    tiles_ds = ArrayDataset(tiles, name=f"{ds.name}[dry-run tiles]", modality=ds.modality, task=ds.task)
    extract(tiles_ds, enc, rspec.preprocess, dataclasses.replace(cfg, progress=False), cache_dir=tmp, device=device)
    dt = time.perf_counter() - t0
    if callable(getattr(slide, "close", None)):
        slide.close()
    return len(tiles), dt


def make_plan(spec: TaskSpec, db: Any = None, source: str | None = None, measure: bool = True) -> Plan:
    """Resolve ``spec`` as a run would and say what running it would do; writes nothing.

    ``measure``: when the features are not cached, build the encoder and time one batch (in a temporary
    cache) for the time estimate."""
    from medprobe.data import Subset
    from medprobe.encoders.flops import spec_gflops
    from medprobe.features.engine import extract, extraction_unit, lookup, resolve_entry
    from medprobe.pipeline.common import build_encoder, encoder_identity, extract_config, pick_device
    from medprobe.pipeline.run import load_dataset, resolve_heads
    from medprobe.results import ResultsDB
    from medprobe.utils import default_cache_dir

    db = db if db is not None else ResultsDB()
    ds, family = load_dataset(spec, source)
    ds, _ = family.prepare_dataset(ds, spec, False)
    resolve_heads(spec, family, ds, source)
    device = pick_device(spec.device)
    info = encoder_identity(spec)
    notes: list[str] = []
    enc = None
    if info is None:  # hub ids: the identity is known once loaded, as in a run
        enc = info = build_encoder(spec, device)
        notes.append("the encoder was loaded to learn its identity (hub id)")
    rspec = family.resolve(spec, ds, info)
    cfg = extract_config(rspec, family.tokens)
    unit, unit_options = family.feature_unit, family.unit_options(rspec)
    entry = resolve_entry(ds, info, rspec.preprocess, cfg, unit=unit, unit_options=unit_options, device=device)
    pre, key = entry.preprocess, entry.key
    root = Path(rspec.cache_dir) if rspec.cache_dir else default_cache_dir()
    store = lookup(ds, info, rspec.preprocess, cfg, unit=unit, unit_options=unit_options, cache_dir=rspec.cache_dir,
                   device=device)
    layers = list(info.resolve_layers(cfg.layers))
    runs_encoder = extraction_unit(ds, info, unit).runs_encoder
    slides: _SlideProbe | None = None
    if store is not None:
        n_rows, exact = int(store.offsets[-1]), True
    elif getattr(ds, "unit", None) == "slide":  # rows are tiles: count them on a few slides' tissue masks
        slides = _slide_rows(ds, unit_options)
        n_rows, exact = slides.rows, slides.exact
        low = sum(f < KEPT_WARNING for f in slides.kept)
        notes.append(f"tiles counted on {slides.probed} of {len(ds)} slides (tissue mask and tile plan: "
                     f"{slides.mask_s:.1f} s per slide)" + (f"; {low} of them keep under {KEPT_WARNING:.0%} of their "
                                                            "non-background area (data.tissue?)" if low else ""))
    elif not runs_encoder:
        n_rows, exact = 0, True
        notes.append(f"the {extraction_unit(ds, info, unit).name} extraction unit runs no encoder: nothing to extract")
    else:
        n_rows, exact = _count_rows(ds, pre.slice_axis)
    res = tuple(pre.resolution) if pre.resolution else None
    gflops = None
    if res is not None:
        try:
            gflops = spec_gflops(rspec.encoder, (int(res[0]), int(res[1])), layers)
        except Exception:  # counting is best effort (exotic backbones); the measured batch still tells
            gflops = None
    plan = Plan(spec=rspec, family=family.name, family_from="kind" if spec.kind else ds.task.type,
                dataset=ds.name, n_items=len(ds), n_rows=n_rows, rows_exact=exact,
                resolution=(int(res[0]), int(res[1])) if res else None, layers=layers, tokens=cfg.tokens,
                cache_key=key, cached=store is not None, cache_path=str(root / key), gflops=gflops, notes=notes,
                row_unit="tiles" if getattr(ds, "unit", None) == "slide" else None)
    for h in spec.heads:
        hp = HeadPlan(h, spec.config_hash(h))  # the hash of the config as written, as the stored rows carry it
        row = db.find(hp.config_hash)
        if row is not None:
            hp.stored_run, hp.stored_created = row["run_id"], row["created"]
        plan.heads.append(hp)
    if plan.cached or not measure or not len(ds) or not runs_encoder:
        return plan
    # one quick batch, extracted into a throw-away cache, for the time estimate
    enc = enc if enc is not None else build_encoder(rspec, device)
    if slides is not None:  # tiles of one slide; a slide is never encoded whole
        if slides.first is None:
            notes.append("no probed slide has a tissue tile: no batch measured")
            return plan
        with tempfile.TemporaryDirectory(prefix="medprobe-dry-run-") as tmp:
            rows, dt = _measure_tiles(ds, slides, enc, rspec, cfg, device, tmp)
        plan.measured = {"rows": rows, "seconds": round(dt, 3), "rows_per_s": rows / dt if dt > 0 else None}
        if dt > 0 and rows:
            plan.estimate_s = n_rows * dt / rows + len(ds) * slides.mask_s
        return plan
    per_item = max(1.0, n_rows / max(1, len(ds)))
    k = max(1, min(len(ds), round(_batch_number(cfg.batch_size) / per_item)))
    sub = Subset(ds, list(range(k)), tag="dry-run")
    with tempfile.TemporaryDirectory(prefix="medprobe-dry-run-") as tmp:
        t0 = time.perf_counter()
        probe = extract(sub, enc, rspec.preprocess, dataclasses.replace(cfg, progress=False), unit=unit,
                        unit_options=unit_options, cache_dir=tmp, device=device)
        dt = time.perf_counter() - t0
    rows = int(probe.offsets[-1]) if probe is not None else k
    plan.measured = {"rows": rows, "seconds": round(dt, 3), "rows_per_s": rows / dt if dt > 0 else None}
    if dt > 0 and rows:
        plan.estimate_s = n_rows * dt / rows
    return plan


def _fmt_s(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def format_plan(plan: Plan, db_path: Any) -> str:
    """The dry-run report: resolved config, hash per head and whether its row is stored, cache state,
    what would be extracted and an estimate."""
    out = ["# medprobe run --dry-run: nothing is run or written",
           yaml.safe_dump(plan.spec.to_dict(), sort_keys=False, default_flow_style=None, width=110).rstrip(),
           f"# family: {plan.family} (" + ("--kind" if plan.family_from == "kind" else
                                           f"from the dataset's task type {plan.family_from}") + ")"]
    out.append(f"heads (config hash; results database {db_path}):")
    for h in plan.heads:
        state = (f"row stored: run {h.stored_run[:8]} of {str(h.stored_created)[:16].replace('T', ' ')} (a sweep "
                 "skips it; run adds another row)" if h.stored_run else "no row stored: will run")
        out.append(f"  {h.name:<10} {h.config_hash}  {state}")
    approx = "" if plan.rows_exact else "~"
    unit = plan.row_unit or ("images" if plan.n_rows == plan.n_items and plan.rows_exact else "images/slices")
    row = "tile" if plan.row_unit == "tiles" else "image"
    res = f"{plan.resolution[0]}x{plan.resolution[1]}" if plan.resolution else "?"
    what = (f"{plan.n_items} items ({approx}{plan.n_rows} {unit}) of {plan.dataset} at {res}, layers "
            f"{','.join(map(str, plan.layers))}, tokens {','.join(plan.tokens)}")
    if plan.cached:
        out.append(f"features: cached ({plan.cache_path}): will extract nothing [{what}]")
    else:
        out.append(f"features: not cached (entry {plan.cache_key} under {Path(str(plan.cache_path)).parent}): "
                   f"will extract {what}")
        cost = []
        if plan.gflops is not None:
            cost.append(f"{plan.gflops:.4g} GFLOP/{row} x {approx}{plan.n_rows} = "
                        f"{plan.gflops * plan.n_rows / 1e3:.4g} TFLOP")
        m = plan.measured
        if m and m.get("rows_per_s"):
            rate = f"{m['rows_per_s']:.1f} {row}s/s"
            if plan.gflops is not None:
                rate += f" = {plan.gflops * m['rows_per_s']:.4g} GFLOP/s"
            cost.append(f"one batch of {m['rows']} measured: {rate}")
        if plan.estimate_s is not None:
            cost.append(f"estimated extraction ~{_fmt_s(plan.estimate_s)} (first batch includes start-up)")
        elif m is None:
            cost.append("no batch measured")
        out.append("cost: " + "; ".join(cost) if cost else "cost: unknown")
    out += [f"# {n}" for n in plan.notes]
    return "\n".join(out)


def print_plan(spec: TaskSpec, db: Any = None, source: str | None = None, measure: bool = True) -> Plan:
    """Make the plan and print it (``medprobe run --dry-run``)."""
    from medprobe.results import ResultsDB

    db = db if db is not None else ResultsDB()
    plan = make_plan(spec, db=db, source=source, measure=measure)
    print(format_plan(plan, db.path))
    return plan


__all__ = ["HeadPlan", "Plan", "format_plan", "make_plan", "print_plan"]
