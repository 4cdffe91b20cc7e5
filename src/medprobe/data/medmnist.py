"""MedMNIST v2 / MedMNIST+ ``.npz`` files (official train / val / test split).

``create_dataset("medmnist:pneumoniamnist", root="data/medmnist", size=28)`` reads
``<root>/pneumoniamnist.npz`` (size 28; ``pneumoniamnist_28.npz`` also accepted) or
``<root>/pneumoniamnist_<size>.npz`` (size 64 / 128 / 224). The spec may also be a path to an ``.npz``.

``limit`` keeps a seeded random subset of each official split (for CI and quick checks): an int caps every
split (``limit=200``), ``"train,val,test"`` counts (``limit="400,50,200"``; ``--data-opt limit=400,50,200``)
or a mapping ``{"train": 400, ...}`` caps the named splits; ``limit_seed`` (default 0) picks the cases.
Case ids keep the original index within the split; the fingerprint records the selection.

Arrays: 2D ``(N, H, W)`` or ``(N, H, W, 3)``; 3D ``(N, D, H, W)``; labels ``(N, 1)`` (one class index)
or ``(N, L)`` (multi-label 0/1). Images are uint8 in [0, 255] (already windowed / normalised by MedMNIST).

3D axes: MedMNIST stores a volume as ``(D, H, W)``. Items expose it as ``(X, Y, Z) = (W, H, D)`` (a
transposed view) with ``slice_axis=2``, so the default slice axis is MedMNIST's first axis ``D``.

Labels are read once at construction; image arrays are read on first :meth:`load` of a split
(memory-mapped when the member is stored uncompressed, decompressed once otherwise).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medprobe.data import register_dataset
from medprobe.data.base import Dataset, Item, Modality, TaskInfo, TaskType
from medprobe.data.io import file_signature
from medprobe.errors import ConfigError, DataError
from medprobe.utils import hash_obj

SPLITS = ("train", "val", "test")
SIZES = (28, 64, 128, 224)

_ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
           "lung-left", "lung-right", "pancreas", "spleen")

# name -> (task type, class / label names, medprobe modality, MedMNIST modality description, spatial dims)
MEDMNIST_INFO: dict[str, tuple[TaskType, tuple[str, ...], Modality, str, int]] = {
    "pathmnist": ("multiclass", (
        "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle", "normal colon mucosa",
        "cancer-associated stroma", "colorectal adenocarcinoma epithelium"),
        "pathology", "Colon Pathology", 2),
    "chestmnist": ("multilabel", (
        "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
        "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia"),
        "xray", "Chest X-Ray", 2),
    "dermamnist": ("multiclass", (
        "actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
        "benign keratosis-like lesions",
        "dermatofibroma", "melanoma", "melanocytic nevi", "vascular lesions"), "natural", "Dermatoscope", 2),
    "octmnist": ("multiclass", ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
                 "generic", "Retinal OCT", 2),
    "pneumoniamnist": ("binary", ("normal", "pneumonia"), "xray", "Chest X-Ray", 2),
    "retinamnist": ("ordinal", ("0", "1", "2", "3", "4"), "natural", "Fundus Camera", 2),
    "breastmnist": ("binary", ("malignant", "normal, benign"), "us", "Breast Ultrasound", 2),
    "bloodmnist": ("multiclass", (
        "basophil", "eosinophil", "erythroblast",
        "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)", "lymphocyte", "monocyte",
        "neutrophil", "platelet"), "pathology", "Blood Cell Microscope", 2),
    "tissuemnist": ("multiclass", (
        "Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule", "Glomerular endothelial cells",
        "Interstitial endothelial cells", "Leukocytes", "Podocytes", "Proximal Tubule Segments",
        "Thick Ascending Limb"), "pathology", "Kidney Cortex Microscope", 2),
    "organamnist": ("multiclass", _ORGANS, "ct", "Abdominal CT (axial)", 2),
    "organcmnist": ("multiclass", _ORGANS, "ct", "Abdominal CT (coronal)", 2),
    "organsmnist": ("multiclass", _ORGANS, "ct", "Abdominal CT (sagittal)", 2),
    "organmnist3d": ("multiclass", _ORGANS, "ct", "Abdominal CT", 3),
    "nodulemnist3d": ("binary", ("benign", "malignant"), "ct", "Chest CT", 3),
    "adrenalmnist3d": ("binary", ("normal", "hyperplasia"), "generic", "Shape from Abdominal CT", 3),
    "fracturemnist3d": ("multiclass", ("buckle rib fracture", "nondisplaced rib fracture",
                                       "displaced rib fracture"), "ct", "Chest CT", 3),
    "vesselmnist3d": ("binary", ("vessel", "aneurysm"), "generic", "Shape from Brain MRA", 3),
    "synapsemnist3d": ("binary", ("inhibitory synapse", "excitatory synapse"), "em", "Electron Microscope",
                       3),
}


def _npz_member_memmap(path: Path, key: str) -> np.ndarray | None:
    """Memory-map ``key`` of an ``.npz`` when stored uncompressed; None otherwise."""
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(key + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            if local[:4] != b"PK\x03\x04":
                return None
            name_len = int.from_bytes(local[26:28], "little")
            extra_len = int.from_bytes(local[28:30], "little")
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return None
            if dtype.hasobject:
                return None
            offset = f.tell()
        order: Literal["C", "F"] = "F" if fortran else "C"
        return np.memmap(path, dtype=dtype, mode="r", shape=shape, order=order, offset=offset)
    except Exception:
        return None


def resolve_medmnist_file(name: str, root: str | Path, size: int | None) -> Path:
    """Find ``<root>/<name>[_<size>].npz``; DataError listing the paths tried when absent."""
    root = Path(root)
    if size is None or size == 28:
        cands = [root / f"{name}.npz", root / f"{name}_28.npz"]
    else:
        cands = [root / f"{name}_{size}.npz"]
    for c in cands:
        if c.is_file():
            return c
    raise DataError(f"MedMNIST file not found (tried {', '.join(c.name for c in cands)})", source=root)


class MedMNISTDataset(Dataset):
    """One MedMNIST ``.npz`` (all three official splits, in the order train, val, test)."""

    def __init__(self, path: str | Path, name: str | None = None, size: int | None = None, limit: Any = None,
                 limit_seed: int = 0) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError("file not found", source=self.path)
        stem = self.path.stem.lower()
        base, _, sfx = stem.rpartition("_")
        if name is None:
            name = base if (base and sfx.isdigit()) else stem
        if size is None:
            size = int(sfx) if (base and sfx.isdigit()) else 28
        name = name.lower()
        self.flag, self.size = name, int(size)
        self.name = name if self.size == 28 else f"{name}_{self.size}"
        info = MEDMNIST_INFO.get(name)
        try:
            with np.load(self.path, allow_pickle=False) as z:
                files = set(z.files)
                want = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
                missing = [k for k in want if k not in files]
                if missing:
                    raise DataError(f"missing keys {missing} (has {sorted(files)})", source=self.path)
                labels = {s: np.asarray(z[f"{s}_labels"]) for s in SPLITS}
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"cannot read .npz ({type(e).__name__}: {' '.join(str(e).split())[:120]})",
                            source=self.path) from None
        self._shapes = {s: self._image_shape(s) for s in SPLITS}
        ndims = {len(sh) - 1 for sh in self._shapes.values()}
        if len(ndims) != 1:
            raise DataError("splits have images of different dimensionality", source=self.path)
        nd = ndims.pop()
        if info is not None:
            task_type, classes, modality, desc, sdims = info
        else:  # unknown name: infer from arrays
            sdims = 3 if nd == 3 and all(sh[-1] not in (1, 3) for sh in self._shapes.values()) else 2
            width = labels["train"].reshape(len(labels["train"]), -1).shape[1]
            if width > 1:
                task_type, classes = "multilabel", tuple(str(i) for i in range(width))
            else:
                k = int(max(int(v.max()) if v.size else 0 for v in labels.values())) + 1
                task_type = "binary" if k <= 2 else "multiclass"
                classes = tuple(str(i) for i in range(max(k, 2)))
            modality, desc = "generic", "unknown"
        self.spatial_dims, self.modality = sdims, modality
        self.task = TaskInfo(task_type, classes)
        self.description = desc
        self._labels: list[Any] = []
        self._ids: list[str] = []
        self._offsets: dict[str, tuple[int, int]] = {}
        caps = _limits(limit, self.path)
        self.limit = None if caps is None else {**caps, "seed": int(limit_seed)}
        self._rows: dict[str, np.ndarray] = {}  # selected rows of each split's arrays (all rows without a limit)
        start = 0
        for i_s, s in enumerate(SPLITS):
            n_img = self._shapes[s][0]
            lab = labels[s].reshape(len(labels[s]), -1) if labels[s].ndim else labels[s].reshape(1, 1)
            if len(lab) != n_img:
                raise DataError(f"{s}_images has {n_img} cases but {s}_labels has {len(lab)}",
                                source=self.path)
            self._check_labels(s, lab)
            rows = np.arange(n_img)
            cap = None if caps is None else caps.get(s)
            if cap is not None and cap < n_img:
                rng = np.random.default_rng([int(limit_seed), i_s])
                rows = np.sort(rng.permutation(n_img)[:cap])
            self._rows[s] = rows
            lab = lab[rows]
            if task_type == "multilabel":
                self._labels += [row.astype(np.uint8) for row in lab]
            else:
                self._labels += [int(v) for v in lab[:, 0]]
            self._ids += [f"{name}-{s}-{j:06d}" for j in rows]
            self._offsets[s] = (start, start + len(rows))
            start += len(rows)
        self._arrays: dict[str, np.ndarray] = {}
        self._fp: str | None = None

    def _image_shape(self, split: str) -> tuple[int, ...]:
        key = f"{split}_images"
        with zipfile.ZipFile(self.path) as zf, zf.open(key + ".npy") as f:
            version = np.lib.format.read_magic(f)
            hdr = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)(f)
        return tuple(int(x) for x in hdr[0])

    def _check_labels(self, split: str, lab: np.ndarray) -> None:
        if lab.size == 0:
            return
        if self.task.type == "multilabel":
            if lab.shape[1] != self.task.n_classes:
                raise DataError(f"{split}_labels has {lab.shape[1]} columns, expected {self.task.n_classes} "
                                f"for {self.flag}", source=self.path)
            bad = ~np.isin(lab, (0, 1))
        else:
            if lab.shape[1] != 1:
                raise DataError(f"{split}_labels has shape {lab.shape}, expected (N, 1)", source=self.path)
            bad = (lab < 0) | (lab >= self.task.n_classes)
        if bad.any():
            r = int(np.argwhere(bad)[0][0])
            raise DataError(f"{split}_labels row {r} has value {lab[r].tolist()} not allowed for "
                            f"{self.task.type} task with {self.task.n_classes} classes", source=self.path)

    def _split_array(self, split: str) -> np.ndarray:
        arr = self._arrays.get(split)
        if arr is None:
            arr = _npz_member_memmap(self.path, f"{split}_images")
            if arr is None:
                try:
                    with np.load(self.path, allow_pickle=False) as z:
                        arr = np.asarray(z[f"{split}_images"])
                except Exception as e:
                    raise DataError(f"cannot read {split}_images ({type(e).__name__})",
                                    source=self.path) from None
            self._arrays[split] = arr
        return arr

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[str]:
        return list(self._ids)

    def labels(self) -> list[Any]:
        return [lab.copy() if isinstance(lab, np.ndarray) else lab for lab in self._labels]

    def splits(self) -> dict[str, list[int]]:
        return {s: list(range(a, b)) for s, (a, b) in self._offsets.items()}

    def locate(self, i: int) -> tuple[str, int]:
        """``(split, index within split)`` of case ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"case index {i} out of range for {len(self)} cases")
        for s, (a, b) in self._offsets.items():
            if a <= i < b:
                return s, i - a
        raise IndexError(i)  # pragma: no cover

    def load(self, i: int) -> Item:
        split, k = self.locate(i)
        j = int(self._rows[split][k])
        img = np.array(self._split_array(split)[j])
        if self.spatial_dims == 3:
            if img.ndim == 4 and img.shape[-1] == 1:
                img = img[..., 0]
            img = np.ascontiguousarray(img.transpose(2, 1, 0, *range(3, img.ndim)))  # (D,H,W) -> (X,Y,Z)
        elif img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        lab = self._labels[i]
        lab = lab.copy() if isinstance(lab, np.ndarray) else lab
        return Item(id=self._ids[i], image=img, spatial_dims=self.spatial_dims,
                    spacing=(1.0,) * self.spatial_dims, label=lab,
                    slice_axis=2, patient=self._ids[i], source=f"{self.path}[{split}_images][{j}]",
                    meta={"split": split, "index_in_split": j, "size": self.size})

    def fingerprint(self) -> str:
        if self._fp is None:
            d: dict[str, Any] = {"kind": "medmnist", "name": self.name, "file": file_signature(self.path),
                 "n": [self._offsets[s] for s in SPLITS]}
            if self.limit is not None:
                d["rows"] = {s: self._rows[s].tolist() for s in SPLITS}
            self._fp = hash_obj(d)
        return self._fp


