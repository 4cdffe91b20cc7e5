"""The encoder-family table: how each kind of backbone is built, identified and costed.

An :class:`~medprobe.encoders.spec.EncoderSpec` names its ``family``; everything that depends on the
kind of network (how to build it from a weights source, what its cache identity is without building it,
what one image costs, which extra options it takes, whether it has blocks to tap) is declared once here,
in an :class:`EncoderFamily`, instead of being derived from the family name in the code that uses it.

Each family module registers its own family when imported (``hf_vit``: ``dinov3``, ``dinov2``,
``dinov2_reg``; ``onnx_encoder``: ``onnx``; ``identity``: ``none``). A new kind of backbone is one module
with its :class:`~medprobe.encoders.base.Encoder` subclass, a :func:`register_family` call and its
:func:`~medprobe.encoders.registry.register` entries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medprobe.encoders.memory import MemoryFn, MemoryModel, vit_memory
from medprobe.encoders.spec import EncoderSpec
from medprobe.errors import ConfigError
from medprobe.registry import Registry

if TYPE_CHECKING:
    from medprobe.encoders.base import Encoder, EncoderInfo
    from medprobe.encoders.weights import WeightsRef

BuildFn = Callable[["EncoderSpec", "WeightsRef", Mapping[str, Any]], "Encoder"]
IdentityFn = Callable[["EncoderSpec", "WeightsRef"], "EncoderInfo | None"]
GflopsFn = Callable[["EncoderSpec", tuple[int, int], "tuple[int, ...] | None"], "float | None"]
LocalWeightsFn = Callable[["EncoderSpec"], list[Path]]

# modules that register the built-in families (and their named encoders) at import
BUILTIN_MODULES = ("medprobe.encoders.hf_vit", "medprobe.encoders.onnx_encoder", "medprobe.encoders.identity",
                    "medprobe.encoders.volume3d",
                    "medprobe.encoders.cnn", "medprobe.encoders.sam",
                    "medprobe.encoders.clip", "medprobe.encoders.generic",
                    "medprobe.encoders.pathology", "medprobe.encoders.mae")


def no_identity(spec: EncoderSpec, ref: WeightsRef) -> EncoderInfo | None:
    """Identity unknown until the network is loaded (the cache is looked up after building it)."""
    return None


def no_gflops(spec: EncoderSpec, resolution: tuple[int, int], layers: tuple[int, ...] | None) -> float | None:
    """Cost not countable (runs outside torch, or nothing to count)."""
    return None


def no_local_weights(spec: EncoderSpec) -> list[Path]:
    return []


def same_spec(spec: EncoderSpec, options: Mapping[str, Any]) -> EncoderSpec:
    """The spec unchanged: the family's options do not change its geometry."""
    return spec


