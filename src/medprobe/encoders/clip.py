"""CLIP-family image towers: OpenAI CLIP, SigLIP 2, BiomedCLIP and Perception Encoder core (image side only).

Families (each one :class:`~medprobe.encoders.families.EncoderFamily`):

* ``clip`` -- OpenAI CLIP ViTs on transformers' ``CLIPVisionModel``; reads OpenAI's / open_clip's layout
  (``visual.conv1.weight``, ``visual.transformer.resblocks.N.attn.in_proj_weight``, ...) and transformers'
  (``vision_model.*``). ``cls``: class token after ``ln_post`` (before the projection to the joint space);
  patch tokens after ``ln_post`` (as open_clip's ``output_tokens``). Other resolutions: transformers'
  ``interpolate_pos_encoding`` (bicubic, no antialias).
* ``siglip2`` -- SigLIP 2 on transformers' ``SiglipVisionModel`` (Google publishes the fixed-resolution
  checkpoints in that layout, ``google/siglip2-*``). ``cls``: the attention-pool (MAP) head's output;
  patch tokens after the final norm; no class token. Other resolutions: transformers' interpolation.
* ``biomedclip`` -- BiomedCLIP's image tower, a timm ViT-B/16 inside an open_clip checkpoint
  (``visual.trunk.*``), run on transformers' ``CLIPEncoderLayer`` blocks (exactly timm's pre-norm block with
  GELU) with timm's embedding: patch conv with bias, class token, position embedding resampled as timm's
  ``resample_abs_pos_embed`` (bicubic, antialias). ``cls``: class token after the final norm (timm's
  ``global_pool='token'``), before open_clip's linear projection.
* ``pe_core`` -- Meta's Perception Encoder core on timm's ``Eva`` (2D RoPE, attention pool; extra ``timm``);
  reads open_clip's layout (``visual.trunk.*``), timm's, and Meta's (``visual.conv1.weight`` ...) through
  timm's own converter. ``cls``: the attention-pool output (before the projection head).

Text towers, projections to the joint space and logit scales in a checkpoint are dropped on purpose (listed per
layout); any other key that does not belong to the image tower, a missing tensor or a shape mismatch is one line
naming the file and the first offending key. Weights come from a file, a local Hugging Face folder or the local
Hugging Face cache (``hub``: never downloaded at run time); random initialisation is seeded.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from medprobe.encoders.base import Encoder, EncoderInfo, EncoderOutput
from medprobe.encoders.families import EncoderFamily, register_family
from medprobe.encoders.registry import EncoderSpec, register
from medprobe.errors import ConfigError, WeightsError
from medprobe.utils import torch_seeded

if TYPE_CHECKING:
    from medprobe.encoders.weights import WeightsRef

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)

# ---------------------------------------------------------------- reading weights (file, folder, local HF cache)

# weight files of a model folder, in order of preference: safetensors first, pickles read with weights_only=True
_FOLDER_FILES = ("open_clip_model.safetensors", "model.safetensors", "open_clip_pytorch_model.bin",
                 "pytorch_model.bin")


def cached_snapshot(repo: str) -> Path:
    """The local Hugging Face cache's snapshot folder of ``repo``; never downloads."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=repo, local_files_only=True))
    except Exception as e:  # noqa: BLE001 - hub errors come in many types; all mean "not cached"
        raise WeightsError(f"not in the local Hugging Face cache ({type(e).__name__}); medprobe never downloads at "
                           f"run time: fetch it once with `huggingface-cli download {repo}` or give a local path",
                           repo) from None


def folder_weight_files(d: Path) -> list[Path]:
    """The weight files of a model folder: sharded/whole safetensors, else one torch pickle (weights only)."""
    from medprobe.encoders.hf_vit import _check_hf_dir

    for name in _FOLDER_FILES[:2]:
        if (d / name).is_file():
            _check_hf_dir(d)
            return [d / name]
    shards = sorted(d.glob("*.safetensors"))
    if shards:
        _check_hf_dir(d)
        return shards
    for name in _FOLDER_FILES[2:]:
        if (d / name).is_file():
            return [d / name]
    pt = sorted(d.glob("*.pt")) + sorted(d.glob("*.pth"))
    if len(pt) == 1:
        return pt
    raise WeightsError("holds no weights file (looked for *.safetensors, open_clip_pytorch_model.bin, "
                       "pytorch_model.bin or one *.pt/*.pth)", d)


def weight_files(ref: WeightsRef) -> list[Path]:
    """The files behind a file / folder / hub weights source (hub: the local cache only)."""
    loc = str(ref.location)
    if ref.kind == "file":
        return [Path(loc)]
    if ref.kind == "hf_dir":
        return folder_weight_files(Path(loc))
    if ref.kind == "hub":
        return folder_weight_files(cached_snapshot(loc))
    raise WeightsError(f"cannot load {ref.kind} weights here", loc)


