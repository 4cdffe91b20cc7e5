"""The registry of named encoders: one :class:`~medprobe.encoders.spec.EncoderSpec` per name.

A new encoder of a known family is one ``register(EncoderSpec(...))`` call, in its family's module (the
built-in specs sit beside their builder: DINOv3 / DINOv2 in :mod:`~medprobe.encoders.hf_vit`, the ONNX ones in
:mod:`~medprobe.encoders.onnx_encoder`, ...) or in any plug-in module. A new kind of backbone is one module with
its :class:`~medprobe.encoders.base.Encoder` subclass and an
:class:`~medprobe.encoders.families.EncoderFamily` (see :mod:`medprobe.encoders.families`), registered before
its specs. Both registries load the built-in family modules lazily (:class:`medprobe.registry.Registry`).
"""

from __future__ import annotations

from collections.abc import Callable

from medprobe.encoders.families import BUILTIN_MODULES, FAMILIES, get_family
from medprobe.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, SAT_MEAN, SAT_STD, EncoderSpec
from medprobe.errors import ConfigError
from medprobe.registry import Registry

# every built-in family module registers its family and its named encoders on import
SPECS: Registry[EncoderSpec] = Registry("encoder", builtin=BUILTIN_MODULES)
# names made on first use: "<prefix>:<rest>" -> the resolver of <prefix> builds the spec (generic doors timm:, hf:)
RESOLVERS: Registry[Callable[[str], EncoderSpec]] = Registry("encoder name prefix", builtin=BUILTIN_MODULES)


def _add(spec: EncoderSpec) -> EncoderSpec:
    """Unchecked add (the family is checked by :func:`get_spec`)."""
    return SPECS.register(spec.name, spec)


def register(spec: EncoderSpec) -> EncoderSpec:
    """Add (or replace) a named encoder; its family must be registered (ConfigError otherwise)."""
    _check_family(spec)
    return _add(spec)


def unregister(name: str) -> None:
    """Remove a named encoder (no error when absent)."""
    SPECS.unregister(name)


def _check_family(spec: EncoderSpec) -> None:
    if FAMILIES.registered(spec.family):  # registered already (a family module registers before its specs)
        return
    try:
        get_family(spec.family)
    except ConfigError as e:
        raise ConfigError(f"encoder {spec.name!r}: {e.problem}") from None


def register_resolver(prefix: str, resolve: Callable[[str], EncoderSpec]) -> None:
    """Make every name ``<prefix>:<anything>`` an encoder: ``resolve(name)`` builds its spec on first use."""
    RESOLVERS.register(prefix, resolve)


def get_spec(name: str) -> EncoderSpec:
    """The spec of a named encoder; unknown names, and specs whose family is not registered, are ConfigErrors."""
    spec = SPECS.find(name)
    if spec is None:
        resolve = RESOLVERS.find(name.partition(":")[0])
        if resolve is not None:
            spec = SPECS.register(name, resolve(name))
    if spec is None:
        raise ConfigError(SPECS.unknown_message(name) + "; 'medprobe models' lists them")
    _check_family(spec)
    return spec


def list_specs() -> list[EncoderSpec]:
    """Every named encoder, sorted by name (built-in family modules imported first)."""
    return [spec for _, spec in sorted(SPECS.items(), key=lambda kv: str(kv[0]))]


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "RESOLVERS", "SAT_MEAN", "SAT_STD", "SPECS", "EncoderSpec", "get_spec",
           "list_specs", "register", "register_resolver", "unregister"]
