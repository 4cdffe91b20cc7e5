"""Dataset fingerprint (content digests) vs a cold extraction, measured side by side.

The fingerprint keys the feature and audit caches; it hashes every byte of the data (streamed BLAKE2b), so two
same-size files swapping bytes change it. This prints its cost as a share of a cold extraction on
PneumoniaMNIST (target <= 0.02), for the dataset as shipped (one .npz) and for the same images as PNG files in
class folders (a ``folder:`` dataset: one digest per file)::

    python bench/fingerprint.py                # data from ../shared/data/medmnist, 128 images extracted
    python bench/fingerprint.py --n 512 --encoder dinov3-vits16 --resolution 224

The extraction is timed on the first ``--n`` images (random-init encoder, CPU, empty cache); the fingerprint of
the folder variant covers the same ``--n`` files, the .npz fingerprint the whole file (every split), so the .npz
ratio is conservative. Each fingerprint is timed with the in-process digest memo cleared (a fresh process).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "medmnist"
TARGET = 0.02


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="folder holding pneumoniamnist.npz")
    ap.add_argument("--n", type=int, default=128, help="images extracted cold (default 128)")
    ap.add_argument("--encoder", default="dinov3-vits16")
    ap.add_argument("--resolution", type=int, default=224)
    a = ap.parse_args(argv)
    if not (Path(a.data) / "pneumoniamnist.npz").is_file():
        raise SystemExit(f"fingerprint bench: {a.data}/pneumoniamnist.npz not found (pass --data)")

    import numpy as np

    from medprobe.data import create_dataset
    from medprobe.data import io as dio
    from medprobe.data.base import Subset
    from medprobe.encoders import create_encoder
    from medprobe.features import ExtractConfig, extract
    from medprobe.preprocess import PreprocessConfig

    def fresh_fingerprint(spec: str, **kw: object) -> str:
        dio._DIGESTS.clear()
        return create_dataset(spec, **kw).fingerprint()

    full = create_dataset("medmnist:pneumoniamnist", root=a.data)
    t_npz, _ = best_of(lambda: fresh_fingerprint("medmnist:pneumoniamnist", root=a.data), repeat=3)
    ds = Subset(full, list(range(min(a.n, len(full)))), tag=f"first{a.n}")
    enc = create_encoder(a.encoder, weights="random", device="cpu")
    with tempfile.TemporaryDirectory(prefix="medprobe-fp-") as tmp:
        folder = Path(tmp) / "pngs"
        for i in range(len(ds)):
            it = ds.load(i)
            dio.write_png(folder / f"class{int(np.asarray(it.label).ravel()[0])}" / f"{it.id}.png",
                          np.asarray(it.image))
        t_png, _ = best_of(lambda: fresh_fingerprint(f"folder:{folder}"), repeat=3)
        t0 = time.perf_counter()
        store = extract(ds, enc, PreprocessConfig(resolution=a.resolution),
                        ExtractConfig(layers="last", tokens=("cls", "mean")), cache_dir=Path(tmp) / "cache",
                        device="cpu")
        t_ext = time.perf_counter() - t0
        assert store is not None and not store.reused
    size = (Path(a.data) / "pneumoniamnist.npz").stat().st_size / 2**20
    print(f"cold extraction: {len(ds)} PneumoniaMNIST images, {a.encoder} (random init) at {a.resolution} px, "
          f"CPU: {t_ext:.2f} s ({len(ds) / t_ext:.1f} img/s)")
    r_npz, r_png = t_npz / t_ext, t_png / t_ext
    print(f"fingerprint, pneumoniamnist.npz ({size:.1f} MiB, all {len(full)} images): {t_npz * 1e3:.1f} ms = "
          f"{r_npz:.5f} of the extraction (target <= {TARGET}: {'PASS' if r_npz <= TARGET else 'FAIL'})")
    print(f"fingerprint, the same {len(ds)} images as PNG files (folder:): {t_png * 1e3:.1f} ms = {r_png:.5f} of "
          f"the extraction (target <= {TARGET}: {'PASS' if r_png <= TARGET else 'FAIL'})")
    return 0 if max(r_npz, r_png) <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
