"""Segmentation (the study's 2D and pseudo-3D segmentation): frozen patch features -> decoder -> masks.

Dataset (optionally ``data.skip_invalid: true``: bad cases are listed and dropped) -> splits (MSD:
``split: {folds: 5, fold: 0}``) -> patch features of the tapped blocks (default ``four``, all concatenated) ->
per head: train on crops, keep the best validation epoch -> predict the test cases at the original voxel grid
-> Dice / IoU / HD95 / ASD / NSD / precision / recall per case (distances in mm when the spacing is known:
volumes, 2D sets with ``spacing`` / ``spacing_csv``; else in pixels, and the record's ``units`` says which)
-> means with bootstrap CIs (a class the prediction misses entirely has no surface: ``metrics.empty_prediction``
``worst``, the default, scores its HD95 / ASD as the image diagonal, ``exclude`` leaves it out; the policy, the
distance and the count of such cases are in the record's ``notes.empty_predictions``) -> one
results row per head + predicted masks (NIfTI in the input file's orientation and affine, PNG for 2D) and
overlay PNGs under ``<results>/outputs/<run_id>/``.

Head options (``head_params: {decoder3d: {...}}``) mix the head's own options (``width``, ``use_image``, ...)
and training options (:class:`~medprobe.heads.seg_train.SegTrainConfig`: ``lr``, ``epochs``, ``batch_size``,
``crop_depth``, ``crop_size``, ...). Metric options: ``metrics: {nsd_tolerance_mm, empty_policy,
empty_prediction, bootstrap, alpha, overlays}``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from medprobe.data.base import Item
from medprobe.errors import DataError
from medprobe.heads.seg_heads import create_seg_head
from medprobe.heads.seg_train import (
    SegData,
    SegTrainConfig,
    fit,
    item_order,
    load_shape,
    predict_proba,
    prepare_targets,
    slices_first,
    to_original,
)
from medprobe.metrics.segmentation import (
    aggregate_cases,
    distance_units,
    empty_predictions,
    segmentation_metrics,
    spacing_known,
)
from medprobe.pipeline.family import HeadResult, RunContext, TaskFamily, fmt_ci, register_family
from medprobe.pipeline.options import SegmentationData
from medprobe.pipeline.task import TaskSpec
from medprobe.utils import atomic_write_bytes, default_cache_dir, torch_seeded

_RGB_MODALITIES = ("endoscopy", "pathology", "natural")
_TRAIN_KEYS = tuple(SegTrainConfig.__dataclass_fields__)


def split_params(hp: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``head_params`` entry -> (head options, training options)."""
    return {k: v for k, v in hp.items() if k not in _TRAIN_KEYS}, {k: v for k, v in hp.items() if k in _TRAIN_KEYS}


# ------------------------------------------------------------------------------------------- outputs
def _nifti_source(item: Item) -> Path | None:
    files = item.meta.get("files") or ([item.source] if item.source else [])
    if files and str(files[0]).endswith((".nii", ".nii.gz")) and Path(files[0]).is_file():
        return Path(files[0])
    return None


def write_mask_like_input(path: Path, mask: np.ndarray, item: Item) -> dict[str, Any]:
    """Write a 3D label map (item array order, i.e. canonical RAS for loaders that reorient) as NIfTI with the
    input file's orientation, shape, affine and header; falls back to ``item.affine`` when there is no input
    NIfTI. Returns ``{"path", "affine_from"}``."""
    import nibabel as nib
    import nibabel.orientations as nio

    from medprobe.data.io import write_volume

    src = _nifti_source(item)
    if src is None:
        write_volume(path, mask.astype(np.uint8 if mask.max(initial=0) < 256 else np.int32), item.affine)
        return {"path": str(path), "affine_from": "item"}
    ref: Any = nib.load(str(src))  # a NIfTI image (nibabel's stub says FileBasedImage)
    ornt = nio.io_orientation(ref.affine)
    back = nio.ornt_transform(nio.axcodes2ornt(("R", "A", "S")), ornt)
    arr = nio.apply_orientation(mask, back) if not np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]) else mask
    if tuple(arr.shape) != tuple(ref.shape[:3]):
        raise DataError(f"prediction shape {arr.shape} does not match the input file's {ref.shape[:3]}", item.id)
    dtype = np.uint8 if arr.max(initial=0) < 256 else np.int32
    hdr = ref.header.copy()
    hdr.set_data_dtype(dtype)
    hdr.set_slope_inter(1.0, 0.0)
    hdr.set_data_shape(arr.shape)
    img = nib.Nifti1Image(np.ascontiguousarray(arr.astype(dtype)), ref.affine, header=hdr)
    img.set_sform(ref.header.get_sform(), int(ref.header["sform_code"]))
    img.set_qform(ref.header.get_qform(), int(ref.header["qform_code"]))
    data = img.to_bytes()
    if str(path).endswith(".gz"):
        import gzip

        data = gzip.compress(data, compresslevel=6, mtime=0)
    atomic_write_bytes(path, data)
    return {"path": str(path), "affine_from": str(src)}


