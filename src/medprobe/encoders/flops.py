"""FLOP counting for frozen encoders (batch-1 inference cost, reported next to every result).

Convention: **FLOPs = 2 x multiply-accumulates.** A matmul ``(m x k) @ (k x n)`` counts ``2*m*k*n``, a
convolution ``2 * C_in * k_h * k_w * C_out`` per output position. Only matmul-like ops are counted
(linear, conv, bmm, attention); norms, softmax, activations and element-wise ops are ignored, which is
the usual convention and under-counts a ViT by well under 1 %.

Counting uses :class:`torch.utils.flop_counter.FlopCounterMode` under ``torch.inference_mode``. In
torch 2.x that counter has no formula for the fused CPU attention kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``) that ``F.scaled_dot_product_attention`` dispatches
to on CPU, so attention would silently be missed. We register our own formula for it (and for the
backend-agnostic ``_fused_attention_overrideable``): ``2*B*H*Lq*Lk*d`` for ``Q K^T`` plus ``2*B*H*Lq*Lk*d_v``
for ``softmax(.) V`` -- the same count eager attention gives through its two ``bmm``. The model is not
modified (no switch to eager attention is needed). Models on the ``meta`` device are counted without
computing anything, which is the fast way to cost large encoders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "gflops_per_image", "attention_flops"]


def attention_flops(query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int],
                    *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of ``softmax(Q K^T) V`` for ``(B, H, L, d)`` shaped q/k/v (grouped KV heads allowed)."""
    *batch, lq, d = query_shape
    lk, dv = key_shape[-2], value_shape[-1]
    bh = 1
    for s in batch:  # (B, H) of the query; KV heads broadcast to H
        bh *= int(s)
    return 2 * bh * lq * lk * d + 2 * bh * lq * lk * dv


def _custom_mapping() -> dict[Any, Any]:
    aten = torch.ops.aten
    mapping: dict[Any, Any] = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu",
                 "_scaled_dot_product_fused_attention_overrideable"):
        if hasattr(aten, name):
            mapping[getattr(aten, name)] = attention_flops
    return mapping


def count_flops(model: torch.nn.Module, example: torch.Tensor) -> int:
    """Total FLOPs (2 x MACs) of one ``model(example)`` forward pass, counted in eval and inference mode
    (each submodule's train/eval mode is restored afterwards)."""
    counter = FlopCounterMode(display=False, custom_mapping=_custom_mapping())
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.inference_mode(), counter:
            model(example)
    finally:
        for m, training in modes:  # restore each submodule's own mode
            m.training = training
    return int(counter.get_total_flops())


def _device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, (p.dtype if p.dtype.is_floating_point else torch.float32)
    return torch.device("cpu"), torch.float32


class _Tapped(torch.nn.Module):
    """``forward_features(x, layers)`` of an encoder as a plain module call (what extraction runs)."""

    def __init__(self, encoder: torch.nn.Module, layers: Sequence[int]) -> None:
        super().__init__()
        self.encoder = encoder
        self.layers = tuple(int(v) for v in layers)

    def forward(self, x: torch.Tensor) -> Any:
        return self.encoder.forward_features(x, self.layers)  # type: ignore[operator]


def gflops_per_image(encoder_or_model: torch.nn.Module, resolution: int | tuple[int, int], channels: int = 3,
                     layers: Sequence[int] | None = None) -> float:
    """GFLOPs (1e9 FLOPs, 2 x MACs) to encode one ``channels x H x W`` image (batch 1).

    Accepts a medprobe :class:`~medprobe.encoders.base.Encoder` (its plain call: last-layer features; the
    input size is validated against the patch size) or any ``nn.Module`` taking a ``(1, C, H, W)`` tensor
    (transformers vision models take ``pixel_values`` first). With ``layers`` an encoder is costed as
    extraction runs it: ``forward_features`` up to the deepest tapped block, so early layers cost less.
    Encoders running outside torch (ONNX) count as 0.
    """
    if isinstance(resolution, int):
        h, w = resolution, resolution
    else:
        h, w = int(resolution[0]), int(resolution[1])
    check = getattr(encoder_or_model, "check_input_size", None)
    if callable(check):
        check(h, w)
    device, dtype = _device_dtype(encoder_or_model)
    example = torch.zeros(1, channels, h, w, device=device, dtype=dtype)
    if layers is not None and callable(getattr(encoder_or_model, "forward_features", None)):
        return count_flops(_Tapped(encoder_or_model, layers), example) / 1e9
    return count_flops(encoder_or_model, example) / 1e9


_SPEC_GFLOPS: dict[tuple[str, int, int, tuple[int, ...] | None], float | None] = {}


def spec_gflops(name: str, resolution: int | tuple[int, int], layers: Sequence[int] | None = None
                ) -> float | None:
    """GFLOPs per image of a registered encoder, as its family counts it (transformers ViTs: on a
    ``meta``-device model, no weights, no compute); ``layers`` (0-based blocks) costs the forward up to the
    deepest one, as extraction runs it (default: the full depth). ``None`` for families that cannot count
    (ONNX, none). Memoised."""
    from medprobe.encoders.families import get_family
    from medprobe.encoders.registry import get_spec

    h, w = (resolution, resolution) if isinstance(resolution, int) else (int(resolution[0]), int(resolution[1]))
    taps = tuple(int(v) for v in layers) if layers is not None else None
    key = (name, h, w, taps)
    if key not in _SPEC_GFLOPS:
        spec = get_spec(name)
        _SPEC_GFLOPS[key] = get_family(spec.family).gflops(spec, (h, w), taps)
    return _SPEC_GFLOPS[key]
