"""DINOv3 and DINOv2 backbones on transformers' ``DINOv3ViTModel`` / ``Dinov2Model`` (no torchvision).

The forward is run block by block so that any set of blocks can be tapped in one pass; the final
LayerNorm is applied to every tapped block and register tokens are dropped, as DINOv3's own dense
evaluations do.

Registers the encoder families ``dinov3``, ``dinov2`` and ``dinov2_reg``: one :class:`HFArch` each (the
transformers classes and the few ways the architectures differ), the same build / identity / cost code; and
their named encoders (the DINOv3 sizes on LVD-1689M / SAT-493M, the DINOv2 sizes with and without registers,
RAD-DINO).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medprobe.encoders.base import Encoder, EncoderInfo, EncoderOutput
from medprobe.encoders.families import EncoderFamily, register_family
from medprobe.encoders.registry import register
from medprobe.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, SAT_MEAN, SAT_STD, EncoderSpec
from medprobe.errors import ConfigError, WeightsError
from medprobe.utils import torch_seeded

if TYPE_CHECKING:
    from medprobe.encoders.weights import WeightsRef


@dataclass(frozen=True)
class HFArch:
    """How one transformers ViT architecture is built and run."""

    config_class: str  # transformers config class name
    model_class: str  # transformers model class name
    rope: bool  # rotary position embeddings, computed once per input and passed to every block (DINOv3)
    final_norm: str  # attribute of the model holding the final LayerNorm
    meta_layout: bool  # Meta's original checkpoints (dinov3_*.pth) load after key conversion


HF_ARCHS: dict[str, HFArch] = {
    "dinov3": HFArch("DINOv3ViTConfig", "DINOv3ViTModel", rope=True, final_norm="norm", meta_layout=True),
    "dinov2": HFArch("Dinov2Config", "Dinov2Model", rope=False, final_norm="layernorm", meta_layout=False),
    "dinov2_reg": HFArch("Dinov2WithRegistersConfig", "Dinov2WithRegistersModel", rope=False,
                         final_norm="layernorm", meta_layout=False),
}


def arch_of(spec: EncoderSpec) -> HFArch:
    """The transformers architecture of a spec of one of this module's families."""
    arch = HF_ARCHS.get(spec.family)
    if arch is None:
        raise ConfigError(f"encoder {spec.name} ({spec.family} family) is not a transformers ViT "
                          f"(those are: {', '.join(sorted(HF_ARCHS))})")
    return arch


def build_hf_model(spec: EncoderSpec, attn_implementation: str = "sdpa") -> torch.nn.Module:
    """Instantiate the transformers model of ``spec`` with random weights."""
    import transformers

    arch = arch_of(spec)
    cfg: Any = getattr(transformers, arch.config_class)(**dict(spec.hf_config))
    cfg._attn_implementation = attn_implementation
    model: torch.nn.Module = getattr(transformers, arch.model_class)(cfg)
    return model


