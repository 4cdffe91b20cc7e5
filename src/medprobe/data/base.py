"""Core data types: a case (:class:`Item`), a dataset and its task description.

Conventions every loader follows:

* ``Item.image`` holds raw intensities as read from disk (no scaling), in the file's native
  dtype or float32. 2D: ``(H, W)`` or ``(H, W, C)``. 3D: ``(X, Y, Z)`` or ``(X, Y, Z, C)`` in the
  array order of the file (after reorienting to the closest canonical RAS for NIfTI), with
  ``slice_axis`` naming the axial axis (2 for canonical NIfTI).
* ``spacing`` is in millimetres per spatial axis, same order as the array axes.
* ``label`` is an ``int`` (binary / multi-class / ordinal), a 0/1 ``np.ndarray`` of length K
  (multi-label), or ``None``. ``mask`` is an integer label map with the image's spatial shape.
* Datasets are lazy: ``__len__``, ``ids``, ``labels`` and ``splits`` come from metadata; arrays are
  read only by ``load(i)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

TaskType = Literal["binary", "multiclass", "multilabel", "ordinal", "regression", "segmentation", "registration",
                   "instances", "survival", "none"]
Modality = Literal["xray", "ct", "mri", "us", "endoscopy", "pathology", "em", "pet", "petct", "natural",
                   "generic"]


@dataclass(frozen=True)
class TaskInfo:
    """What a dataset's labels mean."""

    type: TaskType
    classes: tuple[str, ...] = ()  # class names (multi-class/ordinal/binary) or label names (multi-label / seg)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "classes": list(self.classes)}


@runtime_checkable
class RegionSource(Protocol):
    """A 2D image too large to hold as one array (a whole slide), read by region.

    ``shape`` is the level-0 ``(H, W)``; ``read_region(y, x, h, w, scale)`` returns the level-0 box
    ``[y, y+h) x [x, x+w)`` resampled by ``scale`` (0.5: half the pixels per side) as ``(h', w', C)``;
    ``mpp`` is micrometres per level-0 pixel (None when the file does not say)."""

    shape: tuple[int, int]
    n_channels: int
    dtype: Any
    mpp: float | None

    def read_region(self, y: int, x: int, h: int, w: int, scale: float = 1.0) -> np.ndarray: ...


class ArrayRegion:
    """A :class:`RegionSource` over an array (in memory or memory-mapped): plain large TIFF/PNG, tests."""

    def __init__(self, array: np.ndarray, mpp: float | None = None) -> None:
        if array.ndim not in (2, 3):
            raise ValueError(f"ArrayRegion needs (H, W[, C]), got shape {array.shape}")
        self.array, self.mpp = array, mpp
        self.shape = (int(array.shape[0]), int(array.shape[1]))
        self.n_channels = 1 if array.ndim == 2 else int(array.shape[2])
        self.dtype = array.dtype

    def read_region(self, y: int, x: int, h: int, w: int, scale: float = 1.0) -> np.ndarray:
        """The box (zero outside the image), nearest-neighbour resampled by ``scale``."""
        out = np.zeros((h, w, self.n_channels), dtype=self.array.dtype)
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, self.shape[0]), min(x + w, self.shape[1])
        if y1 > y0 and x1 > x0:
            a = self.array[y0:y1, x0:x1]
            out[y0 - y:y1 - y, x0 - x:x1 - x] = a if a.ndim == 3 else a[..., None]
        if scale != 1.0:
            hh, ww = max(1, round(h * scale)), max(1, round(w * scale))
            out = out[(np.arange(hh) / scale).astype(int).clip(0, h - 1)][:, (np.arange(ww) / scale).astype(int)
                                                                           .clip(0, w - 1)]
        return out


@dataclass
class Item:
    """One case: a 2D image or a 3D volume (or a region-readable slide), with optional label / mask."""

    id: str
    image: np.ndarray | RegionSource
    spatial_dims: int  # 2 or 3
    spacing: tuple[float, ...] = ()
    label: Any = None
    mask: np.ndarray | None = None
    affine: np.ndarray | None = None  # 4x4 voxel->world (3D), for writing outputs back
    slice_axis: int = 2  # for 3D: which spatial axis is the (default, axial) slice axis
    patient: str | None = None
    source: str | None = None  # file path(s) it came from, for error messages
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_region(self) -> bool:
        """True when ``image`` is read by region (a slide), not held as one array."""
        return not isinstance(self.image, np.ndarray)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[: self.spatial_dims])

    @property
    def n_channels(self) -> int:
        if isinstance(self.image, np.ndarray):
            return 1 if self.image.ndim == self.spatial_dims else int(self.image.shape[-1])
        return int(self.image.n_channels)


@dataclass
class PairItem:
    """Two images of one registration case: ``fixed`` and ``moving`` (each an :class:`Item` with its label map
    in ``mask`` and landmarks, if any, in ``meta["landmarks"]``)."""

    id: str
    fixed: Item
    moving: Item
    meta: dict[str, Any] = field(default_factory=dict)


