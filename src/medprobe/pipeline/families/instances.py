"""EM neuron instances (the study's CREMI / AC3-AC4 experiments): frozen patch features -> affinity decoder ->
watershed + agglomeration -> VOI split / merge / VOI / ARAND per section with bootstrap CIs.

Dataset of task type ``instances`` (``em`` / ``em-tiff`` with ``target: instances``, ``isbi2012`` with
``target: instances``), usually with ``data.sections`` (train / val / test section ranges = the official
split, recorded in the notes). Per head (``affinity``):

1. train the affinity decoder on the training sections (:mod:`medprobe.heads.affinity`; epoch chosen by the
   validation loss);
2. predict affinities of the validation (else the last four training) cases, map them to the original pixel
   grid, agglomerate on the grid of seed thresholds (``seed_thresholds``; the seeded watershed's interior
   level) x merge thresholds (``thresholds``) and keep the pair with the best mean ``select_by``
   (``cremi_score`` default); a choice on the edge of either grid widens that grid (towards the limits 0.05 /
   0.99 for seeds, 0.005 / 0.995 for merges) and searches again (:func:`medprobe.heads.agglomerate.grid_search`),
   so a recorded choice sits on an edge only where the grid ends at its limit;
3. predict, agglomerate and score the test cases: per section VOI split / merge / total (bits), ARAND and the
   CREMI score (:mod:`medprobe.metrics.instances`; gt 0 ignored, ``border_nm`` band ignored when set) and the
   boundary Dice of the affinity map; a 3D decoder also gets the whole-chunk 3D scores (``*_volume``);
4. beside them, the encoder-free baselines on the same test sections, settings chosen on the same selection
   cases (:mod:`medprobe.heads.em_baselines`): all one segment, connected components of the thresholded raw
   image, the classical blur + percentile threshold + components + watershed pipeline and, where waterz is
   installed, a boundary map of the blurred image agglomerated by waterz; the table says whether the head
   beats the classical pipeline. The baselines are also heads of their own (``heads: [baseline-classical]``),
   rows like any other; their results are cached under ``<cache>/em-baselines/`` (they need no encoder).

Head options (``head_params.affinity``): the head's (``decoder``, ``width``, ``use_image``, ``long_range`` ...),
training (``lr``, ``epochs``, ``batch_size``, ``crop_size``, ``crop_depth``, ...) and agglomeration
(``thresholds``, ``seed_thresholds`` or one fixed ``seed_threshold``, ``widen``, ``method``: auto | waterz |
skimage, ``select_by``, ``border_nm``).
Outputs in ``outputs/<run_id>/``: per volume the predicted label volume of the test sections (HDF5
``volumes/labels/neuron_ids`` with ``resolution`` and ``offset`` attributes in nm like CREMI, z = the dataset's
section thickness, e.g. ISBI 2012's 50 nm; TIFF without h5py)
and overlay PNGs (raw | ground truth | prediction) of the first ``metrics.overlays`` sections.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medprobe.data.base import Item
from medprobe.errors import ConfigError, DataError
from medprobe.heads.affinity import (
    AffinityData,
    AffinityHead,
    AffinityTrainConfig,
    fit_affinity,
    predict_affinities,
)
from medprobe.heads.agglomerate import METHODS, GridAxis, affinities_from_labels, agglomerate, grid_search
from medprobe.heads.seg_heads import create_seg_head
from medprobe.heads.seg_train import content_box, slices_first
from medprobe.metrics.instances import (
    INSTANCE_METRICS,
    aggregate_sections,
    boundary_dice,
    boundary_from_affinities,
    instance_metrics,
)
from medprobe.pipeline.family import HeadResult, RunContext, TaskFamily, fmt_ci, register_family
from medprobe.utils import torch_seeded

_TRAIN_KEYS = tuple(AffinityTrainConfig.__dataclass_fields__)
SELECT_BY = ("cremi_score", "voi", "arand")
DEFINITIONS = ("VOI split/merge in bits (log2) over gt-labelled voxels (gt 0 ignored; predicted 0 is a segment); "
               "ARAND = 1 - Rand F-score over pairs of distinct voxels (scikit-image); cremi_score = sqrt(VOI x "
               "ARAND); scored per section (2D), means with bootstrap CIs over sections")
_BASELINE_VERSION = 2  # bumped when a baseline's computation changes (its cache key)


def classical_verdict(metrics: dict[str, Any], classical: dict[str, Any] | None) -> str | None:
    """One plain sentence: does this row beat the classical blur + threshold + watershed pipeline on ARAND
    (and VOI)? None without that baseline."""
    if not classical or "arand" not in metrics or "arand" not in classical:
        return None
    a, c = metrics["arand"], classical["arand"]
    if not (np.isfinite(a[0]) and np.isfinite(c[0])):
        return None
    apart = bool(a[1] > c[2] or a[2] < c[1]) if all(np.isfinite(v) for v in (*a[1:], *c[1:])) else False
    word = "LOSES TO" if a[0] > c[0] else "beats"
    out = (f"this head {word} the classical pipeline (baseline-classical, no encoder) on ARAND: {a[0]:.3f} vs "
           f"{c[0]:.3f} ({'CIs apart' if apart else 'CIs overlap'})")
    if "voi" in metrics and "voi" in classical:
        out += f"; VOI {metrics['voi'][0]:.3f} vs {classical['voi'][0]:.3f}"
    return out


@dataclass(frozen=True)
class AggloConfig:
    """Agglomeration options (recorded with results)."""

    thresholds: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    method: str = "auto"
    select_by: str = "cremi_score"
    seed_threshold: float | None = None  # one fixed seed threshold instead of searching seed_thresholds
    seed_thresholds: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9)
    widen: bool = True  # widen a grid whose edge is chosen
    border_nm: float = 0.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AggloConfig:
        d = dict(d)
        for key in ("thresholds", "seed_thresholds"):
            if key in d:
                th = d[key]
                try:
                    d[key] = tuple(float(t) for t in (th if isinstance(th, (list, tuple)) else [th]))
                except (TypeError, ValueError):
                    raise ConfigError(f"{key} must be numbers in (0, 1), got {th!r}") from None
                if not d[key] or not all(0 < t < 1 for t in d[key]):
                    raise ConfigError(f"{key} must be numbers in (0, 1), got {th!r}")
        if d.get("seed_threshold") is not None:
            st = d["seed_threshold"]
            if not isinstance(st, (int, float)) or isinstance(st, bool) or not 0 < st < 1:
                raise ConfigError(f"seed_threshold must be a number in (0, 1), got {st!r}")
            d["seed_threshold"] = float(st)
        cfg = cls(**d)
        if cfg.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
        if cfg.select_by not in SELECT_BY:
            raise ConfigError(f"select_by must be one of {', '.join(SELECT_BY)}, got {cfg.select_by!r}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "thresholds": list(self.thresholds), "seed_thresholds": list(self.seed_thresholds)}

    def axes(self) -> list[GridAxis]:
        """The (seed threshold, merge threshold) grid; an axis whose limits equal its values never widens."""
        seeds = (self.seed_threshold,) if self.seed_threshold is not None else self.seed_thresholds
        seed_lim = (0.05, 0.99) if self.widen and self.seed_threshold is None else (min(seeds), max(seeds))
        merge_lim = (0.005, 0.995) if self.widen else (min(self.thresholds), max(self.thresholds))
        return [GridAxis("seed_threshold", tuple(seeds), seed_lim, "halve", 0.005),
                GridAxis("threshold", self.thresholds, merge_lim, "halve", 0.005)]


_AGG_KEYS = tuple(AggloConfig.__dataclass_fields__)


def split_params(hp: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``head_params`` entry -> (head options, training options, agglomeration options)."""
    return ({k: v for k, v in hp.items() if k not in _TRAIN_KEYS and k not in _AGG_KEYS},
            {k: v for k, v in hp.items() if k in _TRAIN_KEYS}, {k: v for k, v in hp.items() if k in _AGG_KEYS})


