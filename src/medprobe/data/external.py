"""External test sets: train on one dataset, test on another: ``external:``.

``dataset: "external:"`` with ``data: {train: {dataset: "folder:/a", ...options}, test: {dataset:
"folder:/b", ...}, val_fraction: 0.1}``. Train (and val) come from the ``train`` dataset: its own official
train / val split when it has one (its test cases are left out), else a seeded patient-level
``val_fraction`` of its patients; test is every case of the ``test`` dataset. Both must have the same task
type, classes and spatial dimensionality (``classes`` of the test side may be re-ordered by name). Case ids and
patients are prefixed ``train:`` / ``test:`` so they never collide. The recorded dataset name is
``<train>-><test>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medprobe.data import create_dataset, register_dataset
from medprobe.data.base import Dataset, Item
from medprobe.errors import ConfigError, DataError


def _side(spec: Any, what: str) -> Dataset:
    if not isinstance(spec, Mapping) or "dataset" not in spec:
        raise ConfigError(f"external: {what} must be a mapping with 'dataset' (and the kind's options), got "
                          f"{spec!r}", "external:")
    opts = {str(k): v for k, v in spec.items() if k != "dataset"}
    return create_dataset(str(spec["dataset"]), **opts)


class ExternalTestDataset(Dataset):
    """A train dataset and a separate test dataset seen as one dataset with a fixed split."""

    def __init__(self, train: Dataset, test: Dataset, val_fraction: float = 0.1, seed: int = 0) -> None:
        from medprobe.data.splits import split_by_patient

        if train.spatial_dims != test.spatial_dims:
            raise DataError(f"external test set is {test.spatial_dims}D but the training set is "
                            f"{train.spatial_dims}D", test.name)
        if train.task.type != test.task.type or tuple(train.task.classes) != tuple(test.task.classes):
            raise DataError(f"external test set's task {test.task.to_dict()} differs from the training set's "
                            f"{train.task.to_dict()} (give both the same classes, in the same order)", test.name)
        if not 0 <= float(val_fraction) < 1:
            raise ConfigError(f"external: val_fraction must be in [0, 1), got {val_fraction}")
        self.train_ds, self.test_ds = train, test
        self.name = f"{train.name}->{test.name}"
        self.spatial_dims, self.modality, self.task = train.spatial_dims, train.modality, train.task
        unit = getattr(train, "unit", None)
        if unit is not None and getattr(test, "unit", None) == unit:  # e.g. slides: both sides are slide sets
            self.unit = unit
        own = train.splits()
        n_tr = len(train)
        if own and own.get("train"):
            tr, va = list(own["train"]), list(own.get("val") or [])
            self.how = f"the training set's official train/val split (its {len(own.get('test') or [])} test " \
                       "cases left out)"
        else:
            pts = train.patients()
            if val_fraction > 0:
                s = split_by_patient(pts, (1 - val_fraction, val_fraction), seed=seed)
                tr, va = s["train"], s["test"]
            else:
                tr, va = list(range(n_tr)), []
            self.how = f"seeded patient-level {val_fraction} of the training set as val (seed {seed})"
        self._rows = [(0, i) for i in tr + va] + [(1, j) for j in range(len(test))]
        self._splits = {"train": list(range(len(tr))), "val": list(range(len(tr), len(tr) + len(va))),
                        "test": list(range(len(tr) + len(va), len(self._rows)))}
        if not va:
            del self._splits["val"]

    def _part(self, k: int) -> Dataset:
        return self.train_ds if k == 0 else self.test_ds

    def __len__(self) -> int:
        return len(self._rows)

    def ids(self) -> list[str]:
        ids = (self.train_ds.ids(), self.test_ds.ids())
        return [f"{('train', 'test')[k]}:{ids[k][i]}" for k, i in self._rows]

    def labels(self) -> list[Any]:
        lab = (self.train_ds.labels(), self.test_ds.labels())
        return [lab[k][i] for k, i in self._rows]

    def patients(self) -> list[str]:
        pts = (self.train_ds.patients(), self.test_ds.patients())
        return [f"{('train', 'test')[k]}:{pts[k][i]}" for k, i in self._rows]

    def splits(self) -> dict[str, list[int]] | None:
        return {k: list(v) for k, v in self._splits.items()}

    def load(self, i: int) -> Item:
        from dataclasses import replace

        k, j = self._rows[i]
        item = self._part(k).load(j)
        side = ("train", "test")[k]
        return replace(item, id=f"{side}:{item.id}", patient=f"{side}:{item.patient or item.id}",
                       meta={**item.meta, "external_side": side})

    def tile_labels(self, i: int, coords: Any, size0: float) -> Any:
        """The lesion labels of a slide's tiles from the side it comes from (None where that side has none)."""
        k, j = self._rows[i]
        fn = getattr(self._part(k), "tile_labels", None)
        return fn(j, coords, size0) if callable(fn) else None

    def fingerprint(self) -> str:
        from medprobe.utils import hash_obj

        return hash_obj({"train": self.train_ds.fingerprint(), "test": self.test_ds.fingerprint(),
                         "rows": self._rows})

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "external": {"train": self.train_ds.name, "test": self.test_ds.name,
                                                   "val": self.how}}


@register_dataset("external")
def create_external(arg: str = "", train: Mapping[str, Any] | None = None, test: Mapping[str, Any] | None = None,
                    val_fraction: float = 0.1, seed: int = 0) -> ExternalTestDataset:
    """``external:`` with ``train={dataset: ..., ...}`` and ``test={dataset: ..., ...}`` (module docstring)."""
    if train is None or test is None:
        raise ConfigError("external: give data.train and data.test, each {dataset: kind:arg, ...options}",
                          "external:")
    return ExternalTestDataset(_side(train, "train"), _side(test, "test"), val_fraction=val_fraction, seed=seed)


__all__ = ["ExternalTestDataset", "create_external"]
