"""timm-layout ViT checkpoints (``timm.models.vision_transformer.VisionTransformer`` key names) run on transformers.

Pathology encoders (UNI, UNI2-h, Virchow2, CONCH's trunk) and MAE publish state dicts in timm's layout. This
module checks such a state dict against the architecture (one line naming the file and the first offending
key), maps it onto a transformers model that expresses the same network, and runs that model block by block
with timm's own embedding rule, so any blocks can be tapped in one pass.

timm layout -> transformers (names resolved against the installed transformers version):

==================================  ===================================================================
``cls_token`` / ``reg_token``       ``embeddings.cls_token`` / ``embeddings.register_tokens``
``pos_embed``                       ``embeddings.position_embeddings`` (class slot first, see below)
``patch_embed.proj.*``              ``embeddings.patch_embeddings.projection.*``
``blocks.i.norm1`` / ``norm2``      ``norm1`` / ``norm2`` (Dinov2) or ``layernorm_before`` / ``_after`` (ViT)
``blocks.i.attn.qkv`` (3C, C)       query | key | value projections (rows split in thirds)
``blocks.i.attn.proj``              attention output projection
``blocks.i.ls{1,2}.gamma``          ``layer_scale{1,2}.lambda1`` (Dinov2)
``blocks.i.mlp.fc1`` / ``fc2``      ``mlp.fc1`` / ``fc2`` (GELU); SwiGLUPacked: fc1 rows -> gate | up, fc2 -> down
``norm.*``                          ``layernorm.*``
==================================  ===================================================================

Position embeddings: timm adds ``pos_embed`` to the class and register tokens too unless ``no_embed_class``.
The constant sums are folded at load time (class slot kept; ``register_tokens = reg_token + pos_embed[1:1+R]``;
with ``no_embed_class`` the class slot is zero), which is exact. At another input size the patch part is
resampled as timm's ``dynamic_img_size`` does: bicubic, ``antialias=True``, in float32, prefix slots untouched.

SwiGLUPacked (``act(x1) * x2`` of fc1's two row halves) equals transformers' Dinov2 SwiGLU
``down(silu(gate(x)) * up(x))`` with the first half as gate and the second as up.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from medprobe.encoders.base import Encoder, EncoderOutput
from medprobe.encoders.hf_vit import find_blocks
from medprobe.encoders.registry import EncoderSpec
from medprobe.errors import ConfigError, WeightsError

# weight file names looked for in a Hugging Face folder / the local hub cache, in order
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class TimmViT:
    """Architecture facts of a timm ``VisionTransformer`` checkpoint (class token and qkv bias always on)."""

    width: int
    depth: int
    heads: int
    patch: int
    img_size: int  # the resolution the stored pos_embed was trained at (grid = img_size // patch)
    mlp_hidden: int  # fc1 output features (SwiGLUPacked: both halves, gate + value)
    swiglu: bool = False  # timm SwiGLUPacked + SiLU
    reg_tokens: int = 0
    no_embed_class: bool = False
    layerscale: bool = False  # timm init_values set: ls1/ls2.gamma
    eps: float = 1e-6
    target: str = "auto"  # transformers class: "auto" | "vit_mae"

    @classmethod
    def from_spec(cls, spec: EncoderSpec) -> TimmViT:
        """From a spec: width/depth/patch from the spec, the rest from ``spec.hf_config``."""
        names = {f.name for f in fields(cls)} - {"width", "depth", "patch"}
        kw = {k: v for k, v in spec.hf_config.items() if k in names}
        return cls(width=spec.width, depth=spec.depth, patch=spec.patch_size, **kw)

    @property
    def grid(self) -> int:
        return self.img_size // self.patch

    @property
    def fc2_in(self) -> int:
        return self.mlp_hidden // 2 if self.swiglu else self.mlp_hidden

    @property
    def n_pos(self) -> int:
        """Rows of timm's ``pos_embed``."""
        return self.grid ** 2 + (0 if self.no_embed_class else 1 + self.reg_tokens)

    @property
    def kind(self) -> str:
        """The transformers class that expresses the network."""
        if self.target == "vit_mae":
            if self.layerscale or self.swiglu or self.reg_tokens:
                raise ConfigError("ViTMAEModel has no layer scale, SwiGLU or registers")
            return "vit_mae"
        if self.layerscale:
            return "dinov2_reg" if self.reg_tokens else "dinov2"
        if self.swiglu or self.reg_tokens:
            raise ConfigError("a timm ViT with SwiGLU or registers needs layer scale to map onto transformers' Dinov2")
        return "vit"


