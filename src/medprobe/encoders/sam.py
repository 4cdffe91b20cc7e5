"""SAM and MedSAM ViT-B image encoders on transformers' ``SamVisionModel``.

Weights: ``segment_anything`` checkpoints (``sam_vit_b_01ec64.pth``; MedSAM's ``medsam_vit_b.pth`` has the same
layout), or a transformers ``SamModel`` / ``SamVisionModel`` folder (``facebook/sam-vit-base``,
``wanglab/medsam-vit-base``). Only the image encoder is loaded; the prompt encoder and mask decoder are dropped.

==========================================  ==================================================
``image_encoder.patch_embed.proj.*``        ``vision_encoder.patch_embed.projection.*``
``image_encoder.pos_embed`` (1, 64, 64, D)  ``vision_encoder.pos_embed``
``image_encoder.blocks.i.norm{1,2}.*``      ``vision_encoder.layers.i.layer_norm{1,2}.*``
``image_encoder.blocks.i.attn.*``           ``vision_encoder.layers.i.attn.*`` (qkv, proj, rel_pos_h, rel_pos_w)
``image_encoder.blocks.i.mlp.lin{1,2}.*``   ``vision_encoder.layers.i.mlp.lin{1,2}.*``
``image_encoder.neck.{0,1,2,3}.*``          ``vision_encoder.neck.{conv1,layer_norm1,conv2,layer_norm2}.*``
``prompt_encoder.*``, ``mask_decoder.*``    dropped (prompting and mask decoding, not the image encoder)
==========================================  ==================================================

Network: ViT-B/16 with windowed (14 x 14) attention in every block but the global ones (2, 5, 8, 11),
decomposed relative position terms in every attention, an absolute position embedding for the 64 x 64 grid of
the native 1024 x 1024 input, and a neck (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d) to 256 channels.

Feature contract: SAM has no class token and no final norm. Taps ``0 .. 11`` are the outputs of the 12 blocks
(768 channels, stride 16); tap ``12`` (``last``) is the neck's output, the 256-channel "image embedding" that
SAM's mask decoder reads. ``patch[l]`` is that grid; ``cls[l]`` is its mean over positions. The four standard
taps are the global-attention blocks 2, 5, 8, 11.

Resolution: SAM and MedSAM are trained at 1024 x 1024 only, and ``segment_anything`` adds its 64 x 64 position
embedding unchanged (other input sizes fail there). medprobe accepts any multiple of 16: for another grid the
absolute position embedding is resampled bicubically (``F.interpolate(..., mode="bicubic",
align_corners=False)``, in float32); windowed attention pads to whole windows and the global blocks' relative
position tables are interpolated linearly, both exactly as ``segment_anything`` does. Only 1024 is the authors'
setting.

Normalisation (medprobe's inputs are in [0, 1] before mean/std): SAM's pixel mean/std (123.675, 116.28, 103.53)
/ (58.395, 57.12, 57.375) on 0-255 values are ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) on 0-1
values. MedSAM feeds the image encoder its [0, 1] image directly (per-image min-max, no mean/std): mean 0, std 1
(use ``intensity: minmax`` to match its per-image scaling).
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from medprobe.encoders.base import Encoder, EncoderInfo, EncoderOutput
from medprobe.encoders.cnn import (
    KeyMap,
    empty_model,
    files_named,
    load_mapped,
    read_state_dict,
    seeded,
    transformers_module,
    weights_identity,
)
from medprobe.encoders.families import EncoderFamily, register_family
from medprobe.encoders.memory import windowed_vit_memory
from medprobe.encoders.registry import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, register

if TYPE_CHECKING:
    from medprobe.encoders.weights import WeightsRef

_IE, _VE = r"image_encoder\.", r"vision_encoder."
SAM_KEYS = KeyMap(
    name="segment_anything SAM",
    rules=(
        (_IE + r"patch_embed\.proj\.(weight|bias)", _VE + r"patch_embed.projection.\1"),
        (_IE + r"pos_embed", _VE + "pos_embed"),
        (_IE + r"blocks\.(\d+)\.norm([12])\.(weight|bias)", _VE + r"layers.\1.layer_norm\2.\3"),
        (_IE + r"blocks\.(\d+)\.(attn\.(?:qkv|proj)\.(?:weight|bias))", _VE + r"layers.\1.\2"),
        (_IE + r"blocks\.(\d+)\.attn\.(rel_pos_[hw])", _VE + r"layers.\1.attn.\2"),
        (_IE + r"blocks\.(\d+)\.mlp\.(lin[12])\.(weight|bias)", _VE + r"layers.\1.mlp.\2.\3"),
        (_IE + r"neck\.0\.weight", _VE + "neck.conv1.weight"),
        (_IE + r"neck\.1\.(weight|bias)", _VE + r"neck.layer_norm1.\1"),
        (_IE + r"neck\.2\.weight", _VE + "neck.conv2.weight"),
        (_IE + r"neck\.3\.(weight|bias)", _VE + r"neck.layer_norm2.\1"),
    ),
    inverse=(
        (r"vision_encoder\.patch_embed\.projection\.(\w+)", r"image_encoder.patch_embed.proj.\1"),
        (r"vision_encoder\.pos_embed", "image_encoder.pos_embed"),
        (r"vision_encoder\.layers\.(\d+)\.layer_norm(\d)\.(\w+)", r"image_encoder.blocks.\1.norm\2.\3"),
        (r"vision_encoder\.layers\.(\d+)\.(attn|mlp)\.(.+)", r"image_encoder.blocks.\1.\2.\3"),
        (r"vision_encoder\.neck\.conv1\.weight", "image_encoder.neck.0.weight"),
        (r"vision_encoder\.neck\.layer_norm1\.(\w+)", r"image_encoder.neck.1.\1"),
        (r"vision_encoder\.neck\.conv2\.weight", "image_encoder.neck.2.weight"),
        (r"vision_encoder\.neck\.layer_norm2\.(\w+)", r"image_encoder.neck.3.\1"),
    ),
    drop=(r"prompt_encoder\..*", r"mask_decoder\..*"),
)
SAM_HF_KEYS = KeyMap(
    name="transformers SAM",
    rules=((r"(vision_encoder\..+)", r"\1"),),
    inverse=(),
    drop=(r"prompt_encoder\..*", r"mask_decoder\..*", r"shared_image_embedding\..*"),
)
# segment_anything's bare ImageEncoderViT state dict (``sam.image_encoder.state_dict()``): prefixed on reading
_BARE = ("patch_embed.", "pos_embed", "blocks.", "neck.")


def build_sam_model(spec: EncoderSpec, attn_implementation: str = "sdpa") -> torch.nn.Module:
    """transformers' ``SamVisionModel`` of a ``sam`` spec, with random weights."""
    tf = transformers_module()
    cfg: Any = tf.SamVisionConfig(**dict(spec.hf_config))
    cfg._attn_implementation = attn_implementation
    model: torch.nn.Module = tf.SamVisionModel(cfg)
    return model.eval()


