"""Datasets: lazy loaders that yield :class:`Item` (2D images, 3D volumes, labels, masks).

``create_dataset("medmnist:pneumoniamnist", root=...)`` is the one way in; a new dataset is one
file plus a ``register_dataset`` call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medprobe.data.base import (
    ArrayDataset,
    ArrayRegion,
    Dataset,
    Item,
    PairDataset,
    PairItem,
    RegionSource,
    Subset,
    TaskInfo,
)
from medprobe.errors import ConfigError

_REGISTRY: dict[str, Callable[..., Dataset]] = {}


def register_dataset(kind: str) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Decorator: register a factory ``f(name_arg: str, **options) -> Dataset`` under ``kind``."""

    def deco(fn: Callable[..., Dataset]) -> Callable[..., Dataset]:
        _REGISTRY[kind] = fn
        return fn

    return deco


def unregister_dataset(kind: str) -> None:
    """Remove a registered dataset kind (tests and plug-ins that register temporary kinds)."""
    _REGISTRY.pop(kind, None)


def _ensure_loaded() -> None:
    import importlib

    for mod in ("phantoms", "medmnist", "csv_manifest", "image_folder", "volumes", "msd", "seg2d", "em", "pairs",
                "ctrate", "external", "surgical", "petct", "wsi_datasets"):
        try:
            importlib.import_module(f"medprobe.data.{mod}")
        except ModuleNotFoundError as e:  # a loader file not present (yet) or an optional extra missing
            if e.name and e.name.startswith("medprobe.data."):
                continue
            raise


def dataset_kinds() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def dataset_factory(spec: str) -> Callable[..., Dataset]:
    """The registered factory of ``"kind:arg"`` (its signature names the kind's options)."""
    _ensure_loaded()
    kind = spec.partition(":")[0]
    if kind not in _REGISTRY:
        raise ConfigError(f"unknown dataset kind {kind!r}; known: {', '.join(sorted(_REGISTRY))}", spec)
    return _REGISTRY[kind]


def create_dataset(spec: str, **options: Any) -> Dataset:
    """Build a dataset from ``"kind:arg"`` (e.g. ``"medmnist:pneumoniamnist"``, ``"phantom:xray2d"``)."""
    _ensure_loaded()
    kind, _, arg = spec.partition(":")
    if kind not in _REGISTRY:
        raise ConfigError(f"unknown dataset kind {kind!r}; known: {', '.join(sorted(_REGISTRY))}", spec)
    return _REGISTRY[kind](arg, **options)


__all__ = ["ArrayDataset", "ArrayRegion", "Dataset", "Item", "PairDataset", "PairItem", "RegionSource", "Subset",
           "TaskInfo", "create_dataset", "dataset_factory",
           "dataset_kinds", "register_dataset", "unregister_dataset"]
