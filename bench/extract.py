"""Extraction engine vs bare ``model(x)``, and cached re-read vs cold extraction, measured side by side.

    python bench/extract.py            # default: 192 phantom X-rays -> ViT-S/16 @224, batch 32
    python bench/extract.py --quick    # smaller, for a smoke run

Prints two ratios (targets: engine/bare throughput >= 0.95; re-read/cold time <= 0.05). Runs are
interleaved (bare, engine, bare, engine, ...) and the best of each is used, since this machine is noisy.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from medprobe.data import create_dataset
from medprobe.encoders import create_encoder
from medprobe.features import ExtractConfig, extract, resolve_preprocess
from medprobe.preprocess import PreprocessConfig, Preprocessor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=192)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--encoder", default="dinov3-vits16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--amp", default="off", choices=["off", "bf16"])
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.n, a.resolution, a.repeats = 64, 112, 2
    ds = create_dataset("phantom:xray2d-binary", n=a.n, size=128, seed=0)
    enc = create_encoder(a.encoder)
    pre_cfg = PreprocessConfig(resolution=(a.resolution, a.resolution))
    cfg = ExtractConfig(layers="last", batch_size=a.batch, amp=a.amp, progress=False)
    # bare model(x): inputs preprocessed beforehand (not timed), same batches, same autocast
    pre = Preprocessor(resolve_preprocess(pre_cfg, ds, enc), enc.patch_size)
    x_all = torch.cat([pre(ds.load(i))[:, 0] for i in range(len(ds))])
    batches = list(torch.split(x_all, a.batch))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.amp == "bf16")

    def bare() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode(), autocast:
            for xb in batches:
                enc.model(pixel_values=xb)
        return time.perf_counter() - t0

    tmp = Path(tempfile.mkdtemp(prefix="medprobe-bench-"))
    bare_t, eng_t, reread_t = [], [], []
    try:
        bare()  # warm-up
        for r in range(a.repeats):
            bare_t.append(bare())
            d = tmp / f"run{r}"
            t0 = time.perf_counter()
            store = extract(ds, enc, pre_cfg, cfg, cache_dir=d)
            eng_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            store = extract(ds, enc, pre_cfg, cfg, cache_dir=d)  # cache hit
            for tok in ("cls", "mean", "patch"):
                store.rows(tok)
            reread_t.append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tb, te, tr = min(bare_t), min(eng_t), min(reread_t)
    print(f"setup: {a.n} phantom images -> {a.encoder} (random init) @ {a.resolution}px, batch {a.batch}, "
          f"amp {a.amp}, torch {torch.__version__}, {torch.get_num_threads()} threads; best of {a.repeats}")
    print(f"bare model(x):       {tb:7.2f} s  {a.n / tb:7.1f} img/s")
    print(f"engine (cold):       {te:7.2f} s  {a.n / te:7.1f} img/s  "
          "(load + preprocess + encode + write cls/mean/patch)")
    print(f"cached re-read:      {tr:7.3f} s  (cache hit + read every token array)")
    print(f"engine/bare throughput ratio: {tb / te:.3f}  (target >= 0.95)")
    print(f"re-read/cold time ratio:      {tr / te:.4f}  (target <= 0.05)")


if __name__ == "__main__":
    main()
