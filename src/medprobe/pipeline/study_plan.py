"""``medprobe study --plan``: the size of the study before anyone submits it.

Per study table and in total: the cells of the grid, the extractions they need (one per dataset x encoder x
weights x preprocessing: cells that share features share one), the images / volumes / slides to encode and the
encoder forward passes that takes (a volume: one per axial slice, or one for a 3D encoder; a slide: one per tissue
tile), the GFLOPs of those passes (the encoders' counted FLOPs, :func:`medprobe.encoders.flops.spec_gflops`, to
the deepest tapped block) and GPU-hours on a named GPU.

GPU-hours come from an effective GFLOP/s: ``images_per_s`` measured or given for a reference encoder at a
resolution (``--images-per-s 2400 --reference dinov3-vitb16@224``), else measured rows in the results database
(``compute.images_per_s`` x ``compute.gflops`` of rows extracted on that GPU). They cover feature extraction
(the part that scales with the grid's encoders and resolutions); head training is not included.

Dataset sizes: counted from the data where this machine has it (items; slices of up to 16 volumes), else the
published size of the study's dataset (:data:`STUDY_SIZES`; a ``~`` marks an estimate: average slices per volume,
tissue tiles per slide). Torch-free, except ``measure_images_per_s``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medprobe.errors import ConfigError, MedprobeError
from medprobe.utils import atomic_write_json


@dataclass(frozen=True)
class Size:
    """How much one study dataset encodes: ``items`` of ``unit`` (image, volume, slide, pair), each ``per_item``
    encoder inputs (slices of a volume, tiles of a slide, images of a pair); ``exact``: False when per_item (or the
    item count) is an estimate."""

    items: int
    unit: str
    per_item: float = 1.0
    exact: bool = True
    note: str = ""


# Published sizes of the study's datasets (what the full study encodes). Estimates are marked exact=False.
STUDY_SIZES: dict[str, Size] = {
    "nih14": Size(112_120, "image", note="NIH ChestX-ray14: 112,120 frontal radiographs"),
    "rsna-pneumonia": Size(26_684, "image", note="RSNA Pneumonia stage-2 train: 26,684 radiographs"),
    "kvasir-capsule": Size(47_238, "image", note="Kvasir-Capsule: 47,238 labelled frames"),
    "autolaparo": Size(83_000, "image", exact=False, note="AutoLaparo task 1: 21 videos at 1 fps, ~83k frames"),
    "ct-rate": Size(50_188, "volume", 300, False, "CT-RATE: 50,188 volumes, ~300 axial slices each"),
    "camelyon16": Size(399, "slide", 10_000, False, "CAMELYON16: 270 + 129 slides, ~10k tissue tiles each"),
    "camelyon17": Size(770, "slide", 10_000, False,
                       "CAMELYON16 train 270 + CAMELYON17 500 labelled slides, ~10k tiles each"),
    "bcnb": Size(1_058, "slide", 2_000, False, "BCNB: 1,058 biopsy slides, ~2k tissue tiles each"),
    "endovis2018": Size(3_232, "image", note="EndoVis 2018: 2,235 train + 997 test frames"),
    "edd2020": Size(386, "image", note="EDD2020: 386 annotated frames"),
    "msd-braintumour": Size(484, "volume", 155, True, "MSD Task01: 484 MRI volumes x 155 slices"),
    "msd-heart": Size(20, "volume", 110, False, "MSD Task02: 20 MRI volumes, ~110 slices"),
    "msd-liver": Size(131, "volume", 430, False, "MSD Task03: 131 CT volumes, ~430 slices"),
    "msd-hippocampus": Size(260, "volume", 36, False, "MSD Task04: 260 MRI crops, ~36 slices"),
    "msd-prostate": Size(32, "volume", 20, False, "MSD Task05: 32 MRI volumes, ~20 slices"),
    "msd-lung": Size(63, "volume", 250, False, "MSD Task06: 63 CT volumes, ~250 slices"),
    "msd-pancreas": Size(281, "volume", 95, False, "MSD Task07: 281 CT volumes, ~95 slices"),
    "msd-hepaticvessel": Size(303, "volume", 70, False, "MSD Task08: 303 CT volumes, ~70 slices"),
    "msd-spleen": Size(41, "volume", 90, False, "MSD Task09: 41 CT volumes, ~90 slices"),
    "msd-colon": Size(126, "volume", 100, False, "MSD Task10: 126 CT volumes, ~100 slices"),
    "cremi-a": Size(1, "volume", 125, True, "CREMI sample A: 125 sections"),
    "cremi-b": Size(1, "volume", 125, True, "CREMI sample B: 125 sections"),
    "cremi-c": Size(1, "volume", 125, True, "CREMI sample C: 125 sections"),
    "ac3-ac4": Size(2, "volume", 178, True, "AC3 256 + AC4 100 sections"),
    "autopet-ii": Size(1_014, "volume", 330, False, "AutoPET-II: 1,014 PET/CT studies, ~330 slices"),
    "hecktor2022": Size(524, "volume", 100, False, "HECKTOR 2022: 524 PET/CT cases, ~100 slices (cropped)"),
    "camus": Size(1_000, "pair", 2, True, "CAMUS: 800/100/100 ED-ES pairs, 2 images each"),
    "acdc": Size(150, "pair", 64, True, "ACDC: 80/20/50 pairs, 2 volumes x 32 slices each"),
}
_DATASET_OF_TASK = {"camelyon16-to-17": "camelyon17", **{f"bcnb-{t}": "bcnb" for t in ("aln", "er", "pr", "her2",
                                                                                           "ki67")}}


def size_for(task: str, study_task: str | None) -> Size | None:
    """The published size of a sweep task's dataset, or None."""
    for key in (_DATASET_OF_TASK.get(task), study_task, task):
        if key and key in STUDY_SIZES:
            return STUDY_SIZES[key]
    return None


