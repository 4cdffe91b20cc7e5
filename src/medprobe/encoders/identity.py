"""Encoder ``none``: the preprocessed image itself average-pooled to the patch grid (image-only baseline).

Registers the encoder family ``none``: no weights, one output layer, no cost to count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from medprobe.encoders.base import Encoder, EncoderInfo, EncoderOutput
from medprobe.encoders.families import EncoderFamily, register_family
from medprobe.encoders.registry import EncoderSpec

if TYPE_CHECKING:
    from medprobe.encoders.weights import WeightsRef


class IdentityEncoder(Encoder):
    """No learned features: tells what an encoder adds over the image alone."""

    pretrained = False

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.spec = spec

    @property
    def depth(self) -> int:
        return 1

    def forward_features(self, x: torch.Tensor, layers: Sequence[int]) -> EncoderOutput:
        self.check_input_size(x.shape[2], x.shape[3])
        grid = F.avg_pool2d(x.float(), self.patch_size)
        return EncoderOutput(cls={0: x.float().mean((2, 3))}, patch={0: grid})


def _build(spec: EncoderSpec, ref: WeightsRef, options: Mapping[str, Any]) -> Encoder:
    enc = IdentityEncoder(spec)
    enc.weights_id, enc.pretrained = "none", False
    return enc


def _identity(spec: EncoderSpec, ref: WeightsRef) -> EncoderInfo | None:
    return EncoderInfo(spec, "none", False)


register_family(EncoderFamily(
    name="none", build=_build, identity=_identity, needs_weights=False, blockless=True,
    description="no encoder: the image average-pooled to the patch grid (baseline)",
))