_COLOURS = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], np.uint8)


def _grey(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img, np.float32)
    if a.ndim == 3:
        a = a.mean(-1)
    lo, hi = np.percentile(a, [1, 99]) if a.size else (0.0, 1.0)
    return (np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def _contours(rgb: np.ndarray, lab: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    out = rgb.copy()
    for c in [int(v) for v in np.unique(lab) if v > 0]:
        m = lab == c
        edge = m & ~binary_erosion(m)
        out[edge] = _COLOURS[c % len(_COLOURS) or 1]
    return out


def write_overlay(path: Path, item: Item, pred: np.ndarray) -> None:
    """PNG: the slice with most ground-truth foreground; left ground truth, right prediction (contours)."""
    from medprobe.data.io import write_png

    img = np.asarray(item.image)
    if item.spatial_dims == 3:
        vol = slices_first(img if img.ndim == 3 else img[..., 0], item)
        gt = slices_first(np.asarray(item.mask), item)
        pr = slices_first(pred, item)
        z = int(np.argmax((gt > 0).reshape(len(gt), -1).sum(1) + (pr > 0).reshape(len(pr), -1).sum(1) * 1e-3))
        g, sl_gt, sl_pr = _grey(vol[z]), gt[z], pr[z]
    else:
        g, sl_gt, sl_pr = _grey(img), np.asarray(item.mask), pred
    rgb = np.repeat(g[..., None], 3, -1)
    sep = np.full((rgb.shape[0], 2, 3), 255, np.uint8)
    write_png(path, np.concatenate([_contours(rgb, sl_gt), sep, _contours(rgb, sl_pr)], axis=1))



# ------------------------------------------------------------------------------------------- empty predictions
EMPTY_DISTANCE = {"worst": "the image diagonal sqrt(sum((n_i * spacing_i)^2)), the largest distance the image allows",
                  "exclude": "none: the class is left out of that case's HD95 / ASD (and of their means)"}


def empty_record(missed: dict[str, list[str]], n_cases: int, policy: str, unit: str, classes: list[str]
                 ) -> dict[str, Any]:
    """What the record says about empty predictions (a class the truth holds and the prediction misses): the
    policy and distance used, the count of test cases with one (and per class), and the first case ids."""
    per_class = {c: sum(c in v for v in missed.values()) for c in classes}
    return {"policy": policy, "distance": EMPTY_DISTANCE[policy], "unit": unit, "cases": len(missed),
            "of": n_cases, "per_class": {c: n for c, n in per_class.items() if n},
            "ids": sorted(missed)[:50]}


def empty_line(rec: dict[str, Any]) -> str:
    """One printed line: how many test cases had an empty prediction and how their HD95 / ASD were scored."""
    how = ("HD95/ASD scored as the image diagonal (metrics.empty_prediction: worst)" if rec["policy"] == "worst"
           else "left out of the HD95/ASD means (metrics.empty_prediction: exclude)")
    return f"{rec['cases']} of {rec['of']} test cases miss a class the truth holds (empty prediction): {how}"


# ------------------------------------------------------------------------------------------- family
def checkpoint_path(ctx: RunContext, head_name: str) -> Path:
    """Where a head's training checkpoint lives until its row is stored: keyed by the head's config hash and
    the features it trains on, so a rerun of the same task resumes and nothing else does."""
    key = f"{ctx.user_spec.config_hash(head_name)}-{ctx.extraction['cache_key'][:12]}"
    return Path(ctx.results_root) / "checkpoints" / f"{key}.pt"



@register_family
class SegmentationFamily(TaskFamily):
    name = "segmentation"
    task_types = ("segmentation",)
    head_inputs = ("dense",)
    tokens = ("patch",)
    default_layers = "four"
    default_use = "concat"
    headline = ("dice", "iou", "hd95", "asd")
    rank_by = ("dice", "miou", "iou")
    rescore = "cases"  # mean over cases of each stored per-case value (NaN left out)
    data_schema = SegmentationData  # data.skip_invalid, data.inputs
    unit_label = "px/slice"

    def prepare_dataset(self, ds: Any, spec: TaskSpec, verbose: bool) -> tuple[Any, dict[str, Any]]:
        """With ``data.skip_invalid``: every case validated, bad ones listed and dropped; ``data.inputs``: only
        the named channels (the PET/CT input ablation: CT, PET, CT+PET)."""
        ds, notes = self._validated(ds, spec, verbose)
        if spec.data.get("inputs") is not None:
            from medprobe.preprocess.channels import select_inputs

            ds = select_inputs(ds, spec.data["inputs"], spec.name)
            notes["inputs"] = "+".join(getattr(ds, "channel_names", [])) or "all"
        return ds, notes

    def _validated(self, ds: Any, spec: TaskSpec, verbose: bool) -> tuple[Any, dict[str, Any]]:
        notes: dict[str, Any] = {"skipped_cases": [], "warnings": []}
        if not spec.data.get("skip_invalid"):
            return ds, notes
        from medprobe.data.msd import validate_all

        problems = validate_all(ds, include_warnings=True)
        notes["warnings"] = [f"{c}: {p[len('warning: '):]}" for c, p in problems if p.startswith("warning: ")]
        skipped = [(c, p) for c, p in problems if not p.startswith("warning: ")]
        if skipped:
            from medprobe.data.base import Subset

            bad = {c for c, _ in skipped}
            ds = Subset(ds, [i for i, c in enumerate(ds.ids()) if c not in bad], tag="valid")
            if verbose:
                for c, p in skipped:
                    print(f"skipped {c}: {p}")
        notes["skipped_cases"] = [f"{c}: {p}" for c, p in skipped]
        if not len(ds):
            raise DataError("every case is invalid", spec.dataset)
        return ds, notes

    def resolve(self, spec: TaskSpec, ds: Any, encoder: Any) -> TaskSpec:
        """Four tapped blocks, all concatenated; ``per_channel`` for multi-channel non-RGB data, each channel
        with its own intensity option (``auto``: from the channel's name, e.g. CT window / PET SUV)."""
        spec = super().resolve(spec, ds, encoder)
        if spec.preprocess.channels == "auto" and ds.modality not in _RGB_MODALITIES:
            names = getattr(ds, "channel_names", None)
            n = len(names) if names else ds.load(0).n_channels
            if n > 1:
                spec = spec.with_overrides(preprocess={"channels": "per_channel"})
        if spec.preprocess.channels == "per_channel":
            from medprobe.preprocess.channels import channel_names
            from medprobe.preprocess.intensity import channel_intensities

            names = channel_names(ds)  # also through a Subset (skip_invalid)
            n = len(names) if names else ds.load(0).n_channels
            if n > 1:
                per = channel_intensities(spec.preprocess.intensity, n, names, ds.modality)
                spec = spec.with_overrides(preprocess={"intensity": per})
        return spec

    def head_params(self, head_cls: type[Any]) -> list[str]:
        return sorted({*head_cls.defaults, *_TRAIN_KEYS})

    def prepare(self, ctx: RunContext) -> None:
        enc, spec = ctx.encoder, ctx.spec
        cache_dir = Path(spec.cache_dir) if spec.cache_dir else default_cache_dir()
        t0 = time.perf_counter()
        idx = sorted(set(ctx.train) | set(ctx.val) | set(ctx.test))
        targets = prepare_targets(ctx.dataset, ctx.store, idx, cache_dir, enc.patch_size, ctx.preprocess,
                                  progress=ctx.verbose)
        ctx.state.update(targets=targets, targets_s=round(time.perf_counter() - t0, 3),
                         data=SegData(ctx.store, targets, ctx.layers, enc.patch_size))

    def evaluate(self, head_cls: type[Any], head_name: str, ctx: RunContext) -> HeadResult:
        spec, ds, data = ctx.spec, ctx.dataset, ctx.state["data"]
        classes = list(ds.task.classes)
        hp_head, hp_train = split_params(dict(spec.head_params.get(head_name, {})))
        tcfg = SegTrainConfig.from_dict(hp_train)
        with torch_seeded(spec.seed, ctx.device):  # the head's initial weights
            head = create_seg_head(head_cls.name, data.dims, len(classes), ctx.encoder.patch_size, data.n_views,
                                   **hp_head)
        t_fit = time.perf_counter()
        ckpt = checkpoint_path(ctx, head_name)
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        hist = fit(head, data, ctx.train, ctx.val, tcfg, seed=spec.seed, device=ctx.device, progress=ctx.verbose,
                   checkpoint=ckpt)
        fit_s = time.perf_counter() - t_fit
        labels = {c: name for c, name in enumerate(classes) if c > 0}
        m = spec.metrics
        per_case, preds = [], []
        t_inf = time.perf_counter()
        known: dict[str, bool] = {}
        sources: set[str] = set()
        missed: dict[str, list[str]] = {}  # case id -> classes the truth holds and the prediction misses
        for i in ctx.test:
            item = ds.load(i)
            known[item.id] = spacing_known(item)
            if known[item.id]:
                sources.add(str(item.meta.get("spacing_source") or "volume header"))
            if len(set(known.values())) > 1:  # one unit per metric: mm and pixels never share a mean
                raise DataError("some test cases have a pixel spacing and others not (distances would mix mm and "
                                "pixels)", item.source or item.id)
            prob = predict_proba(head, data, i, tcfg, ctx.device)
            pred = item_order(to_original(prob, load_shape(ctx.state["targets"], i), ctx.preprocess), item)
            per_case.append(segmentation_metrics(pred, np.asarray(item.mask), labels,
                                                 (item.spacing or None) if known[item.id] else None,
                                                 nsd_tolerance_mm=m.nsd_tolerance_mm, empty_policy=m.empty_policy,
                                                 empty_prediction=m.empty_prediction))
            miss = empty_predictions(pred, np.asarray(item.mask), labels)
            if miss:
                missed[item.id] = miss
            preds.append(pred)
        infer_s = time.perf_counter() - t_inf
        agg = aggregate_cases(per_case, n_resamples=m.bootstrap, seed=spec.seed, alpha=m.alpha)
        keys = list(agg)
        ids = ds.ids()
        res = HeadResult(
            head=head_name, metrics=agg,
            predictions={"ids": np.asarray([ids[i] for i in ctx.test]), "metric_names": np.asarray(keys),
                         "values": np.asarray([[float(c.get(k, np.nan)) for k in keys] for c in per_case],
                                              np.float64)},
            head_params={**head.params, "head": head_cls.name, "train": tcfg.to_dict(),
                         "n_params": sum(p.numel() for p in head.parameters())},
            timings={"targets_s": ctx.state["targets_s"], "head_fit_s": round(fit_s, 3),
                     "inference_s": round(infer_s, 3)},
            notes={"history": hist, "val_selection": "mean Dice at the preprocessed size"})
        mm = all(known.values()) and bool(known)
        units = distance_units(mm)
        res.notes["empty_predictions"] = empty_record(missed, len(ctx.test), m.empty_prediction, units["hd95"],
                                                      list(labels.values()))
        res.extra["units"] = units
        res.extra["spacing"] = {"source": sorted(sources) if mm else None, "units": units["hd95"],
                                "why": None if mm else "2D images without a pixel spacing: distances in pixels"}
        u = units["hd95"]
        res.table = [f"(fit {fit_s:.0f}s, best epoch {hist['best_epoch']})",
                     f"{'class':<16} {'Dice':>22} {'HD95 ' + u:>22} {'ASD ' + u:>22}"]
        for name in classes[1:]:
            res.table.append(f"{name:<16} {fmt_ci(agg.get(f'dice/{name}'))} {fmt_ci(agg.get(f'hd95/{name}'), 2)} "
                             f"{fmt_ci(agg.get(f'asd/{name}'), 2)}")
        if missed:
            res.table.append(empty_line(res.notes["empty_predictions"]))
        ctx.state[f"masks_{res.run_id}"] = preds
        res.extra["per_case"] = per_case
        return res

    def write_outputs(self, result: HeadResult, ctx: RunContext) -> None:
        """Predicted masks (NIfTI like the input for 3D, PNG for 2D) and overlay PNGs, in outputs/<run_id>/."""
        from medprobe.data.io import write_png

        out_dir = Path(ctx.results_root) / "outputs" / result.run_id
        out_dir.mkdir(parents=True, exist_ok=True)
        files = []
        n_classes = len(ctx.dataset.task.classes)
        for j, (i, pred) in enumerate(zip(ctx.test, ctx.state.pop(f"masks_{result.run_id}"))):
            item = ctx.dataset.load(i)
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in item.id)
            if item.spatial_dims == 3:
                files.append(write_mask_like_input(out_dir / f"{safe}.nii.gz", pred, item)["path"])
            else:
                write_png(out_dir / f"{safe}.png", pred.astype(np.uint8 if n_classes < 256 else np.uint16))
                files.append(str(out_dir / f"{safe}.png"))
            if j < ctx.spec.metrics.overlays:
                write_overlay(out_dir / f"{safe}_overlay.png", item, pred)
        assert result.predictions is not None
        result.predictions["files"] = np.asarray(files)
        checkpoint_path(ctx, result.head).unlink(missing_ok=True)  # the row is about to be stored
        result.notes["outputs"] = str(out_dir)
        result.extra["outputs"] = out_dir
        result.table.append(f"masks in {out_dir}")


# ------------------------------------------------------------------------------------------- demo
def demo_segmentation(db: Any, cache_dir: str | Path, quick: bool = True) -> list[dict[str, Any]]:
    """Phantom 2D (MRI, ``decoder2d``) and 3D (CT, ``decoder3d``) segmentation with an untrained DINOv3-S/16."""
    from medprobe.pipeline.run import run_task
    from medprobe.pipeline.task import parse_task

    n2, n3 = (24, 10) if quick else (60, 24)
    common = {"encoder": "dinov3-vits16", "weights": "random", "cache_dir": str(cache_dir), "device": "cpu",
              "features": {"layers": "four", "batch_size": 32, "amp": "bf16", "progress": False}, "seed": 0,
              "metrics": {"bootstrap": 200, "overlays": 2}, "split": {"fractions": [0.6, 0.2, 0.2]}}
    s2 = parse_task({"name": "demo-seg2d", "kind": "segmentation", "dataset": "phantom:mri2d-segmentation",
                     "data": {"n": n2, "size": 64}, "preprocess": {"resolution": 64}, "heads": ["decoder2d"],
                     "head_params": {"decoder2d": {"epochs": 3 if quick else 8, "batch_size": 8, "lr": 1e-3,
                                                   "width": 64}}, **common})
    s3 = parse_task({"name": "demo-seg3d", "kind": "segmentation", "dataset": "phantom:ct3d-segmentation",
                     "data": {"n": n3, "size": [48, 48, 16]}, "preprocess": {"resolution": 64},
                     "heads": ["decoder3d"],
                     "head_params": {"decoder3d": {"epochs": 3 if quick else 8, "batch_size": 2, "crop_depth": 8,
                                                   "lr": 1e-3, "width": 48}}, **common})
    rows: list[dict[str, Any]] = []
    for s in (s2, s3):
        rows += run_task(s, db=db, verbose=False)
    return rows