class Dataset(ABC):
    """A lazily loaded collection of :class:`Item`.

    Subclasses set ``name``, ``spatial_dims``, ``modality`` and ``task`` and implement
    ``__len__``, ``ids``, ``load`` and ``fingerprint``. ``labels()`` and ``splits()`` have defaults.
    """

    name: str = "dataset"
    spatial_dims: int = 2
    modality: Modality = "generic"
    task: TaskInfo = TaskInfo("none")

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def ids(self) -> list[str]:
        """Unique case ids, in dataset order."""

    @abstractmethod
    def load(self, i: int) -> Item:
        """Read case ``i`` (raises :class:`medprobe.errors.DataError` naming the file on bad input)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A hash that changes when any file, label or the split changes (file list, sizes and content digests)."""

    def labels(self) -> list[Any]:
        """Per-case labels without reading images (override when metadata has them)."""
        return [self.load(i).label for i in range(len(self))]

    def patients(self) -> list[str]:
        """Per-case patient ids (defaults to the case id)."""
        return self.ids()

    def splits(self) -> dict[str, list[int]] | None:
        """Official split as {'train': [...], 'val': [...], 'test': [...]} of indices, or None."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "n": len(self), "spatial_dims": self.spatial_dims,
                "modality": self.modality, "task": self.task.to_dict(), "fingerprint": self.fingerprint()}

    def __getitem__(self, i: int) -> Item:
        return self.load(i)


class PairDataset(Dataset):
    """A dataset of image pairs (registration): ``load_pair(i)`` gives a :class:`PairItem`; ``load(i)`` the
    fixed image (so item-level tools such as audits and previews still work)."""

    task: TaskInfo = TaskInfo("registration")

    @abstractmethod
    def load_pair(self, i: int) -> PairItem:
        """Read pair ``i`` (raises :class:`medprobe.errors.DataError` naming the pair on bad input)."""

    def load(self, i: int) -> Item:
        return self.load_pair(i).fixed


class Subset(Dataset):
    """A view of some cases of a dataset (keeps order of ``indices``)."""

    def __init__(self, base: Dataset, indices: list[int], tag: str = "") -> None:
        self.base, self.indices = base, list(indices)
        self.name = f"{base.name}[{tag}]" if tag else base.name
        self.spatial_dims, self.modality, self.task = base.spatial_dims, base.modality, base.task
        unit = getattr(base, "unit", None)
        if unit is not None:  # a view of slides is a slide dataset (the tile unit claims it)
            self.unit = unit

    def __len__(self) -> int:
        return len(self.indices)

    def ids(self) -> list[str]:
        all_ids = self.base.ids()
        return [all_ids[i] for i in self.indices]

    def load(self, i: int) -> Item:
        return self.base.load(self.indices[i])

    def labels(self) -> list[Any]:
        lab = self.base.labels()
        return [lab[i] for i in self.indices]

    def patients(self) -> list[str]:
        p = self.base.patients()
        return [p[i] for i in self.indices]

    def fingerprint(self) -> str:
        from medprobe.utils import hash_obj

        return hash_obj({"base": self.base.fingerprint(), "indices": self.indices})


class ArrayDataset(Dataset):
    """In-memory dataset over a list of arrays (used by phantoms, MedMNIST and tests)."""

    def __init__(self, images: list[np.ndarray] | np.ndarray, labels: list[Any] | None = None, *,
                 spatial_dims: int = 2, name: str = "arrays", modality: Modality = "generic",
                 task: TaskInfo | None = None, masks: list[np.ndarray] | None = None,
                 spacing: tuple[float, ...] | None = None, ids: list[str] | None = None,
                 splits: dict[str, list[int]] | None = None, patients: list[str] | None = None,
                 meta: list[dict[str, Any]] | None = None) -> None:
        self._images = images
        self._labels = list(labels) if labels is not None else [None] * len(images)
        self._masks = masks
        self.spatial_dims, self.name, self.modality = spatial_dims, name, modality
        self.task = task or TaskInfo("none")
        self._spacing = spacing or (1.0,) * spatial_dims
        self._ids = ids or [f"{name}-{i:06d}" for i in range(len(images))]
        self._splits = splits
        self._patients = patients
        self._meta = meta
        self._fp: str | None = None

    def __len__(self) -> int:
        return len(self._images)

    def ids(self) -> list[str]:
        return list(self._ids)

    def labels(self) -> list[Any]:
        return list(self._labels)

    def patients(self) -> list[str]:
        return list(self._patients) if self._patients is not None else self.ids()

    def splits(self) -> dict[str, list[int]] | None:
        return self._splits

    def load(self, i: int) -> Item:
        return Item(id=self._ids[i], image=np.asarray(self._images[i]), spatial_dims=self.spatial_dims,
                    spacing=self._spacing, label=self._labels[i],
                    mask=None if self._masks is None else np.asarray(self._masks[i]),
                    slice_axis=self.spatial_dims - 1 if self.spatial_dims == 3 else 2,
                    patient=None if self._patients is None else self._patients[i],
                    meta={} if self._meta is None else dict(self._meta[i]))

    def fingerprint(self) -> str:
        if self._fp is None:
            import hashlib

            h = hashlib.sha256()
            for i in range(len(self._images)):
                a = np.ascontiguousarray(self._images[i])
                h.update(str((a.shape, a.dtype.str)).encode())
                h.update(a.tobytes())
            from medprobe.utils import canonical_json

            h.update(canonical_json({"labels": self._labels, "ids": self._ids, "splits": self._splits,
                                     "spacing": self._spacing}).encode())
            self._fp = h.hexdigest()[:16]
        return self._fp
