"""Where weights come from, all offline-capable, and how they are checked.

Sources (``weights=`` of :func:`medprobe.encoders.create_encoder`):

* ``None`` / ``"random"`` / ``"random:seed=N"`` -- random initialisation, labelled untrained everywhere;
* a Meta original checkpoint ``dinov3_<arch>_pretrain_<data>-<hash8>.pth`` -- SHA-256 prefix verified,
  keys mapped to the transformers layout with strict checking;
* a ``.safetensors`` / ``.pth`` state dict in transformers (or Meta) layout;
* a Hugging Face model directory (``config.json`` + weights);
* a Hugging Face hub id (``facebook/dinov3-vits16-pretrain-lvd1689m``, or ``"hub"`` for the spec's repo),
  read from the local cache when ``HF_HUB_OFFLINE=1`` and downloaded when online.

Only ``torch.load(weights_only=True)`` or safetensors: never arbitrary pickle.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medprobe.encoders.spec import EncoderSpec
from medprobe.errors import WeightsError
from medprobe.utils import memo_sha256, weights_memo_path
from medprobe.utils import sha256_file as sha256_file  # re-exported: the hash of the bytes loaded

META_NAME = re.compile(r"^dinov3_(?P<arch>[a-z0-9_]+?)_pretrain_(?P<data>[a-z0-9]+)-(?P<hash>[0-9a-f]{8})\.pth$")


@dataclass(frozen=True)
class WeightsRef:
    """A resolved weights source."""

    kind: str  # "random" | "file" | "hf_dir" | "hub" | "onnx"
    location: str | None = None
    seed: int = 0
    verify: bool = True

    @property
    def pretrained(self) -> bool:
        return self.kind != "random"


def parse_weights_arg(weights: str | os.PathLike[str] | None, spec: EncoderSpec, seed: int = 0,
                      verify: bool = True) -> WeightsRef:
    """Classify the user's ``weights`` argument (no I/O beyond existence checks)."""
    if weights is None or str(weights) == "random":
        return WeightsRef("random", seed=seed)
    s = str(weights)
    if s.startswith("random:"):
        m = re.fullmatch(r"random:seed=(\d+)", s)
        if not m:
            raise WeightsError("random weights are written 'random' or 'random:seed=N'", s)
        return WeightsRef("random", seed=int(m.group(1)))
    if s == "hub":
        if not spec.hf_repo:
            raise WeightsError(f"{spec.name} has no Hugging Face repo; give a local file", s)
        return WeightsRef("hub", spec.hf_repo)
    p = Path(s).expanduser()
    if p.is_dir():
        return WeightsRef("hf_dir", str(p))
    if p.is_file():
        return WeightsRef("onnx" if p.suffix == ".onnx" else "file", str(p), verify=verify)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", s) and not s.endswith((".pth", ".pt", ".safetensors", ".onnx")):
        return WeightsRef("hub", s)
    raise WeightsError("weights file not found", p)


def _sha_memo() -> Path:
    """Where remembered weight hashes live: beside the feature cache (per project, not per home directory)."""
    return weights_memo_path()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a weights file, remembered (so multi-GB files hash once) under a key that any change of
    content invalidates: path, size, mtime, ctime and inode (see :func:`medprobe.utils.memo_sha256`)."""
    return memo_sha256(path, _sha_memo())


def check_meta_name(path: str | Path, spec: EncoderSpec) -> None:
    """Refuse a Meta checkpoint whose file name names another architecture or pre-training set."""
    m = META_NAME.match(Path(path).name)
    if m and spec.meta_arch and (m.group("arch"), m.group("data")) != (spec.meta_arch, spec.meta_dataset):
        raise WeightsError(f"file is dinov3_{m.group('arch')} ({m.group('data')}) but encoder {spec.name} expects "
                           f"dinov3_{spec.meta_arch} ({spec.meta_dataset})", path)


def verify_meta_hash(path: str | Path) -> str:
    """Check that a Meta checkpoint's content matches the 8 hex digits in its name; return the full digest."""
    path = Path(path)
    m = META_NAME.match(path.name)
    digest = file_sha256(path)
    if m and not digest.startswith(m.group("hash")):
        raise WeightsError(f"SHA-256 mismatch: name says {m.group('hash')}, content is {digest[:8]} "
                           "(corrupt or renamed file; --no-verify to override)", path)
    return digest


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file with ``weights_only=True``."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise WeightsError(f"cannot read weights ({reason})", path) from None
    for k in ("model", "state_dict", "teacher", "module"):
        if isinstance(sd, dict) and k in sd and isinstance(sd[k], dict) and not torch.is_tensor(sd[k]):
            sd = sd[k]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise WeightsError("file does not hold a state dict of tensors", path)
    return {str(k).removeprefix("module.").removeprefix("backbone."): v for k, v in sd.items()}


def load_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load ``sd`` into ``model`` requiring an exact key and shape match; list every mismatch on failure."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad_shape = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:12]}{' ...' if len(missing) > 12 else ''} ({len(missing)})")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:12]}{' ...' if len(unexpected) > 12 else ''} "
                         f"({len(unexpected)})")
        if bad_shape:
            parts.append("shape mismatch " + ", ".join(
                f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in bad_shape[:6]))
        raise WeightsError("weights do not match the architecture: " + "; ".join(parts), source)
    model.load_state_dict(sd, strict=True)


def to_model_layout(sd: dict[str, torch.Tensor], model: torch.nn.Module, spec: EncoderSpec, *,
                    meta_layout: bool | None = None) -> dict[str, torch.Tensor]:
    """Map a Meta-layout or older-transformers-layout state dict onto ``model``'s key names.

    ``meta_layout``: whether the architecture has Meta original checkpoints to convert (the family's
    :class:`~medprobe.encoders.hf_vit.HFArch` says; ``None``: when the spec names a Meta arch)."""
    from medprobe.encoders.meta_convert import convert_meta_state_dict, is_meta_state_dict

    own = set(model.state_dict())
    if meta_layout is None:
        meta_layout = spec.meta_arch is not None
    if meta_layout and is_meta_state_dict(sd):
        sd = convert_meta_state_dict(sd, spec)
    if set(sd) == own:
        return sd
    # transformers moved DINOv3 blocks from "layer.N" to "model.layer.N"; accept either.
    out = {}
    for k, v in sd.items():
        if k.startswith("layer.") and f"model.{k}" in own:
            k = f"model.{k}"
        elif k.startswith("model.layer.") and k[len("model."):] in own:
            k = k[len("model."):]
        out[k] = v
    return out
