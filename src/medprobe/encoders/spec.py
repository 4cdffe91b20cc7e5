"""What medprobe knows about a named encoder before any weights are loaded: :class:`EncoderSpec`.

The bottom of ``medprobe.encoders``: it imports nothing from the package, so the family table
(:mod:`~medprobe.encoders.families`), the named-encoder registry (:mod:`~medprobe.encoders.registry`), the
weights sources and every backbone module can all import it without a cycle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAT_MEAN = (0.430, 0.411, 0.296)
SAT_STD = (0.213, 0.156, 0.143)


@dataclass(frozen=True)
class EncoderSpec:
    """Everything medprobe knows about a named encoder before any weights are loaded."""

    name: str
    family: str  # a registered EncoderFamily: "dinov3" | "dinov2" | "dinov2_reg" | "onnx" | "none" | ...
    patch_size: int
    width: int
    depth: int
    params_m: float  # parameter count in millions (of the vision backbone)
    default_layers: tuple[int, ...]  # 0-based block indices of the four standard taps
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    native_resolution: int = 224
    license: str = ""
    pretraining_data: str = ""
    hf_repo: str | None = None
    meta_arch: str | None = None  # Meta's file-name arch token, e.g. "vits16"
    meta_dataset: str | None = None  # "lvd1689m" | "sat493m"
    timm_name: str | None = None
    n_registers: int = 0
    hf_config: dict[str, Any] = field(default_factory=dict)  # architecture kwargs for the transformers config

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SAT_MEAN", "SAT_STD", "EncoderSpec"]