def _limits(limit: Any, source: Path) -> dict[str, int | None] | None:
    """Per-split caps from ``limit`` (int, ``"tr,va,te"``, sequence of 3 or mapping split -> count)."""
    if limit is None:
        return None
    try:
        if isinstance(limit, dict):
            unknown = sorted(set(limit) - set(SPLITS))
            if unknown:
                raise ConfigError(f"limit names unknown split(s) {unknown}; use {list(SPLITS)}", source)
            caps: dict[str, int | None] = {s: (None if limit.get(s) is None else int(limit[s])) for s in SPLITS}
        else:
            if isinstance(limit, str):
                limit = [v.strip() for v in limit.split(",")]
                limit = limit[0] if len(limit) == 1 else limit
            if isinstance(limit, (list, tuple)):
                if len(limit) != 3:
                    raise ConfigError(f"limit needs 3 counts (train,val,test), got {limit!r}", source)
                caps = dict(zip(SPLITS, (int(v) for v in limit)))
            else:
                caps = dict.fromkeys(SPLITS, int(limit))
    except (TypeError, ValueError):
        raise ConfigError(f"limit must be N, 'train,val,test' counts or a mapping, got {limit!r}", source) from None
    if any(v is not None and v < 0 for v in caps.values()):
        raise ConfigError(f"limit counts must be >= 0, got {limit!r}", source)
    return caps


