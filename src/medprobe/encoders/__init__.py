"""Frozen encoders behind one registry; :func:`create_encoder` is the one way in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from medprobe.encoders.extras import ensure_torchvision

ensure_torchvision()  # before any transformers model class is imported (see medprobe.encoders.extras)

from medprobe.encoders.base import Encoder, EncoderInfo, EncoderOutput, resolve_layers  # noqa: E402
from medprobe.encoders.families import EncoderFamily, encoder_families, get_family, register_family  # noqa: E402
from medprobe.encoders.registry import EncoderSpec, get_spec, list_specs, register  # noqa: E402
from medprobe.encoders.weights import parse_weights_arg  # noqa: E402


def create_encoder(name: str, weights: str | os.PathLike[str] | None = None, *, device: str | torch.device = "cpu",
                   dtype: torch.dtype | None = None, seed: int = 0, verify: bool = True, **options: Any) -> Encoder:
    """Build a frozen encoder in eval mode.

    ``weights``: ``None``/``"random"``/``"random:seed=N"`` (untrained), a Meta ``.pth``, a ``.safetensors``
    file, a Hugging Face model directory, a hub id, or ``"hub"`` for the registry's repo. ``verify``
    checks Meta file names' SHA-256 prefix. ``weights_id`` on the result is what results record.
    ``options``: extra build options of the encoder's family (e.g. ``onnx_output``, ``onnx_input``,
    ``onnx_prefix_tokens`` for ONNX encoders); ``None`` means not given, and an option the family does not
    take is a ConfigError.
    """
    spec = get_spec(name)
    family = get_family(spec.family)
    given = family.check_options(spec, options)
    spec = family.adapt_spec(spec, given)
    ref = parse_weights_arg(weights, spec, seed=seed, verify=verify)
    enc = family.build(spec, ref, given)
    enc.options = dict(given)  # what the features depend on beyond name and weights (in the cache key)
    enc = enc.to(device=device)
    if dtype is not None:
        enc = enc.to(dtype=dtype)
    enc.eval().requires_grad_(False)
    return enc


def encoder_info(name: str, weights: str | os.PathLike[str] | None = None, *, seed: int = 0,
                 verify: bool = True, **options: Any) -> EncoderInfo | None:
    """The encoder's identity for cache look-ups without building it; ``None`` when that needs the model
    (hub ids, whose revision is only known once loaded). ``options`` as for :func:`create_encoder`."""
    spec = get_spec(name)
    family = get_family(spec.family)
    given = family.check_options(spec, options)
    spec = family.adapt_spec(spec, given)
    ref = parse_weights_arg(weights, spec, seed=seed, verify=verify)
    info = family.identity(spec, ref)
    if info is not None:
        info.options = dict(given)
        info.blockless = family.blockless
    return info


def weights_available(spec: EncoderSpec, search_dirs: list[Path] | None = None) -> list[Path]:
    """Local weight files for ``spec``: Meta ``.pth`` files in ``search_dirs`` and HF cache snapshots."""
    found: list[Path] = []
    dirs = list(search_dirs or [])
    env = os.environ.get("MEDPROBE_WEIGHTS")
    if env:
        dirs += [Path(p) for p in env.split(os.pathsep)]
    dirs += [Path.home() / ".cache" / "torch" / "hub" / "checkpoints"]
    if spec.meta_arch:
        pat = f"dinov3_{spec.meta_arch}_pretrain_{spec.meta_dataset}-*.pth"
        for d in dirs:
            if d.is_dir():
                found += sorted(d.glob(pat))
    if spec.hf_repo:
        hub = Path(os.environ.get("HF_HUB_CACHE", Path(os.environ.get("HF_HOME", Path.home() / ".cache" /
                                                                           "huggingface")) / "hub"))
        snap = hub / ("models--" + spec.hf_repo.replace("/", "--")) / "snapshots"
        if snap.is_dir():
            found += sorted(p for p in snap.iterdir() if p.is_dir())
    found += get_family(spec.family).local_weights(spec)
    return found


__all__ = ["Encoder", "EncoderFamily", "EncoderInfo", "EncoderOutput", "EncoderSpec", "create_encoder",
           "encoder_families", "encoder_info", "get_family", "get_spec", "list_specs", "register", "register_family",
           "resolve_layers", "weights_available"]