def measured_size(spec: Any, data: Path | Mapping[str, Path] | None) -> Size | None:
    """Items (and slices of up to 16 volumes) counted from the data found on this machine (a path, or
    ``{location: path}`` for datasets read from several places); None without it or when the dataset cannot be
    opened here."""
    if not data:
        return None
    try:
        from medprobe.pipeline.plan import _count_rows
        from medprobe.pipeline.run import load_dataset
        from medprobe.pipeline.study import _with_data

        ds, _ = load_dataset(_with_data(spec, data))
        rows, exact = _count_rows(ds, spec.preprocess.slice_axis)
    except (MedprobeError, OSError, ImportError):
        return None
    n = len(ds)
    unit = {"slide": "slide", "pair": "pair"}.get(str(getattr(ds, "unit", "")), "volume"
                                                  if getattr(ds, "spatial_dims", 2) == 3 else "image")
    where = ", ".join(str(v) for v in data.values()) if isinstance(data, Mapping) else str(data)
    return Size(n, unit, rows / n if n else 1.0, exact, f"counted in {where}")


@dataclass
class GroupPlan:
    """One extraction: a dataset x encoder x preprocessing shared by ``cells`` cells."""

    table: str
    task: str
    encoder: str
    resolution: tuple[int, int] | None
    cells: int
    size: Size | None
    passes: float | None = None  # encoder forward passes (images, slices, tiles; volumes for 3D encoders)
    gflops_each: float | None = None
    gflops: float | None = None


@dataclass
class StudyPlan:
    groups: list[GroupPlan]
    cells_by_table: dict[str, int]
    gpu: str | None = None
    gflops_per_s: float | None = None  # effective, on that GPU
    speed_from: str = ""
    notes: list[str] = field(default_factory=list)

    def hours(self, gflops: float | None) -> float | None:
        if gflops is None or not self.gflops_per_s:
            return None
        return gflops / self.gflops_per_s / 3600.0


def _resolution(cell: Any) -> tuple[int, int] | None:
    r = cell.spec.preprocess.resolution
    if r is None:
        from medprobe.encoders.registry import get_spec

        n = int(get_spec(cell.spec.encoder).native_resolution)
        return (n, n)
    return (int(r[0]), int(r[1]))


