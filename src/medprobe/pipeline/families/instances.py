"""EM neuron instances (the study's CREMI / AC3-AC4 experiments): frozen patch features -> affinity decoder ->
watershed + agglomeration -> VOI split / merge / VOI / ARAND per section with bootstrap CIs.

Dataset of task type ``instances`` (``em`` / ``em-tiff`` with ``target: instances``, ``isbi2012`` with
``target: instances``), usually with ``data.sections`` (train / val / test section ranges = the official
split, recorded in the notes). Per head (``affinity``):

1. train the affinity decoder on the training sections (:mod:`medprobe.heads.affinity`; epoch chosen by the
   validation loss);
2. predict affinities of the validation (else the last four training) cases, map them to the original pixel
   grid, agglomerate at every ``thresholds`` value and keep the threshold with the best mean ``select_by``
   (``cremi_score`` default);
3. predict, agglomerate and score the test cases: per section VOI split / merge / total (bits), ARAND and the
   CREMI score (:mod:`medprobe.metrics.instances`; gt 0 ignored, ``border_nm`` band ignored when set) and the
   boundary Dice of the affinity map; a 3D decoder also gets the whole-chunk 3D scores (``*_volume``);
4. beside them, the trivial baselines on the same test sections: all one segment, and connected components of
   the thresholded raw image (threshold percentile chosen on the selection cases).

Head options (``head_params.affinity``): the head's (``decoder``, ``width``, ``use_image``, ``long_range`` ...),
training (``lr``, ``epochs``, ``batch_size``, ``crop_size``, ``crop_depth``, ...) and agglomeration
(``thresholds``, ``method``: auto | waterz | skimage, ``select_by``, ``seed_threshold``, ``border_nm``).
Outputs in ``outputs/<run_id>/``: per volume the predicted label volume of the test sections (HDF5
``volumes/labels/neuron_ids`` with ``resolution`` and ``offset`` attributes like CREMI, TIFF without h5py)
and overlay PNGs (raw | ground truth | prediction) of the first ``metrics.overlays`` sections.
"""

from __future__ import annotations

import time
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
from medprobe.heads.agglomerate import METHODS, affinities_from_labels, agglomerate
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


