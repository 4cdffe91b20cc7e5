"""Frozen encoders behind one registry; :func:`create_encoder` is the one way in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from medprobe.encoders.base import Encoder, EncoderInfo, EncoderOutput, resolve_layers
from medprobe.encoders.registry import EncoderSpec, get_spec, list_specs, register
from medprobe.encoders.weights import WeightsRef, parse_weights_arg
from medprobe.errors import ConfigError, WeightsError


def create_encoder(name: str, weights: str | os.PathLike[str] | None = None, *, device: str | torch.device = "cpu",
                   dtype: torch.dtype | None = None, seed: int = 0, verify: bool = True,
                   onnx_output: str | None = None, onnx_input: str | None = None,
                   onnx_prefix_tokens: int | None = None) -> Encoder:
    """Build a frozen encoder in eval mode.

    ``weights``: ``None``/``"random"``/``"random:seed=N"`` (untrained), a Meta ``.pth``, a ``.safetensors``
    file, a Hugging Face model directory, a hub id, or ``"hub"`` for the registry's repo. ``verify``
    checks Meta file names' SHA-256 prefix. ``weights_id`` on the result is what results record.
    """
    spec = get_spec(name)
    ref = parse_weights_arg(weights, spec, seed=seed, verify=verify)
    enc = _build(spec, ref, onnx_output=onnx_output, onnx_input=onnx_input, onnx_prefix_tokens=onnx_prefix_tokens)
    enc = enc.to(device=device)
    if dtype is not None:
        enc = enc.to(dtype=dtype)
    enc.eval().requires_grad_(False)
    return enc


def encoder_info(name: str, weights: str | os.PathLike[str] | None = None, *, seed: int = 0,
                 verify: bool = True) -> EncoderInfo | None:
    """The encoder's identity for cache look-ups without building it; ``None`` when that needs the model
    (hub ids, whose revision is only known once loaded)."""
    from medprobe.encoders.weights import check_meta_name, file_sha256, verify_meta_hash

    spec = get_spec(name)
    ref = parse_weights_arg(weights, spec, seed=seed, verify=verify)
    if spec.family == "none":
        return EncoderInfo(spec, "none", False)
    if spec.family == "onnx":
        if ref.kind in ("onnx", "file"):
            return EncoderInfo(spec, f"sha256:{file_sha256(str(ref.location))}", True)
        if "package" in spec.hf_config:
            from medprobe.encoders.onnx_encoder import packaged_onnx

            path = packaged_onnx(spec.hf_config["package"], spec.hf_config["file"])
            return EncoderInfo(spec, f"sha256:{file_sha256(path)}", True)
        return None
    if ref.kind == "random":
        return EncoderInfo(spec, f"random:seed={ref.seed}", False)
    if ref.kind == "file":
        path = Path(str(ref.location))
        check_meta_name(path, spec)
        return EncoderInfo(spec, f"sha256:{verify_meta_hash(path) if ref.verify else file_sha256(path)}", True)
    return None


def _build(spec: EncoderSpec, ref: WeightsRef, **onnx_kw: Any) -> Encoder:
    if spec.family == "none":
        from medprobe.encoders.identity import IdentityEncoder

        enc: Encoder = IdentityEncoder(spec)
        enc.weights_id, enc.pretrained = "none", False
        return enc
    if spec.family == "onnx":
        return _build_onnx(spec, ref, **onnx_kw)
    from medprobe.encoders.hf_vit import HFViTEncoder, build_hf_model
    from medprobe.encoders.weights import (
        check_meta_name,
        file_sha256,
        load_state_dict,
        load_strict,
        to_model_layout,
        verify_meta_hash,
    )

    if ref.kind == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ref.seed)
            model = build_hf_model(spec)
        enc = HFViTEncoder(spec, model)
        enc.weights_id, enc.pretrained = f"random:seed={ref.seed}", False
        return enc
    if ref.kind == "file":
        assert ref.location is not None
        path = Path(ref.location)
        check_meta_name(path, spec)
        digest = verify_meta_hash(path) if ref.verify else file_sha256(path)
        sd = load_state_dict(path)
        model = build_hf_model(spec)
        try:
            sd = to_model_layout(sd, model, spec)
        except WeightsError as e:  # conversion problems carry no file name: add it (one-line convention)
            if e.source is None:
                raise WeightsError(e.problem, path) from None
            raise
        load_strict(model, sd, path)
        enc = HFViTEncoder(spec, model)
        enc.weights_id, enc.pretrained = f"sha256:{digest}", True
        return enc
    if ref.kind in ("hf_dir", "hub"):
        return _build_pretrained_hf(spec, ref)
    raise WeightsError(f"{spec.name} cannot load {ref.kind} weights", ref.location)


def _build_pretrained_hf(spec: EncoderSpec, ref: WeightsRef) -> Encoder:
    from transformers import AutoModel

    from medprobe.encoders.hf_vit import HFViTEncoder
    from medprobe.utils import hash_obj

    loc = str(ref.location)
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    try:
        model = AutoModel.from_pretrained(loc, local_files_only=offline or ref.kind == "hf_dir",
                                          attn_implementation="sdpa")
    except OSError as e:
        hint = " (offline: it is not in the local Hugging Face cache)" if offline else ""
        raise WeightsError(f"cannot load Hugging Face model{hint}: {str(e).splitlines()[0][:160]}", loc) from None
    cfg = model.config
    if int(cfg.hidden_size) != spec.width or int(cfg.num_hidden_layers) != spec.depth:
        raise WeightsError(f"model is {cfg.hidden_size}-d/{cfg.num_hidden_layers} blocks but {spec.name} is "
                           f"{spec.width}-d/{spec.depth} blocks", loc)
    enc = HFViTEncoder(spec, model)
    root = Path(getattr(model, "name_or_path", loc))
    weights_files = sorted(root.glob("*.safetensors")) if Path(loc).is_dir() else []
    if weights_files:
        from medprobe.encoders.weights import file_sha256

        enc.weights_id = "sha256:" + hash_obj([file_sha256(f) for f in weights_files], n=64)
    else:
        rev = getattr(cfg, "_commit_hash", None) or "unknown"
        enc.weights_id = f"hf:{loc}@{rev}"
    enc.pretrained = True
    return enc


def _build_onnx(spec: EncoderSpec, ref: WeightsRef, onnx_output: str | None = None, onnx_input: str | None = None,
                onnx_prefix_tokens: int | None = None) -> Encoder:
    from medprobe.encoders.onnx_encoder import OnnxEncoder, packaged_onnx
    from medprobe.encoders.weights import file_sha256

    cfg = dict(spec.hf_config)
    if ref.kind in ("onnx", "file"):
        path = Path(str(ref.location))
    elif "package" in cfg:
        path = packaged_onnx(cfg["package"], cfg["file"])
    else:
        raise ConfigError("the generic 'onnx' encoder needs --weights PATH.onnx (and --onnx-output TENSOR)")
    enc = OnnxEncoder(spec, path, input_name=onnx_input or cfg.get("input"), output=onnx_output or cfg.get("output"),
                      n_prefix=cfg.get("n_prefix", 1) if onnx_prefix_tokens is None else onnx_prefix_tokens,
                      fixed_resolution=cfg.get("fixed_resolution"))
    enc.weights_id, enc.pretrained = f"sha256:{file_sha256(path)}", True
    return enc


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
    if spec.family == "onnx" and "package" in spec.hf_config:
        from medprobe.encoders.onnx_encoder import packaged_onnx

        try:
            found.append(packaged_onnx(spec.hf_config["package"], spec.hf_config["file"]))
        except WeightsError:
            pass
    return found


__all__ = ["Encoder", "EncoderInfo", "EncoderOutput", "EncoderSpec", "create_encoder", "encoder_info", "get_spec",
           "list_specs", "register",
           "resolve_layers", "weights_available"]