def contiguous_rel_pos(attn: Any, query: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                       q_size: tuple[int, int], k_size: tuple[int, int]) -> torch.Tensor:
    """``SamVisionAttention.get_decomposed_rel_pos`` with the same operations on the same operands, except that
    the two einsum results are made contiguous before their broadcast sum: transformers' einsums come back with
    permuted strides, so the ``(B*heads, h, w, h, w)`` sum inherits them and the attention's ``reshape`` to
    ``(B, heads, N, N)`` copies the whole map (805 MB per image in a global block at 1024 px; a third of that
    block's CPU time). Bit-identical values: the sum is the same elementwise addition."""
    (qh, qw), (kh, kw) = q_size, k_size
    table_h = attn.get_rel_pos(qh, kh, rel_pos_h)
    table_w = attn.get_rel_pos(qw, kw, rel_pos_w)
    q = query.reshape(query.shape[0], qh, qw, query.shape[-1])
    bias_h = torch.einsum("bhwc,hkc->bhwk", q, table_h).contiguous()
    bias_w = torch.einsum("bhwc,wkc->bhwk", q, table_w).contiguous()
    return bias_h[:, :, :, :, None] + bias_w[:, :, :, None, :]


class SamEncoder(Encoder):
    """A frozen SAM image encoder: block outputs (taps 0..depth-2) and the neck (tap depth-1)."""

    def __init__(self, spec: EncoderSpec, model: torch.nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.model: Any = model.eval().requires_grad_(False)
        vit: Any = self.model.vision_encoder
        self.vit = vit
        self.n_blocks = len(vit.layers)
        for layer in vit.layers:  # same values, no copy of the attention-sized rel-pos map (contiguous_rel_pos)
            layer.attn.get_decomposed_rel_pos = types.MethodType(contiguous_rel_pos, layer.attn)

    @property
    def depth(self) -> int:
        return self.n_blocks + 1  # blocks + the neck

    def pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        """The absolute position embedding for a ``gh x gw`` grid: the checkpoint's at its own grid, else
        resampled bicubically (align_corners=False, float32)."""
        pe: torch.Tensor = self.vit.pos_embed
        if tuple(pe.shape[1:3]) == (gh, gw):
            return pe
        grid = pe.permute(0, 3, 1, 2).float()
        out = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        return out.permute(0, 2, 3, 1).to(pe.dtype)

    def forward_features(self, x: torch.Tensor, layers: Sequence[int]) -> EncoderOutput:
        self.check_input_size(x.shape[2], x.shape[3])
        want = set(layers)
        last = max(want)
        proj = self.vit.patch_embed.projection
        h = proj(x.to(proj.weight.dtype)).permute(0, 2, 3, 1)  # (B, h, w, D)
        h = h + self.pos_embed(h.shape[1], h.shape[2])
        cls: dict[int, torch.Tensor] = {}
        patch: dict[int, torch.Tensor] = {}
        for i in range(min(last, self.n_blocks - 1) + 1):
            out = self.vit.layers[i](h)
            h = out[0] if isinstance(out, tuple) else out
            if i in want:
                patch[i] = h.permute(0, 3, 1, 2)
                cls[i] = patch[i].mean((2, 3))
        if self.n_blocks in want:
            neck = self.vit.neck(h)
            patch[self.n_blocks] = neck
            cls[self.n_blocks] = neck.mean((2, 3))
        return EncoderOutput(cls=cls, patch=patch)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "neck_tap": self.n_blocks}


