"""The frozen-encoder interface every backbone implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medprobe.encoders.spec import EncoderSpec
from medprobe.errors import ConfigError
from medprobe.schema import Layers


@dataclass
class EncoderOutput:
    """Features of one batch. Keys of both dicts are 0-based block indices (as resolved by the encoder).

    ``cls[l]``: ``(B, C)`` class token after the final norm; ``patch[l]``: ``(B, C, h, w)`` patch grid after
    the final norm, register tokens dropped. The mean of patch tokens is ``patch[l].mean((2, 3))``.
    """

    cls: dict[int, torch.Tensor]
    patch: dict[int, torch.Tensor]


def resolve_layers(layers: str | int | Sequence[int] | None, spec: EncoderSpec, depth: int | None = None
                   ) -> tuple[int, ...]:
    """Turn a layer selection into sorted 0-based block indices.

    ``layers`` is parsed by the one layer parser (:class:`medprobe.schema.Layers`; a task's
    ``features.layers`` already is one): ``None``/``"last"`` -> last block; ``"four"``/``"default"`` -> the
    spec's four standard taps (evenly spaced when the spec has none); ``"all"`` -> every block; ``"2,5,8,11"``
    or a list -> those blocks (negative counts from the end).
    """
    depth = depth or spec.depth
    if depth <= 1:  # encoders without blocks (onnx / none) expose one output: a word or 0 / -1 names it
        asked = Layers(layers, "layers") if layers is not None else None
        bad = [i for i in (asked.indices if asked is not None else ()) if i not in (0, -1)]
        if bad:
            raise ConfigError(f"layers: layer {bad[0]} out of range for {spec.name}, which has one output and no "
                              "blocks (use layers: last)")
        return (0,) if depth == 1 else (-1,)
    sel = Layers("last" if layers is None else layers, "layers")
    if sel.symbol == "auto":
        raise ConfigError("layers: 'auto' is the task family's default; the family resolves it before extraction")
    if sel.symbol == "last":
        idx: list[int] = [depth - 1]
    elif sel.symbol == "four":
        taps = [t for t in spec.default_layers if t >= 0]
        idx = taps if len(taps) == 4 else [round(depth * k / 4) - 1 for k in range(1, 5)]
    elif sel.symbol == "all":
        idx = list(range(depth))
    else:
        idx = [i + depth if i < 0 else i for i in sel.indices]
    for i in idx:
        if not 0 <= i < depth:
            raise ConfigError(f"layer {i} out of range for {spec.name} with {depth} blocks")
    return tuple(sorted(set(idx)))


class Encoder(torch.nn.Module):
    """A frozen image encoder: ``(B, 3, H, W)`` normalised pixels -> :class:`EncoderOutput`.

    Attributes set by :func:`medprobe.encoders.create_encoder`: ``spec``, ``weights_id`` (``sha256:...``,
    ``hf:repo@rev``, or ``random:seed=N``), ``pretrained`` (False for random initialisation).
    """

    spec: EncoderSpec
    weights_id: str = "random:seed=0"
    pretrained: bool = False
    fixed_resolution: int | None = None  # set when the backbone only accepts one input size
    options: dict[str, Any] = {}  # the family build options it was made with (set by create_encoder)

    @property
    def depth(self) -> int:
        return self.spec.depth

    @property
    def width(self) -> int:
        return self.spec.width

    @property
    def patch_size(self) -> int:
        return self.spec.patch_size

    def resolve_layers(self, layers: Any) -> tuple[int, ...]:
        return resolve_layers(layers, self.spec, self.depth)

    def check_input_size(self, h: int, w: int) -> None:
        p = self.patch_size
        if self.fixed_resolution and (h, w) != (self.fixed_resolution, self.fixed_resolution):
            raise ConfigError(f"{self.spec.name} accepts only {self.fixed_resolution}x{self.fixed_resolution} "
                              f"input, got {h}x{w}")
        if h % p or w % p or h < p or w < p:
            raise ConfigError(f"input {h}x{w} is not a positive multiple of {self.spec.name}'s patch size {p}")

    def forward_features(self, x: torch.Tensor, layers: Sequence[int]) -> EncoderOutput:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # plain call: last-layer CLS
        out = self.forward_features(x, (self.resolve_layers("last")[0],))
        return next(iter(out.cls.values()))

    def describe(self) -> dict[str, Any]:
        return {"encoder": self.spec.name, "weights": self.weights_id, "pretrained": self.pretrained,
                "params_m": self.spec.params_m, "patch_size": self.patch_size}


class EncoderInfo:
    """What the cache key needs to know about an encoder, without building its network.

    Lets a cached run skip instantiating (and randomly initialising or loading) the model altogether.
    Made by an :class:`~medprobe.encoders.families.EncoderFamily`'s ``identity``; layer facts come from
    the family (``blockless``, set by :func:`~medprobe.encoders.encoder_info`: one output layer, whatever is
    asked).
    """

    blockless: bool = False

    def __init__(self, spec: EncoderSpec, weights_id: str, pretrained: bool,
                 fixed_resolution: int | None = None) -> None:
        self.spec, self.weights_id, self.pretrained = spec, weights_id, pretrained
        self.fixed_resolution = fixed_resolution
        self.options: dict[str, Any] = {}

    @property
    def depth(self) -> int:
        return max(self.spec.depth, 1)

    @property
    def patch_size(self) -> int:
        return self.spec.patch_size

    def resolve_layers(self, layers: Any) -> tuple[int, ...]:
        if self.blockless:  # one output: a word or 0 / -1 names it; another index is refused
            resolve_layers(layers, self.spec, 1)
            return (self.depth - 1,)
        return resolve_layers(layers, self.spec, self.depth)

    check_input_size = Encoder.check_input_size
    describe = Encoder.describe
