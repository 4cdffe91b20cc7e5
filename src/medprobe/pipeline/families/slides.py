"""Whole-slide classification (the study's WSI protocol): slides -> tissue mask -> tiles at a physical scale ->
frozen tile vectors (the engine's slide path, one cache entry per slide) -> a slide-level MIL head (``abmil``,
``transmil``, ``meanpool``) -> AUC, accuracy, F1 ... per slide.

Several seeds per head (``head_params.<head>.seeds``, default 5 as in the study): every metric is the mean over
seeds of that seed's metric (the headline: ``auc`` = mean of the per-seed AUCs, the study's protocol), with a 95%
bootstrap CI over test slides (each resample scores every seed's predictions of the same slides and averages them)
and, as ``<metric>_seeds``, a 95% t-interval over seeds. Stored predictions: ``y_score_seeds`` (seeds, slides,
classes), each seed's probabilities -- the headline is re-scored from them -- and ``y_score``, their mean over
seeds (the seed ensemble, which the report's paired comparisons and slide views use; its own point metrics,
not the headline, are in ``notes.ensemble``). ``data.tiling`` and ``data.tissue`` set the tiling
(:class:`~medprobe.data.tiling.TilingConfig`) and tissue-mask (:class:`~medprobe.preprocess.tissue.TissueConfig`)
options; both are recorded with every row. Per run, ``outputs/<run_id>/slides/`` holds each test slide's tile
coordinates, attention scores (mean over seeds), tissue mask and thumbnail, which the report draws as heat-maps.
A dataset offering ``tile_labels(i, coords, size0)`` (1 = lesion tile; None = unknown for that slide) also gets
the attention's tile-level AUC.
"""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medprobe.errors import ConfigError, DataError
from medprobe.metrics.bootstrap import bootstrap_weighted
from medprobe.metrics.classification import check_keys, compute, prepare
from medprobe.numerics import roc_auc
from medprobe.pipeline.family import _TOKENS, HeadResult, RunContext, TaskFamily, register_family
from medprobe.pipeline.options import SlidesData, family_options
from medprobe.utils import atomic_write_json

DEFAULT_SEEDS = 5  # the study trained its slide heads with 5 seeds
SEED_METRICS = ("auc", "acc", "balanced_acc", "f1_macro", "precision_macro", "recall_macro")


