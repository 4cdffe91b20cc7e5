"""Map Meta's original DINOv3 ViT checkpoints (``dinov3_<arch>_pretrain_<data>-<hash8>.pth``) onto the
key layout of transformers' ``DINOv3ViTModel``.

Meta layout (``dinov3.models.vision_transformer.DinoVisionTransformer``) -> transformers layout:

==========================================  ==================================================
``cls_token`` (1, 1, D)                     ``embeddings.cls_token``
``storage_tokens`` (1, R, D)                ``embeddings.register_tokens``
``mask_token`` (1, D)                       ``embeddings.mask_token`` (1, 1, D)
``patch_embed.proj.{weight,bias}``          ``embeddings.patch_embeddings.{weight,bias}``
``blocks.i.norm{1,2}.*``                    ``layer.i.norm{1,2}.*``
``blocks.i.attn.qkv.weight`` (3D, D)        ``layer.i.attention.{q,k,v}_proj.weight`` (rows q | k | v)
``blocks.i.attn.qkv.bias`` (3D)             ``layer.i.attention.{q,v}_proj.bias`` (k part masked)
``blocks.i.attn.proj.*``                    ``layer.i.attention.o_proj.*``
``blocks.i.ls{1,2}.gamma``                  ``layer.i.layer_scale{1,2}.lambda1``
``blocks.i.mlp.fc1.*`` / ``fc2.*``          ``layer.i.mlp.up_proj.*`` / ``down_proj.*`` (GELU MLP)
``blocks.i.mlp.w1.*`` / ``w2.*`` / ``w3.*`` ``layer.i.mlp.gate_proj.*`` / ``up_proj.*`` / ``down_proj.*``
``norm.*``                                  ``norm.*``
==========================================  ==================================================

SwiGLU: Meta computes ``w3(silu(w1(x)) * w2(x))`` and transformers ``down(silu(gate(x)) * up(x))``, so
``w1`` is the gate and ``w2`` the up projection.

Keys dropped on purpose (:data:`DROPPED_KEYS`), each checked first so that nothing that changes the
features is lost:

* ``rope_embed.periods`` -- RoPE periods, a buffer; transformers recomputes them from ``rope_theta``
  (checked to equal ``rope_theta ** (4 k / head_dim)``);
* ``blocks.i.attn.qkv.bias_mask`` -- buffer that zeroes the key bias (checked to be 1 | 0 | 1);
  transformers has no key bias (``key_bias=False``). A key bias that is not masked and not zero is refused
  (with RoPE on keys it would change the attention);
* ``local_cls_norm.{weight,bias}`` -- the norm of local-crop CLS tokens (ViT-L SAT-493M, ViT-7B), used
  only in training.

Every other key that is not in the table above is passed through unchanged so that
:func:`medprobe.encoders.weights.load_strict` reports it as unexpected (e.g. ``cls_norm.*`` from a model
with untied CLS/patch norms, which transformers cannot represent).
"""

from __future__ import annotations

import re

import torch

from medprobe.encoders.spec import EncoderSpec
from medprobe.errors import WeightsError

DROPPED_KEYS = ("rope_embed.periods", "blocks.<i>.attn.qkv.bias_mask", "local_cls_norm.weight",
                "local_cls_norm.bias")

_TOP = {
    "cls_token": "embeddings.cls_token",
    "storage_tokens": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}
_BLOCK = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attn.proj.weight": "attention.o_proj.weight",
    "attn.proj.bias": "attention.o_proj.bias",
    "ls1.gamma": "layer_scale1.lambda1",
    "ls2.gamma": "layer_scale2.lambda1",
    "mlp.fc1.weight": "mlp.up_proj.weight",
    "mlp.fc1.bias": "mlp.up_proj.bias",
    "mlp.fc2.weight": "mlp.down_proj.weight",
    "mlp.fc2.bias": "mlp.down_proj.bias",
    "mlp.w1.weight": "mlp.gate_proj.weight",
    "mlp.w1.bias": "mlp.gate_proj.bias",
    "mlp.w2.weight": "mlp.up_proj.weight",
    "mlp.w2.bias": "mlp.up_proj.bias",
    "mlp.w3.weight": "mlp.down_proj.weight",
    "mlp.w3.bias": "mlp.down_proj.bias",
}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
_TRAIN_ONLY = ("local_cls_norm.weight", "local_cls_norm.bias")


