"""MAE ViT-B/16 and ViT-L/16 encoders (He et al. 2022) on transformers' ``ViTMAEModel``, no masking.

Registers the family ``mae``. Weights: facebook's ``mae_pretrain_vit_{base,large}.pth`` (``{"model": state
dict}`` in timm's ``VisionTransformer`` layout: ``cls_token``, ``pos_embed`` (fixed 2-D sin-cos, stored),
``patch_embed.proj``, ``blocks.i.*``, ``norm``), or timm's copy (``timm/vit_{base,large}_patch16_224.mae``,
``model.safetensors``). The ``mae_visualize_*`` files also hold the pre-training decoder (``mask_token``,
``decoder_*``): those keys are read past, they are not part of the encoder.

Features are the encoder on the whole image (mask ratio 0, patches in image order): ``cls`` is the class token
after the final norm (MAE's linear-probe feature), ``patch`` the patch tokens after it. Other input sizes
resample the position embeddings as timm's ``dynamic_img_size`` (see :mod:`medprobe.encoders._timm_layout`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medprobe.encoders._timm_layout import TimmLayoutViT, TimmViT, build_model, timm_params
from medprobe.encoders.base import Encoder
from medprobe.encoders.families import EncoderFamily, register_family
from medprobe.encoders.pathology import build_timm_vit, gflops_of, identity
from medprobe.encoders.registry import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, register

if TYPE_CHECKING:
    from medprobe.encoders.weights import WeightsRef

# keys of MAE's pre-training decoder (mae_visualize_*.pth), not part of the encoder
DECODER_PREFIXES = ("mask_token", "decoder_")


def _select(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not k.startswith(DECODER_PREFIXES)}


def _build(spec: EncoderSpec, ref: WeightsRef, options: Mapping[str, Any]) -> Encoder:
    return build_timm_vit(spec, ref, f"{spec.name} (MAE encoder, timm layout)", select=_select)


def _make(spec: EncoderSpec) -> Encoder:
    a = TimmViT.from_spec(spec)
    return TimmLayoutViT(spec, a, build_model(a))


def _local_weights(spec: EncoderSpec) -> list[Path]:
    """facebook's release files (``mae_pretrain_vit_<size>.pth``, ``mae_visualize_...``) in $MEDPROBE_WEIGHTS
    folders and torch hub's checkpoint folder."""
    size = spec.hf_config.get("release")
    if not size:
        return []
    dirs = [Path(p) for p in os.environ.get("MEDPROBE_WEIGHTS", "").split(os.pathsep) if p]
    dirs.append(Path.home() / ".cache" / "torch" / "hub" / "checkpoints")
    return [d / f"mae_{kind}_vit_{size}.pth" for d in dirs for kind in ("pretrain", "visualize")
            if (d / f"mae_{kind}_vit_{size}.pth").is_file()]


register_family(EncoderFamily(
    name="mae", build=_build, identity=identity, gflops=gflops_of(_make), local_weights=_local_weights,
    description="MAE pre-trained ViT encoders (facebook .pth, timm layout) on transformers ViTMAEModel, no masking",
    cls_feature="class token after the final norm (MAE's linear-probe feature)",
    patch_feature="patch tokens after the final norm, in image order (mask ratio 0); stride 16",
    taps="transformer blocks (0-based); any multiple of 16 (position embeddings resampled as timm's "
         "dynamic_img_size)",
))

for _size, _width, _depth, _heads, _taps in (("base", 768, 12, 12, (2, 5, 8, 11)),
                                             ("large", 1024, 24, 16, (4, 11, 17, 23))):
    _spec = EncoderSpec(
        name=f"mae-vit{_size[0]}16", family="mae", patch_size=16, width=_width, depth=_depth, params_m=0.0,
        default_layers=_taps, mean=IMAGENET_MEAN, std=IMAGENET_STD, native_resolution=224,
        license="CC-BY-NC 4.0 (Meta)", pretraining_data="ImageNet-1k (MAE, 75% masking)",
        hf_repo=f"timm/vit_{_size}_patch16_224.mae", timm_name=f"vit_{_size}_patch16_224.mae",
        hf_config=dict(heads=_heads, img_size=224, mlp_hidden=4 * _width, target="vit_mae", release=_size),
    )
    register(replace(_spec, params_m=round(timm_params(TimmViT.from_spec(_spec)) / 1e6, 1)))

__all__ = ["DECODER_PREFIXES"]