# ------------------------------------------------------------------------------------------- geometry
def resize_instances(lab: np.ndarray, pre: Any) -> np.ndarray:
    """``(S, h, w)`` instance ids -> ``(S, H, W)`` int32 at the preprocessed size (nearest; outside the image
    content -1 = no data)."""
    s, h, w = lab.shape
    th, tw = pre.resolution
    top, left, nh, nw = content_box(h, w, pre)
    rows = np.minimum(((np.arange(nh) + 0.5) * h / nh).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(nw) + 0.5) * w / nw).astype(np.int64), w - 1)
    out = np.full((s, th, tw), -1, np.int32)
    out[:, top:top + nh, left:left + nw] = np.asarray(lab)[:, rows][:, :, cols]
    return out


def affinities_to_original(prob: torch.Tensor, shape_sab: tuple[int, ...], pre: Any) -> np.ndarray:
    """``(C, S, H, W)`` affinities at the preprocessed size -> ``(C, S, h, w)`` float32 at the original grid."""
    _, h, w = shape_sab
    top, left, nh, nw = content_box(h, w, pre)
    p = prob[:, :, top:top + nh, left:left + nw].float()
    if (nh, nw) != (h, w):
        p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
    return p.clamp(0, 1).numpy().astype(np.float32)


def _sections(item: Item) -> tuple[np.ndarray, np.ndarray]:
    """Raw grey ``(S, a, b)`` and instance labels ``(S, a, b)`` of an item, slices first."""
    img = np.asarray(item.image, np.float32)
    if img.ndim == item.spatial_dims + 1:
        img = img.mean(-1)
    if item.mask is None:
        raise DataError("instance case has no label volume", item.id)
    return slices_first(img, item), slices_first(np.asarray(item.mask), item)


