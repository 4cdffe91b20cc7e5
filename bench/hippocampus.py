"""MSD Task04 hippocampus, fold 0 of 5: untrained DINOv3-S/16 vs encoder ``none``, pseudo-3D decoder.

    python bench/hippocampus.py [--task tasks/hippocampus-fold0.yaml] [--results /tmp/hippo-results]
                                [--cache /tmp/hippo-cache] [--limit N] [--epochs E] [--encoders dinov3-vits16,none]
                                [--image-stem off,on]

Prints Dice per class (Anterior, Posterior) with 95% bootstrap CIs, HD95 and ASD in mm and the wall times, for
each encoder and each decoder setting: feature-only (``off``, the default and the study's) and with the
decoder's raw-image stem (``on``: ``use_image: true``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from medprobe.pipeline.run import run_task as run_segmentation
from medprobe.pipeline.task import load_task
from medprobe.results import ResultsDB

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default=str(ROOT / "tasks" / "hippocampus-fold0.yaml"))
    ap.add_argument("--results", default="/tmp/hippo-results")
    ap.add_argument("--cache", default="/tmp/hippo-cache")
    ap.add_argument("--limit", type=int, default=None, help="first N cases only (CI-sized run)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--encoders", default="dinov3-vits16,none")
    ap.add_argument("--image-stem", default="off,on", help="decoder settings: off (feature-only), on, or both")
    a = ap.parse_args()
    db = ResultsDB(a.results)
    summary = []
    for enc in a.encoders.split(","):
        for stem in a.image_stem.split(","):
            spec = load_task(a.task, encoder=enc, cache_dir=a.cache)
            if a.limit:
                spec = spec.with_overrides(data={"limit": a.limit})
            hp = {"use_image": stem.strip() == "on", **({"epochs": a.epochs} if a.epochs else {})}
            spec = spec.with_overrides(head_params={h: {**spec.head_params.get(h, {}), **hp} for h in spec.heads})
            t0 = time.perf_counter()
            rows = run_segmentation(spec, db=db, verbose=True)
            summary.append((f"{enc} stem={stem.strip()}", rows, time.perf_counter() - t0))
    print("\n== summary (fold 0; mean [95% CI] over test cases) ==")
    for enc, rows, dt in summary:
        for r in rows:
            m, t = r["metrics"], r["record"]["timings"]
            cells = [f"Dice {k.split('/')[1]} {m[k][0]:.3f} [{m[k][1]:.3f}, {m[k][2]:.3f}]"
                     for k in m if k.startswith("dice/")]
            print(f"{enc:>22} {r['head']}: " + "; ".join(cells)
                  + f"; mean Dice {m['dice'][0]:.3f}"
                  + f"; HD95 {m['hd95'][0]:.2f} mm [{m['hd95'][1]:.2f}, {m['hd95'][2]:.2f}]"
                  + f"; ASD {m['asd'][0]:.2f} mm [{m['asd'][1]:.2f}, {m['asd'][2]:.2f}]"
                  + f"; extraction {t['extraction_s']:.0f}s, fit {t['head_fit_s']:.0f}s, inference "
                  f"{t['inference_s']:.0f}s, total {dt:.0f}s; n_test {r['record']['split']['n_test']}")


if __name__ == "__main__":
    main()