def flops_cache_path() -> Path:
    """Where counted GFLOPs are kept between runs (counting a large ViT at 1024 px takes seconds):
    ``$XDG_CACHE_HOME/medprobe/gflops.json`` (``~/.cache/...``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "medprobe" / "gflops.json"


_FLOPS: dict[str, float | None] | None = None


def _gflops(encoder: str, res: tuple[int, int] | None, layers: Any) -> float | None:
    """:func:`~medprobe.encoders.flops.spec_gflops`, remembered on disk per encoder, size, taps and versions."""
    global _FLOPS
    from medprobe.encoders.flops import spec_gflops
    from medprobe.version import __version__

    if res is None:
        return None
    taps = [int(x) for x in layers] if isinstance(layers, (list, tuple)) and layers else None
    key = f"{encoder}|{res[0]}x{res[1]}|{taps}|medprobe {__version__}"
    f = flops_cache_path()
    if _FLOPS is None:
        try:
            _FLOPS = dict(json.loads(f.read_text(encoding="utf-8"))) if f.is_file() else {}
        except (OSError, ValueError):
            _FLOPS = {}
    if key in _FLOPS:
        return _FLOPS[key]
    try:
        g = spec_gflops(encoder, res, taps)
    except (MedprobeError, ValueError, TypeError):  # e.g. a size the patch does not divide: not countable
        g = None
    _FLOPS[key] = None if g is None else float(g)
    try:
        atomic_write_json(f, _FLOPS)
    except OSError:  # a read-only home: count again next time
        pass
    return _FLOPS[key]


def _volumetric(encoder: str) -> bool:
    from medprobe.encoders import get_family
    from medprobe.encoders.registry import get_spec

    try:
        return bool(get_family(get_spec(encoder).family).volumetric)
    except MedprobeError:
        return False


def _taps(cell: Any) -> Any:
    """The blocks extraction runs to: ``features.layers`` as indices when it names them (``all`` / ``four`` /
    ``last``: the full depth is costed, a safe upper bound)."""
    layers = cell.spec.features.layers
    return layers if isinstance(layers, (list, tuple)) else None


def study_plan(sweep: Any, coverage: list[Any] | None = None, count_data: bool = True) -> StudyPlan:
    """Cells, extractions, encoder passes and GFLOPs of the whole study grid (every task, found or not)."""
    from medprobe.pipeline.launch import feature_group
    from medprobe.pipeline.study_tables import table_of
    from medprobe.pipeline.sweep import expand
    from medprobe.report.reference import match_task

    cells = expand(sweep)
    by_task = {c.task: c for c in (coverage or [])}
    groups: dict[str, GroupPlan] = {}
    cells_by_table: dict[str, int] = {}
    sizes: dict[str, Size | None] = {}
    for c in cells:
        task = c.axes["task"]
        st = table_of(match_task(task))
        table = st.key if st is not None else "other"  # the paper's table number, as the coverage prints them
        cells_by_table[table] = cells_by_table.get(table, 0) + 1
        if task not in sizes:
            cov = by_task.get(task)
            found = (measured_size(c.spec, cov.data_paths or cov.data_found)
                     if (count_data and cov is not None and cov.has_data) else None)
            sizes[task] = found or size_for(task, match_task(task))
        key = feature_group(c.spec)
        g = groups.get(key)
        if g is None:
            res = _resolution(c)
            g = groups[key] = GroupPlan(table, task, c.spec.encoder, res, 0, sizes[task])
            size = sizes[task]
            if size is not None:
                vol = _volumetric(c.spec.encoder) and size.unit == "volume"
                g.passes = float(size.items) * (1.0 if vol else size.per_item)
                g.gflops_each = _gflops(c.spec.encoder, res, _taps(c))
                g.gflops = None if g.gflops_each is None else g.gflops_each * g.passes
        g.cells += 1
    return StudyPlan(list(groups.values()), cells_by_table)


def speed_from_db(db: Any, gpu: str | None) -> tuple[float, str] | None:
    """Effective GFLOP/s of extraction measured in the results database (rows that extracted their features, on a
    device whose name contains ``gpu``): the median of images/s x GFLOPs per image."""
    vals = []
    for r in db.runs() if db.exists() else []:
        comp = r.get("compute") or {}
        ips, g = comp.get("images_per_s"), comp.get("gflops")
        dev = str(comp.get("device") or r.get("device") or "")
        if ips and g and (gpu is None or gpu.lower() in dev.lower()) and not (r.get("timings") or {}).get("cached"):
            vals.append(float(ips) * float(g))
    if not vals:
        return None
    return statistics.median(vals), f"median of {len(vals)} measured extraction(s) in {db.path}"


def parse_reference(text: str) -> tuple[str, tuple[int, int]]:
    """``dinov3-vitb16@224`` -> (encoder, (224, 224))."""
    from medprobe.schema import to_size

    enc, sep, res = text.partition("@")
    size = to_size(res, "--reference") if sep else None
    if not enc or size is None:
        raise ConfigError(f"--reference must be ENCODER@RESOLUTION, e.g. dinov3-vitb16@224; got {text!r}")
    return enc, (int(size[0]), int(size[1]))


def measure_images_per_s(reference: str, device: str | None = None, batch: int = 64, seconds: float = 10.0
                         ) -> tuple[float, str]:
    """Images/s of the reference encoder (random weights: speed only) on this machine's device, bf16 autocast on
    GPU; returns (images/s, device name)."""
    import time

    import torch

    from medprobe.encoders import create_encoder
    from medprobe.pipeline.common import pick_device
    from medprobe.utils import torch_seeded

    enc_name, (h, w) = parse_reference(reference)
    dev = pick_device(device)
    enc = create_encoder(enc_name, weights=None, device=dev)
    with torch_seeded(0, dev):
        x = torch.randn(batch, 3, h, w, device=dev)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu",
                                                                                                 enabled=False)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    layers = [int(getattr(enc.spec, "depth", 1)) - 1]
    with torch.inference_mode(), amp:
        enc.forward_features(x, layers)  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n == 0:
            enc.forward_features(x, layers)
            n += batch
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        dt = time.perf_counter() - t0
    return n / dt, name


def _fmt(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "?"
    return f"{x:,.{digits}f}"


_UNIT_WORDS = {"image": "images", "volume": "volumes", "slide": "slides", "pair": "pairs"}


def plan_lines(plan: StudyPlan) -> list[str]:
    """The ``medprobe study --plan`` table: per study table, then the total."""
    from medprobe.pipeline.study_tables import STUDY_TABLES

    titles = {t.key: t.short for t in STUDY_TABLES}

    speed = (f"GPU-hours on {plan.gpu or 'the GPU'} at {plan.gflops_per_s:,.0f} effective GFLOP/s "
             f"({plan.speed_from})" if plan.gflops_per_s else
             "GPU-hours: give --images-per-s N (measured on your GPU, with --reference ENCODER@RES) or --measure")
    lines = [f"study plan (feature extraction; head training not included). {speed}"]
    head = ["table", "cells", "extractions", "to encode", "encoder passes", "GFLOPs", "GPU-h"]
    rows = []
    order = [*titles, *sorted({g.table for g in plan.groups} - set(titles))]
    tot_cells = tot_ext = 0
    tot_pass = tot_g = 0.0
    missing_g = False
    for t in order:
        gs = [g for g in plan.groups if g.table == t]
        if not gs:
            continue
        units: dict[str, float] = {}
        seen: set[str] = set()
        for g in gs:  # items to encode: each dataset once per table (every encoder encodes it again: passes)
            if g.size is not None and g.task not in seen:
                seen.add(g.task)
                units[g.size.unit] = units.get(g.size.unit, 0) + g.size.items
        approx = any(g.size is not None and not g.size.exact for g in gs)
        passes = sum(g.passes or 0.0 for g in gs)
        gfl = sum(g.gflops or 0.0 for g in gs)
        unknown = any(g.gflops is None for g in gs)
        missing_g |= unknown
        cells = plan.cells_by_table.get(t, 0)
        tot_cells += cells
        tot_ext += len(gs)
        tot_pass += passes
        tot_g += gfl
        enc = ", ".join(f"{_fmt(v)} {_UNIT_WORDS.get(u, u)}" for u, v in units.items()) or "?"
        rows.append([titles.get(t, t), str(cells), str(len(gs)), enc, ("~" if approx else "") + _fmt(passes),
                     ("~" if approx else "") + _fmt(gfl) + ("+?" if unknown else ""),
                     _fmt(plan.hours(gfl), 1) + ("+?" if unknown and plan.gflops_per_s else "")])
    rows.append(["total", str(tot_cells), str(tot_ext), "", "~" + _fmt(tot_pass), "~" + _fmt(tot_g) +
                 ("+?" if missing_g else ""), _fmt(plan.hours(tot_g), 1)])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        lines.append("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                                      enumerate(zip(r, widths))))
    if missing_g:
        lines.append("  +? : encoders whose FLOPs cannot be counted (e.g. none, ONNX) or datasets of unknown size")
    lines.append("  ~ : estimates (average slices per volume or tissue tiles per slide; see "
                 "medprobe.pipeline.study_plan.STUDY_SIZES); counted from the data where it is found here")
    return lines


__all__ = ["STUDY_SIZES", "GroupPlan", "Size", "StudyPlan", "measure_images_per_s", "parse_reference",
           "plan_lines", "size_for", "speed_from_db", "study_plan"]
