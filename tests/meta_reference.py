"""Independent reference forward of Meta's DINOv3 ViT, run directly on a Meta-layout state dict.

Written from the architecture (DINOv3 paper and Meta's model description), in plain torch, for tests only:
no transformers and no medprobe code. Computes in float64 by default so that it is the exact side of
every comparison.

Architecture, as implemented here:

* tokens: 16x16 patch conv (``patch_embed.proj``), then ``[cls_token, storage_tokens (R), patches]``;
* each block (pre-norm, LayerScale): ``x + ls1 * attn(norm1(x))``, then ``x + ls2 * ffn(norm2(x))``;
* attention: fused ``qkv`` linear (rows q | k | v; the bias multiplied by ``qkv.bias_mask`` when the
  checkpoint has one), heads of ``D / heads``, RoPE on the queries and keys of patch tokens only,
  softmax(q k^T / sqrt(d_head)) v, output ``proj``;
* RoPE (Meta's RopePositionEmbedding, normalize_coords="separate"): patch centres ``(i + 0.5) / h`` and
  ``(j + 0.5) / w`` mapped to [-1, 1]; ``periods`` taken from the checkpoint (base-100 formula:
  ``100 ** (2 k / (d_head / 2))``, k < d_head / 4); angles ``2 pi coord / period`` for the row coordinate
  then the column coordinate (d_head / 2 values), repeated twice; ``x cos + rotate_half(x) sin`` where
  ``rotate_half([a, b]) = [-b, a]``;
* FFN: ``fc2(gelu(fc1(x)))`` (exact erf GELU), or SwiGLU ``w3(silu(w1(x)) * w2(x))``;
* outputs: the final LayerNorm (``norm``, eps 1e-5) applied to each tapped block's tokens; CLS is token 0,
  the patch grid drops CLS and the storage (register) tokens and is returned as ``(B, C, h, w)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    y = x @ weight.transpose(0, 1)
    return y if bias is None else y + bias


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _silu(x: torch.Tensor) -> torch.Tensor:
    return x / (1.0 + torch.exp(-x))


def rope_sin_cos(periods: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sin, cos)``, each ``(h * w, d_head)``, for the patch grid in row-major order."""
    dt = periods.dtype
    ys = (torch.arange(h, dtype=dt) + 0.5) / h * 2.0 - 1.0
    xs = (torch.arange(w, dtype=dt) + 0.5) / w * 2.0 - 1.0
    cy = ys[:, None].expand(h, w).reshape(-1)  # row coordinate of each patch
    cx = xs[None, :].expand(h, w).reshape(-1)  # column coordinate of each patch
    ang_y = 2.0 * math.pi * cy[:, None] / periods[None, :]
    ang_x = 2.0 * math.pi * cx[:, None] / periods[None, :]
    ang = torch.cat([ang_y, ang_x], dim=-1)
    ang = torch.cat([ang, ang], dim=-1)
    return torch.sin(ang), torch.cos(ang)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _attention(x: torch.Tensor, sd: dict[str, torch.Tensor], pre: str, heads: int, sin: torch.Tensor,
               cos: torch.Tensor) -> torch.Tensor:
    b, n, d = x.shape
    dh = d // heads
    bias = sd.get(pre + "qkv.bias")
    if bias is not None and (pre + "qkv.bias_mask") in sd:
        bias = bias * sd[pre + "qkv.bias_mask"]
    qkv = _linear(x, sd[pre + "qkv.weight"], bias)  # (B, N, 3D): q | k | v
    q, k, v = (qkv[..., j * d:(j + 1) * d].reshape(b, n, heads, dh).transpose(1, 2) for j in range(3))
    n_pre = n - sin.shape[0]

    def rope(t: torch.Tensor) -> torch.Tensor:
        p = t[:, :, n_pre:]
        return torch.cat([t[:, :, :n_pre], p * cos + _rotate_half(p) * sin], dim=2)

    q, k = rope(q), rope(k)
    att = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(dh), dim=-1)
    o = (att @ v).transpose(1, 2).reshape(b, n, d)
    return _linear(o, sd[pre + "proj.weight"], sd.get(pre + "proj.bias"))


def _ffn(x: torch.Tensor, sd: dict[str, torch.Tensor], pre: str) -> torch.Tensor:
    if (pre + "w1.weight") in sd:  # SwiGLU
        gate = _linear(x, sd[pre + "w1.weight"], sd.get(pre + "w1.bias"))
        up = _linear(x, sd[pre + "w2.weight"], sd.get(pre + "w2.bias"))
        return _linear(_silu(gate) * up, sd[pre + "w3.weight"], sd.get(pre + "w3.bias"))
    hid = _gelu(_linear(x, sd[pre + "fc1.weight"], sd.get(pre + "fc1.bias")))
    return _linear(hid, sd[pre + "fc2.weight"], sd.get(pre + "fc2.bias"))


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, heads: int, layers: Sequence[int],
                      eps: float = 1e-5, dtype: torch.dtype = torch.float64
                      ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Meta DINOv3 ViT forward of ``x`` ``(B, 3, H, W)``; returns ``(cls, patch)`` dicts keyed by block index.

    ``cls[l]`` is ``(B, D)``, ``patch[l]`` is ``(B, D, H / p, W / p)``, both after the final norm.
    """
    sd = {k: v.detach().to(dtype) for k, v in sd.items()}
    x = x.to(dtype)
    pw = sd["patch_embed.proj.weight"]
    p = pw.shape[-1]
    b, _, hh, ww = x.shape
    h, w = hh // p, ww // p
    d = pw.shape[0]
    # patch embedding as a matmul over non-overlapping p x p patches (row-major grid)
    patches = x.reshape(b, 3, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, 3 * p * p)
    tok = _linear(patches, pw.reshape(d, -1), sd.get("patch_embed.proj.bias"))
    prefix = [sd["cls_token"].reshape(1, 1, d).expand(b, 1, d)]
    if "storage_tokens" in sd:
        st = sd["storage_tokens"]
        prefix.append(st.reshape(1, -1, d).expand(b, -1, d))
    t = torch.cat([*prefix, tok], dim=1)
    n_prefix = t.shape[1] - h * w
    sin, cos = rope_sin_cos(sd["rope_embed.periods"], h, w)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    want = {i + depth if i < 0 else i for i in layers}
    cls: dict[int, torch.Tensor] = {}
    grid: dict[int, torch.Tensor] = {}
    for i in range(max(want) + 1):
        pre = f"blocks.{i}."
        a = _attention(_layer_norm(t, sd[pre + "norm1.weight"], sd[pre + "norm1.bias"], eps), sd, pre + "attn.",
                       heads, sin, cos)
        t = t + sd[pre + "ls1.gamma"] * a
        f = _ffn(_layer_norm(t, sd[pre + "norm2.weight"], sd[pre + "norm2.bias"], eps), sd, pre + "mlp.")
        t = t + sd[pre + "ls2.gamma"] * f
        if i in want:
            o = _layer_norm(t, sd["norm.weight"], sd["norm.bias"], eps)
            cls[i] = o[:, 0]
            grid[i] = o[:, n_prefix:].reshape(b, h, w, d).permute(0, 3, 1, 2)
    return cls, grid
