"""Option groups shared by several sub-commands (encoder, preprocessing, dataset, extraction)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from medprobe.errors import ConfigError


def add_encoder_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("encoder")
    g.add_argument("--encoder", default="dinov3-vits16",
                   help="encoder registry name, e.g. dinov3-vits16 (list: 'medprobe models')")
    g.add_argument("--weights", default=None, help="Meta .pth, .safetensors, HF directory, hub id, 'hub', or "
                   "'random[:seed=N]', e.g. ~/w/dinov3_vits16_pretrain_lvd1689m-08c60483.pth (default: random, "
                   "labelled untrained)")
    g.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check of Meta checkpoint names")
    g.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available)")
    g.add_argument("--onnx-output", default=None,
                   help="ONNX encoders: the output tensor holding the backbone tokens, e.g. last_hidden_state")
    g.add_argument("--encoder-option", action="append", default=[], metavar="KEY=VALUE",
                   help="encoder family option (repeatable), e.g. --encoder-option onnx_prefix_tokens=5 "
                   "--encoder-option onnx_patch=14 ('medprobe models --contracts' lists the families)")


def add_preprocess_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("preprocessing (each option is stored with every result)")
    g.add_argument("--resolution", type=str, default=None,
                   help="input size N or HxW, e.g. 224 or 512x384 (default: encoder's native)")
    g.add_argument("--intensity", default="auto", help="auto, minmax, uint8, uint16, none, ct:<preset>, "
                   "ct:<level>,<width>, ct-multi:a,b,c, mri:percentile[:lo,hi], mri:zscore, pet:suv[:lo,hi]; "
                   "e.g. ct:lung")
    g.add_argument("--channels", default="auto", choices=["auto", "replicate", "keep", "per_channel", "first3"],
                   help="grey/multi-channel to the encoder's 3 channels, e.g. replicate (default: auto)")
    g.add_argument("--resize", default="stretch", choices=["stretch", "pad", "aspect_pad"],
                   help="fit to the input size, e.g. aspect_pad (default: stretch)")
    g.add_argument("--interpolation", default="bilinear", choices=["bilinear", "bicubic", "nearest", "area"],
                   help="resampling, e.g. bicubic (default: bilinear)")
    g.add_argument("--slice-axis", default=None,
                   help="volumes: the axis slices are cut along, e.g. 2 (default: axial)")


def add_extract_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("extraction")
    g.add_argument("--layers", default="last",
                   help="blocks to extract: last, four, all, or 0-based indices, e.g. 2,5,8,11")
    g.add_argument("--tokens", default="cls,mean,patch",
                   help="tokens to store, a subset of cls,mean,patch, e.g. cls,mean")
    g.add_argument("--batch-size", default="auto",
                   help="images per encoder batch, e.g. 32 (default auto: the largest that fits in memory)")
    g.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                   help="autocast, e.g. bf16 (auto: bf16 on GPU, off on CPU)")
    g.add_argument("--storage", default="float32", choices=["float32", "float16"],
                   help="dtype of cached features, e.g. float16 (half the disk; default float32)")
    g.add_argument("--workers", default=0,
                   help="DataLoader worker processes, e.g. 4 (default 0: read in the main process)")
    g.add_argument("--cache-dir", default=None,
                   help="feature cache root, e.g. /scratch/cache (default ./medprobe-cache or $MEDPROBE_CACHE)")
    g.add_argument("--shard", default=None, help="i/n: compute only this shard set (job arrays), e.g. 0/4")
    g.add_argument("--no-progress", action="store_true", help="no progress line on stderr")


def add_dataset_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=default, required=default is None,
                   help="kind:arg, e.g. phantom:xray2d-binary, medmnist:pneumoniamnist, msd:/data/Task04 "
                   "(kinds and options: 'medprobe datasets')")
    g.add_argument("--data-root", default=None, help="folder the dataset reads from, e.g. ~/data/medmnist")
    g.add_argument("--data-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset or task-family data option (repeatable), e.g. size=64, 'tiling={min_tissue: 0.0}' "
                   "or tiling.min_tissue=0.0 ('medprobe datasets KIND', 'medprobe config keys')")


def pick_device(name: str | None) -> Any:
    from medprobe.pipeline.common import pick_device as pick

    return pick(name)


def _value(v: str) -> Any:
    """A ``--data-opt`` value read as a YAML scalar or flow list: ``64`` -> 64, ``true``, ``[32, 32, 12]``."""
    import yaml

    try:
        out = yaml.safe_load(v)
    except yaml.YAMLError:
        return v
    return v if out is None and v.strip().lower() not in ("null", "~", "none") else out


def dataset_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--data-root`` and ``--data-opt KEY=VALUE`` pairs as the raw ``data:`` mapping (values read like YAML:
    ``tiling={min_tissue: 0.0}``; a dotted key sets one key of a section: ``tiling.min_tissue=0.0``)."""
    opts: dict[str, Any] = {}
    if args.data_root:
        opts["root"] = os.path.expanduser(args.data_root)
    for kv in args.data_opt:
        if "=" not in kv:
            raise ConfigError(f"--data-opt must be KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        *outer, last = [p.strip() for p in k.split(".")]
        if not last or not all(outer):
            raise ConfigError(f"--data-opt must be KEY=VALUE or SECTION.KEY=VALUE, got {kv!r}")
        d = opts
        for part in outer:
            if not isinstance(d.setdefault(part, {}), dict):
                raise ConfigError(f"--data-opt {kv!r}: data.{part} is set to a value, not a section")
            d = d[part]
        d[last] = _value(v)
    return opts


def extract_task(args: argparse.Namespace) -> Any:
    """The options of ``medprobe extract`` as a :class:`~medprobe.pipeline.task.TaskSpec`, made by the one parser
    (:func:`~medprobe.pipeline.task.parse_task`) from the flags' raw mapping: the same normalisation, defaults
    and one-line errors as a task file (dataset, data options incl. a family's sections such as the slides'
    ``tiling``, encoder, preprocessing, features)."""
    from medprobe.pipeline.task import check_data_options, parse_task

    enc_opts = encoder_options(getattr(args, "encoder_option", []))
    if getattr(args, "onnx_output", None):
        enc_opts["onnx_output"] = args.onnx_output
    pre = {"intensity": args.intensity, "channels": args.channels, "resize": args.resize,
           "resolution": args.resolution, "interpolation": args.interpolation, "slice_axis": args.slice_axis}
    feats = {"layers": args.layers, "amp": args.amp, "storage": args.storage, "batch_size": args.batch_size,
             "workers": args.workers, "progress": not args.no_progress}
    raw = {"name": "extract", "dataset": args.dataset, "data": dataset_options(args), "encoder": args.encoder,
           "weights": args.weights, "verify_weights": not args.no_verify, "encoder_options": enc_opts,
           "preprocess": pre, "features": feats, "device": args.device, "cache_dir": getattr(args, "cache_dir", None)}
    spec = parse_task(raw, source="command line")
    check_data_options(spec, "command line")
    return spec


def build_encoder(args: argparse.Namespace, device: Any) -> Any:
    """The encoder the flags name (built from :func:`extract_task`'s spec, as ``medprobe run`` builds it)."""
    from medprobe.pipeline.common import build_encoder as build

    return build(extract_task(args), device)


def encoder_options(pairs: list[str]) -> dict[str, Any]:
    """``--encoder-option KEY=VALUE`` pairs as a mapping (values parsed like YAML scalars)."""
    opts: dict[str, Any] = {}
    for kv in pairs:
        if "=" not in kv:
            raise ConfigError(f"--encoder-option must be KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        opts[k.strip()] = _value(v)
    return opts


def build_preprocess(args: argparse.Namespace) -> Any:
    """The flags' preprocessing: :func:`extract_task`'s ``preprocess`` section."""
    return extract_task(args).preprocess


def build_extract_config(args: argparse.Namespace) -> Any:
    """The engine's options: :func:`extract_task`'s ``features`` section plus ``--tokens``."""
    from medprobe.features.config import ExtractConfig

    try:
        return ExtractConfig.from_features(extract_task(args).features, tokens=args.tokens)
    except ConfigError as e:
        raise ConfigError(f"--{e.problem}", "command line") from None


def parse_shard(s: str | None) -> tuple[int, int] | None:
    if not s:
        return None
    try:
        i, n = (int(v) for v in s.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must be i/n, got {s!r}") from None
    return i, n


def cache_root(args: argparse.Namespace) -> Path:
    from medprobe.utils import default_cache_dir

    return Path(args.cache_dir) if getattr(args, "cache_dir", None) else default_cache_dir()