def files_weights_id(files: Sequence[Path]) -> str:
    """``sha256:<digest>`` of one file, or of the list of the files' digests."""
    from medprobe.encoders.weights import file_sha256
    from medprobe.utils import hash_obj

    if len(files) == 1:
        return f"sha256:{file_sha256(files[0])}"
    return "sha256:" + hash_obj([file_sha256(f) for f in files], n=64)


def read_files(files: Sequence[Path]) -> dict[str, torch.Tensor]:
    """One state dict from the files (shards merged), read with safetensors or ``weights_only=True``."""
    from medprobe.encoders.weights import load_state_dict

    sd: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            sd.update(load_state_dict(f))
        except WeightsError as e:
            if "cannot read" in e.problem and f.suffix in (".pt", ".pth", ".bin"):
                raise WeightsError(f"{e.problem}; a TorchScript archive (OpenAI's clip .pt files) is not a state "
                                   "dict: save its state_dict() first", f) from None
            raise
    return sd


def load_exact(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: str | Path, what: str,
               name_of: Callable[[str], str] | None = None) -> None:
    """Load ``sd`` into ``module`` requiring the same keys and shapes; else one line naming the first offending
    key (missing tensors first, then unexpected ones, then shape mismatches) and how many there are.
    ``name_of`` gives a module key's name in the file's layout (messages name what the file holds or lacks)."""
    name = name_of or (lambda k: k)
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    bad = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    counts = f"({len(missing)} missing, {len(unexpected)} unexpected, {len(bad)} mis-shaped)"
    if missing:
        raise WeightsError(f"missing tensor {name(missing[0])!r} for {what} {counts}", source)
    if unexpected:
        raise WeightsError(f"unexpected tensor {unexpected[0]!r} for {what} {counts}", source)
    if bad:
        k = bad[0]
        raise WeightsError(f"tensor {name(k)!r} has shape {tuple(sd[k].shape)}, {what} needs {tuple(own[k].shape)} "
                           f"{counts}", source)
    module.load_state_dict(dict(sd), strict=True)