def _baseline_model(name: str, ctx: RunContext) -> Any:
    """The baseline head ``name`` built with the task's ``head_params.<name>``."""
    from medprobe.heads.base import get_head_class
    from medprobe.heads.em_baselines import EMBaseline

    model = get_head_class(name, "dense")(**dict(ctx.spec.head_params.get(name, {})))
    assert isinstance(model, EMBaseline)
    return model


def _nm(item: Item) -> tuple[float, float, float]:
    """Voxel size ``(z, y, x)`` nm of the sections; for a 2D section z is its ``section_nm`` (the dataset's
    section thickness, e.g. ISBI 2012's 50 nm), 1 when unknown."""
    sp = item.meta.get("spacing_nm")
    if sp is not None:
        return float(sp[2]), float(sp[1]), float(sp[0])
    s = [float(v) * 1e6 for v in (item.spacing or (1e-6, 1e-6))]
    if item.spatial_dims == 2:
        z = item.meta.get("section_nm")
        return (float(z) if z else 1.0, s[0], s[1])
    return (s[2], s[1], s[0])


# ------------------------------------------------------------------------------------------- family
@register_family
class InstancesFamily(TaskFamily):
    name = "instances"
    task_types = ("instances",)
    head_inputs = ("dense",)
    tokens = ("patch",)
    default_layers = "four"
    default_use = "concat"
    headline = ("voi_split", "voi_merge", "voi", "arand")
    rank_by = ("arand", "voi")
    rescore = "cases"  # mean over sections of each stored per-section value (NaN left out)
    unit_label = "px/section"

    def head_params(self, head_cls: type[Any]) -> list[str]:
        if getattr(head_cls, "baseline", False):
            return sorted(head_cls.defaults)
        return sorted({*head_cls.defaults, *_TRAIN_KEYS, *_AGG_KEYS})

    def prepare(self, ctx: RunContext) -> None:
        from medprobe.preprocess import Preprocessor

        t0 = time.perf_counter()
        patch = ctx.encoder.patch_size
        prep = Preprocessor(ctx.preprocess, patch_size=patch)
        images: dict[int, np.ndarray] = {}
        labels: dict[int, np.ndarray] = {}
        shapes: dict[int, tuple[int, ...]] = {}
        for i in sorted(set(ctx.train) | set(ctx.val) | set(ctx.test)):
            item = ctx.dataset.load(i)
            images[i] = prep(item).mean(2).numpy().astype(np.float16)
            _, lab = _sections(item)
            labels[i] = resize_instances(lab, ctx.preprocess)
            shapes[i] = tuple(lab.shape)
        data = AffinityData(ctx.store, ctx.layers, patch, images, labels)
        sel = list(ctx.val) or list(ctx.train[-4:])
        ctx.state.update(data=data, shapes=shapes, selection=sel, targets_s=round(time.perf_counter() - t0, 3))
        ctx.state["baselines"] = {n: self._baseline(ctx, n) for n in self._baseline_names(ctx)}
        ranges = ctx.dataset.ranges() if hasattr(ctx.dataset, "ranges") else None
        ctx.notes["sections"] = ranges if ranges is not None else {
            k: [ctx.dataset.ids()[i] for i in v] for k, v in ctx.splits.items()}

    # -- encoder-free baselines (medprobe.heads.em_baselines), settings chosen on the selection cases
    def _baseline_names(self, ctx: RunContext) -> list[str]:
        """The baselines of this run: every one (waterz where installed) beside any other head, else the
        baseline heads asked for."""
        from medprobe.heads.base import get_head_class
        from medprobe.heads.em_baselines import BASELINES

        asked = [h for h in ctx.spec.heads if h in BASELINES]
        if all(h in BASELINES for h in ctx.spec.heads):
            return asked
        beside = [n for n in BASELINES if get_head_class(n, "dense").available()]  # type: ignore[attr-defined]
        return list(dict.fromkeys([*beside, *asked]))

    def _baseline(self, ctx: RunContext, name: str) -> dict[str, Any]:
        """One baseline's settings (grid search on the selection cases) and per-section test scores; cached
        under ``<cache>/em-baselines/`` by dataset, sections, options and metric settings."""
        from medprobe.features.common import cache_root
        from medprobe.utils import atomic_write_json, hash_obj

        ds, m = ctx.dataset, ctx.spec.metrics
        model = _baseline_model(name, ctx)
        sel = ctx.state["selection"]
        key = hash_obj({"v": _BASELINE_VERSION, "name": name, "params": model.get_params(),
                        "data": ds.fingerprint(), "selection": [ds.ids()[i] for i in sel],
                        "test": [ds.ids()[i] for i in ctx.test], "bootstrap": m.bootstrap, "alpha": m.alpha,
                        "seed": ctx.spec.seed}, n=16)
        path = cache_root(ctx.spec.cache_dir) / "em-baselines" / f"{name}-{key}.json"
        if path.is_file():
            try:
                got = json.loads(path.read_text(encoding="utf-8"))
                got["metrics"] = {k: tuple(v) if isinstance(v, list) else v for k, v in got["metrics"].items()}
                order = [a.name for a in model.axes()]  # the file's keys are sorted: back to the model's axis order
                got["settings"] = dict(sorted(got["settings"].items(),
                                              key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
                return dict(got, cached=True)
            except (OSError, ValueError, KeyError):
                pass  # damaged: computed again
        t0 = time.perf_counter()
        cases = [_sections(ds.load(i)) for i in sel]
        crit = model.select_by

        memo: list[list[dict[Any, Any]]] = [[{} for _ in raw] for raw, _ in cases]

        def score(points: list[tuple[float, ...]]) -> dict[tuple[float, ...], float]:
            vals: dict[tuple[float, ...], list[float]] = {p: [] for p in points}
            for (raw, gt), caches in zip(cases, memo):
                for r, g, c in zip(raw, gt, caches):
                    for p, seg in model.segment(r, points, c):
                        vals[p].append(instance_metrics(seg, g)[crit])
            return {p: float(np.nanmean(v)) if v and np.isfinite(v).any() else np.inf for p, v in vals.items()}

        axes = model.axes()
        search = grid_search(axes, score) if axes else {"best": {}, "grid": {}, "scores": {}, "at_limit": [],
                                                        "rounds": 0, "score": None}
        point = tuple(search["best"][a.name] for a in axes)
        memo.clear()
        rows: list[dict[str, float]] = []
        ids: list[str] = []
        for i in ctx.test:
            item = ds.load(i)
            raw, gt = _sections(item)
            for z, (r, g) in enumerate(zip(raw, gt)):
                ((_, seg),) = model.segment(r, [point])
                rows.append(instance_metrics(seg, g, case=item.id))
                ids.append(item.id if raw.shape[0] == 1 else f"{item.id}/s{z}")
        out = {"name": name, "note_key": model.note_key,
               "metrics": aggregate_sections(rows, m.bootstrap, ctx.spec.seed, m.alpha),
               "rows": rows, "ids": ids, "settings": search["best"], "select_by": crit,
               "params": model.get_params(), "search": {k: search[k] for k in ("grid", "at_limit", "rounds", "scores")},
               "seconds": round(time.perf_counter() - t0, 3)}
        atomic_write_json(path, out)
        return dict(out, cached=False)

    def _baseline_notes(self, ctx: RunContext) -> dict[str, Any]:
        """The baselines of this run as recorded beside every row (metrics keyed as before: one_segment,
        threshold_cc, classical, waterz; with their chosen settings and final grids)."""
        base = ctx.state["baselines"]
        out: dict[str, Any] = {}
        for b in base.values():
            k = b["note_key"]
            out[k] = b["metrics"]
            out.setdefault("settings", {})[k] = b["settings"]
            out.setdefault("selection", {})[k] = {"select_by": b["select_by"], **{
                x: b["search"][x] for x in ("grid", "at_limit")}}
        if "threshold_cc" in out:
            out["threshold_cc_percentile"] = out["settings"]["threshold_cc"].get("percentile")
        return out

    def _evaluate_baseline(self, head_name: str, ctx: RunContext) -> HeadResult:
        """A baseline as a head: its own row, the same metrics and CIs, its label volumes written like a head's."""
        b = ctx.state["baselines"][head_name]
        model = _baseline_model(head_name, ctx)
        point = tuple(b["settings"][a.name] for a in model.axes())
        segs: list[np.ndarray] = []
        t0 = time.perf_counter()
        for i in ctx.test:
            raw, _ = _sections(ctx.dataset.load(i))
            parts, base_id = [], 0
            for r in raw:
                ((_, seg),) = model.segment(r, [point])
                seg = np.asarray(seg, np.uint64)
                parts.append(np.where(seg > 0, seg + np.uint64(base_id), 0).astype(np.uint64))
                base_id = int(parts[-1].max(initial=base_id))
            segs.append(np.stack(parts))
        rows, keys = b["rows"], list(INSTANCE_METRICS)
        res = HeadResult(
            head=head_name, metrics=dict(b["metrics"]),
            predictions={"ids": np.asarray(b["ids"]), "metric_names": np.asarray(keys),
                         "values": np.asarray([[float(r.get(k, np.nan)) for k in keys] for r in rows], np.float64)},
            head_params={"head": head_name, **b["params"], "settings": b["settings"],
                         "grid": b["search"]["grid"]},
            timings={"head_fit_s": b["seconds"], "inference_s": round(time.perf_counter() - t0, 3)},
            notes={"baseline": True, "encoder_used": False, "settings": b["settings"],
                   "selection": {"select_by": b["select_by"], **b["search"]},
                   "selection_cases": [ctx.dataset.ids()[i] for i in ctx.state["selection"]],
                   "selected_by": f"mean {b['select_by']} on " + ("validation" if ctx.val else "the last training")
                   + " cases", "metric_definitions": DEFINITIONS,
                   "baselines": self._baseline_notes(ctx)})
        chosen = ", ".join(f"{k} {v:g}" for k, v in b["settings"].items()) or "nothing to choose"
        res.table = [f"(no encoder: {chosen}, chosen by {b['select_by']} on the selection cases"
                     + (f"; at the grid's limit: {', '.join(b['search']['at_limit'])}" if b["search"]["at_limit"]
                        else "") + ")"]
        ctx.state[f"segs_{res.run_id}"] = segs
        res.extra["per_section"] = rows
        return res

    def _segment(self, affs: np.ndarray, head: AffinityHead, acfg: AggloConfig, thresholds: Sequence[float],
                 seed_threshold: float, cache: dict[Any, Any] | None = None) -> dict[float, np.ndarray]:
        """Affinities ``(C, S, h, w)`` -> ``{threshold: (S, h, w) ids}`` (2D per section for 2D decoders);
        ``cache``: kept by the caller per case, so each seed's fragments are computed once."""
        k = 3 if head.is_3d else 2
        a = affs[:k] if head.is_3d else affs[:2]
        if head.is_3d and affs.shape[1] > 1:
            return agglomerate(a, thresholds, method=acfg.method, seed_threshold=seed_threshold, cache=cache)
        inplane = a[k - 2:k]
        return agglomerate(inplane, thresholds, method=acfg.method, per_section=True,
                           seed_threshold=seed_threshold, cache=cache)

    def evaluate(self, head_cls: type[Any], head_name: str, ctx: RunContext) -> HeadResult:
        if getattr(head_cls, "baseline", False):
            return self._evaluate_baseline(head_name, ctx)
        spec, ds = ctx.spec, ctx.dataset
        data: AffinityData = ctx.state["data"]
        hp_head, hp_train, hp_agg = split_params(dict(spec.head_params.get(head_name, {})))
        tcfg, acfg = AffinityTrainConfig.from_dict(hp_train), AggloConfig.from_dict(hp_agg)
        with torch_seeded(spec.seed, ctx.device):  # the head's initial weights
            head = create_seg_head(head_cls.name, data.dims, 0, ctx.encoder.patch_size, data.n_views, **hp_head)
        assert isinstance(head, AffinityHead)
        t_fit = time.perf_counter()
        hist = fit_affinity(head, data, ctx.train, ctx.val, tcfg, seed=spec.seed, device=ctx.device,
                            progress=ctx.verbose)
        fit_s = time.perf_counter() - t_fit

        def affs_of(i: int) -> np.ndarray:
            return affinities_to_original(predict_affinities(head, data, i, tcfg, ctx.device),
                                          ctx.state["shapes"][i], ctx.preprocess)

        # seed and merge thresholds on the selection cases (grids widened where the choice sits on an edge)
        t_sel = time.perf_counter()
        sel_cases: list[tuple[np.ndarray, np.ndarray, tuple[float, float, float], dict[Any, Any]]] = []
        for i in ctx.state["selection"]:
            item = ds.load(i)
            sel_cases.append((affs_of(i), _sections(item)[1], _nm(item), {}))

        def score(points: list[tuple[float, ...]]) -> dict[tuple[float, ...], float]:
            vals: dict[tuple[float, ...], list[float]] = {p: [] for p in points}
            for seed in sorted({p[0] for p in points}):
                ths = sorted({p[1] for p in points if p[0] == seed})
                for affs, gt, nm, cache in sel_cases:
                    for t, seg in self._segment(affs, head, acfg, ths, seed, cache).items():
                        vals[(seed, t)] += [instance_metrics(s, g, border_nm=acfg.border_nm,
                                                             spacing_nm=nm[1:])[acfg.select_by]
                                            for s, g in zip(seg, gt)]
            return {p: float(np.nanmean(v)) if v and np.isfinite(v).any() else np.inf for p, v in vals.items()}

        search = grid_search(acfg.axes(), score)
        seed_thr, thr = search["best"]["seed_threshold"], search["best"]["threshold"]
        sel_cases.clear()
        select_s = time.perf_counter() - t_sel
        # test
        t_inf = time.perf_counter()
        per_section: list[dict[str, float]] = []
        volume_rows: list[dict[str, float]] = []
        preds: list[np.ndarray] = []
        rows_ids: list[str] = []
        agg_s = 0.0
        for i in ctx.test:
            item = ds.load(i)
            _, gt = _sections(item)
            nm = _nm(item)
            affs = affs_of(i)
            t_a = time.perf_counter()
            seg = self._segment(affs, head, acfg, (thr,), seed_thr)[thr]
            agg_s += time.perf_counter() - t_a
            k = 3 if head.is_3d else 2
            inplane = affs[k - 2:k]
            for z in range(seg.shape[0]):
                row = instance_metrics(seg[z], gt[z], border_nm=acfg.border_nm, spacing_nm=nm[1:], case=item.id)
                gt_b = boundary_from_affinities(affinities_from_labels(gt[z])[0])
                row["boundary_dice"] = boundary_dice(boundary_from_affinities(inplane[:, z]), gt_b)
                per_section.append(row)
                rows_ids.append(item.id if seg.shape[0] == 1 else f"{item.id}/s{z}")
            if head.is_3d and seg.shape[0] > 1:
                volume_rows.append(instance_metrics(seg, gt, border_nm=acfg.border_nm, spacing_nm=nm[1:],
                                                    case=item.id))
            preds.append(seg)
        infer_s = time.perf_counter() - t_inf
        m = spec.metrics
        agg = aggregate_sections(per_section, m.bootstrap, spec.seed, m.alpha)
        if volume_rows:
            vol = aggregate_sections(volume_rows, m.bootstrap, spec.seed, m.alpha)
            agg.update({f"{k}_volume": v for k, v in vol.items()})
        keys = list(per_section[0]) if per_section else list(INSTANCE_METRICS)
        base = self._baseline_notes(ctx)
        verdict = classical_verdict(agg, base.get("classical"))
        res = HeadResult(
            head=head_name, metrics=agg,
            predictions={"ids": np.asarray(rows_ids), "metric_names": np.asarray(keys),
                         "values": np.asarray([[float(r.get(k, np.nan)) for k in keys] for r in per_section],
                                              np.float64)},
            head_params={**head.params, "head": head_cls.name, "train": tcfg.to_dict(),
                         "agglomeration": {**acfg.to_dict(), "threshold": thr, "seed_threshold": seed_thr,
                                           "grid": search["grid"], "at_limit": search["at_limit"]},
                         "offsets": [list(o) for o in head.offsets],
                         "n_params": sum(p.numel() for p in head.parameters())},
            timings={"targets_s": ctx.state["targets_s"], "head_fit_s": round(fit_s, 3),
                     "threshold_select_s": round(select_s, 3), "inference_s": round(infer_s, 3),
                     "agglomeration_s": round(agg_s, 3)},
            notes={"history": hist, "threshold": thr, "seed_threshold": seed_thr,
                   "threshold_sweep": search["scores"], "threshold_sweep_axes": ["seed_threshold", "threshold"],
                   "threshold_grid": search["grid"], "threshold_at_limit": search["at_limit"],
                   "selection_cases": [ds.ids()[i] for i in ctx.state["selection"]],
                   "selected_by": f"mean {acfg.select_by} on " + ("validation" if ctx.val else "the last training")
                   + " cases", "metric_definitions": DEFINITIONS, "border_nm": acfg.border_nm,
                   "baselines": base, **({"verdict": verdict} if verdict else {})})
        res.table = [f"(fit {fit_s:.0f}s, best epoch {hist['best_epoch']}, seed threshold {seed_thr:g}, merge "
                     f"threshold {thr:g} by {acfg.select_by}"
                     + (f" [at the grid's limit: {', '.join(search['at_limit'])}]" if search["at_limit"] else "")
                     + f", boundary Dice {fmt_ci(agg.get('boundary_dice'), width=0).strip()})"]
        for key in ("one_segment", "threshold_cc", "classical", "waterz"):
            if key in base:
                chosen = ", ".join(f"{k} {v:g}" for k, v in base["settings"][key].items())
                res.table.append(f"baseline {key:<13} " + " ".join(fmt_ci(base[key].get(k)) for k in self.headline)
                                 + (f"   ({chosen})" if chosen else ""))
        if verdict:
            res.table.append(verdict)
        ctx.state[f"segs_{res.run_id}"] = preds
        res.extra["per_section"] = per_section
        return res

    def write_outputs(self, result: HeadResult, ctx: RunContext) -> None:
        """Label volumes (per input volume, the test sections stacked) and overlay PNGs in outputs/<run_id>/."""
        out_dir = Path(ctx.results_root) / "outputs" / result.run_id
        out_dir.mkdir(parents=True, exist_ok=True)
        segs = ctx.state.pop(f"segs_{result.run_id}")
        groups: dict[str, list[tuple[Item, np.ndarray]]] = {}
        for i, seg in zip(ctx.test, segs):
            item = ctx.dataset.load(i)
            groups.setdefault(str(item.meta.get("volume") or ctx.dataset.name), []).append((item, seg))
        files: list[str] = []
        n_overlay = ctx.spec.metrics.overlays
        for vol, parts in groups.items():
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in vol)
            files.append(str(write_label_volume(out_dir / safe, parts)))
            for item, seg in parts:
                if n_overlay <= 0:
                    break
                raw, gt = _sections(item)
                z = seg.shape[0] // 2
                write_instance_overlay(out_dir / f"{safe}_{item.id.replace('/', '_')}_overlay.png", raw[z], gt[z],
                                       seg[z])
                n_overlay -= 1
        assert result.predictions is not None
        result.notes["outputs"] = str(out_dir)
        result.notes["output_files"] = files
        result.extra["outputs"] = out_dir
        result.table.append(f"segmentations in {out_dir}")


# ------------------------------------------------------------------------------------------- outputs
def write_label_volume(stem: Path, parts: list[tuple[Item, np.ndarray]]) -> Path:
    """Stack the predicted sections of one input volume (file order ``(z, y, x)``, ids unique over the stack)
    and write them as CREMI-style HDF5 (``volumes/labels/neuron_ids``, ``resolution`` / ``offset`` in nm,
    ``sections`` = the source section indices) or, without h5py, a multi-page TIFF."""
    from medprobe.utils import atomic_write_bytes

    secs: list[np.ndarray] = []
    index: list[int] = []
    base = 0
    for item, seg in parts:
        s = seg.astype(np.uint64)
        s = np.where(s > 0, s + np.uint64(base), 0).astype(np.uint64)
        base = int(s.max(initial=base))
        # slices_first order -> file order: 3D items are (Z, X, Y) after slices_first, so transpose in-plane
        s = s if item.spatial_dims == 2 else s.transpose(0, 2, 1)
        secs.append(s)
        a = item.meta.get("sections", [item.meta.get("section", len(index))])[0]
        index += list(range(int(a), int(a) + s.shape[0]))
    vol = np.concatenate(secs, 0)
    res = _nm(parts[0][0])
    try:
        import h5py
    except ImportError:
        import io

        import tifffile

        buf = io.BytesIO()
        tifffile.imwrite(buf, vol.astype(np.uint32), photometric="minisblack",
                         metadata={"resolution_nm_zyx": list(res), "sections": index})
        path = stem.with_suffix(".tif")
        atomic_write_bytes(path, buf.getvalue())
        return path
    path = stem.with_suffix(".h5")
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        d = f.create_dataset("volumes/labels/neuron_ids", data=vol, compression="gzip")
        d.attrs["resolution"] = res
        d.attrs["offset"] = (index[0] * res[0], 0.0, 0.0)
        d.attrs["sections"] = np.asarray(index, np.int64)
    tmp.replace(path)
    return path


def _colour(ids: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random RGB per id (0 black)."""
    h = (ids.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2**24)
    rgb = np.stack([(h >> np.uint64(s)) & np.uint64(255) for s in (16, 8, 0)], -1).astype(np.uint8)
    rgb[ids == 0] = 0
    return rgb


def write_instance_overlay(path: Path, raw: np.ndarray, gt: np.ndarray, seg: np.ndarray) -> None:
    """PNG of one section: raw | ground truth blended | prediction blended."""
    from medprobe.data.io import write_png

    a = np.asarray(raw, np.float32)
    lo, hi = np.percentile(a, [1, 99]) if a.size else (0.0, 1.0)
    g = (np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    grey = np.repeat(g[..., None], 3, -1)

    def blend(ids: np.ndarray) -> np.ndarray:
        return (0.5 * grey + 0.5 * _colour(ids)).astype(np.uint8)

    sep = np.full((g.shape[0], 2, 3), 255, np.uint8)
    write_png(path, np.concatenate([grey, sep, blend(gt), sep, blend(seg)], 1))


__all__ = ["AggloConfig", "InstancesFamily", "affinities_to_original", "classical_verdict",
           "resize_instances", "split_params", "write_instance_overlay", "write_label_volume"]