def seed_interval(values: Sequence[float], alpha: float = 0.05) -> tuple[float, float, float]:
    """Mean over seeds with a two-sided t-interval (NaN bounds for one seed)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    m = float(v.mean())
    if v.size < 2:
        return (m, math.nan, math.nan)
    from scipy.stats import t

    h = float(t.ppf(1 - alpha / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return (m, m - h, m + h)


def tile_auc(attention: Sequence[np.ndarray], tile_labels: Sequence[np.ndarray | None]) -> float:
    """Mean over slides holding both kinds of tile of the AUC of attention scores for lesion (1) vs other (0)
    tiles; NaN when no slide holds both."""
    aucs = [roc_auc(np.asarray(lab) == 1, np.asarray(a)) for a, lab in zip(attention, tile_labels)
            if lab is not None and 0 < int(np.sum(np.asarray(lab) == 1)) < len(lab)]
    aucs = [a for a in aucs if np.isfinite(a)]
    return float(np.mean(aucs)) if aucs else math.nan


def evaluate_bags(head_cls: type[Any], params: dict[str, Any], bags: Sequence[np.ndarray], y: np.ndarray,
                  train: Sequence[int], val: Sequence[int], test: Sequence[int], task: str, n_classes: int,
                  seeds: int = DEFAULT_SEEDS, seed: int = 0, n_boot: int = 1000, alpha: float = 0.05,
                  classes: Sequence[str] | None = None, tile_labels: Sequence[np.ndarray | None] | None = None
                  ) -> dict[str, Any]:
    """Fit ``head_cls`` with ``seeds`` seeds (``seed``, ``seed + 1``, ...) on bags ``train`` (selecting on
    ``val``), predict ``test``; returns ``metrics`` (mean over seeds, CI over slides; ``<m>_seeds``: CI over
    seeds; ``tile_auc`` when tile labels are given), ``proba`` (mean over seeds), ``probas`` (seeds, bags, ...:
    each seed's), ``attention`` (per test bag, mean over seeds), ``per_seed`` (point metrics) and ``params`` (the
    last head's ``get_params()``)."""
    if int(seeds) < 1:
        raise ConfigError(f"seeds must be >= 1, got {seeds}", f"head {getattr(head_cls, 'name', '?')}")

    def rows(idx: Sequence[int]) -> list[np.ndarray]:
        return [bags[i] for i in idx]

    probas, atts, head = [], [], None
    for s in range(int(seeds)):
        head = head_cls(task=task, n_classes=n_classes, seed=int(seed) + s, **params)
        head.fit(rows(train), y[list(train)], rows(val) if len(val) else None, y[list(val)] if len(val) else None)
        probas.append(np.asarray(head.predict_proba(rows(test)), dtype=np.float64))
        if hasattr(head, "attention"):
            atts.append(head.attention(rows(test)))
    yt = y[list(test)]
    preps = [prepare(yt, p, task, classes=list(classes) if classes else None) for p in probas]
    keys = check_keys(preps[0], None)

    def seed_mean(w: np.ndarray) -> dict[str, np.ndarray]:
        per = [compute(p, w, keys) for p in preps]
        return {k: np.nanmean(np.stack([d[k] for d in per]), axis=0) if len(per) > 1 else per[0][k] for k in keys}

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resamples are dropped by the bootstrap
        cis = bootstrap_weighted(seed_mean, len(yt), max(int(n_boot), 1), seed, alpha)
    metrics: dict[str, Any] = {k: cis[k].interval for k in keys}
    per_seed = [{k: float(compute(p, np.ones((1, len(yt))), keys)[k][0]) for k in keys} for p in preps]
    for k in SEED_METRICS:
        if k in keys:
            metrics[f"{k}_seeds"] = seed_interval([d[k] for d in per_seed], alpha)
    attention = ([np.mean([a[j] for a in atts], axis=0) for j in range(len(test))] if atts else [])
    if tile_labels is not None and atts:
        per_seed_tile = [tile_auc(a, tile_labels) for a in atts]
        metrics["tile_auc"] = seed_interval(per_seed_tile, alpha)
        for d, v in zip(per_seed, per_seed_tile):
            d["tile_auc"] = v
    metrics["n_seeds"] = int(seeds)
    return {"metrics": metrics, "proba": np.mean(probas, axis=0), "probas": np.stack(probas), "attention": attention,
            "per_seed": per_seed, "params": head.get_params() if head is not None else {}}


def ensemble_metrics(y: np.ndarray, proba: np.ndarray, task: str, classes: list[str] | None
                     ) -> dict[str, float | None]:
    """Point metrics (class means, no CI) of the seed-averaged probabilities: what the stored ``y_score`` scores
    (recorded beside the headline, which is the mean of the per-seed metrics)."""
    from medprobe.metrics.classification import classification_metrics

    m = classification_metrics(y, proba, task, classes=classes)
    return {k: (round(float(v), 6) if np.isfinite(v) else None) for k, v in m.items() if "/" not in k}


def check_tissue_kept(ctx: RunContext, ids: Sequence[str]) -> None:
    """Record per slide the share of its thumbnail's non-background area that the tissue mask kept
    (``notes.tissue_kept``); when a slide keeps less than ``KEPT_WARNING`` of it, one warning line (printed and
    recorded as ``notes.tissue_warning``): its tiles miss tissue the slide shows (pale tissue under a strict
    rule, small pieces under a large ``min_area_um2``)."""
    import sys

    from medprobe.features.slides import slide_files
    from medprobe.preprocess.tissue import KEPT_WARNING

    kept: dict[str, float] = {}
    for i in range(ctx.store.n_items):
        stats = (slide_files(ctx.store, i).get("mask") or {}).get("stats") or {}
        if stats.get("kept_fraction") is not None:
            kept[str(ids[i])] = round(float(stats["kept_fraction"]), 4)
    if not kept:
        return
    ctx.notes["tissue_kept"] = kept
    low = sorted((f, sid) for sid, f in kept.items() if f < KEPT_WARNING)
    if low:
        named = ", ".join(f"{sid} {f:.0%}" for f, sid in low[:3]) + (", ..." if len(low) > 3 else "")
        line = (f"{len(low)} of {len(kept)} slides keep much less tissue than their thumbnail shows (share of the "
                f"non-background area in the tissue mask under {KEPT_WARNING:.0%}: {named}); check data.tissue "
                "(rule, min_saturation, min_area_um2) and the masks in the report")
        ctx.notes["tissue_warning"] = line
        print(f"medprobe: warning: {line}", file=sys.stderr, flush=True)


VIEW_SLIDES = 6  # test slides given a report view (positives first, then by score): the report shows up to 4
VIEW_PX = 1024  # longer side of the view the heat-map is drawn on
TOP_TILES = 8  # most attended tiles kept per viewed slide, at the tile scale (what the encoder read)


def view_assets(ctx: RunContext, rows: list[dict[str, Any]], arrays: dict[str, np.ndarray], out_dir: Path) -> None:
    """For up to ``VIEW_SLIDES`` test slides (positives first, then by predicted score): ``<id>_view.jpg``, the
    slide at ``VIEW_PX`` px on its longer side, and ``<id>_top.jpg``, its ``TOP_TILES`` most attended tiles side by
    side at the tile scale; their names, scales and tile indices go into the rows (``view``, ``top_tiles``). The
    slide is read here, once, so the report never opens a slide."""
    from PIL import Image

    def order(r: dict[str, Any]) -> tuple[float, float]:
        s = r.get("score")
        score = float(np.max(s)) if isinstance(s, (list, float, int)) and np.size(s) else 0.0
        return (-float(np.max(r.get("label") or 0)), -score)

    for row in sorted(rows, key=order)[:VIEW_SLIDES]:
        j = row["index"]
        i = ctx.test[j]
        att = arrays.get(f"attention/{j}")
        plan = row.get("plan") or {}
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(row["id"]))
        slide = ctx.dataset.load(i).image
        try:
            w0, h0 = slide.dimensions
            view = slide.thumbnail(max_px=VIEW_PX)
            Image.fromarray(view).save(out_dir / f"{safe}_view.jpg", quality=90)
            row["view"] = f"{safe}_view.jpg"
            row["view_scale"] = [view.shape[1] / w0, view.shape[0] / h0]  # view px per level-0 px (x, y)
            size0, tile_px = int(plan.get("size0", 0)), int(plan.get("tile_px", 0))
            if att is not None and len(att) and size0 > 0 and tile_px > 0:
                top = [int(t) for t in np.argsort(-np.asarray(att), kind="stable")[:TOP_TILES]]
                coords = arrays[f"coords/{j}"]
                tiles = [slide.read_region(int(coords[t][1]), int(coords[t][0]), size0, size0, scale=tile_px / size0)
                         for t in top]
                strip = np.concatenate([np.asarray(t)[:tile_px, :tile_px] for t in tiles], axis=1)
                Image.fromarray(strip).save(out_dir / f"{safe}_top.jpg", quality=95, subsampling=0)  # 4:4:4
                row["top_tiles"] = {"file": f"{safe}_top.jpg", "indices": top, "tile_px": tile_px,
                                    "attention": [float(att[t]) for t in top]}
        finally:
            close = getattr(slide, "close", None)
            if callable(close):
                close()


