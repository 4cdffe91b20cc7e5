"""Helper run by the tests as a subprocess (plain ``python`` or ``torchrun``): extract a seeded toy dataset.

Prints one JSON line per rank: ``{"rank", "world", "pid", "key", "complete"}``. ``--slow S`` sleeps S
seconds per item load (same dataset, same key) so a test can kill the run between shards;
``--writers FILE`` appends the rank of every process that writes a manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def make_dataset(n: int = 8, size: int = 32, seed: int = 0):  # noqa: ANN201 - imports stay lazy
    from medprobe.data.base import ArrayDataset

    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in range(n)]
    return ArrayDataset(images, labels=[i % 2 for i in range(n)], name="toy")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--items", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--shard-items", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--encoder", default="dinov3-vits16")
    p.add_argument("--slow", type=float, default=0.0)
    p.add_argument("--shard", default=None)
    p.add_argument("--writers", default=None)
    a = p.parse_args(argv)

    import torch

    import medprobe.features.common as common
    from medprobe.encoders import create_encoder
    from medprobe.features import ExtractConfig, extract
    from medprobe.preprocess import PreprocessConfig

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0

    if a.writers:
        orig = common.write_manifest

        def logged(*args, **kw):  # noqa: ANN002, ANN003, ANN202
            with open(a.writers, "a", encoding="utf-8") as f:
                f.write(f"{rank}\n")
            return orig(*args, **kw)

        common.write_manifest = logged  # the sharded-entry driver writes it

    ds = make_dataset(a.items, a.size)
    if a.slow > 0:
        base_load = ds.load

        def slow_load(i: int):  # noqa: ANN202
            time.sleep(a.slow)
            return base_load(i)

        ds.load = slow_load  # type: ignore[method-assign]

    enc = create_encoder(a.encoder)
    shard = tuple(int(v) for v in a.shard.split("/")) if a.shard else None
    store = extract(ds, enc, PreprocessConfig(resolution=(a.res, a.res)),
                    ExtractConfig(shard_items=a.shard_items, batch_size=a.batch_size, progress=False),
                    cache_dir=a.cache_dir, device="cpu", shard=shard)  # type: ignore[arg-type]
    key = store.path.name if store is not None else None
    print(json.dumps({"rank": rank, "world": world, "pid": os.getpid(), "key": key,
                      "complete": store is not None and (Path(store.path) / "manifest.json").is_file()}),
          flush=True)
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
