"""``medprobe extract``: dataset + encoder -> feature cache."""

from __future__ import annotations

import argparse
import os
import time

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

    from medprobe.data import create_dataset
    from medprobe.features import extract

    dist = "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if dist and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = common.pick_device(args.device)
    if dist and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    ds = create_dataset(args.dataset, **common.dataset_options(args))
    enc = common.build_encoder(args, device)
    t0 = time.perf_counter()
    store = extract(ds, enc, common.build_preprocess(args), common.build_extract_config(args),
                    cache_dir=common.cache_root(args), device=device, shard=common.parse_shard(args.shard))
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