def slide_bags(ctx: RunContext) -> list[np.ndarray]:
    """Per slide its (N_i, C) tile vectors: chosen token(s) x block(s), read slide by slide from the memory-mapped
    entries (no copy of the whole dataset's rows is made here)."""
    toks = _TOKENS[ctx.spec.features.token]
    out = []
    for i in range(ctx.store.n_items):
        parts = [np.asarray(ctx.store.item(i, t, layer)) for layer in ctx.layers for t in toks]
        out.append(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1))
    return out


@register_family
class SlidesFamily(TaskFamily):
    name = "slides"
    task_types = ("binary", "multiclass", "multilabel", "ordinal")
    head_inputs = ("bag",)
    feature_unit = "tile"
    dataset_unit = "slide"
    tokens = ("cls", "mean")
    headline = ("auc", "auc_seeds", "acc", "balanced_acc", "tile_auc")
    rank_by = ("auc", "acc", "balanced_acc")
    paired_scores = True
    report_panels = ("slide-mil",)  # medprobe.report.slides: slide table, tiles, attention heat-maps
    rescore = "proba_seeds"  # headline = mean over seeds of each seed's metric on y_score_seeds
    data_schema = SlidesData  # data.tiling, data.tissue
    unit_label = "px tiles"

    def check_dataset(self, ds: Any, spec: Any) -> None:
        if getattr(ds, "unit", None) != "slide":
            raise ConfigError(f"the slides family takes slide datasets (camelyon16, camelyon17, bcnb, slides); "
                              f"{ds.name} holds {'3D volumes' if ds.spatial_dims == 3 else 'whole images'}",
                              spec.name)
        super().check_dataset(ds, spec)

    def unit_options(self, spec: Any) -> dict[str, Any]:
        """The tile unit's typed ``tiling`` (:class:`~medprobe.data.tiling.TilingConfig`) and ``tissue``
        (:class:`~medprobe.preprocess.tissue.TissueConfig`): the task's ``data.tiling`` / ``data.tissue`` as
        :func:`~medprobe.pipeline.task.parse_task` parsed them (defaults when the task does not set them)."""
        opts = family_options(self.name, spec.data, spec.name)
        return {"tiling": opts.tiling, "tissue": opts.tissue}

    def prepare_dataset(self, ds: Any, spec: Any, verbose: bool) -> tuple[Any, dict[str, Any]]:
        """Check the tiling / tissue options before any work; both are recorded with every row."""
        return ds, {k: v.to_dict() for k, v in self.unit_options(spec).items()}

    def budget_labels(self, ds: Any) -> list[Any] | None:
        return ds.labels() if ds.task.type != "multilabel" else None

    def head_params(self, head_cls: type[Any]) -> list[str]:
        return sorted({*super().head_params(head_cls), "seeds"} - {"seed"})  # seeds run from the task's seed

    def prepare(self, ctx: RunContext) -> None:
        from medprobe.pipeline.families.classification import checked_labels

        ds = ctx.dataset
        y, n_classes = checked_labels(ds)
        bags = slide_bags(ctx)
        for b in bags:
            if len(b) and not np.isfinite(b).all():
                raise DataError("tile features are NaN or infinite (try features.amp: off, or clear the cache "
                                "entry)", ctx.store.path)
        ids = ds.ids()
        empty = [i for i, b in enumerate(bags) if len(b) == 0]
        if empty:  # no tissue tile at this scale: nothing to score; recorded with every row
            ctx.notes["slides_without_tiles"] = [ids[i] for i in empty]
            left = [ids[i] for i in empty if any(i in ctx.splits.get(k, ()) for k in ("train", "val", "test"))]
            if left:  # one line: the user sees which slides do not take part
                print(f"medprobe: warning: {len(left)} slide(s) have no tissue tile at this scale and are left out "
                      f"(e.g. {left[0]}; lower data.tiling.min_tissue to keep them)", file=sys.stderr, flush=True)
            for k in ("train", "val", "test"):
                if k in ctx.splits:
                    ctx.splits[k] = [i for i in ctx.splits[k] if len(bags[i])]
            if not ctx.splits["train"] or not ctx.splits["test"]:
                raise DataError(f"{len(empty)} slide(s) have no tissue tile (e.g. {ids[empty[0]]}); no "
                                "train or test slide is left (lower data.tiling.min_tissue?)", ds.name)
        n_tiles = [len(b) for b in bags]
        ctx.notes["tiles_per_slide"] = {"min": int(min(n_tiles)), "median": float(np.median(n_tiles)),
                                        "max": int(max(n_tiles)), "total": int(sum(n_tiles))}
        check_tissue_kept(ctx, ids)
        tile_labels = None
        if callable(getattr(ds, "tile_labels", None)):
            from medprobe.features.slides import slide_coords, slide_files

            tile_labels = [ds.tile_labels(i, slide_coords(ctx.store, i),
                                          float(slide_files(ctx.store, i).get("plan", {}).get("size0", 0)))
                           for i in ctx.test]
            if all(lab is None for lab in tile_labels):
                tile_labels = None
        ctx.state.update(y=y, n_classes=n_classes, bags=bags, tile_labels=tile_labels)

    def evaluate(self, head_cls: type[Any], head_name: str, ctx: RunContext) -> HeadResult:
        ds, spec = ctx.dataset, ctx.spec
        params = dict(spec.head_params.get(head_name, {}))
        seeds = int(params.pop("seeds", DEFAULT_SEEDS))
        out = evaluate_bags(head_cls, params, ctx.state["bags"], ctx.state["y"], ctx.train, ctx.val, ctx.test,
                            ds.task.type, ctx.state["n_classes"], seeds=seeds, seed=spec.seed,
                            n_boot=spec.metrics.bootstrap, alpha=spec.metrics.alpha,
                            classes=list(ds.task.classes) or None, tile_labels=ctx.state["tile_labels"])
        ids = ds.ids()
        preds = {"ids": np.asarray([ids[i] for i in ctx.test]), "y_true": ctx.state["y"][ctx.test],
                 "y_score": out["proba"], "y_score_seeds": out["probas"]}
        ctx.state[f"attention/{head_name}"] = out["attention"]
        ctx.state[f"proba/{head_name}"] = out["proba"]
        m = out["metrics"]
        lines = [f"{len(ctx.test)} test slides, {seeds} seeds: auc over seeds "
                 + ", ".join(f"{d['auc']:.3f}" for d in out["per_seed"] if "auc" in d)]
        notes = {"seeds": [spec.seed + s for s in range(seeds)], "per_seed": out["per_seed"],
                 "predictions": "y_score_seeds: each seed's probabilities (the headline re-scores from them); "
                                "y_score: their mean over seeds (the seed ensemble)",
                 "headline": "each metric is the mean over seeds of that seed's metric on its own predictions "
                             "(y_score_seeds), not the metric of the seed-averaged y_score",
                 "ensemble": ensemble_metrics(ctx.state["y"][ctx.test], out["proba"], ds.task.type,
                                              list(ds.task.classes) or None),
                 "ci": "metrics: mean over seeds, 95% bootstrap CI over test slides; <metric>_seeds: 95% t-interval "
                       "over seeds"}
        params_rec = {**out["params"], "seeds": seeds}
        params_rec.pop("seed", None)
        if "tile_auc" in m:
            lines.append(f"tile-level AUC of the attention (lesion vs other tiles): {m['tile_auc'][0]:.3f}")
        return HeadResult(head=head_name, metrics=m, predictions=preds, head_params=params_rec, notes=notes,
                          table=lines)

    def write_outputs(self, result: HeadResult, ctx: RunContext) -> None:
        """Per test slide: tile coordinates + attention (mean over seeds) in ``attention.npz``, its tissue mask and
        thumbnail, and ``slides.json`` (id, label, score, tiles, tissue kept); for the slides the report shows
        (:func:`view_assets`) a larger view and the most attended tiles -- what the report draws."""
        from medprobe.features.slides import slide_coords, slide_files

        att = ctx.state.pop(f"attention/{result.head}", [])
        proba = ctx.state.pop(f"proba/{result.head}", None)
        out_dir = Path(ctx.results_root) / "outputs" / result.run_id / "slides"
        out_dir.mkdir(parents=True, exist_ok=True)
        ids = ctx.dataset.ids()
        y = ctx.state["y"]
        arrays: dict[str, np.ndarray] = {}
        rows = []
        for j, i in enumerate(ctx.test):
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in ids[i])
            files = slide_files(ctx.store, i)
            arrays[f"coords/{j}"] = slide_coords(ctx.store, i)
            if j < len(att):
                arrays[f"attention/{j}"] = np.asarray(att[j], dtype=np.float32)
            row: dict[str, Any] = {"index": j, "id": ids[i], "label": np.asarray(y[i]).tolist(),
                                   "n_tiles": int(ctx.store.slices[i]),
                                   "score": (np.asarray(proba[j]).tolist() if proba is not None else None),
                                   "plan": files.get("plan", {}), "mask": files.get("mask", {})}
            for key, name in (("tissue_png", f"{safe}_tissue.png"), ("thumbnail", f"{safe}_thumb.jpg")):
                src = Path(files[key])
                if src.is_file():
                    shutil.copyfile(src, out_dir / name)
                    row[key] = name
            rows.append(row)
        view_assets(ctx, rows, arrays, out_dir)
        np.savez_compressed(out_dir / "attention.npz", **{k.replace("/", "_"): v for k, v in arrays.items()})  # type: ignore[arg-type]
        atomic_write_json(out_dir / "slides.json", {"head": result.head, "task": ctx.spec.name, "items": rows})
        result.notes["outputs"] = str(out_dir)
        result.extra["outputs"] = out_dir
        result.table.append(f"attention, tissue masks and thumbnails of {len(rows)} test slides in {out_dir}")