def timm_keys(a: TimmViT) -> dict[str, tuple[int, ...]]:
    """The authors' state-dict keys and shapes (timm layout), in timm's order."""
    c, h = a.width, a.mlp_hidden
    keys: dict[str, tuple[int, ...]] = {"cls_token": (1, 1, c)}
    if a.reg_tokens:
        keys["reg_token"] = (1, a.reg_tokens, c)
    keys["pos_embed"] = (1, a.n_pos, c)
    keys["patch_embed.proj.weight"] = (c, 3, a.patch, a.patch)
    keys["patch_embed.proj.bias"] = (c,)
    for i in range(a.depth):
        b = f"blocks.{i}."
        keys |= {b + "norm1.weight": (c,), b + "norm1.bias": (c,), b + "attn.qkv.weight": (3 * c, c),
                 b + "attn.qkv.bias": (3 * c,), b + "attn.proj.weight": (c, c), b + "attn.proj.bias": (c,)}
        if a.layerscale:
            keys[b + "ls1.gamma"] = (c,)
        keys |= {b + "norm2.weight": (c,), b + "norm2.bias": (c,), b + "mlp.fc1.weight": (h, c),
                 b + "mlp.fc1.bias": (h,), b + "mlp.fc2.weight": (c, a.fc2_in), b + "mlp.fc2.bias": (c,)}
        if a.layerscale:
            keys[b + "ls2.gamma"] = (c,)
    keys["norm.weight"] = (c,)
    keys["norm.bias"] = (c,)
    return keys


def timm_params(a: TimmViT) -> int:
    """Parameter count of the timm model (what the authors' checkpoint holds)."""
    total = 0
    for shape in timm_keys(a).values():
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


def check_layout(sd: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], source: str | Path,
                 what: str, prefix: str = "") -> None:
    """Exact key and shape match or one WeightsError line naming the file and the first offending key."""
    problems = []
    for k, shape in expected.items():
        if prefix + k not in sd:
            problems.append(f"missing tensor {prefix + k!r}")
        elif tuple(sd[prefix + k].shape) != shape:
            problems.append(f"tensor {prefix + k!r} has shape {tuple(sd[prefix + k].shape)}, {what} needs {shape}")
    want = {prefix + k for k in expected}
    problems += [f"unexpected tensor {k!r}" for k in sd if k not in want]
    if problems:
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise WeightsError(f"not a {what} checkpoint: {problems[0]}{more}", source)


# ---------------------------------------------------------------- the transformers model


def import_transformers() -> Any:
    """transformers, importable where an installed torchvision's compiled ops do not match torch (transformers
    imports torchvision when it is installed; see :mod:`medprobe.encoders.extras`)."""
    if importlib.util.find_spec("torchvision") is not None:
        from medprobe.encoders.extras import import_torchvision

        import_torchvision()
    import transformers

    return transformers


