"""Segmentation protocol (the study's 2D and pseudo-3D segmentation): frozen patch features -> decoder -> masks.

``run_segmentation(spec)``: dataset (optionally ``data.skip_invalid: true``: bad cases are listed and dropped)
-> splits (MSD: ``split: {folds: 5, fold: 0}``) -> patch features of the tapped layers (default ``four``, all
concatenated) -> per head: train on crops, keep the best validation epoch -> predict the test cases at the
original voxel grid -> Dice / IoU / HD95 / ASD / NSD / precision / recall in mm per case -> means with bootstrap
CIs -> one results row per head + predicted masks (NIfTI in the input file's orientation and affine, PNG for
2D) and overlay PNGs under ``<results>/outputs/<run_id>/``.

Head options (``head_params: {decoder3d: {...}}``) mix the head's own options (``width``, ``use_image``, ...)
and training options (:class:`~medprobe.heads.seg_train.SegTrainConfig`: ``lr``, ``epochs``, ``batch_size``,
``crop_depth``, ``crop_size``, ...). Metric options: ``metrics: {nsd_tolerance_mm, empty_policy, bootstrap,
alpha, overlays}``.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medprobe.data import Dataset, create_dataset
from medprobe.data.base import Item
from medprobe.errors import ConfigError, DataError
from medprobe.heads.seg_heads import canonical_seg_head, create_seg_head
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
from medprobe.metrics.segmentation import aggregate_cases, segmentation_metrics
from medprobe.pipeline.common import build_encoder, extract_features, make_splits, pick_device, run_header
from medprobe.pipeline.task import TaskSpec
from medprobe.preprocess import PreprocessConfig
from medprobe.results import ResultsDB, collect_environment
from medprobe.utils import atomic_write_bytes, default_cache_dir, hash_obj

log = logging.getLogger("medprobe.pipeline")
SEG_HEADS = ("linear", "decoder2d", "decoder3d")
_DATA_OPTS = ("skip_invalid",)
_RGB_MODALITIES = ("endoscopy", "pathology", "natural")


# ------------------------------------------------------------------------------------------- dataset
def build_seg_dataset(spec: TaskSpec, verbose: bool = True) -> tuple[Dataset, list[tuple[str, str]], list[str]]:
    """The dataset (valid cases only with ``data.skip_invalid``), the skipped ``(case, problem)`` list and
    warnings (e.g. empty label volumes)."""
    opts = {k: v for k, v in spec.data.items() if k not in _DATA_OPTS}
    ds = create_dataset(spec.dataset, **opts)
    if ds.task.type != "segmentation":
        raise ConfigError(f"dataset {ds.name} is a {ds.task.type} task, not segmentation", spec.name)
    skipped: list[tuple[str, str]] = []
    warnings: list[str] = []
    if spec.data.get("skip_invalid"):
        from medprobe.data.msd import validate_all

        problems = validate_all(ds, include_warnings=True)
        warnings = [f"{c}: {p[len('warning: '):]}" for c, p in problems if p.startswith("warning: ")]
        skipped = [(c, p) for c, p in problems if not p.startswith("warning: ")]
        if skipped:
            from medprobe.data.base import Subset

            bad = {c for c, _ in skipped}
            ds = Subset(ds, [i for i, c in enumerate(ds.ids()) if c not in bad], tag="valid")
            if verbose:
                for c, p in skipped:
                    print(f"skipped {c}: {p}")
        if not len(ds):
            raise DataError("every case is invalid", spec.dataset)
    return ds, skipped, warnings


def resolve_spec(spec: TaskSpec, ds: Dataset) -> TaskSpec:
    """Segmentation defaults made explicit (so they are recorded and hashed): four tapped layers, all
    concatenated; ``per_channel`` for multi-channel non-RGB data."""
    feats = {"layers": "four", "use": "concat", **spec.features}
    pre = dict(spec.preprocess)
    if "channels" not in pre and ds.modality not in _RGB_MODALITIES:
        names = getattr(ds, "channel_names", None)
        n = len(names) if names else ds.load(0).n_channels
        if n > 1:
            pre["channels"] = "per_channel"
    bad = [h for h in spec.heads if canonical_seg_head_or_none(h) is None]
    if bad:
        raise ConfigError(f"unknown segmentation head(s) {bad}; use {', '.join(SEG_HEADS)}", spec.name)
    return spec.with_overrides(features=feats, preprocess=pre)


def canonical_seg_head_or_none(name: str) -> str | None:
    try:
        return canonical_seg_head(name)
    except ConfigError:
        return None


def split_params(hp: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``head_params`` entry -> (head options, training options)."""
    train_keys = set(SegTrainConfig.__dataclass_fields__)
    return {k: v for k, v in hp.items() if k not in train_keys}, {k: v for k, v in hp.items() if k in train_keys}


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
    ref = nib.load(str(src))
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


