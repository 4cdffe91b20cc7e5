"""The demo's small runs of the families beyond classification and segmentation (``medprobe demo``): regression,
EM instances, registration and whole slides, each on a few generated cases written under the demo folder, with
the same untrained DINOv3-S/16. A pipeline check: the numbers say nothing about the encoder.

Every input is generated from a fixed seed (phantoms, a Voronoi "EM" volume, pink-on-white slides written as
tiled TIFFs with their pixel size in the resolution tags), so the runs are the same on every machine.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ENCODER = "dinov3-vits16"


def _common(cache_dir: str | Path, resolution: int) -> dict[str, Any]:
    return {"encoder": ENCODER, "weights": "random", "cache_dir": str(cache_dir), "device": "cpu", "seed": 0,
            "preprocess": {"resolution": resolution}, "metrics": {"bootstrap": 100},
            "notes": {"demo": True}}


def _regression(data: Path, cache_dir: str | Path, n: int) -> dict[str, Any]:
    return {"name": "demo-regression", "kind": "regression", "dataset": "phantom:xray2d-regression",
            "data": {"n": n, "size": 64}, "heads": ["ridge"], "split": {"fractions": [0.6, 0.2, 0.2]},
            "features": {"batch_size": 16, "progress": False}, **_common(cache_dir, 64)}


def _em_volume(path: Path, sections: int, side: int, seed: int = 0) -> None:
    """A synthetic EM stack: Voronoi cells (ids, slowly drifting through z) with dark membranes between them."""
    import h5py
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, side, size=(12, 2))
    drift = rng.normal(0, 0.8, size=(12, 2))
    yy, xx = np.mgrid[0:side, 0:side]
    ids = np.zeros((sections, side, side), np.uint64)
    raw = np.zeros((sections, side, side), np.uint8)
    for z in range(sections):
        p = pts + z * drift
        d = (yy[None] - p[:, 0, None, None]) ** 2 + (xx[None] - p[:, 1, None, None]) ** 2
        lab = np.argmin(d, axis=0).astype(np.uint64) + 1
        edge = ndi.morphological_gradient(lab.astype(np.int64), size=3) > 0
        img = 170 + 20 * rng.standard_normal((side, side))
        img[edge] = 40
        raw[z] = np.clip(ndi.gaussian_filter(img, 1.0), 0, 255).astype(np.uint8)
        ids[z] = lab
    with h5py.File(path, "w") as f:
        f["volumes/raw"] = raw
        f["volumes/labels/neuron_ids"] = ids


def _instances(data: Path, cache_dir: str | Path, n: int) -> dict[str, Any]:
    em = data / "em-demo.h5"
    if not em.is_file():
        _em_volume(em, n, 64)
    a, b = n // 2, n // 2 + max(1, n // 4)
    return {"name": "demo-instances", "kind": "instances", "dataset": f"em:{em}",
            "data": {"target": "instances", "sections": {"train": [0, a], "val": [a, b], "test": [b, n]}},
            "heads": ["affinity"],
            "head_params": {"affinity": {"epochs": 2, "batch_size": 4, "crop_size": 64,
                                         "seed_thresholds": [0.5], "thresholds": [0.5], "widen": False}},
            "features": {"layers": "four", "batch_size": 8, "progress": False}, **_common(cache_dir, 64)}


def _registration(data: Path, cache_dir: str | Path, n: int) -> dict[str, Any]:
    import nibabel as nib

    from medprobe.data.phantoms import phantom_registration_pairs

    csv = data / "pairs-demo.csv"
    if not csv.is_file():
        rows = ["id,fixed,moving,fixed_label,moving_label"]
        for k, pr in enumerate(phantom_registration_pairs(n, modality="mri", spatial_dims=3, size=32, seed=0)):
            aff = np.diag([*pr["spacing"], 1.0])
            for side in ("fixed", "moving"):
                nib.save(nib.Nifti1Image(np.asarray(pr[side], np.float32), aff), data / f"p{k}-{side}.nii.gz")
                nib.save(nib.Nifti1Image(np.asarray(pr[f"{side}_mask"], np.uint8), aff),
                         data / f"p{k}-{side}-label.nii.gz")
            rows.append(f"p{k},p{k}-fixed.nii.gz,p{k}-moving.nii.gz,p{k}-fixed-label.nii.gz,"
                        f"p{k}-moving-label.nii.gz")
        csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {"name": "demo-registration", "kind": "registration", "dataset": f"pairs-csv:{csv}",
            "heads": ["identity", "convexadam"], "features": {"batch_size": 8, "progress": False},
            "head_params": {"convexadam": {"features": "dino", "input_size": 64, "grid_sp": 2, "niter": 10,
                                           "pca_k": 6}},
            **_common(cache_dir, 64)}


def _slide(path: Path, side: int, seed: int, mpp: float = 0.5) -> None:
    """A pink-on-white 'slide': a few smooth tissue blobs with stained texture, tiled TIFF with its pixel size."""
    import tifffile
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.standard_normal((side // 8, side // 8)), 3)
    mask = np.kron(field > np.quantile(field, 0.55), np.ones((8, 8), bool))[:side, :side]
    tex = ndi.gaussian_filter(rng.standard_normal((side, side)), 2)
    img = np.full((side, side, 3), 240, np.float32)
    pink = np.stack([200 + 25 * tex, 110 + 40 * tex, 170 + 25 * tex], -1)
    img[mask] = pink[mask]
    px_per_cm = 1e4 / mpp
    tifffile.imwrite(path, np.clip(img, 0, 255).astype(np.uint8), tile=(256, 256), photometric="rgb",
                     compression="zlib", resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER")


def _slides(data: Path, cache_dir: str | Path, n: int) -> dict[str, Any]:
    csv = data / "slides-demo.csv"
    if not csv.is_file():
        rows = ["id,path,label"]
        for k in range(n):
            p = data / f"slide{k}.tif"
            _slide(p, 768, seed=k)
            rows.append(f"slide{k},{p.name},{k % 2}")
        csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {"name": "demo-slides", "kind": "slides", "dataset": f"slides:{csv}",
            "data": {"label_columns": "label", "id_column": "id", "task": "binary",
                     "tiling": {"tile_px": 112, "target_mpp": 1.0, "min_tissue": 0.25}},
            "heads": ["meanpool", "abmil"], "split": {"fractions": [0.5, 0.25, 0.25]},
            "head_params": {"meanpool": {"seeds": 2}, "abmil": {"seeds": 2}},
            "features": {"batch_size": 16, "progress": False}, **_common(cache_dir, 112)}


#: demo part (what it shows) -> (task builder, n at the default size, n with --full)
PARTS: dict[str, tuple[Callable[[Path, str | Path, int], dict[str, Any]], int, int]] = {
    "ridge on lesion phantoms": (_regression, 24, 80),
    "EM affinities": (_instances, 8, 16),
    "phantom MRI pairs": (_registration, 2, 4),
    "tiled slides": (_slides, 6, 12),
}


def demo_families(db: Any, cache_dir: str | Path, data_dir: str | Path, full: bool = False,
                  only: list[str] | None = None) -> dict[str, float]:
    """Run each part of :data:`PARTS` (or ``only`` those) into ``db``; returns seconds per family. A part whose
    optional package is missing is skipped with one line."""
    import time

    from medprobe.pipeline.run import run_task
    from medprobe.pipeline.task import parse_task

    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    took: dict[str, float] = {}
    for fam, (build, n_small, n_full) in PARTS.items():
        if only is not None and fam not in only:
            continue
        t0 = time.perf_counter()
        try:
            raw = build(data, cache_dir, n_full if full else n_small)
        except ImportError as e:
            print(f"medprobe demo: {fam} part skipped ({e.name or e} is not installed)")
            continue
        run_task(parse_task(raw, source="demo"), db=db, verbose=False)
        took[fam] = time.perf_counter() - t0
        print(f"{fam} done in {took[fam]:.0f}s")
    return took
