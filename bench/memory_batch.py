"""Peak RSS per encoder family at its default resolution with ``batch_size: auto`` (issue 29).

Each family's smallest registered entry runs, in a fresh process (so ``ru_maxrss`` is its own), the extraction
engine on ``--n`` random images at the encoder's default resolution, random weights, default options. Printed
per family: the batch the memory model planned and the batch used, the model's and the first batch's measured
MB per item (side by side, with their ratio), the process's peak RSS and the seconds it took.

    python bench/memory_batch.py                      # every family with a registered entry
    python bench/memory_batch.py --families sam,dinov3 --n 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, tempfile
import numpy as np
from medprobe.data.base import ArrayDataset
from medprobe.encoders import create_encoder, get_spec
from medprobe.features import ExtractConfig, extract
from medprobe.preprocess import PreprocessConfig
name, n = sys.argv[1], int(sys.argv[2])
spec = get_spec(name)
enc = create_encoder(name, weights="random")
rng = np.random.default_rng(0)
if spec.family in ("swin_unetr", "ctvit"):
    ds = ArrayDataset(rng.random((n, 16, 32, 32)).astype(np.float32), np.arange(n) % 2, spatial_dims=3, name="b3")
else:
    ds = ArrayDataset(rng.random((n, 64, 64)).astype(np.float32), np.arange(n) % 2, name="b2")
with tempfile.TemporaryDirectory() as tmp:
    store = extract(ds, enc, PreprocessConfig(), ExtractConfig(progress=False), cache_dir=tmp)
    m = store.manifest
    used = m.get("batch_size", m.get("volumes_per_batch"))  # the volume unit records volumes_per_batch
    print("RESULT " + json.dumps({"batch_size": used, "batch": m.get("batch"),
                                  "resolution": list(store.preprocess.resolution),
                                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

SKIP = {"onnx", "hf", "timm", "none"}


def _smallest() -> dict[str, str]:
    from medprobe.encoders.families import FAMILIES
    from medprobe.encoders.registry import list_specs

    best: dict[str, tuple[float, str]] = {}
    for s in list_specs():
        if s.family in FAMILIES.names() and s.family not in SKIP:
            if s.family not in best or s.params_m < best[s.family][0]:
                best[s.family] = (s.params_m, s.name)
    return {f: n for f, (_, n) in sorted(best.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="", help="comma list (default: every family with an entry)")
    ap.add_argument("--n", type=int, default=2, help="images per family")
    ap.add_argument("--timeout", type=int, default=1800)
    a = ap.parse_args()
    table = _smallest()
    want = [f for f in a.families.split(",") if f] or list(table)
    print(f"{'family':16} {'encoder':22} {'res':>9} {'planned':>7} {'used':>5} {'model MB/it':>11} "
          f"{'measured':>9} {'meas/model':>10} {'peak RSS MB':>11} {'s':>6}")
    for fam in want:
        enc = table[fam]
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", CHILD, enc, str(a.n)], capture_output=True, text=True,
                           timeout=a.timeout)
        dt = time.perf_counter() - t0
        lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if p.returncode != 0 or not lines:
            last = (p.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{fam:16} {enc:22} failed (exit {p.returncode}): {last[:100]}")
            continue
        r = json.loads(lines[-1][7:])
        b = r["batch"] or {}
        model, meas = b.get("model_mb_per_item"), b.get("measured_mb_per_item")
        ratio = f"{meas / model:.2f}" if model and meas is not None else "-"
        res = "x".join(str(x) for x in r["resolution"])
        print(f"{fam:16} {enc:22} {res:>9} {b.get('planned', '-')!s:>7} {r['batch_size']!s:>5} "
              f"{model!s:>11} {meas!s:>9} {ratio:>10} {r['peak_rss_mb']:>11.0f} {dt:>6.0f}", flush=True)


if __name__ == "__main__":
    main()
