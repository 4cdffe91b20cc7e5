"""Helper for the slide-bag tests, also run as a subprocess (plain ``python`` or ``torchrun``): extract tile bags
of the two real SVS slides in ../shared/data/wsi-samples with the ``none`` (pixel-grid) encoder.

Prints one JSON line per rank: ``{"rank", "world", "key", "complete", "tiles"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

WSI = Path(__file__).resolve().parents[2] / "shared" / "data" / "wsi-samples"
TCGA_MPP = 0.25  # the TCGA slide's header has no pixel size; 0.25 µm/px (40x) as the data side's tests use


def make_slides(root: Path = WSI, copies: int = 1) -> Any:
    """A slide dataset of the CMU (label 0) and TCGA (label 1) slides, each listed ``copies`` times."""
    from medprobe.data.base import Dataset, Item, TaskInfo
    from medprobe.data.slides import open_slide

    files = [("cmu-1-small-region.svs", None, 0), ("tcga-cr-7395-01a-01-ts1.svs", TCGA_MPP, 1)]

    class TwoSlides(Dataset):
        name = "two-slides"
        unit = "slide"
        modality = "pathology"
        task = TaskInfo("binary", ("cmu", "tcga"))

        def __init__(self) -> None:
            self.rows = [(f"{Path(f).stem}-{c}", root / f, mpp, lab) for c in range(copies)
                         for f, mpp, lab in files]

        def __len__(self) -> int:
            return len(self.rows)

        def ids(self) -> list[str]:
            return [r[0] for r in self.rows]

        def labels(self) -> list[Any]:
            return [r[3] for r in self.rows]

        def load(self, i: int) -> Item:
            sid, path, mpp, lab = self.rows[i]
            return Item(sid, open_slide(path, mpp=mpp), 2, label=lab, source=str(path), patient=sid,
                        meta={"slide_path": str(path), "mpp": mpp})

        def fingerprint(self) -> str:
            return "|".join(f"{r[0]}:{r[1].stat().st_size}:{r[2]}:{r[3]}" for r in self.rows)

    return TwoSlides()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--shard", default=None)
    a = p.parse_args(argv)

    import torch

    from medprobe.encoders import create_encoder
    from medprobe.features import ExtractConfig, extract
    from medprobe.preprocess import PreprocessConfig

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    torch.set_num_threads(1)
    shard = tuple(int(v) for v in a.shard.split("/")) if a.shard else None
    store = extract(make_slides(), create_encoder("none"), PreprocessConfig(),
                    ExtractConfig(batch_size=32, progress=False), cache_dir=a.cache_dir, device="cpu",
                    shard=shard)  # type: ignore[arg-type]
    print(json.dumps({"rank": rank, "world": world, "key": store.path.name if store is not None else None,
                      "complete": store is not None,
                      "tiles": [int(v) for v in np.asarray(store.slices)] if store is not None else None}),
          flush=True)
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