def split_dropped(sd: Mapping[str, torch.Tensor], keep: str, dropped: Callable[[str], bool], source: str | Path,
                  layout: str) -> dict[str, torch.Tensor]:
    """Keys under prefix ``keep`` (prefix removed); keys for which ``dropped`` is true are left out on purpose;
    any other key is an unexpected tensor of ``layout``."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith(keep):
            out[k[len(keep):]] = v
        elif not dropped(k):
            raise WeightsError(f"unexpected tensor {k!r} in a {layout} checkpoint (not part of the image tower)",
                               source)
    return out


def _blocks_call(layer: torch.nn.Module) -> dict[str, Any]:
    """Keyword arguments a transformers encoder layer needs besides the hidden states (version differences)."""
    params = inspect.signature(layer.forward).parameters
    kw: dict[str, Any] = {}
    for name in ("attention_mask", "causal_attention_mask"):
        if name in params:
            kw[name] = None
    return kw


def transformers_module() -> Any:
    """``transformers``, with torchvision's Python layers importable first where torchvision is installed but its
    compiled ops do not load beside this torch (transformers' lazy imports of some models touch torchvision)."""
    from medprobe.encoders.extras import import_torchvision

    try:
        import_torchvision()
    except ImportError:
        pass  # no torchvision: transformers does not import it
    import transformers

    return transformers


def _run_layer(layer: torch.nn.Module, hs: torch.Tensor, kw: Mapping[str, Any]) -> torch.Tensor:
    out = layer(hs, **kw)
    return out[0] if isinstance(out, tuple) else out


# ---------------------------------------------------------------- architectures


Converted = tuple[dict[str, torch.Tensor], Callable[[str], str]]


def _same(k: str) -> str:
    return k


def _prefixed(prefix: str) -> Callable[[str], str]:
    return lambda k: prefix + k


@dataclass(frozen=True)
class ClipArch:
    """How one CLIP-family tower is built, loaded and run."""

    name: str
    build: Callable[[EncoderSpec], torch.nn.Module]  # random-init network of a spec
    # the file's state dict -> (the target's state dict, a target key's name in the file's layout)
    convert: Callable[[dict[str, torch.Tensor], torch.nn.Module, str | Path], Converted]
    target: Callable[[torch.nn.Module], torch.nn.Module]  # the module the converted state dict loads into
    encoder: Callable[[EncoderSpec, torch.nn.Module], Encoder]
    layouts: str  # the checkpoint layouts it reads (messages)
    unused: tuple[str, ...] = ()  # parameter-name prefixes loaded but not part of the features (projection heads)


class _TowerEncoder(Encoder):
    """Block-by-block forward; every tapped block goes through the final norm; ``cls`` per family."""

    n_prefix = 1

    def __init__(self, spec: EncoderSpec, net: torch.nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.net: Any = net.eval().requires_grad_(False)

    # the per-architecture pieces
    def _blocks(self) -> Sequence[torch.nn.Module]:
        raise NotImplementedError

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError

    def _norm(self, hs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _pool(self, t: torch.Tensor) -> torch.Tensor:
        return t[:, 0]

    def _block(self, i: int, hs: torch.Tensor, ctx: Mapping[str, Any]) -> torch.Tensor:
        return _run_layer(self._blocks()[i], hs, ctx)

    def _input_dtype(self) -> torch.dtype:
        for p in self.net.parameters():
            return p.dtype
        return torch.float32

    @property
    def depth(self) -> int:
        return len(self._blocks())

    def forward_features(self, x: torch.Tensor, layers: Sequence[int]) -> EncoderOutput:
        b, _, h, w = x.shape
        self.check_input_size(h, w)
        gh, gw = h // self.patch_size, w // self.patch_size
        want = set(layers)
        hs, ctx = self._embed(x.to(self._input_dtype()))
        cls: dict[int, torch.Tensor] = {}
        patch: dict[int, torch.Tensor] = {}
        for i in range(max(want) + 1):
            hs = self._block(i, hs, ctx)
            if i in want:
                t = self._norm(hs)
                cls[i] = self._pool(t)
                p = t[:, self.n_prefix:]
                patch[i] = p.reshape(b, gh, gw, p.shape[-1]).permute(0, 3, 1, 2)
        return EncoderOutput(cls=cls, patch=patch)


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    """The vision transformer inside a transformers ``*VisionModel`` (4.x nests it, 5.x does not)."""
    inner: torch.nn.Module = getattr(model, "vision_model", model)
    return inner


# ---- OpenAI CLIP (transformers CLIPVisionModel)


def _tower(config_class: str, model_class: str, defaults: dict[str, Any], spec: EncoderSpec) -> torch.nn.Module:
    """A transformers vision tower from the spec's architecture (``hf_config``) over the family's defaults."""
    transformers = transformers_module()

    cfg = getattr(transformers, config_class)(**{**defaults, **dict(spec.hf_config)})
    cfg._attn_implementation = "sdpa"
    model: torch.nn.Module = getattr(transformers, model_class)(cfg)
    return model


def _clip_build(spec: EncoderSpec) -> torch.nn.Module:
    return _tower("CLIPVisionConfig", "CLIPVisionModel", {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}, spec)


class ClipEncoder(_TowerEncoder):
    """OpenAI CLIP image tower: ``ln_pre`` after the embedding, ``ln_post`` on every tap, class token as ``cls``."""

    def __init__(self, spec: EncoderSpec, net: torch.nn.Module) -> None:
        super().__init__(spec, net)
        vm: Any = _inner(net)
        self.vm = vm
        self._kw = _blocks_call(vm.encoder.layers[0])

    def _blocks(self) -> Sequence[torch.nn.Module]:
        layers: Sequence[torch.nn.Module] = self.vm.encoder.layers
        return layers

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.vm.pre_layrnorm(self.vm.embeddings(x, interpolate_pos_encoding=True)), dict(self._kw)

    def _norm(self, hs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.vm.post_layernorm(hs)
        return out


_HF_TEXT_SIDE = ("text_model.", "text_projection.", "visual_projection.", "logit_scale", "logit_bias")
_OPENAI_TEXT_SIDE = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection",
                     "logit_scale", "logit_bias", "attn_mask", "input_resolution", "context_length", "vocab_size",
                     "text.")
_OPENAI_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                 "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_OPENAI_BLOCK_KEY = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
_OPENAI_QKV_KEY = re.compile(r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")
_OPENAI_TOP = {"class_embedding": "embeddings.class_embedding", "conv1.weight": "embeddings.patch_embedding.weight",
               "positional_embedding": "embeddings.position_embedding.weight", "ln_pre.weight": "pre_layrnorm.weight",
               "ln_pre.bias": "pre_layrnorm.bias", "ln_post.weight": "post_layernorm.weight",
               "ln_post.bias": "post_layernorm.bias"}


def _hf_vision(sd: dict[str, torch.Tensor], source: str | Path, layout: str) -> dict[str, torch.Tensor] | None:
    """transformers layout (``vision_model.*``, text side dropped) -> keys of the vision transformer; ``None`` when
    the state dict is not in that layout."""
    if not any(k.startswith("vision_model.") for k in sd):
        return None
    out = split_dropped(sd, "vision_model.", lambda k: k.startswith(_HF_TEXT_SIDE), source, layout)
    out.pop("embeddings.position_ids", None)  # a buffer older transformers saved; recomputed
    return out


def _openai_name(k: str) -> str:
    """A transformers CLIP vision key's name in OpenAI's layout."""
    top = {v: n for n, v in _OPENAI_TOP.items()}
    if k in top:
        return "visual." + top[k]
    if m := re.match(r"^encoder\.layers\.(\d+)\.self_attn\.[qkv]_proj\.(weight|bias)$", k):
        return f"visual.transformer.resblocks.{m.group(1)}.attn.in_proj_{m.group(2)}"
    if m := re.match(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", k):
        back = {v: n for n, v in _OPENAI_BLOCK.items()}
        return f"visual.transformer.resblocks.{m.group(1)}.{back.get(m.group(2), m.group(2))}.{m.group(3)}"
    return k


def _clip_convert(sd: dict[str, torch.Tensor], net: torch.nn.Module, source: str | Path) -> Converted:
    hf = _hf_vision(sd, source, "transformers CLIP")
    if hf is not None:
        return hf, _prefixed("vision_model.")
    if "visual.conv1.weight" not in sd:
        if "embeddings.patch_embedding.weight" in sd:  # a bare transformers vision tower
            return dict(sd), _same
        first = next(iter(sd), "<none>")
        raise WeightsError(f"not a CLIP checkpoint: no 'visual.conv1.weight' (OpenAI / open_clip layout) nor "
                           f"'vision_model.*' (transformers layout); first key {first!r}", source)
    visual = split_dropped(sd, "visual.", lambda k: k.startswith(_OPENAI_TEXT_SIDE), source, "OpenAI CLIP")
    out: dict[str, torch.Tensor] = {}
    for k, v in visual.items():
        if k in _OPENAI_TOP:
            out[_OPENAI_TOP[k]] = v
        elif k == "proj":
            continue  # the projection to the joint image-text space: not part of the features
        elif m := _OPENAI_QKV_KEY.match(k):
            i, kind = m.groups()
            for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                out[f"encoder.layers.{i}.self_attn.{name}.{kind}"] = part
        elif (m := _OPENAI_BLOCK_KEY.match(k)) and m.group(2) in _OPENAI_BLOCK:
            i, mod, kind = m.groups()
            out[f"encoder.layers.{i}.{_OPENAI_BLOCK[mod]}.{kind}"] = v
        else:
            out["visual." + k] = v  # unknown: reported as unexpected under its file name
    return {k: v.contiguous() for k, v in out.items()}, _openai_name


# ---- SigLIP 2 (transformers SiglipVisionModel)


def _siglip_build(spec: EncoderSpec) -> torch.nn.Module:
    return _tower("SiglipVisionConfig", "SiglipVisionModel",
                  {"hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}, spec)


class SiglipEncoder(_TowerEncoder):
    """SigLIP image tower: no class token; ``cls`` = the MAP head applied to the final-normed tokens of the tap."""

    n_prefix = 0

    def __init__(self, spec: EncoderSpec, net: torch.nn.Module) -> None:
        super().__init__(spec, net)
        vm: Any = _inner(net)
        self.vm = vm
        if getattr(vm, "head", None) is None:
            raise ConfigError(f"{spec.name}: the SigLIP tower has no attention-pool head (vision_use_head=False)")
        self._kw = _blocks_call(vm.encoder.layers[0])

    def _blocks(self) -> Sequence[torch.nn.Module]:
        layers: Sequence[torch.nn.Module] = self.vm.encoder.layers
        return layers

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.vm.embeddings(x, interpolate_pos_encoding=True), dict(self._kw)

    def _norm(self, hs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.vm.post_layernorm(hs)
        return out

    def _pool(self, t: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.vm.head(t)
        return out


def _siglip_convert(sd: dict[str, torch.Tensor], net: torch.nn.Module, source: str | Path) -> Converted:
    hf = _hf_vision(sd, source, "transformers SigLIP")
    if hf is not None:
        return hf, _prefixed("vision_model.")
    if "embeddings.patch_embedding.weight" in sd:
        return dict(sd), _same
    first = next(iter(sd), "<none>")
    raise WeightsError(f"not a SigLIP checkpoint in transformers layout (google/siglip2-*: 'vision_model.*'); "
                       f"first key {first!r}", source)


# ---- BiomedCLIP (timm ViT trunk in open_clip, run on transformers CLIPEncoderLayer blocks)


class _PatchEmbed(torch.nn.Module):
    def __init__(self, width: int, patch: int) -> None:
        super().__init__()
        self.proj = torch.nn.Conv2d(3, width, patch, stride=patch)


class TimmStyleViT(torch.nn.Module):
    """timm's ``VisionTransformer`` (class token, learned absolute positions, pre-norm blocks) with transformers'
    ``CLIPEncoderLayer`` blocks; parameter names follow timm outside the blocks."""

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        transformers = transformers_module()
        c = dict(spec.hf_config)
        width, patch, image = int(c["hidden_size"]), int(c["patch_size"]), int(c["image_size"])
        cfg = transformers.CLIPVisionConfig(hidden_size=width, intermediate_size=int(c["intermediate_size"]),
                                            num_attention_heads=int(c["num_attention_heads"]),
                                            hidden_act="gelu", layer_norm_eps=float(c.get("layer_norm_eps", 1e-6)))
        cfg._attn_implementation = "sdpa"
        from transformers.models.clip.modeling_clip import CLIPEncoderLayer

        self.grid = (image // patch, image // patch)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = torch.nn.Parameter(torch.randn(1, 1 + self.grid[0] * self.grid[1], width) * 0.02)
        self.patch_embed = _PatchEmbed(width, patch)
        self.blocks = torch.nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(int(c["num_hidden_layers"])))
        self.norm = torch.nn.LayerNorm(width, eps=float(c.get("layer_norm_eps", 1e-6)))
        for blk in self.blocks:  # timm's init scale (trunc normal 0.02); transformers' _init_weights is not run here
            for m in blk.modules():
                if isinstance(m, torch.nn.Linear):
                    torch.nn.init.trunc_normal_(m.weight, std=0.02)
                    torch.nn.init.zeros_(m.bias)
        torch.nn.init.normal_(self.cls_token, std=1e-6)


def resample_pos_embed(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int], n_prefix: int) -> torch.Tensor:
    """timm's ``resample_abs_pos_embed``: prefix positions kept, the grid resized bicubic with antialias (fp32)."""
    if old == new:
        return pos
    prefix, grid = pos[:, :n_prefix], pos[:, n_prefix:]
    dtype = grid.dtype
    g = grid.reshape(1, old[0], old[1], -1).permute(0, 3, 1, 2).float()
    g = F.interpolate(g, size=new, mode="bicubic", antialias=True)
    g = g.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], -1).to(dtype)
    return torch.cat([prefix, g], dim=1)


class BiomedClipEncoder(_TowerEncoder):
    """BiomedCLIP image tower (timm ViT-B/16): class token after the final norm as ``cls``."""

    def __init__(self, spec: EncoderSpec, net: torch.nn.Module) -> None:
        super().__init__(spec, net)
        self._kw = _blocks_call(self.net.blocks[0])

    def _blocks(self) -> Sequence[torch.nn.Module]:
        blocks: Sequence[torch.nn.Module] = self.net.blocks
        return blocks

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        n = self.net
        t = n.patch_embed.proj(x)
        gh, gw = t.shape[-2:]
        t = t.flatten(2).transpose(1, 2)
        t = torch.cat([n.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        return t + resample_pos_embed(n.pos_embed, n.grid, (int(gh), int(gw)), 1), dict(self._kw)

    def _norm(self, hs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net.norm(hs)
        return out


_TIMM_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj",
               "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_TIMM_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")
_TIMM_TOP = ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
             "norm.bias")


def _timm_vit_name(k: str) -> str:
    """A :class:`TimmStyleViT` key's name in timm's layout."""
    if m := re.match(r"^blocks\.(\d+)\.self_attn\.[qkv]_proj\.(weight|bias)$", k):
        return f"blocks.{m.group(1)}.attn.qkv.{m.group(2)}"
    if m := re.match(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$", k):
        back = {v: n for n, v in _TIMM_BLOCK.items()}
        return f"blocks.{m.group(1)}.{back.get(m.group(2), m.group(2))}.{m.group(3)}"
    return k


def _biomedclip_convert(sd: dict[str, torch.Tensor], net: torch.nn.Module, source: str | Path) -> Converted:
    prefix = ""
    if any(k.startswith("visual.trunk.") for k in sd):
        prefix = "visual.trunk."
        # open_clip layout: the trunk is the image tower; its projection head, the text tower and logit scale go
        visual = split_dropped(sd, "visual.", lambda k: k.startswith(("text.", "logit_scale", "logit_bias")),
                               source, "open_clip (BiomedCLIP)")
        trunk = split_dropped(visual, "trunk.", lambda k: k.startswith("head."), source, "open_clip (BiomedCLIP)")
    elif "cls_token" in sd and "patch_embed.proj.weight" in sd:
        trunk = {k: v for k, v in sd.items() if not k.startswith("head.")}  # a bare timm ViT (classifier dropped)
    else:
        first = next(iter(sd), "<none>")
        raise WeightsError(f"not a BiomedCLIP checkpoint: no 'visual.trunk.*' (open_clip layout) nor timm ViT keys; "
                           f"first key {first!r}", source)
    out: dict[str, torch.Tensor] = {}
    for k, v in trunk.items():
        if k in _TIMM_TOP:
            out[k] = v
        elif (m := _TIMM_BLOCK_KEY.match(k)) and m.group(2) == "attn.qkv":
            i, kind = m.group(1), m.group(3)
            for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                out[f"blocks.{i}.self_attn.{name}.{kind}"] = part
        elif (m := _TIMM_BLOCK_KEY.match(k)) and m.group(2) in _TIMM_BLOCK:
            out[f"blocks.{m.group(1)}.{_TIMM_BLOCK[m.group(2)]}.{m.group(3)}"] = v
        else:
            out[prefix + k] = v  # unknown: reported as unexpected under its file name
    return {k: v.contiguous() for k, v in out.items()}, lambda k: prefix + _timm_vit_name(k)


# ---- Perception Encoder core (timm Eva)


def _pe_build(spec: EncoderSpec) -> torch.nn.Module:
    from medprobe.encoders.extras import import_extra

    timm = import_extra("timm", f"encoder {spec.name}")
    c = dict(spec.hf_config)
    model: torch.nn.Module = timm.create_model(c["timm_model"], pretrained=False, dynamic_img_size=True,
                                               **dict(c.get("timm_kwargs", {})))
    return model


class PECoreEncoder(_TowerEncoder):
    """Perception Encoder core (timm ``Eva``): ``norm_pre`` after the embedding, 2D RoPE in every block, the final
    norm on every tap, ``cls`` = the attention pool's output (timm's ``forward_head(pre_logits=True)``)."""

    def __init__(self, spec: EncoderSpec, net: torch.nn.Module) -> None:
        super().__init__(spec, net)
        self.n_prefix = int(self.net.num_prefix_tokens)

    def _blocks(self) -> Sequence[torch.nn.Module]:
        blocks: Sequence[torch.nn.Module] = self.net.blocks
        return blocks

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        t, rope = self.net._pos_embed(self.net.patch_embed(x))
        return self.net.norm_pre(t), {"rope": rope}

    def _block(self, i: int, hs: torch.Tensor, ctx: Mapping[str, Any]) -> torch.Tensor:
        out: torch.Tensor = self.net.blocks[i](hs, rope=ctx["rope"])
        return out

    def _norm(self, hs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net.norm(hs)
        return out

    def _pool(self, t: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net.forward_head(t, pre_logits=True)
        return out


def _pe_convert(sd: dict[str, torch.Tensor], net: torch.nn.Module, source: str | Path) -> Converted:
    from medprobe.encoders.extras import import_extra

    name_of: Callable[[str], str] = _same

    text = ("text.", "logit_scale", "logit_bias", "token_embedding.", "positional_embedding", "transformer.",
            "ln_final.", "text_projection", "attn_mask")
    if any(k.startswith("visual.trunk.") for k in sd):
        visual = split_dropped(sd, "visual.", lambda k: k.startswith(text), source, "open_clip (PE core)")
        sd = split_dropped(visual, "trunk.", lambda k: False, source, "open_clip (PE core)")
        name_of = _prefixed("visual.trunk.")
    elif "visual.conv1.weight" in sd:  # Meta's layout: timm's converter maps it (text side dropped here)
        split_dropped(sd, "visual.", lambda k: k.startswith(text), source, "Meta PE")
    elif not ("patch_embed.proj.weight" in sd and "blocks.0.attn.qkv.weight" in sd):
        first = next(iter(sd), "<none>")
        raise WeightsError(f"not a Perception Encoder checkpoint: no 'visual.trunk.*' (open_clip), "
                           f"'visual.conv1.weight' (Meta) nor timm Eva keys; first key {first!r}", source)
    eva = import_extra("timm", "Perception Encoder").models.eva
    out: dict[str, torch.Tensor] = eva.checkpoint_filter_fn(sd, net)
    return out, name_of


# ---------------------------------------------------------------- the families: build, identity, cost


def _ident(m: torch.nn.Module) -> torch.nn.Module:
    return m


ARCHS: dict[str, ClipArch] = {
    "clip": ClipArch("clip", _clip_build, _clip_convert, _inner, ClipEncoder,
                     "OpenAI / open_clip 'visual.*' or transformers 'vision_model.*'"),
    "siglip2": ClipArch("siglip2", _siglip_build, _siglip_convert, _inner, SiglipEncoder,
                        "transformers 'vision_model.*' (google/siglip2-*)"),
    "biomedclip": ClipArch("biomedclip", TimmStyleViT, _biomedclip_convert, _ident, BiomedClipEncoder,
                           "open_clip 'visual.trunk.*' (timm ViT)"),
    "pe_core": ClipArch("pe_core", _pe_build, _pe_convert, _ident, PECoreEncoder,
                        "open_clip 'visual.trunk.*', timm Eva, or Meta 'visual.conv1.weight' ...", unused=("head.",)),
}


def build_random(arch: ClipArch, spec: EncoderSpec, seed: int) -> Encoder:
    with torch_seeded(seed):
        net = arch.build(spec)
    enc = arch.encoder(spec, net)
    enc.weights_id, enc.pretrained = f"random:seed={seed}", False
    return enc


def _build(arch: ClipArch, spec: EncoderSpec, ref: WeightsRef) -> Encoder:
    if ref.kind == "random":
        return build_random(arch, spec, ref.seed)
    files = weight_files(ref)
    source = files[0] if len(files) == 1 else files[0].parent
    sd = read_files(files)
    wid = files_weights_id(files)
    net = arch.build(spec)  # random values, all overwritten: the exact load below requires every tensor
    sd, name_of = arch.convert(sd, net, source)
    load_exact(arch.target(net), sd, source, f"{spec.name} ({arch.layouts})", name_of)
    enc = arch.encoder(spec, net)
    enc.weights_id, enc.pretrained = wid, True
    return enc


def _identity(spec: EncoderSpec, ref: WeightsRef) -> EncoderInfo | None:
    if ref.kind == "random":
        return EncoderInfo(spec, f"random:seed={ref.seed}", False)
    if ref.kind == "hub":
        try:
            return EncoderInfo(spec, files_weights_id(weight_files(ref)), True)
        except WeightsError:
            return None  # building it says why
    return EncoderInfo(spec, files_weights_id(weight_files(ref)), True)


def _gflops(arch: ClipArch, spec: EncoderSpec, resolution: tuple[int, int], layers: tuple[int, ...] | None
            ) -> float | None:
    """Counted on a ``meta``-device network: no weights, no compute."""
    from medprobe.encoders.flops import gflops_per_image

    with torch.device("meta"):
        enc = arch.encoder(spec, arch.build(spec))
    return gflops_per_image(enc, resolution, layers=layers)


def count_params(arch: ClipArch, spec: EncoderSpec) -> int:
    """Parameters of the image tower that the features use (counted on ``meta``; projection heads left out)."""
    with torch.device("meta"):
        net = arch.target(arch.build(spec))
    return sum(p.numel() for n, p in net.named_parameters() if not n.startswith(arch.unused or ("\0",)))


_CONTRACT = {
    "clip": ("class token after ln_post (pre-projection)", "patch tokens after ln_post; stride = patch size"),
    "siglip2": ("attention-pool (MAP head) output of the final-normed tokens",
                "patch tokens after the final norm (no class token); stride = patch size"),
    "biomedclip": ("class token after the final norm (timm global_pool='token', pre-projection)",
                   "patch tokens after the final norm; stride = patch size"),
    "pe_core": ("attention-pool output of the final-normed tokens (pre-projection)",
                "patch tokens after the final norm, class token dropped; stride = patch size"),
}
_DESCRIPTION = {
    "clip": "OpenAI CLIP image tower (transformers CLIPVisionModel)",
    "siglip2": "SigLIP 2 image tower (transformers SiglipVisionModel)",
    "biomedclip": "BiomedCLIP image tower: open_clip timm ViT trunk on transformers CLIP blocks",
    "pe_core": "Perception Encoder core image tower (timm Eva)",
}


def clip_family(arch: ClipArch) -> EncoderFamily:
    def build(spec: EncoderSpec, ref: WeightsRef, options: Mapping[str, Any]) -> Encoder:
        return _build(arch, spec, ref)

    def gflops(spec: EncoderSpec, resolution: tuple[int, int], layers: tuple[int, ...] | None) -> float | None:
        return _gflops(arch, spec, resolution, layers)

    cls_feature, patch_feature = _CONTRACT[arch.name]
    return EncoderFamily(name=arch.name, build=build, identity=_identity, gflops=gflops,
                         description=_DESCRIPTION[arch.name], cls_feature=cls_feature, patch_feature=patch_feature,
                         taps="transformer blocks (0-based), each through the final norm",
                         extra="timm" if arch.name == "pe_core" else "")


for _arch in ARCHS.values():
    register_family(clip_family(_arch))


# ---------------------------------------------------------------- named encoders

_OPENAI_LICENSE = "MIT (OpenAI CLIP)"
_OPENAI_DATA = "WIT-400M (400M web image-text pairs)"
# name, hf repo, patch, width, depth, heads, mlp, native, params (M), taps
_CLIPS = [
    ("clip-vit-b16", "openai/clip-vit-base-patch16", 16, 768, 12, 12, 3072, 224, 85.8, (2, 5, 8, 11)),
    ("clip-vit-l14", "openai/clip-vit-large-patch14", 14, 1024, 24, 16, 4096, 224, 303.2, (4, 11, 17, 23)),
    ("clip-vit-l14-336", "openai/clip-vit-large-patch14-336", 14, 1024, 24, 16, 4096, 336, 303.5, (4, 11, 17, 23)),
]
for _n, _repo, _p, _w, _d, _h, _m, _res, _params, _taps in _CLIPS:
    register(EncoderSpec(
        name=_n, family="clip", patch_size=_p, width=_w, depth=_d, params_m=_params, default_layers=_taps,
        mean=OPENAI_MEAN, std=OPENAI_STD, native_resolution=_res, license=_OPENAI_LICENSE,
        pretraining_data=_OPENAI_DATA, hf_repo=_repo, timm_name=None,
        hf_config=dict(hidden_size=_w, intermediate_size=_m, num_hidden_layers=_d, num_attention_heads=_h,
                       patch_size=_p, image_size=_res, hidden_act="quick_gelu", layer_norm_eps=1e-5)))

# SigLIP 2 fixed-resolution checkpoints (transformers SiglipModel layout, published by Google)
_SIGLIPS = [
    ("siglip2-vitb16", "google/siglip2-base-patch16-224", 16, 768, 12, 12, 3072, 224, 92.9, (2, 5, 8, 11)),
    ("siglip2-vitb16-384", "google/siglip2-base-patch16-384", 16, 768, 12, 12, 3072, 384, 93.2, (2, 5, 8, 11)),
    ("siglip2-vitl16-256", "google/siglip2-large-patch16-256", 16, 1024, 24, 16, 4096, 256, 316.0, (4, 11, 17, 23)),
    ("siglip2-so400m14-384", "google/siglip2-so400m-patch14-384", 14, 1152, 27, 16, 4304, 384, 428.2,
     (5, 12, 19, 26)),
]
for _n, _repo, _p, _w, _d, _h, _m, _res, _params, _taps in _SIGLIPS:
    register(EncoderSpec(
        name=_n, family="siglip2", patch_size=_p, width=_w, depth=_d, params_m=_params, default_layers=_taps,
        mean=HALF, std=HALF, native_resolution=_res, license="Apache-2.0",
        pretraining_data="WebLI (10B images, multilingual), SigLIP 2 recipe", hf_repo=_repo,
        hf_config=dict(hidden_size=_w, intermediate_size=_m, num_hidden_layers=_d, num_attention_heads=_h,
                       patch_size=_p, image_size=_res, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)))

register(EncoderSpec(
    name="biomedclip", family="biomedclip", patch_size=16, width=768, depth=12, params_m=85.8,
    default_layers=(2, 5, 8, 11), mean=OPENAI_MEAN, std=OPENAI_STD, native_resolution=224, license="MIT",
    pretraining_data="PMC-15M (15M biomedical figure-caption pairs from PubMed Central)",
    hf_repo="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", timm_name="vit_base_patch16_224",
    hf_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   patch_size=16, image_size=224, layer_norm_eps=1e-6)))

_PE_LICENSE = "Apache-2.0 (Meta Perception Encoder)"
for _n, _repo, _timm, _p, _w, _d, _res, _params, _taps in [
    ("pe-core-b16", "timm/PE-Core-B-16", "vit_pe_core_base_patch16_224", 16, 768, 12, 224, 92.9, (2, 5, 8, 11)),
    ("pe-core-l14", "timm/PE-Core-L-14-336", "vit_pe_core_large_patch14_336", 14, 1024, 24, 336, 316.1,
     (4, 11, 17, 23)),
]:
    register(EncoderSpec(
        name=_n, family="pe_core", patch_size=_p, width=_w, depth=_d, params_m=_params, default_layers=_taps,
        mean=HALF, std=HALF, native_resolution=_res, license=_PE_LICENSE,
        pretraining_data="MetaCLIP 5.4B image-text pairs (PE core recipe)", hf_repo=_repo, timm_name=_timm,
        hf_config=dict(timm_model=_timm, timm_kwargs={})))


__all__ = ["ARCHS", "ClipArch", "ClipEncoder", "BiomedClipEncoder", "PECoreEncoder", "SiglipEncoder", "cached_snapshot",
           "count_params", "files_weights_id", "folder_weight_files", "load_exact", "read_files", "resample_pos_embed",
           "weight_files"]