@register_dataset("medmnist")
def create_medmnist(arg: str, root: str | Path | None = None, size: int | None = None, limit: Any = None,
                    limit_seed: int = 0, **options: Any) -> MedMNISTDataset:
    """``medmnist:<name>`` with ``root=<folder>`` and ``size`` (28/64/128/224), or ``medmnist:<file.npz>``.
    ``limit`` / ``limit_seed``: a seeded subset of each split (see the module docstring)."""
    if options:
        raise ConfigError(f"unknown option(s) for medmnist: {', '.join(sorted(options))}", f"medmnist:{arg}")
    if size is not None and int(size) not in SIZES:
        raise ConfigError(f"MedMNIST size must be one of {SIZES}, got {size}", f"medmnist:{arg}")
    if arg.lower().endswith(".npz"):
        p = Path(arg)
        if root is not None and not p.is_absolute():
            p = Path(root) / p
        return MedMNISTDataset(p, size=size, limit=limit, limit_seed=limit_seed)
    name = arg.strip().lower()
    if not name:
        raise ConfigError(f"give a MedMNIST name, one of: {', '.join(MEDMNIST_INFO)}", "medmnist:")
    if root is None:
        root = Path.home() / ".medmnist"
    return MedMNISTDataset(resolve_medmnist_file(name, root, size), name=name,
                           size=28 if size is None else int(size), limit=limit, limit_seed=limit_seed)


__all__ = ["MEDMNIST_INFO", "MedMNISTDataset", "create_medmnist", "resolve_medmnist_file"]
