"""Pathology foundation models: UNI, UNI2-h, Virchow2 (timm ViT checkpoints), CONCH's vision tower, Phikon-v2.

Families registered here (all on transformers classes, no optional extra):

* ``pathology_vit`` -- the authors' timm ``VisionTransformer`` state dicts (``pytorch_model.bin`` /
  ``model.safetensors`` of MahmoodLab/UNI, MahmoodLab/UNI2-h, paige-ai/Virchow2), checked key by key and
  mapped onto transformers' ``Dinov2Model`` (UNI: layer scale, GELU MLP) or ``Dinov2WithRegistersModel``
  (UNI2-h, Virchow2: layer scale, SwiGLUPacked + SiLU, register tokens); see
  :mod:`medprobe.encoders._timm_layout`. The authors load them with ``timm.create_model(...,
  dynamic_img_size=True)``; other input sizes resample the position embeddings exactly as timm does.
* ``conch`` -- MahmoodLab/CONCH's ``pytorch_model.bin`` (an open_clip-style CoCa). Its vision tower is a timm
  ViT-B/16 trunk (``visual.trunk.*``, ``dynamic_img_size=True``, 448 px) on transformers' ``ViTModel``, plus the
  contrastive attentional pooler (``visual.attn_pool_contrast``, ``visual.ln_contrast``,
  ``visual.proj_contrast``). Text tower, text decoder, ``logit_scale`` and the captioning pooler
  (``visual.attn_pool_caption``, ``visual.ln_caption``) are read past on purpose: they do not touch image
  features. ``cls``/``patch`` are the trunk's tokens (one width per feature-cache entry);
  :meth:`ConchEncoder.encode_image` gives CONCH's own 512-d image embedding.

Phikon-v2 (owkin/phikon-v2) is published as a transformers ``Dinov2Model`` folder: it is a spec of the
existing ``dinov2`` family.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from medprobe.encoders._timm_layout import (
    TimmLayoutViT,
    TimmViT,
    build_model,
    check_layout,
    file_id,
    timm_keys,
    timm_params,
    to_transformers,
    weights_file,
)
from medprobe.encoders.base import Encoder, EncoderInfo
from medprobe.encoders.families import EncoderFamily, register_family
from medprobe.encoders.registry import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, register
from medprobe.utils import torch_seeded

if TYPE_CHECKING:
    from medprobe.encoders.weights import WeightsRef

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# CONCH checkpoint keys that are not part of the image features (read past, never loaded)
CONCH_DROPPED = ("text.", "text_decoder.", "logit_scale", "visual.attn_pool_caption.", "visual.ln_caption.")

Select = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def _seeded(seed: int, make: Callable[[], Encoder]) -> Encoder:
    with torch_seeded(seed):
        enc = make()
    enc.weights_id, enc.pretrained = f"random:seed={seed}", False
    return enc


def identity(spec: EncoderSpec, ref: WeightsRef) -> EncoderInfo | None:
    """Known before building: random seed, or the SHA-256 of the one local weights file (hub: cache only)."""
    if ref.kind == "random":
        return EncoderInfo(spec, f"random:seed={ref.seed}", False)
    return EncoderInfo(spec, file_id(weights_file(ref, spec)), True)


def gflops_of(make: Callable[[EncoderSpec], Encoder]) -> Callable[..., float | None]:
    """A family's cost function: the encoder built on the ``meta`` device (no weights, no compute)."""

    def gflops(spec: EncoderSpec, resolution: tuple[int, int], layers: tuple[int, ...] | None) -> float | None:
        from medprobe.encoders.flops import gflops_per_image

        with torch.device("meta"):
            enc = make(spec)
        return gflops_per_image(enc, resolution, layers=layers)

    return gflops


# ---------------------------------------------------------------- pathology_vit: UNI, UNI2-h, Virchow2


