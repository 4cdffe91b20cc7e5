"""Image registration with frozen features (zero-shot): every pair of a registration dataset (``pairs-csv``,
``learn2reg``, ``camus``, ``acdc``, ``seg-pairs``) is registered by each method ("head": ``identity``,
``affine``, ``convexadam`` with ``features: mind | intensity | dino | dino+mind``) and scored: Dice, HD95 and
ASD of warped labels (mm and ``*_px``), landmark TRE, folding % and std of log det J, each with a 95% bootstrap
CI over pairs; the identity (before) Dice is reported beside. Outputs per pair in ``outputs/<run_id>/``: the
warped moving image and labels and the displacement (NIfTI with the fixed image's affine; ``.npy`` for 2D), a
checkerboard overlay PNG and a Jacobian-determinant PNG.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from medprobe.metrics.bootstrap import mean_ci
from medprobe.metrics.registration import jacobian_determinant, pair_metrics, warp_labels
from medprobe.pipeline.family import HeadResult, RunContext, TaskFamily, register_family
from medprobe.registration import methods as _methods  # noqa: F401  (registers the pair heads)

_SCORED = ("dice", "hd95", "asd", "hd95_px", "asd_px", "tre_mm", "folding_pct", "std_log_jacobian")


@register_family
class RegistrationFamily(TaskFamily):
    name = "registration"
    task_types = ("registration",)
    head_inputs = ("pair",)
    feature_unit = "pair"  # the pair unit writes no encoder rows: the heads compute the features they use
    tokens = ("cls",)  # (what the options name; the pair entry stores none)
    headline = ("dice", "dice_before", "hd95", "folding_pct")
    rank_by = ("dice",)
    rescore = "columns"  # mean over pairs of each stored per-pair array (NaN left out)
    unit_label = "px"

    def _encoder(self, ctx: RunContext) -> Any:
        """The network, built once and only for a head that encodes the images (DINO-Reg features): the pair
        unit never builds it, so ``ctx.encoder`` is then an ``EncoderInfo``."""
        from medprobe.encoders.base import Encoder

        if isinstance(ctx.encoder, Encoder):
            return ctx.encoder
        if "encoder_built" not in ctx.state:
            from medprobe.pipeline.common import build_encoder

            ctx.state["encoder_built"] = build_encoder(ctx.spec, ctx.device)
        return ctx.state["encoder_built"]

    def evaluate(self, head_cls: type[Any], head_name: str, ctx: RunContext) -> HeadResult:
        ds, spec = ctx.dataset, ctx.spec
        head = head_cls(seed=spec.seed, **spec.head_params.get(head_name, {}))
        enc = self._encoder(ctx) if getattr(head, "needs_encoder", False) else None
        classes = {i: n for i, n in enumerate(ds.task.classes) if i > 0}
        rows, ids, outputs = [], [], []
        pcas: list[dict[str, Any]] = []
        feat_s = opt_s = 0.0
        t0 = time.perf_counter()
        for i in range(len(ds)):  # zero-shot: every pair is scored
            p = ds.load_pair(i)
            fixed, moving = np.asarray(p.fixed.image, np.float32), np.asarray(p.moving.image, np.float32)
            disp, tm = head.register(fixed, moving, enc)
            if getattr(head, "pca_", None):
                pcas.append(dict(head.pca_))
            feat_s, opt_s = feat_s + tm["features_s"], opt_s + tm["optimise_s"]
            lm = None
            fl, ml = p.fixed.meta.get("landmarks"), p.moving.meta.get("landmarks")
            if fl is not None and ml is not None:
                lm = (fl, ml)
            fm, mm = p.fixed.mask, p.moving.mask
            labs = classes or sorted(int(v) for v in np.unique(fm) if v > 0) if fm is not None else [1]
            warped_l = warp_labels(mm, disp) if mm is not None else None
            m = pair_metrics(warped_l, fm, disp, labs, p.fixed.spacing, lm)
            if fm is not None and mm is not None:
                m["dice_before"] = pair_metrics(mm, fm, np.zeros_like(disp), labs, p.fixed.spacing)["dice"]
            rows.append(m)
            ids.append(p.id)
            outputs.append((p, disp, warped_l))
        n_boot = max(spec.metrics.bootstrap, 1)
        keys = [k for k in rows[0] if all(k in r for r in rows)]
        metrics: dict[str, Any] = {k: tuple(mean_ci([r[k] for r in rows], n_resamples=n_boot, seed=spec.seed,
                                                    alpha=spec.metrics.alpha)) for k in keys}
        metrics["seconds_per_pair"] = (time.perf_counter() - t0) / len(rows)
        preds = {"ids": np.asarray(ids), **{k: np.asarray([r[k] for r in rows]) for k in keys if k in _SCORED
                                             or k == "dice_before"}}
        ctx.state[f"outputs/{head_name}"] = outputs
        notes = {"zero_shot": "every pair scored; the split is nominal", "n_pairs": len(rows),
                 "features_s": round(feat_s, 3), "optimise_s": round(opt_s, 3)}
        if pcas:  # the joint PCA of each pair: k channels kept, variance explained (mean over pairs)
            explained = float(np.mean([p["explained"] for p in pcas]))
            notes["pca"] = {"k": pcas[0]["k"], "explained_mean": round(explained, 4)}
        resampled = [p.meta.get("resampled") for p, _, _ in outputs if p.meta.get("resampled")]
        if resampled:
            notes["resampled"] = resampled
        res = HeadResult(head=head_name, metrics=metrics, predictions=preds, head_params=head.get_params(),
                         timings={"features_s": round(feat_s, 3), "optimise_s": round(opt_s, 3)}, notes=notes)
        res.extra["resolution"], notes["input"] = encoder_input(head, enc)
        return res

    def write_outputs(self, result: HeadResult, ctx: RunContext) -> None:
        """Warped moving image and labels, displacement, checkerboard and Jacobian PNGs per pair."""
        from medprobe.data.io import write_png, write_volume
        from medprobe.registration.warp import warp_image

        out_dir = Path(ctx.results_root) / "outputs" / result.run_id
        out_dir.mkdir(parents=True, exist_ok=True)
        for p, disp, warped_l in ctx.state.pop(f"outputs/{result.head}", []):
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in p.id)
            fixed = np.asarray(p.fixed.image, np.float32)
            warped = warp_image(np.asarray(p.moving.image, np.float32), disp)
            if fixed.ndim == 3:
                aff = p.fixed.affine if p.fixed.affine is not None else np.diag([*p.fixed.spacing, 1.0])
                write_volume(out_dir / f"{safe}_warped.nii.gz", warped, aff)
                write_volume(out_dir / f"{safe}_disp.nii.gz", np.moveaxis(disp, 0, -1), aff)
                if warped_l is not None:
                    write_volume(out_dir / f"{safe}_warped_labels.nii.gz", warped_l.astype(np.int16), aff)
            else:
                np.save(out_dir / f"{safe}_disp.npy", disp)
                write_png(out_dir / f"{safe}_warped.png", (255 * _unit(warped)).astype(np.uint8))
                if warped_l is not None:
                    write_png(out_dir / f"{safe}_warped_labels.png", warped_l.astype(np.uint8))
            z = fixed.shape[2] // 2 if fixed.ndim == 3 else None
            f2, w2 = (fixed[..., z], warped[..., z]) if z is not None else (fixed, warped)
            write_png(out_dir / f"{safe}_checkerboard.png", (255 * _checker(_unit(f2), _unit(w2))).astype(np.uint8))
            det = jacobian_determinant(disp)
            d2 = det[..., z] if z is not None else det
            write_png(out_dir / f"{safe}_jacobian.png", _jacobian_rgb(d2))
        result.notes["outputs"] = str(out_dir)
        result.extra["outputs"] = out_dir
        result.table.append(f"warped images, labels, fields and PNGs in {out_dir}")


def encoder_input(head: Any, encoder: Any) -> tuple[list[int] | None, str]:
    """The encoder input this head actually used, for the record's ``resolution`` (never the encoder's native
    size, which the pair unit resolves but no pair head reads): a head that encodes the images (DINO-Reg) feeds
    each slice at its own ``input_size`` x ``input_size``; the others read the images at their own grid."""
    if encoder is not None and getattr(head, "input_size", None) is not None:
        s = int(head.input_size)
        return [s, s], f"each slice resized to {s}x{s} for the encoder (head_params.<head>.input_size)"
    return None, "no encoder input: the head registers the images at their own grid"


def _unit(a: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(a, (0.5, 99.5))
    return np.clip((a - lo) / max(float(hi - lo), 1e-6), 0, 1)


def _checker(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    idx = np.indices(a.shape)
    sel = ((idx[0] * tiles // a.shape[0]) + (idx[1] * tiles // a.shape[1])) % 2 == 0
    return np.where(sel, a, b)


def _jacobian_rgb(det: np.ndarray) -> np.ndarray:
    """det J as colour: blue < 1 (compression), white = 1, red > 1 (expansion), black where folded (<= 0)."""
    t = np.clip(np.log2(np.clip(det, 1e-3, None)), -1, 1)
    rgb = np.ones((*det.shape, 3), np.float32)
    rgb[..., 1] = 1 - np.abs(t)
    rgb[..., 0] = np.where(t < 0, 1 + t, 1)
    rgb[..., 2] = np.where(t > 0, 1 - t, 1)
    rgb[det <= 0] = 0
    return (255 * rgb).astype(np.uint8)