@dataclass(frozen=True)
class AggloConfig:
    """Agglomeration options (recorded with results)."""

    thresholds: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    method: str = "auto"
    select_by: str = "cremi_score"
    seed_threshold: float = 0.5
    border_nm: float = 0.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AggloConfig:
        d = dict(d)
        if "thresholds" in d:
            th = d["thresholds"]
            try:
                d["thresholds"] = tuple(float(t) for t in (th if isinstance(th, (list, tuple)) else [th]))
            except (TypeError, ValueError):
                raise ConfigError(f"thresholds must be numbers in (0, 1), got {th!r}") from None
            if not d["thresholds"] or not all(0 < t < 1 for t in d["thresholds"]):
                raise ConfigError(f"thresholds must be numbers in (0, 1), got {th!r}")
        cfg = cls(**d)
        if cfg.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
        if cfg.select_by not in SELECT_BY:
            raise ConfigError(f"select_by must be one of {', '.join(SELECT_BY)}, got {cfg.select_by!r}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "thresholds": list(self.thresholds)}


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


def _nm(item: Item) -> tuple[float, float, float]:
    """Voxel size ``(z, y, x)`` nm of the sections (z 1 when unknown)."""
    sp = item.meta.get("spacing_nm")
    if sp is not None:
        return float(sp[2]), float(sp[1]), float(sp[0])
    s = [float(v) * 1e6 for v in (item.spacing or (1e-6, 1e-6))]
    return (1.0, s[0], s[1]) if item.spatial_dims == 2 else (s[2], s[1], s[0])


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
    unit_label = "px/section"

    def head_params(self, head_cls: type[Any]) -> list[str]:
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
        ctx.state.update(data=data, shapes=shapes, selection=sel, targets_s=round(time.perf_counter() - t0, 3),
                         baselines=self._baselines(ctx, sel))
        ranges = ctx.dataset.ranges() if hasattr(ctx.dataset, "ranges") else None
        ctx.notes["sections"] = ranges if ranges is not None else {
            k: [ctx.dataset.ids()[i] for i in v] for k, v in ctx.splits.items()}

    # -- trivial baselines: one segment; connected components of the thresholded raw image
    def _baselines(self, ctx: RunContext, sel: list[int]) -> dict[str, Any]:
        from scipy import ndimage

        pcts = (5, 10, 15, 20, 25, 30, 40, 50, 60)

        def cc(img: np.ndarray, pct: float) -> np.ndarray:
            return ndimage.label(img > np.percentile(img, pct))[0]

        score = {p: [] for p in pcts}  # type: dict[float, list[float]]
        for i in sel:
            raw, gt = _sections(ctx.dataset.load(i))
            for p in pcts:
                score[p] += [instance_metrics(cc(r, p), g)["arand"] for r, g in zip(raw, gt)]
        best = min(pcts, key=lambda p: float(np.nanmean(score[p])) if score[p] else np.inf)
        one, thr = [], []
        for i in ctx.test:
            raw, gt = _sections(ctx.dataset.load(i))
            for r, g in zip(raw, gt):
                one.append(instance_metrics(np.ones(g.shape, np.int64), g))
                thr.append(instance_metrics(cc(r, best), g))
        m = ctx.spec.metrics
        return {"one_segment": aggregate_sections(one, m.bootstrap, ctx.spec.seed, m.alpha),
                "threshold_cc": aggregate_sections(thr, m.bootstrap, ctx.spec.seed, m.alpha),
                "threshold_cc_percentile": best}

    def _segment(self, affs: np.ndarray, head: AffinityHead, acfg: AggloConfig, thresholds: tuple[float, ...]
                 ) -> dict[float, np.ndarray]:
        """Affinities ``(C, S, h, w)`` -> ``{threshold: (S, h, w) ids}`` (2D per section for 2D decoders)."""
        k = 3 if head.is_3d else 2
        a = affs[:k] if head.is_3d else affs[:2]
        if head.is_3d and affs.shape[1] > 1:
            return agglomerate(a, thresholds, method=acfg.method, seed_threshold=acfg.seed_threshold)
        inplane = a[k - 2:k]
        return agglomerate(inplane, thresholds, method=acfg.method, per_section=True,
                           seed_threshold=acfg.seed_threshold)

    def evaluate(self, head_cls: type[Any], head_name: str, ctx: RunContext) -> HeadResult:
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

        # threshold on the selection cases
        t_sel = time.perf_counter()
        sweep: dict[float, list[float]] = {t: [] for t in acfg.thresholds}
        for i in ctx.state["selection"]:
            item = ds.load(i)
            _, gt = _sections(item)
            nm = _nm(item)
            for t, seg in self._segment(affs_of(i), head, acfg, acfg.thresholds).items():
                sweep[t] += [instance_metrics(s, g, border_nm=acfg.border_nm, spacing_nm=nm[1:])[acfg.select_by]
                             for s, g in zip(seg, gt)]
        sel_mean = {t: float(np.nanmean(v)) if v and np.isfinite(v).any() else np.inf for t, v in sweep.items()}
        thr = min(acfg.thresholds, key=lambda t: sel_mean[t])
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
            seg = self._segment(affs, head, acfg, (thr,))[thr]
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
        base = ctx.state["baselines"]
        res = HeadResult(
            head=head_name, metrics=agg,
            predictions={"ids": np.asarray(rows_ids), "metric_names": np.asarray(keys),
                         "values": np.asarray([[float(r.get(k, np.nan)) for k in keys] for r in per_section],
                                              np.float64)},
            head_params={**head.params, "head": head_cls.name, "train": tcfg.to_dict(),
                         "agglomeration": {**acfg.to_dict(), "threshold": thr},
                         "offsets": [list(o) for o in head.offsets],
                         "n_params": sum(p.numel() for p in head.parameters())},
            timings={"targets_s": ctx.state["targets_s"], "head_fit_s": round(fit_s, 3),
                     "threshold_select_s": round(select_s, 3), "inference_s": round(infer_s, 3),
                     "agglomeration_s": round(agg_s, 3)},
            notes={"history": hist, "threshold": thr,
                   "threshold_sweep": {str(t): v for t, v in sel_mean.items()},
                   "selection_cases": [ds.ids()[i] for i in ctx.state["selection"]],
                   "selected_by": f"mean {acfg.select_by} on " + ("validation" if ctx.val else "the last training")
                   + " cases", "metric_definitions": DEFINITIONS, "border_nm": acfg.border_nm,
                   "baselines": {"one_segment": base["one_segment"], "threshold_cc": base["threshold_cc"],
                                 "threshold_cc_percentile": base["threshold_cc_percentile"]}})
        res.table = [f"(fit {fit_s:.0f}s, best epoch {hist['best_epoch']}, threshold {thr:g} by {acfg.select_by}, "
                     f"boundary Dice {fmt_ci(agg.get('boundary_dice'), width=0).strip()})"]
        for name in ("one_segment", "threshold_cc"):
            b = base[name]
            res.table.append(f"baseline {name:<13} " + " ".join(fmt_ci(b.get(k)) for k in self.headline))
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


__all__ = ["AggloConfig", "InstancesFamily", "affinities_to_original", "resize_instances", "split_params",
           "write_instance_overlay", "write_label_volume"]