@dataclass(frozen=True)
class EncoderFamily:
    """One kind of backbone.

    ``build(spec, weights, options)``: the :class:`~medprobe.encoders.base.Encoder` for a resolved weights
    source, with ``weights_id`` and ``pretrained`` set; ``options`` holds only the names in ``options``
    (given, not ``None``). ``identity(spec, weights)``: the encoder's
    :class:`~medprobe.encoders.base.EncoderInfo` (weights id, pretrained flag) for cache look-ups without
    building the network, or ``None`` when only loading can tell. ``gflops(spec, (h, w), layers)``: GFLOPs
    of one image up to the deepest of ``layers`` (``None``: the full depth), or ``None`` when not
    countable. ``local_weights(spec)``: weight files the family finds by itself (e.g. inside an installed
    package), beyond the Meta / Hugging Face cache search every spec gets.

    Declared facts: ``needs_weights`` (False: nothing to load, e.g. the image-only baseline);
    ``blockless`` (one output layer, no blocks to tap: layer selections resolve to it);
    ``options`` (extra build options :func:`~medprobe.encoders.create_encoder` accepts for it);
    ``adapt_spec(spec, options)``: the spec those options imply (e.g. an ONNX graph's patch size), applied
    before ``build`` and ``identity``;
    ``memory(spec, shape)``: the family's :class:`~medprobe.encoders.memory.MemoryModel` (parameters +
    per-item activations at that input; default: a global-attention ViT);
    ``autocast`` (False: the network runs outside torch autocast, e.g. an ONNX graph in fp32, so ``amp`` cannot
    change a feature value: it stays out of the cache key and the record says fp32).
    Feature contract: ``cls_feature``, ``patch_feature``, ``taps`` (plain-language facts shown by
    ``medprobe models`` and docs/encoders.md) and ``extra`` (the pip extra the family needs, "" for none).
    """

    name: str
    build: BuildFn
    identity: IdentityFn = no_identity
    gflops: GflopsFn = no_gflops
    needs_weights: bool = True
    blockless: bool = False
    autocast: bool = True
    options: tuple[str, ...] = ()
    local_weights: LocalWeightsFn = no_local_weights
    adapt_spec: Callable[[EncoderSpec, Mapping[str, Any]], EncoderSpec] = same_spec
    description: str = ""
    # the feature contract (docs/encoders.md, `medprobe models`): what "cls" is, what "patch" is and its
    # stride, which layers/stages can be tapped, and the pip extra the family needs ("" = core install)
    cls_feature: str = "class token after the final norm"
    patch_feature: str = "patch tokens after the final norm, registers dropped; stride = patch size"
    taps: str = "transformer blocks (0-based)"
    extra: str = ""
    # True: the encoder takes whole volumes (B, 1, D, H, W); extraction runs medprobe.features.volume
    volumetric: bool = False
    # memory(spec, shape) -> MemoryModel: parameter bytes and peak activation bytes per item of ``shape``
    # ((H, W) or (D, H, W)); the extraction engine sizes ``batch_size: auto`` and refuses a batch from it
    memory: MemoryFn = vit_memory

    def check_options(self, spec: EncoderSpec, options: Mapping[str, Any]) -> dict[str, Any]:
        """The given options (``None`` values dropped); an option the family does not take is a ConfigError."""
        given = {k: v for k, v in options.items() if v is not None}
        for k in given:
            if k not in self.options:
                takes = ", ".join(self.options) if self.options else "none"
                raise ConfigError(f"encoder {spec.name} ({self.name} family) does not take option {k!r} "
                                  f"(it takes: {takes})")
        return given


FAMILIES: Registry[EncoderFamily] = Registry("encoder family", builtin=BUILTIN_MODULES)


def register_family(family: EncoderFamily) -> EncoderFamily:
    """Add (or replace) an entry of the family table; returns it."""
    if not isinstance(family, EncoderFamily):
        raise TypeError(f"register_family needs an EncoderFamily, got {type(family).__name__}")
    return FAMILIES.register(family.name, family)


def unregister_family(name: str) -> None:
    """Remove a family from the table (no error when absent)."""
    FAMILIES.unregister(name)


def get_family(name: str) -> EncoderFamily:
    """The registered family ``name``; an unknown name is a one-line ConfigError listing the known ones."""
    return FAMILIES.get(name)


def encoder_families() -> list[str]:
    """Names of the registered encoder families, sorted."""
    return [str(n) for n in FAMILIES.names()]


def memory_model(spec: EncoderSpec, shape: Sequence[int]) -> MemoryModel:
    """The family's memory model of ``spec`` for one item of ``shape``."""
    return get_family(spec.family).memory(spec, tuple(int(s) for s in shape))


def model_of(encoder: Any, shape: Sequence[int]) -> MemoryModel:
    """:func:`memory_model` of a built encoder (or EncoderInfo); a spec-less object gets the ViT model of its
    patch size and width."""
    spec = getattr(encoder, "spec", None)
    if isinstance(spec, EncoderSpec):
        try:
            return memory_model(spec, shape)
        except Exception:  # an unregistered family: the generic ViT bound
            return vit_memory(spec, shape)
    fake = EncoderSpec(name="?", family="?", patch_size=int(getattr(encoder, "patch_size", 16) or 16),
                       width=int(getattr(spec, "width", 0) or 768), depth=1, params_m=0.0, default_layers=(0,))
    return vit_memory(fake, shape)


__all__ = ["BUILTIN_MODULES", "FAMILIES", "EncoderFamily", "encoder_families", "get_family", "memory_model", "model_of",
           "no_gflops",
           "no_identity", "no_local_weights", "register_family", "unregister_family"]