# ------------------------------------------------------------------------------------------- run
def run_segmentation(spec: TaskSpec, db: ResultsDB | None = None, verbose: bool = True) -> list[dict[str, Any]]:
    """Run every head of a segmentation task; each head becomes one results row. Returns the rows."""
    t_total = time.perf_counter()
    ds, skipped, warnings = build_seg_dataset(spec, verbose)
    spec = resolve_spec(spec, ds)
    splits = make_splits(ds, spec)
    train, val, test = splits["train"], splits.get("val", []), splits["test"]
    if not test:
        raise ConfigError("the split has no test cases", spec.name)
    device = pick_device(spec.device)
    enc = build_encoder(spec, device)
    try:
        enc.resolve_layers(spec.features.get("layers", "four"))
    except ConfigError:
        if spec.features.get("layers") != "four":
            raise
        spec = spec.with_overrides(features={"layers": "last"})  # encoders with fewer than four blocks (none)
    store, info = extract_features(ds, enc, spec, device, tokens=("patch",))
    if info["timing"]["cached"]:
        log.info("features reused from cache %s: extraction skipped", info["cache_key"])
    layers = list(store.layers) if spec.features.get("use", "concat") == "concat" else [store.layers[-1]]
    if spec.features.get("select") is not None:
        from medprobe.pipeline.common import feature_layers

        layers = feature_layers(store, spec)
    cache_dir = Path(spec.cache_dir) if spec.cache_dir else default_cache_dir()
    t0 = time.perf_counter()
    targets = prepare_targets(ds, store, sorted(set(train) | set(val) | set(test)), cache_dir, enc.patch_size,
                              progress=verbose)
    prep_s = time.perf_counter() - t0
    data = SegData(store, targets, layers, enc.patch_size)
    pre = PreprocessConfig.from_dict(store.spec["preprocess"])
    classes = list(ds.task.classes)
    labels = {c: name for c, name in enumerate(classes) if c > 0}
    mopt = spec.metrics
    n_boot, alpha = int(mopt.get("bootstrap", 1000)), float(mopt.get("alpha", 0.05))
    db = db or ResultsDB()
    env = collect_environment(str(device))
    ids = ds.ids()
    rows = []
    for head_name in spec.heads:
        canon = canonical_seg_head(head_name)
        hp_head, hp_train = split_params(dict(spec.head_params.get(head_name, {})))
        tcfg = SegTrainConfig.from_dict(hp_train)
        torch.manual_seed(spec.seed)
        head = create_seg_head(canon, data.dims, len(classes), enc.patch_size, data.n_views, **hp_head)
        t_fit = time.perf_counter()
        hist = fit(head, data, train, val, tcfg, seed=spec.seed, device=device, progress=verbose)
        fit_s = time.perf_counter() - t_fit
        run_id = uuid.uuid4().hex
        out_dir = db.root / "outputs" / run_id
        out_dir.mkdir(parents=True, exist_ok=True)
        per_case, outputs = [], []
        t_inf = time.perf_counter()
        n_overlays = int(mopt.get("overlays", 4))
        for j, i in enumerate(test):
            item = ds.load(i)
            prob = predict_proba(head, data, i, tcfg, device)
            pred = item_order(to_original(prob, load_shape(targets, i), pre), item)
            gt = np.asarray(item.mask)
            m = segmentation_metrics(pred, gt, labels, item.spacing or None,
                                     nsd_tolerance_mm=float(mopt.get("nsd_tolerance_mm", 1.0)),
                                     empty_policy=str(mopt.get("empty_policy", "nan")))
            per_case.append(m)
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in item.id)
            if item.spatial_dims == 3:
                outputs.append(write_mask_like_input(out_dir / f"{safe}.nii.gz", pred, item)["path"])
            else:
                from medprobe.data.io import write_png

                write_png(out_dir / f"{safe}.png", pred.astype(np.uint8 if len(classes) < 256 else np.uint16))
                outputs.append(str(out_dir / f"{safe}.png"))
            if j < n_overlays:
                write_overlay(out_dir / f"{safe}_overlay.png", item, pred)
        infer_s = time.perf_counter() - t_inf
        agg = aggregate_cases(per_case, n_resamples=n_boot, seed=spec.seed, alpha=alpha)
        keys = list(agg)
        record = {
            "run_id": run_id, "task": spec.name, "task_type": "segmentation",
            "config": {**spec.to_dict(), "head": head_name}, "config_hash": spec.config_hash(head_name),
            "encoder": enc.spec.name, "weights": enc.weights_id, "pretrained": enc.pretrained,
            "dataset": ds.name, "dataset_fingerprint": ds.fingerprint(),
            "split": {"spec": spec.split, "n_train": len(train), "n_val": len(val), "n_test": len(test),
                      "test_ids_hash": hash_obj([ids[i] for i in test], n=12)},
            "seed": spec.seed, "head": head_name,
            "head_params": {**head.params, "train": tcfg.to_dict(), "n_params": sum(p.numel()
                                                                                      for p in head.parameters())},
            "layer": layers, "resolution": store.spec["preprocess"]["resolution"],
            "preprocessing": store.spec["preprocess"], "versions": env.get("versions", env), "device": str(device),
            "timings": {**info["timing"], "targets_s": round(prep_s, 3), "head_fit_s": round(fit_s, 3),
                        "inference_s": round(infer_s, 3), "total_s": round(time.perf_counter() - t_total, 3)},
            "compute": info["compute"],
            "notes": {**spec.notes, "untrained": not enc.pretrained, "cache_key": info["cache_key"],
                      "features": spec.features, "skipped_cases": [f"{c}: {p}" for c, p in skipped],
                      "warnings": warnings, "history": hist, "outputs": str(out_dir),
                      "val_selection": "mean Dice at the preprocessed size"},
        }
        preds = {"ids": np.asarray([ids[i] for i in test]), "metric_names": np.asarray(keys),
                 "values": np.asarray([[float(c.get(k, np.nan)) for k in keys] for c in per_case], np.float64),
                 "files": np.asarray(outputs)}
        db.add_run(record, agg, predictions=preds, split="test")
        rows.append({"run_id": run_id, "head": head_name, "metrics": agg, "record": record, "per_case": per_case,
                     "outputs": out_dir})
    if verbose:
        print_table(spec, enc, rows, classes, db)
    return rows


