"""Encoder ``none``: the preprocessed image itself average-pooled to the patch grid (image-only baseline)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medprobe.encoders.base import Encoder, EncoderOutput
from medprobe.encoders.registry import EncoderSpec


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
