"""Encoder ``none``: no learned features, the image itself (the baseline that tells what an encoder adds).

* ``cls`` (the vector classification heads read): the preprocessed image's **pixels on the patch grid** of
  the chosen resolution -- each channel area-averaged over every 16 x 16 patch, flattened channel-major
  (``3 * H/16 * W/16`` values: 588 at 224 px, 14 x 14 per channel), as the field's pixel baselines (logistic
  regression on a small image). A 28 x 28 grid is ``preprocess.resolution: 448``.
* ``patch`` (what dense heads and registration read): the same grid as a ``(3, H/16, W/16)`` map.
* ``mean`` (the mean patch token): the three channel means.

Registers the encoder family ``none`` and the encoder ``none``: no weights, one output layer, no cost to
count. Its weights id is ``none:pixel-grid`` (the cache and every result row say which baseline made the
features).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from medprobe.encoders.base import Encoder, EncoderInfo, EncoderOutput
from medprobe.encoders.families import EncoderFamily, register_family
from medprobe.encoders.memory import pixels_memory
from medprobe.encoders.registry import register
from medprobe.encoders.spec import EncoderSpec

if TYPE_CHECKING:
    from medprobe.encoders.weights import WeightsRef

WEIGHTS_ID = "none:pixel-grid"


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
        return EncoderOutput(cls={0: grid.flatten(1)}, patch={0: grid})


def _build(spec: EncoderSpec, ref: WeightsRef, options: Mapping[str, Any]) -> Encoder:
    enc = IdentityEncoder(spec)
    enc.weights_id, enc.pretrained = WEIGHTS_ID, False
    return enc


def _identity(spec: EncoderSpec, ref: WeightsRef) -> EncoderInfo | None:
    return EncoderInfo(spec, WEIGHTS_ID, False)


register_family(EncoderFamily(
    name="none", build=_build, identity=_identity, needs_weights=False, blockless=True, memory=pixels_memory,
    description="no encoder: the image's pixels on the patch grid (baseline)",
    cls_feature="the image's pixels on the patch grid (16 x 16 area means per channel), flattened: 3*(H/16)*(W/16)",
    patch_feature="the image area-averaged to the patch grid (3 channels); stride 16",
    taps="one output (no blocks)",
))


# ---------------------------------------------------------------- no encoder (image-only baseline)
register(EncoderSpec(
    name="none", family="none", patch_size=16, width=3, depth=0, params_m=0.0, default_layers=(-1,),
    native_resolution=224, license="-", pretraining_data="none: the preprocessed image itself, "
    "average-pooled to the patch grid (baseline that tells what an encoder adds)",
))
