"""Generic doors: any timm model as ``timm:<model_name>`` and any transformers vision backbone as
``hf:<dir or repo id>``, usable wherever an encoder name is (run, extract, sweeps, task YAMLs).

The spec is made on first use of the name (:func:`medprobe.encoders.registry.register_resolver`): timm's model
is instantiated on the ``meta`` device (no weights, no compute) to read its width, depth, patch and
pre-processing; a Hugging Face folder's ``config.json`` / ``preprocessor_config.json`` and safetensors headers
are read without torch. As for every encoder, no ``weights`` means random initialisation (labelled untrained);
``weights`` is a state-dict file in timm's layout (``timm:``), a model folder, or ``hub`` for the name's own folder
/ repo (the local Hugging Face cache only: nothing is downloaded at run time).

Feature contract (families ``timm`` and ``hf``):

* token models (ViT-like): every block can be tapped; each tap goes through the model's final norm; ``cls`` is the
  first prefix token (the class token) or, for models without one, the mean of the patch tokens; registers and
  other prefix tokens are dropped from the patch grid (stride = patch size);
* feature-map models (CNNs: timm models without transformer blocks, transformers configs with ``hidden_sizes``):
  one output, the last stage's map (stride = the net's total reduction); ``cls`` = the model's own pooled
  pre-logits feature (timm ``forward_head(pre_logits=True)``; transformers ``pooler_output``), else the global
  average.
"""

from __future__ import annotations

import inspect
import json
import re
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medprobe.encoders.base import Encoder, EncoderInfo, EncoderOutput
from medprobe.encoders.clip import (
    cached_snapshot,
    files_weights_id,
    load_exact,
    read_files,
    transformers_module,
    weight_files,
)
from medprobe.encoders.families import EncoderFamily, register_family
from medprobe.encoders.registry import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, register_resolver
from medprobe.errors import ConfigError, WeightsError
from medprobe.utils import torch_seeded

if TYPE_CHECKING:
    from medprobe.encoders.weights import WeightsRef


def _four_taps(depth: int) -> tuple[int, ...]:
    return tuple(max(0, round(depth * k / 4) - 1) for k in range(1, 5)) if depth > 1 else (-1,)


# ---------------------------------------------------------------- timm:<model_name>


def _timm() -> Any:
    from medprobe.encoders.extras import import_extra

    return import_extra("timm", "timm:<model> encoders")


def _timm_create(model_name: str, dynamic: bool) -> torch.nn.Module:
    """A timm model without classifier (``num_classes=0``), never with downloaded weights."""
    kw: dict[str, Any] = {"dynamic_img_size": True} if dynamic else {}
    model: torch.nn.Module = _timm().create_model(model_name, pretrained=False, num_classes=0, **kw)
    return model


def _is_token_model(model: Any) -> bool:
    return (isinstance(getattr(model, "blocks", None), (torch.nn.ModuleList, torch.nn.Sequential))
            and hasattr(model, "num_prefix_tokens")
            and hasattr(model, "patch_embed") and callable(getattr(model, "forward_intermediates", None)))