def _keep_all(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return sd


def build_timm_vit(spec: EncoderSpec, ref: WeightsRef, what: str,
                   make: Callable[[EncoderSpec, TimmViT, torch.nn.Module], TimmLayoutViT] = TimmLayoutViT,
                   select: Select = _keep_all, prefix: str = "",
                   extra_keys: Callable[[TimmLayoutViT], dict[str, Any]] | None = None) -> Encoder:
    """A timm-layout ViT encoder from random init or the authors' state dict: ``select`` drops the keys read past
    on purpose, the rest must be exactly the trunk's timm keys under ``prefix`` plus ``extra_keys`` (checked
    under the file's own key names), then the trunk is mapped onto transformers."""
    from medprobe.encoders.weights import load_state_dict, load_strict

    a = TimmViT.from_spec(spec)
    if ref.kind == "random":
        return _seeded(ref.seed, lambda: make(spec, a, build_model(a)))
    path = weights_file(ref, spec)
    wid = file_id(path)
    sd = select(load_state_dict(path))
    expected = {prefix + k: shape for k, shape in timm_keys(a).items()}
    if extra_keys:  # the head's key shapes, from a weightless (meta-device) build
        with torch.device("meta"):
            expected |= {k: tuple(v.shape) for k, v in extra_keys(make(spec, a, build_model(a))).items()}
    check_layout(sd, expected, path, what)  # before building: a wrong file fails fast
    model = build_model(a)
    enc = make(spec, a, model)
    head = extra_keys(enc) if extra_keys else {}
    trunk = {k[len(prefix):]: v for k, v in sd.items() if k not in head}
    load_strict(model, to_transformers(trunk, a, model), path)
    with torch.no_grad():
        for k, target in head.items():
            target.copy_(sd[k].to(target.dtype))
    enc.weights_id, enc.pretrained = wid, True
    return enc


def _pathology_build(spec: EncoderSpec, ref: WeightsRef, options: Mapping[str, Any]) -> Encoder:
    return build_timm_vit(spec, ref, f"{spec.name} (timm {spec.timm_name or 'VisionTransformer'})")


register_family(EncoderFamily(
    name="pathology_vit", build=_pathology_build, identity=identity,
    gflops=gflops_of(lambda s: TimmLayoutViT(s, TimmViT.from_spec(s), build_model(TimmViT.from_spec(s)))),
    description="timm ViT checkpoints of pathology models (UNI, UNI2-h, Virchow2) on transformers Dinov2",
    cls_feature="class token after the final norm (Virchow2's published tile embedding is this class token "
                "concatenated with the mean of its patch tokens: medprobe's cls + mean)",
    patch_feature="patch tokens after the final norm, register tokens dropped; stride = patch size (16 or 14)",
    taps="transformer blocks (0-based); any multiple of the patch size (position embeddings resampled as timm's "
         "dynamic_img_size: bicubic, antialiased)",
))


# ---------------------------------------------------------------- conch: CoCa vision tower


class AttentionalPooler(torch.nn.Module):
    """CONCH's (open_clip's) attentional pooler: learned queries cross-attend the layer-normed trunk tokens."""

    def __init__(self, d_model: int, context_dim: int, n_head: int, n_queries: int) -> None:
        super().__init__()
        self.query = torch.nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = torch.nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim,
                                                batch_first=True)
        self.ln_q = torch.nn.LayerNorm(d_model)
        self.ln_k = torch.nn.LayerNorm(context_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kv = self.ln_k(x)
        q = self.ln_q(self.query).unsqueeze(0).expand(x.shape[0], -1, -1)
        out: torch.Tensor = self.attn(q, kv, kv, need_weights=False)[0]
        return out


class ConchEncoder(TimmLayoutViT):
    """CONCH's vision tower: the ViT-B/16 trunk's tokens as features, plus the contrastive image embedding."""

    def __init__(self, spec: EncoderSpec, arch: TimmViT, model: torch.nn.Module) -> None:
        super().__init__(spec, arch, model)
        cfg = spec.hf_config
        d = int(cfg["pool_dim"])
        self.attn_pool_contrast = AttentionalPooler(d, spec.width, int(cfg["pool_heads"]), int(cfg["pool_queries"]))
        self.ln_contrast = torch.nn.LayerNorm(d)
        self.proj_contrast = torch.nn.Parameter(torch.randn(d, d) * spec.width ** -0.5)
        for m in (self.attn_pool_contrast, self.ln_contrast):
            m.eval().requires_grad_(False)
        self.proj_contrast.requires_grad_(False)

    def head_tensors(self) -> dict[str, torch.Tensor]:
        """The pooler's tensors under their key names in CONCH's checkpoint."""
        out: dict[str, torch.Tensor] = {}
        for name in ("attn_pool_contrast", "ln_contrast"):
            mod: torch.nn.Module = getattr(self, name)
            out |= {f"visual.{name}.{k}": v for k, v in mod.state_dict(keep_vars=True).items()}
        out["visual.proj_contrast"] = self.proj_contrast
        return out

    def encode_image(self, x: torch.Tensor, proj_contrast: bool = False, normalize: bool = False) -> torch.Tensor:
        """CONCH's ``encode_image``: pooled (first query), ``ln_contrast``; then ``@ proj_contrast`` and L2
        normalisation when asked. The defaults give the 512-d embedding used for linear probes."""
        toks, _, _ = self.normed_tokens(x, (self.depth - 1,))
        pooled = self.ln_contrast(self.attn_pool_contrast(toks[self.depth - 1])[:, 0])
        if proj_contrast:
            pooled = pooled @ self.proj_contrast
        return F.normalize(pooled, dim=-1) if normalize else pooled


def _conch_select(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image-feature part of a CONCH checkpoint (text tower, decoder, captioning pooler read past)."""
    return {k: v for k, v in sd.items() if not k.startswith(CONCH_DROPPED)}


def _conch_build(spec: EncoderSpec, ref: WeightsRef, options: Mapping[str, Any]) -> Encoder:
    def head(enc: TimmLayoutViT) -> dict[str, Any]:
        assert isinstance(enc, ConchEncoder)
        return enc.head_tensors()

    return build_timm_vit(spec, ref, f"{spec.name} (CoCa vision tower)", make=ConchEncoder, select=_conch_select,
                          prefix="visual.trunk.", extra_keys=head)


def conch_params(spec: EncoderSpec) -> int:
    """Trunk + contrastive pooler, ``ln_contrast`` and ``proj_contrast`` (what medprobe loads)."""
    d, c, q = int(spec.hf_config["pool_dim"]), spec.width, int(spec.hf_config["pool_queries"])
    pooler = q * d + d * d + 2 * d * c + 3 * d + d * d + d + 2 * d + 2 * c
    return timm_params(TimmViT.from_spec(spec)) + pooler + 2 * d + d * d


register_family(EncoderFamily(
    name="conch", build=_conch_build, identity=identity,
    gflops=gflops_of(lambda s: ConchEncoder(s, TimmViT.from_spec(s), build_model(TimmViT.from_spec(s)))),
    description="CONCH (CoCa) vision tower: timm ViT-B/16 trunk on transformers ViTModel + attentional pooler",
    cls_feature="class token of the ViT-B/16 trunk after its final norm (768-d); CONCH's own 512-d image "
                "embedding (attentional pooler + ln_contrast) is ConchEncoder.encode_image, not a stored token",
    patch_feature="trunk patch tokens after the final norm; stride 16",
    taps="trunk transformer blocks (0-based); any multiple of 16 (position embeddings resampled as timm's "
         "dynamic_img_size, which CONCH's trunk is built with)",
))


# ---------------------------------------------------------------- named encoders


def _timm_spec(name: str, timm_name: str, width: int, depth: int, heads: int, patch: int, mlp_hidden: int,
               taps: tuple[int, ...], **kw: Any) -> EncoderSpec:
    arch: dict[str, Any] = {"heads": heads, "img_size": 224, "mlp_hidden": mlp_hidden, "layerscale": True}
    arch |= {k: kw.pop(k) for k in ("swiglu", "reg_tokens", "no_embed_class") if k in kw}
    a = TimmViT(width=width, depth=depth, patch=patch, **arch)
    return EncoderSpec(name=name, family="pathology_vit", patch_size=patch, width=width, depth=depth,
                       params_m=round(timm_params(a) / 1e6, 1), default_layers=taps, mean=IMAGENET_MEAN,
                       std=IMAGENET_STD, native_resolution=224, timm_name=timm_name,
                       n_registers=a.reg_tokens, hf_config=arch, **kw)


register(_timm_spec(
    "uni", "vit_large_patch16_224", 1024, 24, 16, 16, 4096, (4, 11, 17, 23),
    license="CC-BY-NC-ND 4.0 (MahmoodLab; gated)", hf_repo="MahmoodLab/UNI",
    pretraining_data="Mass-100K: 100M H&E tiles from 100K diagnostic slides (DINOv2)"))
register(_timm_spec(
    "uni2-h", "vit_huge_patch14_224", 1536, 24, 24, 14, 8192, (4, 11, 17, 23), swiglu=True, reg_tokens=8,
    no_embed_class=True, license="CC-BY-NC-ND 4.0 (MahmoodLab; gated)", hf_repo="MahmoodLab/UNI2-h",
    pretraining_data="200M+ tiles from 350K+ H&E and IHC slides (DINOv2)"))
register(_timm_spec(
    "virchow2", "vit_huge_patch14_224", 1280, 32, 16, 14, 6832, (7, 15, 23, 31), swiglu=True, reg_tokens=4,
    license="CC-BY-NC-ND 4.0 (Paige; gated)", hf_repo="paige-ai/Virchow2",
    pretraining_data="3.1M H&E and IHC slides, mixed magnifications (DINOv2)"))

_CONCH = EncoderSpec(
    name="conch", family="conch", patch_size=16, width=768, depth=12, params_m=0.0, default_layers=(2, 5, 8, 11),
    mean=OPENAI_MEAN, std=OPENAI_STD, native_resolution=448, license="CC-BY-NC-ND 4.0 (MahmoodLab; gated)",
    pretraining_data="1.17M histopathology image-caption pairs (CoCa)", hf_repo="MahmoodLab/CONCH",
    timm_name="vit_base_patch16_224",
    hf_config=dict(heads=12, img_size=448, mlp_hidden=3072, pool_dim=512, pool_heads=8, pool_queries=1))
register(replace(_CONCH, params_m=round(conch_params(_CONCH) / 1e6, 1)))

register(EncoderSpec(
    name="phikon-v2", family="dinov2", patch_size=16, width=1024, depth=24, params_m=303.4,
    default_layers=(4, 11, 17, 23), native_resolution=224, license="Owkin non-commercial license",
    pretraining_data="PANCAN-XL: 456M tiles from 58K H&E and IHC slides (DINOv2)", hf_repo="owkin/phikon-v2",
    hf_config=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4,
                   use_swiglu_ffn=False, patch_size=16, image_size=224, layer_norm_eps=1e-6),
))

__all__ = ["CONCH_DROPPED", "AttentionalPooler", "ConchEncoder", "build_timm_vit", "conch_params", "gflops_of",
           "identity"]