def _fmt(v: tuple[float, float, float], digits: int = 3) -> str:
    m, lo, hi = v
    if not np.isfinite(m):
        return "n/a".rjust(22)
    return f"{m:6.{digits}f} [{lo:5.{digits}f}, {hi:5.{digits}f}]".rjust(22)


def print_table(spec: TaskSpec, enc: Any, rows: list[dict[str, Any]], classes: list[str], db: ResultsDB) -> None:
    """Per-class Dice with CIs, HD95 and ASD (mm) per head."""
    if not rows:
        return
    r0 = rows[0]["record"]
    print(run_header(spec, enc, r0, "segmentation", unit="px/slice"))
    if r0["notes"]["skipped_cases"]:
        print(f"  skipped {len(r0['notes']['skipped_cases'])} invalid case(s): "
              + "; ".join(r0["notes"]["skipped_cases"]))
    for r in rows:
        m = r["metrics"]
        print(f"  head {r['head']} (fit {r['record']['timings']['head_fit_s']:.0f}s, best epoch "
              f"{r['record']['notes']['history']['best_epoch']}), run id {r['run_id'][:10]}")
        print(f"    {'class':<16} {'Dice':>22} {'HD95 mm':>22} {'ASD mm':>22}")
        for name in classes[1:]:
            print(f"    {name:<16} {_fmt(m.get(f'dice/{name}', (np.nan,) * 3))} "
                  f"{_fmt(m.get(f'hd95/{name}', (np.nan,) * 3), 2)} {_fmt(m.get(f'asd/{name}', (np.nan,) * 3), 2)}")
        print(f"    {'mean':<16} {_fmt(m['dice'])} {_fmt(m['hd95'], 2)} {_fmt(m['asd'], 2)}   "
              f"IoU {m['iou'][0]:.3f}")
    print(f"  (95% bootstrap CIs over test cases; results in {db.path}; masks in {rows[0]['outputs'].parent})")


# ------------------------------------------------------------------------------------------- demo
def demo_segmentation(db: ResultsDB, cache_dir: str | Path, quick: bool = True) -> list[dict[str, Any]]:
    """Phantom 2D (MRI, ``decoder2d``) and 3D (CT, ``decoder3d``) segmentation with an untrained DINOv3-S/16."""
    n2, n3 = (24, 10) if quick else (60, 24)
    common = {"encoder": "dinov3-vits16", "weights": "random", "cache_dir": str(cache_dir), "device": "cpu",
              "features": {"layers": "four", "batch_size": 32, "amp": "bf16", "progress": False}, "seed": 0,
              "metrics": {"bootstrap": 200, "overlays": 2}, "split": {"fractions": [0.6, 0.2, 0.2]}}
    s2 = TaskSpec(name="demo-seg2d", kind="segmentation", dataset="phantom:mri2d-segmentation",
                  data={"n": n2, "size": 64}, preprocess={"resolution": 64}, heads=["decoder2d"],
                  head_params={"decoder2d": {"epochs": 3 if quick else 8, "batch_size": 8, "lr": 1e-3,
                                             "width": 64}}, **common)
    s3 = TaskSpec(name="demo-seg3d", kind="segmentation", dataset="phantom:ct3d-segmentation",
                  data={"n": n3, "size": [48, 48, 16]}, preprocess={"resolution": 64}, heads=["decoder3d"],
                  head_params={"decoder3d": {"epochs": 3 if quick else 8, "batch_size": 2, "crop_depth": 8,
                                             "lr": 1e-3, "width": 48}}, **common)
    rows: list[dict[str, Any]] = []
    for s in (s2, s3):
        rows += run_segmentation(s, db=db, verbose=False)
    return rows


__all__ = ["build_seg_dataset", "demo_segmentation", "print_table", "resolve_spec", "run_segmentation",
           "write_mask_like_input", "write_overlay"]