def is_meta_state_dict(sd: dict[str, torch.Tensor]) -> bool:
    """True for a state dict in Meta's DINOv3 layout (``blocks.N.attn.qkv.weight`` / ``storage_tokens``)."""
    return "storage_tokens" in sd or "rope_embed.periods" in sd or any(
        k.startswith("blocks.") and k.endswith(".attn.qkv.weight") for k in sd)


def _check_periods(periods: torch.Tensor, spec: EncoderSpec) -> None:
    cfg = spec.hf_config
    head_dim = int(cfg.get("hidden_size", spec.width)) // int(cfg["num_attention_heads"])
    base = float(cfg.get("rope_theta", 100.0))
    k = torch.arange(head_dim // 4, dtype=torch.float64)
    expected = base ** (4.0 * k / head_dim)
    got = periods.detach().to(torch.float64).flatten()
    # loose tolerance: Meta may store the buffer in bf16; a different base or min/max periods differ by far more
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-2, atol=0.0):
        raise WeightsError(f"rope_embed.periods {tuple(periods.shape)} are not the RoPE periods of base {base:g} "
                           f"and head dim {head_dim} that {spec.name} (transformers DINOv3ViTModel) computes")


def _split_qkv_bias(i: int, bias: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    d = bias.shape[0] // 3
    if mask is not None:
        if mask.shape != bias.shape:
            raise WeightsError(f"blocks.{i}.attn.qkv.bias_mask has shape {tuple(mask.shape)}, "
                               f"expected {tuple(bias.shape)}")
        m = mask.detach().to(torch.float64)
        if not (bool((m[:d] == 1).all()) and bool((m[d:2 * d] == 0).all()) and bool((m[2 * d:] == 1).all())):
            raise WeightsError(f"blocks.{i}.attn.qkv.bias_mask is not the DINOv3 key-bias mask (1 | 0 | 1); "
                               "transformers' DINOv3ViTModel cannot represent it")
    elif bool((bias[d:2 * d] != 0).any()):
        raise WeightsError(f"blocks.{i}.attn.qkv.bias has a non-zero key bias and no qkv.bias_mask; "
                           "transformers' DINOv3ViTModel has no key bias")
    return bias[:d], bias[2 * d:]


def convert_meta_state_dict(sd: dict[str, torch.Tensor], spec: EncoderSpec) -> dict[str, torch.Tensor]:
    """Return ``sd`` (Meta's DINOv3 ViT layout) in transformers' ``DINOv3ViTModel`` layout (blocks as ``layer.N``).

    Raises :class:`WeightsError` (without a file; the caller adds it) when a dropped buffer says that the
    checkpoint computes something transformers' model cannot (other RoPE periods, an unmasked key bias).
    Unknown keys are kept as they are, for the strict loader to report.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in _TOP:
            out[_TOP[key]] = value
        elif key == "mask_token":
            out["embeddings.mask_token"] = value.reshape(1, 1, -1) if value.dim() == 2 else value
        elif key == "rope_embed.periods":
            _check_periods(value, spec)
        elif key in _TRAIN_ONLY:
            continue
        elif (m := _BLOCK_KEY.match(key)) is None:
            out[key] = value  # unknown: load_strict reports it
        else:
            i, rest = int(m.group(1)), m.group(2)
            pre = f"layer.{i}."
            if rest in _BLOCK:
                out[pre + _BLOCK[rest]] = value
            elif rest == "attn.qkv.weight":
                q, k, v = value.chunk(3, dim=0)
                out[pre + "attention.q_proj.weight"] = q
                out[pre + "attention.k_proj.weight"] = k
                out[pre + "attention.v_proj.weight"] = v
            elif rest == "attn.qkv.bias":
                q_b, v_b = _split_qkv_bias(i, value, sd.get(f"blocks.{i}.attn.qkv.bias_mask"))
                out[pre + "attention.q_proj.bias"] = q_b
                out[pre + "attention.v_proj.bias"] = v_b
            elif rest == "attn.qkv.bias_mask":
                if f"blocks.{i}.attn.qkv.bias" not in sd:
                    out[key] = value  # a mask without a bias: not a DINOv3 layout, report it
            else:
                out[key] = value  # unknown block key: load_strict reports it
    return {k: v.contiguous() for k, v in out.items()}


__all__ = ["DROPPED_KEYS", "convert_meta_state_dict", "is_meta_state_dict"]