def timm_spec(name: str) -> EncoderSpec:
    """The spec of ``timm:<model_name>`` (model built on ``meta`` to read its shape and pre-processing)."""
    model_name = name.partition(":")[2]
    timm = _timm()
    if not model_name or not timm.is_model(model_name):
        raise ConfigError(f"unknown timm model {model_name!r} in encoder {name!r} (timm.list_models() lists them)")
    with torch.device("meta"):
        try:
            model: Any = _timm_create(model_name, dynamic=True)
            dynamic = True
        except TypeError:  # the architecture takes no dynamic_img_size (CNNs, fixed-size transformers)
            model = _timm_create(model_name, dynamic=False)
            dynamic = False
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    native = int(cfg.get("input_size", (3, 224, 224))[-1])
    tokens = _is_token_model(model)
    if tokens:
        ps = model.patch_embed.patch_size
        patch = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        depth, width = len(model.blocks), int(getattr(model, "embed_dim", model.num_features))
    else:
        info = getattr(model, "feature_info", None) or [{"reduction": 32}]
        patch, depth, width = int(info[-1]["reduction"]), 1, int(model.num_features)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return EncoderSpec(
        name=name, family="timm", patch_size=patch, width=width, depth=depth, params_m=round(params, 2),
        default_layers=_four_taps(depth), mean=tuple(cfg.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
        std=tuple(cfg.get("std", IMAGENET_STD)), native_resolution=native,  # type: ignore[arg-type]
        license="as the weights file", pretraining_data="as the weights file", hf_repo=f"timm/{model_name}",
        timm_name=model_name,
        hf_config=dict(timm_model=model_name, dynamic=dynamic, tokens=tokens,
                       fixed_resolution=None if dynamic or not tokens else native))


class TimmEncoder(Encoder):
    """A timm model: token models tapped with ``forward_intermediates(norm=True)``; CNNs give their last map."""

    def __init__(self, spec: EncoderSpec, model: torch.nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.model: Any = model.eval().requires_grad_(False)
        self.tokens = bool(spec.hf_config.get("tokens"))
        self.fixed_resolution = spec.hf_config.get("fixed_resolution")

    @property
    def depth(self) -> int:
        return len(self.model.blocks) if self.tokens else 1

    def _dtype(self) -> torch.dtype:
        for p in self.model.parameters():
            return p.dtype
        return torch.float32

    def forward_features(self, x: torch.Tensor, layers: Sequence[int]) -> EncoderOutput:
        self.check_input_size(x.shape[2], x.shape[3])
        x = x.to(self._dtype())
        if not self.tokens:
            raw = self.model.forward_features(x)
            pooled = self.model.forward_head(raw, pre_logits=True)
            nhwc = raw.ndim == 4 and raw.shape[1] != self.spec.width and raw.shape[-1] == self.spec.width
            f = raw.permute(0, 3, 1, 2) if nhwc else raw  # NHWC stage output (e.g. Swin) -> NCHW
            return EncoderOutput(cls={0: pooled.flatten(1)}, patch={0: f})
        want = sorted(set(layers))
        n_prefix = int(self.model.num_prefix_tokens)
        outs = self.model.forward_intermediates(x, indices=want, norm=True, return_prefix_tokens=n_prefix > 0,
                                                output_fmt="NCHW", intermediates_only=True, stop_early=True)
        has_cls = getattr(self.model, "cls_token", None) is not None
        cls: dict[int, torch.Tensor] = {}
        patch: dict[int, torch.Tensor] = {}
        for i, out in zip(want, outs):
            grid, prefix = out if n_prefix else (out, None)
            patch[i] = grid
            cls[i] = prefix[:, 0] if has_cls and prefix is not None else grid.mean((2, 3))
        return EncoderOutput(cls=cls, patch=patch)


def _classifier_prefixes(model: Any) -> tuple[str, ...]:
    c = (getattr(model, "pretrained_cfg", {}) or {}).get("classifier", "head")
    names = c if isinstance(c, (tuple, list)) else (c,)
    return tuple(f"{n}." for n in names if n)


def _timm_build(spec: EncoderSpec, ref: WeightsRef, options: Mapping[str, Any]) -> Encoder:
    cfg = spec.hf_config
    if ref.kind == "random":
        with torch_seeded(ref.seed):
            model = _timm_create(cfg["timm_model"], bool(cfg["dynamic"]))
        enc = TimmEncoder(spec, model)
        enc.weights_id, enc.pretrained = f"random:seed={ref.seed}", False
        return enc
    files = weight_files(ref)
    source = files[0] if len(files) == 1 else files[0].parent
    sd = read_files(files)
    model = _timm_create(cfg["timm_model"], bool(cfg["dynamic"]))
    own = model.state_dict()
    heads = _classifier_prefixes(model)
    # the classifier is not part of the features: its tensors (absent from the num_classes=0 model) are left out
    sd = {k: v for k, v in sd.items() if k in own or not k.startswith(heads)}
    load_exact(model, sd, source, f"timm model {cfg['timm_model']} (timm layout)")
    enc = TimmEncoder(spec, model)
    enc.weights_id, enc.pretrained = files_weights_id(files), True
    return enc


# ---------------------------------------------------------------- hf:<dir or repo id>


def _hf_location(loc: str) -> Path:
    p = Path(loc).expanduser()
    if p.is_dir():
        return p
    if re.fullmatch(r"[\w.-]+/[\w.-]+", loc):
        return cached_snapshot(loc)
    raise WeightsError("is neither a model folder nor a Hugging Face repo id (owner/name)", loc)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WeightsError(f"cannot read ({type(e).__name__})", path) from None
    if not isinstance(out, dict):
        raise WeightsError("is not a JSON object", path)
    return out


def _safetensors_numel(files: Sequence[Path]) -> int:
    """Number of parameters stored in safetensors files, from their headers (no tensor is read)."""
    n = 0
    for f in files:
        with open(f, "rb") as fh:
            size = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(size))
        for k, v in header.items():
            if k != "__metadata__":
                numel = 1
                for s in v["shape"]:
                    numel *= int(s)
                n += numel
    return n


def hf_spec(name: str) -> EncoderSpec:
    """The spec of ``hf:<dir or repo id>`` from the folder's JSON files and safetensors headers (torch-free)."""
    loc = name.partition(":")[2]
    if not loc:
        raise ConfigError(f"encoder {name!r}: write hf:<model folder> or hf:<owner/name>")
    d = _hf_location(loc)
    cfg = _read_json(d / "config.json")
    if "vision_config" in cfg:
        raise ConfigError(f"{d / 'config.json'}: a composite {cfg.get('model_type', '?')} model (image and text "
                          "towers); use its encoder family (e.g. clip-vit-b16 --weights DIR, siglip2-vitb16) or a "
                          "vision-only folder")
    pre = _read_json(d / "preprocessor_config.json") if (d / "preprocessor_config.json").is_file() else {}
    img = cfg.get("image_size", 224)
    native = int(img[0] if isinstance(img, (list, tuple)) else img)
    if "hidden_sizes" in cfg and "num_hidden_layers" not in cfg:  # a CNN (ResNet, ConvNeXt, ...)
        tokens, width, depth, patch = False, int(cfg["hidden_sizes"][-1]), 1, 32
    elif "hidden_size" in cfg and "num_hidden_layers" in cfg and "patch_size" in cfg:
        ps = cfg["patch_size"]
        tokens, width, depth = True, int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
        patch = int(ps[0] if isinstance(ps, (list, tuple)) else ps)
    else:
        raise ConfigError(f"{d / 'config.json'}: not a vision backbone medprobe can tap (needs hidden_size, "
                          "num_hidden_layers and patch_size, or a CNN's hidden_sizes)")
    st = sorted(d.glob("*.safetensors"))
    mean = tuple(pre.get("image_mean", IMAGENET_MEAN))
    std = tuple(pre.get("image_std", IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"{d / 'preprocessor_config.json'}: image_mean / image_std must have 3 values")
    return EncoderSpec(
        name=name, family="hf", patch_size=patch, width=width, depth=depth,
        params_m=round(_safetensors_numel(st) / 1e6, 2) if st else 0.0, default_layers=_four_taps(depth),
        mean=mean, std=std, native_resolution=native,  # type: ignore[arg-type]
        license="as the model folder", pretraining_data="as the model folder", hf_repo=loc,
        n_registers=int(cfg.get("num_register_tokens", 0) or 0),
        hf_config=dict(folder=str(d), model_type=str(cfg.get("model_type", "")), tokens=tokens))


_FINAL_NORMS = ("layernorm", "post_layernorm", "norm", "final_layernorm", "layer_norm")


class HFEncoder(Encoder):
    """A transformers backbone: taps are ``hidden_states[l + 1]`` through the model's final norm (token models), or
    the last feature map (CNNs)."""

    def __init__(self, spec: EncoderSpec, model: torch.nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.model: Any = model.eval().requires_grad_(False)
        self.tokens = bool(spec.hf_config.get("tokens"))
        params = inspect.signature(self.model.forward).parameters
        self._interp = {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in params else {}
        norm = next((getattr(self.model, n) for n in _FINAL_NORMS
                     if isinstance(getattr(self.model, n, None), torch.nn.Module)), None)
        self.norm: torch.nn.Module = norm if norm is not None else torch.nn.Identity()

    @property
    def depth(self) -> int:
        return int(self.model.config.num_hidden_layers) if self.tokens else 1

    def _dtype(self) -> torch.dtype:
        for p in self.model.parameters():
            return p.dtype
        return torch.float32

    def forward_features(self, x: torch.Tensor, layers: Sequence[int]) -> EncoderOutput:
        b, _, h, w = x.shape
        self.check_input_size(h, w)
        x = x.to(self._dtype())
        if not self.tokens:
            out = self.model(pixel_values=x)
            f = out.last_hidden_state
            pooled = getattr(out, "pooler_output", None)
            vec = pooled.flatten(1) if pooled is not None else f.mean((2, 3))
            return EncoderOutput(cls={0: vec}, patch={0: f})
        out = self.model(pixel_values=x, output_hidden_states=True, **self._interp)
        hidden = out.hidden_states
        gh, gw = h // self.patch_size, w // self.patch_size
        cls: dict[int, torch.Tensor] = {}
        patch: dict[int, torch.Tensor] = {}
        for i in sorted(set(layers)):
            t = self.norm(hidden[i + 1])
            n_prefix = t.shape[1] - gh * gw
            if n_prefix < 0:
                raise ConfigError(f"{self.spec.name}: hidden states hold {t.shape[1]} tokens, fewer than the "
                                  f"{gh}x{gw} patch grid of a {h}x{w} input")
            cls[i] = t[:, 0] if n_prefix else t.mean(1)
            p = t[:, n_prefix:]
            patch[i] = p.reshape(b, gh, gw, p.shape[-1]).permute(0, 3, 1, 2)
        return EncoderOutput(cls=cls, patch=patch)


# keys a backbone leaves unused without changing its features: a classification head, a pooler (not built here)
_HF_IGNORED_UNEXPECTED = ("classifier.", "pooler.")


def _hf_build(spec: EncoderSpec, ref: WeightsRef, options: Mapping[str, Any]) -> Encoder:
    transformers = transformers_module()
    folder = Path(spec.hf_config["folder"])
    if ref.kind == "random":
        cfg = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        cfg._attn_implementation = "sdpa" if _supports_sdpa(transformers, cfg) else "eager"
        with torch_seeded(ref.seed):
            model = transformers.AutoModel.from_config(cfg, **_no_pooler(transformers, cfg))
        enc = HFEncoder(spec, model)
        enc.weights_id, enc.pretrained = f"random:seed={ref.seed}", False
        return enc
    d = _weights_folder(spec, ref)
    from medprobe.encoders.hf_vit import _check_hf_dir

    _check_hf_dir(d)
    files = sorted(d.glob("*.safetensors"))
    try:
        cfg = transformers.AutoConfig.from_pretrained(str(d), local_files_only=True)
        model, info = transformers.AutoModel.from_pretrained(str(d), local_files_only=True, use_safetensors=True,
                                                             output_loading_info=True,
                                                             **_no_pooler(transformers, cfg))
    except Exception as e:  # noqa: BLE001 - a damaged folder surfaces as many exception types
        raise WeightsError(f"cannot load the model ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]})",
                           d) from None
    missing = list(info.get("missing_keys", []))
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.startswith(_HF_IGNORED_UNEXPECTED)]
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        counts = f"({len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} mis-shaped)"
        what = (f"missing tensor {sorted(missing)[0]!r}" if missing else
                f"unexpected tensor {sorted(unexpected)[0]!r}" if unexpected else
                f"mis-shaped tensor {mismatched[0][0] if isinstance(mismatched[0], tuple) else mismatched[0]!r}")
        raise WeightsError(f"{what} for {type(model).__name__} {counts}", files[0] if len(files) == 1 else d)
    cfg = model.config
    if (spec.hf_config.get("tokens") and
            (int(cfg.hidden_size), int(cfg.num_hidden_layers)) != (spec.width, spec.depth)):
        raise WeightsError(f"model is {cfg.hidden_size}-d/{cfg.num_hidden_layers} blocks but {spec.name} is "
                           f"{spec.width}-d/{spec.depth} blocks", d)
    enc = HFEncoder(spec, model)
    enc.weights_id, enc.pretrained = files_weights_id(files), True
    return enc


def _supports_sdpa(transformers: Any, cfg: Any) -> bool:
    cls = transformers.AutoModel._model_mapping.get(type(cfg), None)
    return bool(getattr(cls, "_supports_sdpa", False))


def _no_pooler(transformers: Any, cfg: Any) -> dict[str, Any]:
    """``add_pooling_layer=False`` where the model class takes it: the pooler (a dense layer on the class token) is
    no feature of ours, so it is neither built, loaded nor costed."""
    cls = transformers.AutoModel._model_mapping.get(type(cfg), None)
    takes = cls is not None and "add_pooling_layer" in inspect.signature(cls.__init__).parameters
    return {"add_pooling_layer": False} if takes else {}


def _weights_folder(spec: EncoderSpec, ref: WeightsRef) -> Path:
    if ref.kind == "hf_dir":
        return Path(str(ref.location))
    if ref.kind == "hub":
        return _hf_location(str(ref.location))
    raise WeightsError(f"{spec.name} loads a model folder (safetensors): give --weights DIR, or 'hub' for "
                       f"{spec.hf_repo}", ref.location)


def _hf_identity(spec: EncoderSpec, ref: WeightsRef) -> EncoderInfo | None:
    if ref.kind == "random":
        return EncoderInfo(spec, f"random:seed={ref.seed}", False)
    try:
        files = sorted(_weights_folder(spec, ref).glob("*.safetensors"))
    except WeightsError:
        return None
    return EncoderInfo(spec, files_weights_id(files), True) if files else None


def _timm_identity(spec: EncoderSpec, ref: WeightsRef) -> EncoderInfo | None:
    if ref.kind == "random":
        return EncoderInfo(spec, f"random:seed={ref.seed}", False, spec.hf_config.get("fixed_resolution"))
    try:
        return EncoderInfo(spec, files_weights_id(weight_files(ref)), True, spec.hf_config.get("fixed_resolution"))
    except WeightsError:
        return None  # building it says why


def _timm_gflops(spec: EncoderSpec, resolution: tuple[int, int], layers: tuple[int, ...] | None) -> float | None:
    from medprobe.encoders.flops import gflops_per_image

    with torch.device("meta"):
        enc = TimmEncoder(spec, _timm_create(spec.hf_config["timm_model"], bool(spec.hf_config["dynamic"])))
    return gflops_per_image(enc, resolution, layers=layers)


def _hf_gflops(spec: EncoderSpec, resolution: tuple[int, int], layers: tuple[int, ...] | None) -> float | None:
    from medprobe.encoders.flops import gflops_per_image

    transformers = transformers_module()
    cfg = transformers.AutoConfig.from_pretrained(spec.hf_config["folder"], local_files_only=True)
    cfg._attn_implementation = "sdpa" if _supports_sdpa(transformers, cfg) else "eager"
    with torch.device("meta"):
        enc = HFEncoder(spec, transformers.AutoModel.from_config(cfg, **_no_pooler(transformers, cfg)))
    return gflops_per_image(enc, resolution, layers=layers)


_TOKEN_CLS = "class token after the final norm (no class token: mean of the patch tokens); CNNs: pooled pre-logits"
_TOKEN_PATCH = ("patch tokens after the final norm, prefix tokens dropped, stride = patch size; CNNs: the last "
                "stage's map, stride = total reduction")

register_family(EncoderFamily(
    name="timm", build=_timm_build, identity=_timm_identity, gflops=_timm_gflops,
    description="timm:<model_name>: any timm model (weights: a timm-layout state dict)",
    cls_feature=_TOKEN_CLS, patch_feature=_TOKEN_PATCH,
    taps="transformer blocks (0-based) of token models; CNNs: the last stage only", extra="timm"))
register_family(EncoderFamily(
    name="hf", build=_hf_build, identity=_hf_identity, gflops=_hf_gflops,
    description="hf:<dir or repo id>: a transformers vision backbone (safetensors folder)",
    cls_feature=_TOKEN_CLS.replace("pooled pre-logits", "pooler_output"),
    patch_feature=_TOKEN_PATCH, taps="hidden states of the blocks (0-based); CNNs: the last stage only"))
register_resolver("timm", timm_spec)
register_resolver("hf", hf_spec)

__all__ = ["HFEncoder", "TimmEncoder", "hf_spec", "timm_spec"]
