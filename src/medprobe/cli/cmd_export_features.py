"""``medprobe export-features``: a slides task's tile features as CLAM / TRIDENT HDF5 bags (one file per slide)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-features", help="slide tile features as CLAM / TRIDENT .h5 bags (coords + features)",
                       description="Writes <out>/<slide id>.h5 with 'coords' (N, 2) level-0 (x, y) int64, attributes "
                                   "patch_size, patch_size_level0, patch_level, downsample, mpp, target_mpp, and "
                                   "'features' (N, D) float32 -- the layout CLAM / TRIDENT MIL code reads. Features "
                                   "come from the cache (extracted first when missing). Example: medprobe "
                                   "export-features tasks/camelyon16.yaml --out bags/")
    p.add_argument("task", help="a slides task YAML, e.g. tasks/camelyon16.yaml")
    p.add_argument("--out", required=True, help="folder for the .h5 files, e.g. bags/")
    p.add_argument("--token", default="mean", help="per-tile vector, e.g. mean (patch tokens, the default) or cls")
    p.add_argument(
        "--layer", type=int, default=None, help="block index when several were extracted, e.g. 11 (default: the last)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medprobe.pipeline.export import export_features
    from medprobe.pipeline.task import load_task

    files = export_features(load_task(args.task), args.out, token=args.token, layer=args.layer)
    print(f"wrote {len(files)} slide bag(s) under {args.out}")
    return 0
