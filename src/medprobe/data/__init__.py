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
from medprobe.registry import Registry

_BUILTIN = ("phantoms", "medmnist", "csv_manifest", "image_folder", "volumes", "msd", "seg2d", "em", "pairs",
            "ctrate", "external", "surgical", "petct", "wsi_datasets")
# every built-in loader module registers its kinds on import; a module that fails to import is an error (optional
# extras are imported inside the loaders, when a dataset of that kind is built)
DATASETS: Registry[Callable[..., Dataset]] = Registry(
    "dataset kind", builtin=tuple(f"medprobe.data.{m}" for m in _BUILTIN))


def register_dataset(kind: str) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Decorator: register a factory ``f(name_arg: str, **options) -> Dataset`` under ``kind``."""
    return DATASETS.decorator(kind)


def unregister_dataset(kind: str) -> None:
    """Remove a registered dataset kind (tests and plug-ins that register temporary kinds)."""
    DATASETS.unregister(kind)


def dataset_kinds() -> list[str]:
    return [str(k) for k in DATASETS.names()]


def dataset_factory(spec: str) -> Callable[..., Dataset]:
    """The registered factory of ``"kind:arg"`` (its signature names the kind's options)."""
    return DATASETS.get(spec.partition(":")[0], where=spec)


def create_dataset(spec: str, **options: Any) -> Dataset:
    """Build a dataset from ``"kind:arg"`` (e.g. ``"medmnist:pneumoniamnist"``, ``"phantom:xray2d"``)."""
    kind, _, arg = spec.partition(":")
    return DATASETS.get(kind, where=spec)(arg, **options)


__all__ = ["DATASETS", "ArrayDataset", "ArrayRegion", "Dataset", "Item", "PairDataset", "PairItem", "RegionSource",
           "Subset", "TaskInfo", "create_dataset", "dataset_factory", "dataset_kinds", "register_dataset",
           "unregister_dataset"]
