"""DINOv3 and DINOv2 backbones on transformers' ``DINOv3ViTModel`` / ``Dinov2Model`` (no torchvision).

The forward is run block by block so that any set of blocks can be tapped in one pass; the final
LayerNorm is applied to every tapped block and register tokens are dropped, as DINOv3's own dense
evaluations do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from medprobe.encoders.base import Encoder, EncoderOutput
from medprobe.encoders.registry import EncoderSpec


def build_hf_model(spec: EncoderSpec, attn_implementation: str = "sdpa") -> torch.nn.Module:
    """Instantiate the transformers model of ``spec`` with random weights."""
    kw: dict[str, Any] = dict(spec.hf_config)
    if spec.family == "dinov3":
        from transformers import DINOv3ViTConfig, DINOv3ViTModel

        cfg = DINOv3ViTConfig(**kw)
        cls: Any = DINOv3ViTModel
    elif spec.family == "dinov2_reg":
        from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

        cfg = Dinov2WithRegistersConfig(**kw)
        cls = Dinov2WithRegistersModel
    else:
        from transformers import Dinov2Config, Dinov2Model

        cfg = Dinov2Config(**kw)
        cls = Dinov2Model
    cfg._attn_implementation = attn_implementation
    return cls(cfg)


def _blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of transformer blocks, whatever the transformers version nests it under."""
    for path in ("model.layer", "layer", "encoder.layer"):
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

    def __init__(self, spec: EncoderSpec, model: torch.nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.model = model.eval().requires_grad_(False)
        self.blocks = _blocks(model)
        cfg = model.config
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
        return self.model.norm if self.spec.family == "dinov3" else self.model.layernorm

    def forward_features(self, x: torch.Tensor, layers: Sequence[int]) -> EncoderOutput:
        b, _, h, w = x.shape
        self.check_input_size(h, w)
        gh, gw = h // self.patch_size, w // self.patch_size
        want = set(layers)
        last = max(want)
        m = self.model
        kwargs: dict[str, Any] = {}
        if self.spec.family == "dinov3":
            x = x.to(m.embeddings.patch_embeddings.weight.dtype)
            hs = m.embeddings(x)
            kwargs["position_embeddings"] = m.rope_embeddings(x)
        else:
            hs = m.embeddings(x.to(m.embeddings.patch_embeddings.projection.weight.dtype))
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