def _mlp_ratio(a: TimmViT) -> int:
    """The transformers ``mlp_ratio`` (an integer in its config) giving timm's hidden width; Dinov2's SwiGLU
    keeps 2/3 of ``width * mlp_ratio`` rounded up to a multiple of 8 (UNI2-h: 4 -> 4096, Virchow2: 4 -> 3416)."""
    for r in range(1, 17):
        x = a.width * r
        if ((int(x * 2 / 3) + 7) // 8 * 8 if a.swiglu else x) == a.fc2_in:
            return r
    raise ConfigError(f"a {a.width}-wide {'SwiGLU ' if a.swiglu else ''}MLP of {a.fc2_in} hidden units has no "
                      "transformers Dinov2 equivalent")


def build_model(a: TimmViT, attn_implementation: str = "sdpa") -> torch.nn.Module:
    """The transformers model expressing ``a`` (random weights)."""
    tf = import_transformers()
    kind = a.kind
    common = dict(hidden_size=a.width, num_hidden_layers=a.depth, num_attention_heads=a.heads, patch_size=a.patch,
                  image_size=a.img_size, layer_norm_eps=a.eps, qkv_bias=True, hidden_act="gelu", num_channels=3)
    cfg: Any
    if kind in ("dinov2", "dinov2_reg"):
        kw = dict(common, mlp_ratio=_mlp_ratio(a), use_swiglu_ffn=a.swiglu, layerscale_value=1e-5)
        cfg = (tf.Dinov2WithRegistersConfig(num_register_tokens=a.reg_tokens, **kw) if kind == "dinov2_reg"
               else tf.Dinov2Config(**kw))
    elif kind == "vit_mae":
        cfg = tf.ViTMAEConfig(intermediate_size=a.mlp_hidden, mask_ratio=0.0, **common)
    else:
        cfg = tf.ViTConfig(intermediate_size=a.mlp_hidden, **common)
    cfg._attn_implementation = attn_implementation
    model: torch.nn.Module
    if kind == "dinov2_reg":
        model = tf.Dinov2WithRegistersModel(cfg)
    elif kind == "dinov2":
        model = tf.Dinov2Model(cfg)
    elif kind == "vit_mae":
        model = tf.ViTMAEModel(cfg)
    else:
        model = tf.ViTModel(cfg, add_pooling_layer=False)
    return model


def _block_prefix(own: Iterable[str], i: int) -> str:
    own = set(own)
    for p in (f"encoder.layer.{i}.", f"layers.{i}.", f"encoder.layers.{i}.", f"layer.{i}."):
        if any(k.startswith(p) for k in own):
            return p
    raise TypeError(f"cannot find block {i} in the transformers model")


def _pick(own: set[str], prefix: str, *names: str) -> str:
    for n in names:
        if f"{prefix}{n}.weight" in own or f"{prefix}{n}" in own:
            return prefix + n
    raise TypeError(f"none of {names} under {prefix!r} in the transformers model")


def to_transformers(sd: Mapping[str, torch.Tensor], a: TimmViT, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map a checked timm-layout state dict onto ``model``'s keys (see the module docstring)."""
    own_sd = model.state_dict()
    own = set(own_sd)
    c, r = a.width, a.reg_tokens
    f32 = {k: v.float() for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {"embeddings.cls_token": f32["cls_token"]}
    pos = f32["pos_embed"]
    if a.no_embed_class:
        cls_pos, patch_pos, reg_pos = torch.zeros(1, 1, c), pos, None
    else:
        cls_pos, reg_pos, patch_pos = pos[:, :1], pos[:, 1:1 + r], pos[:, 1 + r:]
    out["embeddings.position_embeddings"] = torch.cat([cls_pos, patch_pos], 1)
    if r:
        regs = f32["reg_token"]
        out["embeddings.register_tokens"] = regs + reg_pos if reg_pos is not None else regs
    for part in ("weight", "bias"):
        out[f"embeddings.patch_embeddings.projection.{part}"] = f32[f"patch_embed.proj.{part}"]
        out[f"layernorm.{part}"] = f32[f"norm.{part}"]
    for i in range(a.depth):
        b, t = f"blocks.{i}.", _block_prefix(own, i)
        norm1 = _pick(own, t, "norm1", "layernorm_before")
        norm2 = _pick(own, t, "norm2", "layernorm_after")
        q = _pick(own, t, "attention.q_proj", "attention.attention.query")
        k = _pick(own, t, "attention.k_proj", "attention.attention.key")
        v = _pick(own, t, "attention.v_proj", "attention.attention.value")
        o = _pick(own, t, "attention.o_proj", "attention.output.dense")
        for part in ("weight", "bias"):
            out[f"{norm1}.{part}"] = f32[f"{b}norm1.{part}"]
            out[f"{norm2}.{part}"] = f32[f"{b}norm2.{part}"]
            qw, kw, vw = f32[f"{b}attn.qkv.{part}"].chunk(3, 0)
            out[f"{q}.{part}"], out[f"{k}.{part}"], out[f"{v}.{part}"] = qw, kw, vw
            out[f"{o}.{part}"] = f32[f"{b}attn.proj.{part}"]
            fc1, fc2 = f32[f"{b}mlp.fc1.{part}"], f32[f"{b}mlp.fc2.{part}"]
            if a.swiglu:
                if f"{t}mlp.weights_in.{part}" in own:  # older transformers: packed like timm
                    out[f"{t}mlp.weights_in.{part}"], out[f"{t}mlp.weights_out.{part}"] = fc1, fc2
                else:
                    gate, up = fc1.chunk(2, 0)
                    out[f"{t}mlp.gate_proj.{part}"], out[f"{t}mlp.up_proj.{part}"] = gate, up
                    out[f"{t}mlp.down_proj.{part}"] = fc2
            else:
                out[f"{_pick(own, t, 'mlp.fc1', 'intermediate.dense')}.{part}"] = fc1
                out[f"{_pick(own, t, 'mlp.fc2', 'output.dense')}.{part}"] = fc2
        if a.layerscale:
            out[f"{t}layer_scale1.lambda1"] = f32[f"{b}ls1.gamma"]
            out[f"{t}layer_scale2.lambda1"] = f32[f"{b}ls2.gamma"]
    for key in own - set(out):  # not part of the network's forward (Dinov2's mask token for masked training)
        if key.endswith("mask_token"):
            out[key] = torch.zeros_like(own_sd[key], device="cpu")
    return out


def resample_pos(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """Patch position embeddings ``(1, old_h*old_w, C)`` at grid ``new`` as timm's ``dynamic_img_size`` does."""
    if tuple(old) == tuple(new):
        return pos
    c = pos.shape[-1]
    grid = pos.float().reshape(1, old[0], old[1], c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new, mode="bicubic", align_corners=False, antialias=True)
    return grid.permute(0, 2, 3, 1).reshape(1, -1, c).to(pos.dtype)


class TimmLayoutViT(Encoder):
    """A frozen timm-layout ViT on a transformers model: timm's embedding rule, transformers' blocks.

    ``cls[l]``: class token after the final norm; ``patch[l]``: patch tokens after the final norm, register
    tokens dropped. Any input size that is a multiple of the patch size (position embeddings resampled as
    timm's ``dynamic_img_size``)."""

    def __init__(self, spec: EncoderSpec, arch: TimmViT, model: torch.nn.Module) -> None:
        super().__init__()
        self.spec, self.arch = spec, arch
        self.model: Any = model.eval().requires_grad_(False)
        self.blocks = find_blocks(model)
        self.n_prefix = 1 + arch.reg_tokens

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        emb = self.model.embeddings
        proj = emb.patch_embeddings.projection
        t = proj(x.to(proj.weight.dtype))
        b, _, gh, gw = t.shape
        t = t.flatten(2).transpose(1, 2)
        pos = emb.position_embeddings
        t = t + resample_pos(pos[:, 1:], (self.arch.grid, self.arch.grid), (gh, gw))
        parts = [(emb.cls_token + pos[:, :1]).expand(b, -1, -1)]
        if self.arch.reg_tokens:
            parts.append(emb.register_tokens.expand(b, -1, -1))
        return torch.cat(parts + [t], 1), gh, gw

    def normed_tokens(self, x: torch.Tensor, layers: Sequence[int]) -> tuple[dict[int, torch.Tensor], int, int]:
        """All tokens (class, registers, patches) after the final norm at each of ``layers``; grid size."""
        self.check_input_size(x.shape[2], x.shape[3])
        want = set(layers)
        hs, gh, gw = self._embed(x)
        norm = self.model.layernorm
        out: dict[int, torch.Tensor] = {}
        for i in range(max(want) + 1):
            res = self.blocks[i](hs)
            hs = res[0] if isinstance(res, tuple) else res
            if i in want:
                out[i] = norm(hs)
        return out, gh, gw

    def forward_features(self, x: torch.Tensor, layers: Sequence[int]) -> EncoderOutput:
        toks, gh, gw = self.normed_tokens(x, layers)
        cls: dict[int, torch.Tensor] = {}
        patch: dict[int, torch.Tensor] = {}
        for i, t in toks.items():
            cls[i] = t[:, 0]
            p = t[:, self.n_prefix:]
            patch[i] = p.reshape(p.shape[0], gh, gw, p.shape[-1]).permute(0, 3, 1, 2)
        return EncoderOutput(cls=cls, patch=patch)


# ---------------------------------------------------------------- weights sources


def weights_file(ref: Any, spec: EncoderSpec) -> Path:
    """The one weights file of a ``file`` / ``hf_dir`` / ``hub`` source, never downloading anything."""
    if ref.kind == "file":
        return Path(str(ref.location))
    if ref.kind == "hf_dir":
        d = Path(str(ref.location))
        for name in WEIGHT_FILES:
            if (d / name).is_file():
                return d / name
        raise WeightsError(f"holds none of {', '.join(WEIGHT_FILES)} ({spec.name} weights)", d)
    if ref.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        cache = os.environ.get("HF_HUB_CACHE") or None  # as medprobe's weights search; None: the hub default
        for name in WEIGHT_FILES:
            hit = try_to_load_from_cache(str(ref.location), name, cache_dir=cache)
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit)
        raise WeightsError(f"not in the local Hugging Face cache (medprobe never downloads {spec.name}): download "
                           f"{', '.join(WEIGHT_FILES)} with huggingface-cli and pass the folder or file",
                           str(ref.location))
    raise WeightsError(f"{spec.name} cannot load {ref.kind} weights", ref.location)


def file_id(path: Path) -> str:
    from medprobe.encoders.weights import file_sha256

    return f"sha256:{file_sha256(path)}"


__all__ = ["TimmLayoutViT", "TimmViT", "build_model", "check_layout", "file_id", "import_transformers",
           "resample_pos", "timm_keys", "timm_params", "to_transformers", "weights_file"]