def _layout(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], KeyMap]:
    if any(k.startswith("vision_encoder.") for k in sd):
        return sd, SAM_HF_KEYS
    if not any(k.startswith("image_encoder.") for k in sd) and any(k.startswith(_BARE) for k in sd):
        sd = {(f"image_encoder.{k}" if k.startswith(_BARE) else k): v for k, v in sd.items()}
    return sd, SAM_KEYS


def _build(spec: EncoderSpec, ref: WeightsRef, options: Mapping[str, Any]) -> Encoder:
    wid = weights_identity(spec, ref)
    if ref.kind == "random":
        model = seeded(ref.seed, lambda: build_sam_model(spec))
    else:
        sd, src = read_state_dict(ref)
        sd, keymap = _layout(sd)
        model = empty_model(lambda: build_sam_model(spec))
        load_mapped(model, sd, keymap, src, spec.name)
    enc = SamEncoder(spec, model)
    enc.weights_id, enc.pretrained = wid, ref.kind != "random"
    return enc


def _identity(spec: EncoderSpec, ref: WeightsRef) -> EncoderInfo | None:
    return EncoderInfo(spec, weights_identity(spec, ref), ref.kind != "random")


def _gflops(spec: EncoderSpec, resolution: tuple[int, int], layers: tuple[int, ...] | None) -> float | None:
    """Counted with torch's FLOP counter on a ``meta``-device model (eager attention: every matmul, including
    the relative-position terms, is seen)."""
    from medprobe.encoders.flops import gflops_per_image

    with torch.device("meta"):
        enc = SamEncoder(spec, build_sam_model(spec, attn_implementation="eager"))
    return gflops_per_image(enc, resolution, layers=layers)


# weight file names searched in $MEDPROBE_WEIGHTS and torch hub's folder, per encoder
_FILES = {"sam-vit-b": ("sam_vit_b_01ec64.pth",), "medsam-vit-b": ("medsam_vit_b.pth",)}


def _local(spec: EncoderSpec) -> list[Path]:
    return files_named(_FILES.get(spec.name, ()))


register_family(EncoderFamily(
    name="sam", build=_build, identity=_identity, gflops=_gflops, local_weights=_local, memory=windowed_vit_memory,
    description="transformers SamVisionModel; segment_anything checkpoints (SAM, MedSAM)",
    cls_feature="mean of the tap's patch tokens (SAM has no class token)",
    patch_feature="block output tokens (768 ch, no norm) for taps 0-11; tap 12 = the neck's 256-ch image "
                  "embedding; stride 16",
    taps="the 12 blocks (0-based) and the neck (12 = last); four = global-attention blocks 2, 5, 8, 11",
))

_SAM_B = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_dim=3072, patch_size=16,
              image_size=1024, window_size=14, global_attn_indexes=[2, 5, 8, 11], output_channels=256,
              qkv_bias=True, use_abs_pos=True, use_rel_pos=True, layer_norm_eps=1e-6, hidden_act="gelu")


def _sam_spec(name: str, **kw: Any) -> EncoderSpec:
    return EncoderSpec(name=name, family="sam", patch_size=16, width=768, depth=13, params_m=89.67,
                       default_layers=(2, 5, 8, 11), native_resolution=1024, license="Apache-2.0",
                       hf_config=dict(_SAM_B), **kw)


register(_sam_spec("sam-vit-b", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   pretraining_data="SA-1B (11M images, 1.1B masks), promptable segmentation",
                   hf_repo="facebook/sam-vit-base"))
register(_sam_spec("medsam-vit-b", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                   pretraining_data="SAM ViT-B fine-tuned on 1.57M medical image-mask pairs (MedSAM)",
                   hf_repo="wanglab/medsam-vit-base"))

__all__ = ["SAM_KEYS", "SamEncoder", "build_sam_model", "contiguous_rel_pos"]
