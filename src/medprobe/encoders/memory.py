"""What one encoder forward costs in memory: a :class:`MemoryModel` per encoder family.

Each :class:`~medprobe.encoders.families.EncoderFamily` declares a ``memory(spec, shape)`` function (a
registration, not a name switch): ``shape`` is the input of one item, ``(H, W)`` for a 2D image or tile and
``(D, H, W)`` for a whole volume. It returns the bytes of the parameters and the peak bytes one item adds to a
batch in an inference forward (no gradients: a block's intermediates are freed when it ends, so the peak is
the input, the tapped outputs kept for the caller, the residual stream and the largest block-internal
temporaries). The built-in models:

- :func:`vit_memory` -- a global-attention ViT (DINOv2/v3, CLIP, MAE, pathology ViTs): ``N`` tokens of
  width ``D``, ``heads`` attention maps of ``N x N`` (scores and softmax, as the eager / math path holds
  them), the MLP's hidden ``N x M`` twice (linear, activation).
- :func:`windowed_vit_memory` -- SAM's image encoder: 14 x 14 windowed attention in most blocks (the grid is
  padded to whole windows) and global attention in a few, each with *decomposed relative positions*:
  transformers' ``get_decomposed_rel_pos`` builds ``rel_h`` / ``rel_w`` (``B*heads x hw x (h + w)``) and adds
  them to the full ``B*heads x hw x hw`` attention map, so a global block holds about three maps at once (the
  scores, their sum with the position terms, the softmax). At 1024 px (a 64 x 64 grid) one map is
  12 x 4096^2 x 4 bytes = 805 MB per image.
- :func:`cnn_memory` -- CNN stages (ResNet, ConvNeXt): the widest early stage holds a few
  input-sized-times-channels maps; about 48 input-sized float32 planes per image.
- :func:`volume_memory` -- 3D encoders (Swin UNETR, CT-ViT): about 200 input-sized float32 activations per
  volume (Swin's stage-0 window attention alone holds ~140).

The models are deliberately on the high side (float32 activations even under autocast); the engine confirms
them on the first batch by measurement (:class:`medprobe.features.common.Runner`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from medprobe.encoders.spec import EncoderSpec

F32 = 4
TAPS_KEPT = 4  # tapped block outputs held until the forward ends ("four" taps)


@dataclass(frozen=True)
class MemoryModel:
    """Bytes of the parameters, peak bytes one item adds to a batch, and what the model assumed (``why``)."""

    params: int
    per_item: int
    why: str = ""

    def need(self, batch: int) -> int:
        """Bytes a forward of ``batch`` items needs (parameters + activations)."""
        return int(self.params + max(int(batch), 1) * self.per_item)

    def fits(self, budget: int, cap: int) -> int:
        """The largest batch in ``1 .. cap`` whose need fits ``budget`` (0: not even one item)."""
        room = budget - self.params
        if room < self.per_item:
            return 0
        return int(min(cap, room // max(self.per_item, 1)))


MemoryFn = Callable[[EncoderSpec, Sequence[int]], MemoryModel]


def _cfg(spec: EncoderSpec, *names: str, default: int) -> int:
    for n in names:
        v = spec.hf_config.get(n) if spec.hf_config else None
        if isinstance(v, (int, float)) and v:
            return int(v)
    return default


def _params(spec: EncoderSpec) -> int:
    return int(float(spec.params_m or 0.0) * 1e6 * F32)


def _grid(spec: EncoderSpec, shape: Sequence[int]) -> tuple[int, int]:
    p = max(int(spec.patch_size or 16), 1)
    h, w = int(shape[-2]), int(shape[-1])
    return max(h // p, 1), max(w // p, 1)


def _heads_mlp(spec: EncoderSpec) -> tuple[int, int, int]:
    d = max(int(spec.width or 0), 3)
    heads = _cfg(spec, "num_attention_heads", "num_heads", "heads", default=max(d // 64, 1))
    ratio = spec.hf_config.get("mlp_ratio") if spec.hf_config else None
    mlp = _cfg(spec, "intermediate_size", "mlp_dim", "ffn", default=int(d * float(ratio or 4)))
    return d, heads, mlp


def vit_memory(spec: EncoderSpec, shape: Sequence[int]) -> MemoryModel:
    """A ViT with global attention over ``(H/p)(W/p) + 1 + registers`` tokens."""
    gh, gw = _grid(spec, shape)
    n = gh * gw + 1 + int(spec.n_registers or 0)
    d, heads, mlp = _heads_mlp(spec)
    attn = 3 * n * d + 2 * heads * n * n + n * d
    ffn = 2 * n * mlp
    floats = 2 * 3 * int(shape[-2]) * int(shape[-1]) + max(attn, ffn) + (2 + TAPS_KEPT) * n * d
    return MemoryModel(_params(spec), floats * F32, f"ViT: {n} tokens x {d}, {heads} heads of {n}x{n}")


def windowed_vit_memory(spec: EncoderSpec, shape: Sequence[int]) -> MemoryModel:
    """SAM's encoder: windowed blocks (padded to whole windows) and global blocks, both with decomposed
    relative positions added to the full attention map."""
    gh, gw = _grid(spec, shape)
    d, heads, mlp = _heads_mlp(spec)
    ws = _cfg(spec, "window_size", default=14)
    n = gh * gw
    hp, wp = math.ceil(gh / ws) * ws, math.ceil(gw / ws) * ws
    windows = (hp // ws) * (wp // ws)
    maps_w = windows * heads * (ws * ws) ** 2 + 2 * windows * heads * ws * ws * 2 * ws
    maps_g = heads * n * n + heads * n * (gh + gw)
    has_global = bool(spec.hf_config.get("global_attn_indexes", [1])) if spec.hf_config else True
    attn = 3 * max(maps_w, maps_g if has_global else 0) + 4 * windows * ws * ws * d
    ffn = 2 * n * mlp
    neck = 4 * n * max(_cfg(spec, "output_channels", default=256), 1)
    floats = 2 * 3 * int(shape[-2]) * int(shape[-1]) + max(attn, ffn, neck) + (2 + TAPS_KEPT) * n * d
    return MemoryModel(_params(spec), floats * F32,
                       f"windowed ViT: {gh}x{gw} grid, {windows} windows of {ws}x{ws}, global maps "
                       f"{heads}x{n}x{n} with decomposed rel-pos")


def cnn_memory(spec: EncoderSpec, shape: Sequence[int]) -> MemoryModel:
    """CNN stages: about 48 input-sized float32 planes per image at the widest stage."""
    h, w = int(shape[-2]), int(shape[-1])
    return MemoryModel(_params(spec), 48 * 3 * h * w * F32, "CNN: ~48 input-sized planes per image")


def volume_memory(spec: EncoderSpec, shape: Sequence[int]) -> MemoryModel:
    """3D encoders: about 200 input-sized float32 activations per volume."""
    vox = int(math.prod(int(s) for s in shape))
    return MemoryModel(_params(spec), 200 * vox * F32, "3D: ~200 input-sized activations per volume")


def ctvit_memory(spec: EncoderSpec, shape: Sequence[int]) -> MemoryModel:
    """CTViT (CT-CLIP): ``(D/pt) x (H/p) x (W/p)`` tokens; spatial attention within each slab (``heads x hw x hw``
    per slab), temporal attention per position, and the last tap's cosine codebook search (``tokens x codebook``
    similarities); six input-sized copies (the volume, its patchified copy, the preprocessing's)."""
    d, h, w = (int(s) for s in shape[-3:])
    p, pt = _cfg(spec, "patch_size", default=20), _cfg(spec, "temporal_patch_size", default=10)
    t, gh, gw = max(d // pt, 1), max(h // p, 1), max(w // p, 1)
    n = t * gh * gw
    dim = max(int(spec.width or 0), 1)
    heads = _cfg(spec, "heads", default=8)
    inner = heads * _cfg(spec, "dim_head", default=64)
    attn = 3 * max(t * heads * (gh * gw) ** 2, gh * gw * heads * t * t) + 4 * n * inner
    ffn = 2 * n * 4 * dim
    vq = 2 * n * _cfg(spec, "codebook_size", default=8192)
    floats = 6 * d * h * w + max(attn, ffn, vq) + (2 + TAPS_KEPT) * n * dim
    return MemoryModel(_params(spec), floats * F32,
                       f"CTViT: {t}x{gh}x{gw} tokens x {dim}, {heads} heads over {gh * gw} per slab, "
                       f"codebook search")


def pixels_memory(spec: EncoderSpec, shape: Sequence[int]) -> MemoryModel:
    """No network (pixels on the patch grid): the input and a pooled copy."""
    h, w = int(shape[-2]), int(shape[-1])
    return MemoryModel(0, 4 * 3 * h * w * F32, "pixels: the input and its pooled copy")


__all__ = ["MemoryFn", "MemoryModel", "cnn_memory", "ctvit_memory", "pixels_memory", "vit_memory", "volume_memory",
           "windowed_vit_memory"]
