"""Agglomeration time per megavoxel and peak memory on a CREMI-size synthetic affinity volume (125 x 1250 x 1250).

    python bench/em.py [--shape 125 1250 1250] [--block 25 625 625] [--method waterz] [--fallback-blocks 2]

The volume is processed in blocks (default 25 x 625 x 625 = 9.8 Mvoxel, 20 blocks), so memory stays bounded
by one block: each block's label volume (Voronoi "neurons" about 60 px across and 3 sections deep, one-voxel
background walls) is made, turned into nearest-neighbour affinities (3, z, y, x) float32 with Gaussian noise
(sd 0.3), then agglomerated (seeded watershed fragments + mean-affinity merging at thresholds 0.1 / 0.3 / 0.5)
with ``--method`` (waterz, or the scikit-image fallback). Blocks are independent (no stitching across block
faces; ids are offset to be unique). Synthesis time is excluded from the agglomeration time. The scikit-image
fallback runs on the first ``--fallback-blocks`` blocks only (its time per megavoxel extrapolates linearly).
Each method runs in its own child process and reports its peak resident memory (``VmHWM``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def block_affinities(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic neurons (labels) and their noisy nearest-neighbour affinities for one block."""
    from scipy import ndimage

    from medprobe.heads.agglomerate import affinities_from_labels

    rng = np.random.default_rng(seed)
    z, y, x = shape
    n = max(8, int(z * y * x / (60 * 60 * 3)))
    seeds = np.zeros(shape, np.int32)
    seeds[rng.integers(0, z, n), rng.integers(0, y, n), rng.integers(0, x, n)] = np.arange(1, n + 1)
    _, idx = ndimage.distance_transform_edt(seeds == 0, sampling=(10, 1, 1), return_indices=True)
    lab = seeds[tuple(idx)]
    del idx
    wall = np.zeros(shape, bool)
    for ax in (1, 2):
        wall |= np.diff(lab, axis=ax, prepend=lab.take([0], axis=ax)) != 0
    lab[wall] = 0
    aff, _ = affinities_from_labels(lab)
    aff += rng.normal(0.0, 0.3, aff.shape).astype(np.float32)
    np.clip(aff, 0, 1, out=aff)
    return lab, aff


def run_method(method: str, shape: tuple[int, int, int], block: tuple[int, int, int], limit: int | None) -> dict:
    from medprobe.heads.agglomerate import agglomerate
    from medprobe.metrics.instances import instance_metrics

    starts = [(a, b, c) for a in range(0, shape[0], block[0]) for b in range(0, shape[1], block[1])
              for c in range(0, shape[2], block[2])]
    if limit:
        starts = starts[:limit]
    t_agg = t_syn = 0.0
    voxels = 0
    arand = []
    for k, (a, b, c) in enumerate(starts):
        bs = (min(block[0], shape[0] - a), min(block[1], shape[1] - b), min(block[2], shape[2] - c))
        t0 = time.perf_counter()
        lab, aff = block_affinities(bs, seed=k)
        t1 = time.perf_counter()
        segs = agglomerate(aff, [0.1, 0.3, 0.5], method=method)
        t2 = time.perf_counter()
        t_syn += t1 - t0
        t_agg += t2 - t1
        voxels += int(np.prod(bs))
        if k == 0:
            arand.append(min(instance_metrics(s, lab)["arand"] for s in segs.values()))
        del lab, aff, segs
    mvox = voxels / 1e6
    return {"method": method, "blocks": len(starts), "mvoxels": round(mvox, 2), "agglomeration_s": round(t_agg, 2),
            "s_per_mvoxel": round(t_agg / mvox, 4), "synthesis_s": round(t_syn, 2),
            "peak_rss_mb": round(vm_hwm_mb(), 1), "best_arand_block0": round(arand[0], 4) if arand else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[125, 1250, 1250])
    ap.add_argument("--block", type=int, nargs=3, default=[25, 625, 625])
    ap.add_argument("--method", default="waterz", choices=["waterz", "skimage", "auto"])
    ap.add_argument("--fallback-blocks", type=int, default=2, help="blocks for the scikit-image fallback (0: skip)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    shape, block = tuple(args.shape), tuple(args.block)
    if args.child:
        print(json.dumps(run_method(args.method, shape, block, args.limit or None)))  # type: ignore[arg-type]
        return
    runs = [(args.method, 0)] + ([("skimage", args.fallback_blocks)] if args.fallback_blocks and
                                 args.method != "skimage" else [])
    print(f"volume {shape[0]} x {shape[1]} x {shape[2]} ({np.prod(shape) / 1e6:.0f} Mvoxel), blocks "
          f"{block[0]} x {block[1]} x {block[2]}")
    for method, limit in runs:
        cmd = [sys.executable, __file__, "--child", "--method", method, "--shape", *map(str, shape),
               "--block", *map(str, block), "--limit", str(limit)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"{r['method']:<8} {r['blocks']:>3} blocks {r['mvoxels']:>8.1f} Mvox  agglomeration "
              f"{r['agglomeration_s']:>8.1f} s = {r['s_per_mvoxel']:.3f} s/Mvox  (synthesis {r['synthesis_s']:.1f} s)"
              f"  peak RSS {r['peak_rss_mb']:.0f} MB  best ARAND block 0 {r['best_arand_block0']}")


if __name__ == "__main__":
    main()
