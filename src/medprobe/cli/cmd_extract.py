"""``medprobe extract``: dataset + encoder -> feature cache."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from medprobe.cli import common


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="extract and cache frozen-encoder features of a dataset",
                       description="Extract CLS / mean-patch / patch-grid features of every image or volume "
                       "slice into the content-addressed cache. Works under torchrun (ranks take disjoint "
                       "shards) and with --shard i/n for job arrays.")
    common.add_dataset_args(p, default="phantom:xray2d-binary")
    common.add_encoder_args(p)
    common.add_preprocess_args(p)
    common.add_extract_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from medprobe.features import extract
    from medprobe.pipeline.common import build_encoder

    dist = "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if dist and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = common.pick_device(args.device)
    if dist and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    spec = common.extract_task(args)  # the flags through the one task parser (typos, values: one line)
    cfg = common.build_extract_config(args)
    ds, unit_options = _dataset(spec)
    enc = build_encoder(spec, device)
    t0 = time.perf_counter()
    store = extract(ds, enc, spec.preprocess, cfg, unit_options=unit_options, cache_dir=common.cache_root(args),
                    device=device, shard=common.parse_shard(args.shard))
    dt = time.perf_counter() - t0
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if store is None:
        print(f"shard {args.shard} done in {dt:.1f}s; the entry completes when every shard has run")
    elif rank == 0:
        n_rows = int(store.offsets[-1])
        label = "pretrained" if enc.pretrained else "UNTRAINED (random weights: a pipeline check, not a score)"
        print(f"encoder   {enc.spec.name} [{label}] weights={enc.weights_id}")
        print(f"dataset   {ds.name}: {store.n_items} items, {n_rows} images/slices, fingerprint {ds.fingerprint()}")
        print(f"features  layers {store.layers}, dim {store.dim}, grid {store.grid[0]}x{store.grid[1]}, "
              f"tokens {','.join(store.tokens)}")
        print(f"cache     {store.path}")
        print(f"time      {dt:.2f}s total, {n_rows / dt if dt > 0 else 0:.1f} images/s "
              f"(includes reuse: a cached entry is read, not recomputed)")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def _dataset(spec: Any) -> tuple[Any, dict[str, Any]]:
    """The dataset (its own options) and the options of its extraction unit: the data options the serving task
    family reads itself (e.g. the slides family's typed ``tiling`` / ``tissue``), as ``medprobe run`` passes them."""
    from medprobe.data import create_dataset
    from medprobe.errors import ConfigError
    from medprobe.pipeline.family import family_for_dataset
    from medprobe.pipeline.options import family_data_keys, family_of_data

    own = family_data_keys(spec.kind, spec.data)
    ds = create_dataset(spec.dataset, **{k: v for k, v in spec.data.items() if k not in own})
    family = family_for_dataset(ds, spec.dataset)
    named = family_of_data(None, spec.data)
    if named is not None and named != family.name:
        keys = ", ".join(f"data.{k}" for k in sorted(own))
        raise ConfigError(f"{keys}: options of the {named} family, but {ds.name} is served by the {family.name} "
                          "family", "command line")
    return ds, family.unit_options(spec)
