"""The demo sweep: two untrained DINOv3 sizes x two resolutions on phantom tasks, then the report (``medprobe
demo``). Pipeline-level: it runs a sweep (:mod:`medprobe.pipeline.sweep`) and then writes the report
(:func:`medprobe.report.build_report`), which itself never imports the pipeline.

``DEMO_SWEEP`` is the same grid as ``sweeps/demo.yaml`` (kept in code so an installed package has it).
It is a pipeline check: weights are random, so the scores say nothing about DINOv3.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

DEMO_SWEEP: dict[str, Any] = {
    "name": "demo",
    "description": "pipeline check: untrained DINOv3 S/B x 2 resolutions on phantom tasks",
    "base": {
        "split": {"fractions": [0.5, 0.2, 0.3], "seed": 0},
        "features": {"amp": "bf16", "batch_size": 32, "progress": False},
        "head_params": {"logreg": {"Cs": [0.1, 1.0]}, "knn": {"k": 5}},
        "metrics": {"bootstrap": 200},
    },
    "tasks": [
        {"name": "phantom-xray", "dataset": "phantom:xray2d-binary", "data": {"n": 32, "size": 64}},
        {"name": "phantom-ct", "dataset": "phantom:ct3d-binary", "data": {"n": 16, "size": [32, 32, 8]}},
    ],
    "grid": {
        "encoder": ["dinov3-vits16", "dinov3-vitb16"],
        "resolution": [64, 96],
        "head": ["logreg", "knn"],
        "seed": [0],
    },
}


def demo_sweep_dict(quick: bool = True) -> dict[str, Any]:
    """The demo grid; ``quick`` keeps the X-ray task only (~1 minute on 2 CPU cores)."""
    d = copy.deepcopy(DEMO_SWEEP)
    if quick:
        d["tasks"] = d["tasks"][:1]
    return d


def run_demo_sweep(db: Any, cache_dir: str | Path | None, out_html: str | Path, quick: bool = True) -> Path:
    """Run the demo sweep into ``db`` (ResultsDB or path; finished cells are skipped) and write its report."""
    from medprobe.pipeline.sweep import run_sweep, sweep_from_dict
    from medprobe.report import build_report
    from medprobe.results import ResultsDB

    db = db if isinstance(db, ResultsDB) else ResultsDB(db)
    sw = sweep_from_dict(demo_sweep_dict(quick), name="demo")
    run_sweep(sw, db=db, cache_dir=None if cache_dir is None else str(cache_dir))
    return build_report(db, out_html, sweep=sw.name, cache_dir=cache_dir, n_boot=200,
                        title="medprobe demo sweep (UNTRAINED encoders: pipeline check)")