def find_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of transformer blocks, whatever the transformers model class / version nests it under."""
    for path in ("model.layer", "layer", "encoder.layer", "layers", "encoder.layers"):
        obj: Any = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise TypeError(f"cannot find the transformer blocks of {type(model).__name__}")


class HFViTEncoder(Encoder):
    """A frozen DINOv3 / DINOv2 ViT from transformers."""

    def __init__(self, spec: EncoderSpec, model: torch.nn.Module, arch: HFArch | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.arch = arch or arch_of(spec)
        # transformers models: attributes (config, embeddings, ...) are typed loosely in torch's stubs
        self.model: Any = model.eval().requires_grad_(False)
        self.blocks = find_blocks(model)
        cfg: Any = self.model.config
        self.n_prefix = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
        self._depth = len(self.blocks)
        self._width = int(cfg.hidden_size)

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def width(self) -> int:
        return self._width

    def _final_norm(self) -> torch.nn.Module:
        norm: torch.nn.Module = getattr(self.model, self.arch.final_norm)
        return norm

    def _input_dtype(self) -> torch.dtype:
        pe = self.model.embeddings.patch_embeddings  # a conv (DINOv3) or a module holding one (DINOv2)
        weight: torch.Tensor = getattr(pe, "projection", pe).weight
        return weight.dtype

    def forward_features(self, x: torch.Tensor, layers: Sequence[int]) -> EncoderOutput:
        b, _, h, w = x.shape
        self.check_input_size(h, w)
        gh, gw = h // self.patch_size, w // self.patch_size
        want = set(layers)
        last = max(want)
        m = self.model
        x = x.to(self._input_dtype())
        hs = m.embeddings(x)
        kwargs: dict[str, Any] = {}
        if self.arch.rope:
            kwargs["position_embeddings"] = m.rope_embeddings(x)
        norm = self._final_norm()
        cls: dict[int, torch.Tensor] = {}
        patch: dict[int, torch.Tensor] = {}
        for i in range(last + 1):
            out = self.blocks[i](hs, **kwargs)
            hs = out[0] if isinstance(out, tuple) else out
            if i in want:
                t = norm(hs)
                cls[i] = t[:, 0]
                p = t[:, self.n_prefix:]
                patch[i] = p.reshape(b, gh, gw, p.shape[-1]).permute(0, 3, 1, 2)
        return EncoderOutput(cls=cls, patch=patch)


# ---------------------------------------------------------------- the family: build, identity, cost


def _build(arch: HFArch, spec: EncoderSpec, ref: WeightsRef) -> Encoder:
    from medprobe.encoders.weights import (
        check_meta_name,
        file_sha256,
        load_state_dict,
        load_strict,
        to_model_layout,
        verify_meta_hash,
    )

    if ref.kind == "random":
        with torch_seeded(ref.seed):
            model = build_hf_model(spec)
        enc = HFViTEncoder(spec, model, arch)
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
            sd = to_model_layout(sd, model, spec, meta_layout=arch.meta_layout)
        except WeightsError as e:  # conversion problems carry no file name: add it (one-line convention)
            if e.source is None:
                raise WeightsError(e.problem, path) from None
            raise
        load_strict(model, sd, path)
        enc = HFViTEncoder(spec, model, arch)
        enc.weights_id, enc.pretrained = f"sha256:{digest}", True
        return enc
    if ref.kind in ("hf_dir", "hub"):
        return _build_pretrained(arch, spec, ref)
    raise WeightsError(f"{spec.name} cannot load {ref.kind} weights", ref.location)


def _check_hf_dir(d: Path) -> None:
    """A local Hugging Face model folder: safetensors weights only (pickle is never unpickled), each file a
    complete safetensors file (header length and data size agree)."""
    st = sorted(d.glob("*.safetensors"))
    if not st:
        pick = sorted(p.name for p in d.glob("*.bin")) + sorted(p.name for p in d.glob("*.pt*"))
        what = f"only pickle weights ({', '.join(pick)})" if pick else "no *.safetensors weights"
        raise WeightsError(f"holds {what}; medprobe loads safetensors only (never unpickles): convert with "
                           "transformers' save_pretrained(safe_serialization=True)", d)
    import json
    import struct

    for f in st:
        size = f.stat().st_size
        try:
            with open(f, "rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0]
                header = json.loads(fh.read(n)) if 0 < n <= size - 8 else None
        except (OSError, ValueError, struct.error):
            header = None
        ends = [int(v["data_offsets"][1]) for k, v in (header or {}).items() if k != "__metadata__"]
        if header is None or 8 + n + max(ends, default=0) > size:
            raise WeightsError("is truncated or not a safetensors file (its header and size disagree)", f)


def _build_pretrained(arch: HFArch, spec: EncoderSpec, ref: WeightsRef) -> Encoder:
    from transformers import AutoModel

    from medprobe.encoders.weights import file_sha256
    from medprobe.utils import hash_obj

    loc = str(ref.location)
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    if ref.kind == "hf_dir":
        _check_hf_dir(Path(loc))
    try:
        model = AutoModel.from_pretrained(loc, local_files_only=offline or ref.kind == "hf_dir",
                                          attn_implementation="sdpa", use_safetensors=True)
    except OSError as e:
        hint = " (offline: it is not in the local Hugging Face cache)" if offline else ""
        raise WeightsError(f"cannot load Hugging Face model{hint}: {str(e).splitlines()[0][:160]}", loc) from None
    except Exception as e:  # noqa: BLE001 - a damaged weights file surfaces as many exception types
        raise WeightsError(f"cannot load Hugging Face model ({type(e).__name__}: "
                           f"{(str(e).splitlines() or [''])[0][:160]})", loc) from None
    cfg: Any = model.config
    if int(cfg.hidden_size) != spec.width or int(cfg.num_hidden_layers) != spec.depth:
        raise WeightsError(f"model is {cfg.hidden_size}-d/{cfg.num_hidden_layers} blocks but {spec.name} is "
                           f"{spec.width}-d/{spec.depth} blocks", loc)
    enc = HFViTEncoder(spec, model, arch)
    root = Path(getattr(model, "name_or_path", loc))
    weights_files = sorted(root.glob("*.safetensors")) if Path(loc).is_dir() else []
    if weights_files:
        enc.weights_id = "sha256:" + hash_obj([file_sha256(f) for f in weights_files], n=64)
    else:
        rev = getattr(cfg, "_commit_hash", None) or "unknown"
        enc.weights_id = f"hf:{loc}@{rev}"
    enc.pretrained = True
    return enc


def _identity(spec: EncoderSpec, ref: WeightsRef) -> EncoderInfo | None:
    """Random init and weight files are known before loading; Hugging Face folders / hub ids are not
    (the revision, or which files hold the weights, is only known once loaded)."""
    from medprobe.encoders.weights import check_meta_name, file_sha256, verify_meta_hash

    if ref.kind == "random":
        return EncoderInfo(spec, f"random:seed={ref.seed}", False)
    if ref.kind == "file":
        path = Path(str(ref.location))
        check_meta_name(path, spec)
        return EncoderInfo(spec, f"sha256:{verify_meta_hash(path) if ref.verify else file_sha256(path)}", True)
    return None


def _gflops(arch: HFArch, spec: EncoderSpec, resolution: tuple[int, int], layers: tuple[int, ...] | None
            ) -> float | None:
    """Counted on a ``meta``-device model: no weights, no compute."""
    from medprobe.encoders.flops import gflops_per_image

    with torch.device("meta"):
        enc = HFViTEncoder(spec, build_hf_model(spec), arch)
    return gflops_per_image(enc, resolution, layers=layers)


def hf_vit_family(name: str, arch: HFArch) -> EncoderFamily:
    """The encoder family of one transformers ViT architecture."""

    def build(spec: EncoderSpec, ref: WeightsRef, options: Mapping[str, Any]) -> Encoder:
        return _build(arch, spec, ref)

    def gflops(spec: EncoderSpec, resolution: tuple[int, int], layers: tuple[int, ...] | None) -> float | None:
        return _gflops(arch, spec, resolution, layers)

    regs = {"dinov3": "4 registers dropped", "dinov2_reg": "4 registers dropped"}.get(name, "no registers")
    return EncoderFamily(name=name, build=build, identity=_identity, gflops=gflops,
                         description=f"transformers {arch.model_class}",
                         cls_feature="class token after the final layer norm",
                         patch_feature=f"patch tokens after the final layer norm ({regs}); stride = patch size",
                         taps="transformer blocks 0..depth-1, each through the final norm")


for _name, _arch in HF_ARCHS.items():
    register_family(hf_vit_family(_name, _arch))


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
        register(EncoderSpec(
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
        register(EncoderSpec(
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

register(EncoderSpec(
    name="rad-dino", family="dinov2", patch_size=14, width=768, depth=12, params_m=86.6,
    default_layers=(2, 5, 8, 11), mean=(0.5307, 0.5307, 0.5307), std=(0.2583, 0.2583, 0.2583),
    native_resolution=518, license="MSR License (research use)",
    pretraining_data="chest X-rays (MIMIC-CXR, CheXpert, NIH-CXR, PadChest, BRAX), DINOv2 continued",
    hf_repo="microsoft/rad-dino",
    hf_config=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
                   use_swiglu_ffn=False, patch_size=14, image_size=518, layer_norm_eps=1e-6),
))
