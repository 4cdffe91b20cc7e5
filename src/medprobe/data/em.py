"""Electron-microscopy volumes: HDF5 (CREMI-style) and multi-page TIFF stacks.

* ``create_dataset("em:/data/sample_A.h5", raw="volumes/raw", labels="volumes/labels/neuron_ids")``:
  one Item per HDF5 file (the spec may also be a folder of ``.h5`` / ``.hdf`` / ``.hdf5`` files). The
  voxel size comes from the ``resolution`` attribute (``(z, y, x)`` in nm, CREMI convention) of the raw
  dataset or the file; ``spacing=(x, y, z)`` (nm) is the fallback. A label volume smaller than the raw
  one with an ``offset`` attribute (nm, ``(z, y, x)``, CREMI padded files) crops the raw to the labelled
  region.
* ``create_dataset("em-tiff:/data/raw.tif", labels="/data/labels.tif", spacing=(4, 4, 40))``: a
  multi-page TIFF (pages = sections) with an optional label stack of the same shape; ``spacing`` is
  ``(x, y, z)`` in nm.

Files store ``(z, y, x)``; Items hold ``(X, Y, Z)`` (a transpose) with ``slice_axis=2`` = the section
axis, ``spacing`` in mm (nm x 1e-6; ``meta['spacing_nm']`` keeps nm) and a diagonal affine.

Targets (``target=``):

* ``"boundary"`` (default for ``em``): instance ids -> ``TaskInfo("segmentation", ("background",
  "membrane"))``; a voxel is membrane where its id differs from an in-plane (same section) neighbour.
* ``"instance"``: the mask holds the instance ids themselves (int64), ``meta['instance'] = True`` and
  ``task.classes == ()``; metrics must treat it as an instance labelling, not as classes.
* ``"labels"`` (default for ``em-tiff``): the label volume already holds classes; mapped with
  ``mask_values`` as in :mod:`medprobe.data.seg2d` (``classes`` defaults to background / membrane).
* ``"instances"``: neuron instance segmentation, ``TaskInfo("instances")``; the mask holds the ids (int64),
  0 = background, and CREMI's unlabelled marker (the largest value of an unsigned 64-bit label dtype) is
  mapped to 0 too (``meta['n_unlabelled']`` counts those voxels), so every metric ignores it.

Section splits (``sections=`` option, both kinds): ``{train: [0, 100], test: [100, 125]}`` (half-open
section ranges of every volume; ``null`` = the end, negative = from the end) or per volume
``{train: {AC4: [0, 80]}, test: {AC3: [0, 100]}}`` (volume = file stem). The dataset then holds, per range,
one 2D Item per section (``unit="section"``, default; ``(y, x)`` image, spacing ``(y, x)`` mm) or one 3D
Item per range (``unit="chunk"``), and its official split is those ranges (recorded with every result).
``em-tiff`` takes a folder as well: ``<name><raw_suffix>.tif`` stacks paired with
``<name><labels_suffix>.tif`` (defaults ``_inputs`` / ``_labels``, SNEMI3D's AC3/AC4 names), volume = name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medprobe.data import register_dataset
from medprobe.data.base import Dataset, Item, TaskInfo
from medprobe.data.io import files_fingerprint
from medprobe.data.seg2d import (
    SECTION_SPLITS,
    map_mask_values,
    parse_mask_values,
    parse_sections,
    resolve_sections,
)
from medprobe.errors import ConfigError, DataError

H5_EXTENSIONS = (".h5", ".hdf", ".hdf5")
TARGETS = ("boundary", "instance", "labels", "instances")
UNITS = ("section", "chunk")
NM_TO_MM = 1e-6


@dataclass
class _Source:
    id: str
    raw: Path
    labels: Path | None


def _h5py(path: Path) -> Any:
    try:
        import h5py
    except ImportError:
        raise DataError("reading HDF5 needs h5py (pip install 'medprobe[volumes]')", source=path) from None
    return h5py


def _h5_keys(f: Any) -> list[str]:
    keys: list[str] = []
    f.visititems(lambda name, obj: keys.append(name) if hasattr(obj, "shape") else None)
    return keys


def _h5_dataset(f: Any, key: str, path: Path) -> Any:
    if key not in f or not hasattr(f[key], "shape"):
        keys = _h5_keys(f)
        raise DataError(f"no dataset {key!r} in HDF5 file (datasets: {', '.join(keys[:8]) or 'none'})",
                        source=path)
    return f[key]


def boundaries_from_instances(ids_zyx: np.ndarray) -> np.ndarray:
    """0/1 membrane map (uint8) where an in-plane neighbour (same section, axis 0) has another id."""
    ids = np.asarray(ids_zyx)
    b = np.zeros(ids.shape, dtype=bool)
    for ax in range(1, ids.ndim):
        a0 = [slice(None)] * ids.ndim
        a1 = [slice(None)] * ids.ndim
        a0[ax], a1[ax] = slice(0, -1), slice(1, None)
        d = ids[tuple(a0)] != ids[tuple(a1)]
        b[tuple(a0)] |= d
        b[tuple(a1)] |= d
    return b.astype(np.uint8)


def _zyx_to_xyz(a: np.ndarray) -> np.ndarray:
    axes = (2, 1, 0) + tuple(range(3, a.ndim))
    return np.ascontiguousarray(np.transpose(a, axes))


class EMVolumeDataset(Dataset):
    """EM stacks (HDF5 or TIFF) as lazy 3D segmentation Items (see module docstring)."""

    spatial_dims = 3
    modality = "em"

    def __init__(self, sources: list[_Source], *, fmt: str, raw_key: str = "volumes/raw",
                 labels_key: str | None = "volumes/labels/neuron_ids", target: str = "boundary",
                 spacing: tuple[float, float, float] | None = None, classes: list[str] | None = None,
                 mask_values: dict[Any, int] | None = None, resolution_attr: str = "resolution",
                 name: str = "em") -> None:
        if target not in TARGETS:
            raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        if not sources:
            raise DataError("no EM volumes found", source=name)
        self.sources, self.fmt, self.target = sources, fmt, target
        self.raw_key, self.labels_key, self.resolution_attr = raw_key, labels_key, resolution_attr
        self.spacing_nm: tuple[float, float, float] | None = None
        if spacing is not None:
            sp = tuple(float(s) for s in spacing)
            if len(sp) != 3 or min(sp) <= 0:
                raise ConfigError(f"spacing must be 3 positive numbers (x, y, z) in nm, got {spacing!r}")
            self.spacing_nm = (sp[0], sp[1], sp[2])
        self.name = name
        self.instance = target in ("instance", "instances")
        if target == "instances":
            self.task = TaskInfo("instances")
        elif self.instance:
            self.task = TaskInfo("segmentation", ())
        else:
            self.task = TaskInfo("segmentation", tuple(classes) if classes else ("background", "membrane"))
        self.mask_values = parse_mask_values(mask_values, self.task.n_classes) if not self.instance else None
        for s in sources:
            for p in (s.raw, s.labels):
                if p is not None and not p.is_file():
                    raise DataError("file not found", source=p)
        self._fp: str | None = None

    def __len__(self) -> int:
        return len(self.sources)

    def ids(self) -> list[str]:
        return [s.id for s in self.sources]

    def labels(self) -> list[Any]:
        return [None] * len(self.sources)

    def fingerprint(self) -> str:
        if self._fp is None:
            files = [p for s in self.sources for p in (s.raw, s.labels) if p is not None]
            mv = None if self.mask_values is None else sorted((str(k), v)
                                                              for k, v in self.mask_values.items())
            self._fp = files_fingerprint(files, {"ids": self.ids(), "raw": self.raw_key,
                                                 "labels": self.labels_key, "target": self.target,
                                                 "spacing": self.spacing_nm,
                                                 "classes": list(self.task.classes), "mask_values": mv})
        return self._fp

    # -- readers: return (raw zyx, labels zyx or None, spacing nm (z, y, x) or None, notes)
    def _read_h5(self, s: _Source) -> tuple[np.ndarray, np.ndarray | None, tuple[float, ...] | None, dict]:
        h5py = _h5py(s.raw)
        notes: dict[str, Any] = {}
        try:
            with h5py.File(s.raw, "r") as f:
                ds = _h5_dataset(f, self.raw_key, s.raw)
                res = ds.attrs.get(self.resolution_attr, f.attrs.get(self.resolution_attr))
                res_zyx = None if res is None else tuple(float(r) for r in np.ravel(res))
                if res_zyx is not None and len(res_zyx) != ds.ndim:
                    raise DataError(f"'{self.resolution_attr}' attribute {res_zyx} does not match the "
                                    f"{ds.ndim}D raw volume", source=s.raw)
                lab = None
                if self.labels_key:
                    ld = _h5_dataset(f, self.labels_key, s.raw)
                    lab = np.asarray(ld[()])
                    off = ld.attrs.get("offset")
                    if lab.shape != ds.shape and off is not None and res_zyx is not None:
                        vox = [int(round(float(o) / r)) for o, r in zip(np.ravel(off), res_zyx)]
                        sl = tuple(slice(v, v + n) for v, n in zip(vox, lab.shape))
                        raw = np.asarray(ds[sl])
                        notes["crop_offset_voxels_zyx"] = vox
                    else:
                        raw = np.asarray(ds[()])
                else:
                    raw = np.asarray(ds[()])
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"cannot read HDF5 ({type(e).__name__}: {' '.join(str(e).split())})",
                            source=s.raw) from None
        return raw, lab, res_zyx, notes

    @staticmethod
    def _read_tiff(path: Path) -> np.ndarray:
        try:
            import tifffile

            arr = np.asarray(tifffile.imread(path))
        except Exception as e:
            raise DataError(f"cannot read TIFF stack ({type(e).__name__}: {' '.join(str(e).split())})",
                            source=path) from None
        if arr.ndim == 2:
            arr = arr[None]
        return arr

    def n_sections(self, i: int) -> int:
        """Sections (z) of volume ``i`` as loaded (after a label-offset crop), read from the file header."""
        s = self.sources[i]
        try:
            if self.fmt == "h5":
                h5py = _h5py(s.raw)
                with h5py.File(s.raw, "r") as f:
                    shape = _h5_dataset(f, self.raw_key, s.raw).shape
                    if self.labels_key:
                        shape = _h5_dataset(f, self.labels_key, s.raw).shape
                return int(shape[0])
            import tifffile

            with tifffile.TiffFile(s.raw) as tf:
                shape = tf.series[0].shape
            return int(shape[0]) if len(shape) >= 3 else 1
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"cannot read the volume header ({type(e).__name__}: {' '.join(str(e).split())})",
                            source=s.raw) from None

    def load(self, i: int) -> Item:
        raw, mask, sp_xyz, meta = self.read_zyx(i)
        s = self.sources[i]
        spacing_mm = tuple(float(v) * NM_TO_MM for v in sp_xyz)
        return Item(id=s.id, image=_zyx_to_xyz(raw), spatial_dims=3, spacing=spacing_mm,
                    mask=None if mask is None else _zyx_to_xyz(mask), affine=np.diag([*spacing_mm, 1.0]),
                    slice_axis=2, patient=s.id, source=str(s.raw), meta=meta)

    def read_zyx(self, i: int) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float], dict[str, Any]]:
        """Volume ``i`` in file order: raw ``(z, y, x[, c])``, target mask ``(z, y, x)`` or None, voxel size
        ``(x, y, z)`` nm, meta."""
        s = self.sources[i]
        if self.fmt == "h5":
            raw, lab, res_zyx, notes = self._read_h5(s)
        else:
            raw = self._read_tiff(s.raw)
            lab = self._read_tiff(s.labels) if s.labels is not None else None
            res_zyx, notes = None, {}
        if raw.ndim not in (3, 4):
            raise DataError(f"expected a 3D stack (z, y, x), got shape {raw.shape}", source=s.id)
        if raw.dtype.kind == "f" and not np.isfinite(raw).all():
            raise DataError(f"raw volume has {int((~np.isfinite(raw)).sum())} NaN/inf voxels", source=s.id)
        issues: list[str] = []
        if res_zyx is not None:
            sp_xyz = (res_zyx[2], res_zyx[1], res_zyx[0])
        elif self.spacing_nm is not None:
            sp_xyz = self.spacing_nm
        else:
            sp_xyz = (1.0, 1.0, 1.0)
            issues.append("voxel size unknown (no resolution attribute, no spacing option): 1 nm assumed")
        mask = None
        meta: dict[str, Any] = {"spacing_nm": tuple(float(v) for v in sp_xyz), "instance": self.instance,
                                "target": self.target, **notes}
        if lab is not None:
            if lab.shape != raw.shape[:3]:
                raise DataError(f"raw shape {raw.shape[:3]} (z, y, x) != label shape {lab.shape}",
                                source=s.id)
            if self.target == "instances":
                mask = instance_ids(lab, s.id)
                meta["n_unlabelled"] = int((lab == np.iinfo(np.uint64).max).sum()) if lab.dtype == np.uint64 else 0
            elif self.target == "instance":
                mask = lab.astype(np.int64, copy=False)
            elif self.target == "boundary":
                mask = boundaries_from_instances(lab)
            else:
                mask = map_mask_values(lab, self.mask_values, self.task.n_classes, s.id,
                                       (s.labels or s.raw).name)
        meta["issues"] = issues
        return raw, mask, (float(sp_xyz[0]), float(sp_xyz[1]), float(sp_xyz[2])), meta


def instance_ids(lab: np.ndarray, source: str | None = None) -> np.ndarray:
    """Label ids -> int64 instance ids with background 0; the uint64 maximum (CREMI: unlabelled) -> 0."""
    a = np.asarray(lab)
    if a.dtype.kind == "f":
        if not np.isfinite(a).all() or not np.array_equal(a, np.round(a)):
            raise DataError("instance labels are not integers", source=source)
    if a.dtype == np.uint64:
        out = a.astype(np.int64)
        out[a == np.iinfo(np.uint64).max] = 0
        if (out < 0).any():
            raise DataError("instance ids above 2**63 (other than the unlabelled marker) are not supported",
                            source=source)
        return out
    out = a.astype(np.int64)
    if (out < 0).any():
        raise DataError("instance labels hold negative ids", source=source)
    return out


class EMSections(Dataset):
    """Section ranges of EM volumes as 2D section Items or 3D chunk Items with an official split."""

    modality = "em"

    def __init__(self, base: EMVolumeDataset, sections: Any, unit: str = "section") -> None:
        if unit not in UNITS:
            raise ConfigError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}", base.name)
        self.base, self.unit, self.name, self.task = base, unit, base.name, base.task
        self.spatial_dims = 2 if unit == "section" else 3
        self.sections = parse_sections(sections, base.name)
        ids = base.ids()
        ranges = resolve_sections(self.sections, {v: base.n_sections(k) for k, v in enumerate(ids)}, base.name)
        vol = {v: k for k, v in enumerate(ids)}
        if unit == "section":
            self._rows = [(split, vol[v], z, z + 1) for split, v, a, b in ranges for z in range(a, b)]
        else:
            self._rows = [(split, vol[v], a, b) for split, v, a, b in ranges]
        self._cache: tuple[int, Any] | None = None
        self._fp: str | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def ids(self) -> list[str]:
        names = self.base.ids()
        if self.unit == "section":
            return [f"{names[v]}/z{a:04d}" for _, v, a, _ in self._rows]
        return [f"{names[v]}/z{a:04d}-{b:04d}" for _, v, a, b in self._rows]

    def labels(self) -> list[Any]:
        return [None] * len(self._rows)

    def ranges(self) -> list[dict[str, Any]]:
        """The resolved section ranges (what a result records)."""
        names = self.base.ids()
        out: list[dict[str, Any]] = []
        for split, v, a, b in self._rows:
            if out and out[-1]["split"] == split and out[-1]["volume"] == names[v] and out[-1]["stop"] == a:
                out[-1]["stop"] = b
            else:
                out.append({"split": split, "volume": names[v], "start": a, "stop": b})
        return out

    def splits(self) -> dict[str, list[int]] | None:
        return {k: [i for i, r in enumerate(self._rows) if r[0] == k] for k in SECTION_SPLITS}

    def fingerprint(self) -> str:
        if self._fp is None:
            from medprobe.utils import hash_obj

            self._fp = hash_obj({"base": self.base.fingerprint(), "unit": self.unit, "rows": self._rows}, n=20)
        return self._fp

    def _volume(self, v: int) -> Any:
        if self._cache is None or self._cache[0] != v:
            self._cache = None  # free the previous volume first
            self._cache = (v, self.base.read_zyx(v))
        return self._cache[1]

    def load(self, i: int) -> Item:
        split, v, a, b = self._rows[i]
        raw, mask, sp, meta = self._volume(v)
        src = self.base.sources[v]
        meta = {**meta, "volume": src.id, "split": split, "sections": [a, b], "unit": self.unit}
        cid = self.ids()[i]
        if self.unit == "section":
            sp_mm = (sp[1] * NM_TO_MM, sp[0] * NM_TO_MM)
            return Item(id=cid, image=np.ascontiguousarray(raw[a]), spatial_dims=2, spacing=sp_mm,
                        mask=None if mask is None else np.ascontiguousarray(mask[a]), patient=cid,
                        source=str(src.raw), meta={**meta, "section": a})
        spacing_mm = tuple(float(x) * NM_TO_MM for x in sp)
        return Item(id=cid, image=_zyx_to_xyz(raw[a:b]), spatial_dims=3, spacing=spacing_mm,
                    mask=None if mask is None else _zyx_to_xyz(mask[a:b]), affine=np.diag([*spacing_mm, 1.0]),
                    slice_axis=2, patient=cid, source=str(src.raw), meta=meta)


def _with_sections(ds: EMVolumeDataset, sections: Any, unit: str) -> Dataset:
    return ds if sections is None else EMSections(ds, sections, unit)


def _stem(p: Path) -> str:
    return p.name[: -len(p.suffix)] if p.suffix else p.name


@register_dataset("em")
def _em(arg: str, *, raw: str = "volumes/raw", labels: str | None = "volumes/labels/neuron_ids",
        target: str = "boundary", sections: Any = None, unit: str = "section", **options: Any) -> Dataset:
    """``em:/path/file.h5`` or ``em:/folder`` of HDF5 files (options: raw, labels, target, spacing ...)."""
    if not arg:
        raise ConfigError("em: give an HDF5 file or folder, e.g. 'em:/data/sample_A.h5'")
    root = Path(arg).expanduser()
    if root.is_dir():
        files = sorted(f for f in root.iterdir() if f.suffix.lower() in H5_EXTENSIONS and f.is_file())
        if not files:
            raise DataError(f"no HDF5 files ({', '.join(H5_EXTENSIONS)}) in folder", source=root)
    elif root.is_file():
        files = [root]
    else:
        raise DataError("file not found", source=root)
    options.setdefault("name", root.name if root.is_dir() else _stem(root))
    return _with_sections(EMVolumeDataset([_Source(_stem(f), f, None) for f in files], fmt="h5", raw_key=raw,
                                          labels_key=labels, target=target, **options), sections, unit)


@register_dataset("em-tiff")
def _em_tiff(arg: str, *, labels: str | None = None, target: str = "labels", sections: Any = None,
             unit: str = "section", raw_suffix: str = "_inputs", labels_suffix: str = "_labels",
             **options: Any) -> Dataset:
    """``em-tiff:/path/raw.tif`` with ``labels=/path/labels.tif`` and ``spacing=(x, y, z)`` nm, or
    ``em-tiff:/folder`` of ``<name><raw_suffix>.tif`` + ``<name><labels_suffix>.tif`` stacks."""
    if not arg:
        raise ConfigError("em-tiff: give a multi-page TIFF, e.g. 'em-tiff:/data/raw.tif'")
    raw = Path(arg).expanduser()
    if raw.is_dir():
        stacks = sorted(f for f in raw.iterdir() if f.is_file() and f.suffix.lower() in (".tif", ".tiff")
                        and _stem(f).endswith(raw_suffix))
        if not stacks:
            raise DataError(f"no '*{raw_suffix}.tif' stacks in folder", source=raw)
        srcs = []
        for f in stacks:
            name = _stem(f)[: len(_stem(f)) - len(raw_suffix)]
            lab = f.with_name(name + labels_suffix + f.suffix)
            srcs.append(_Source(name, f, lab if lab.is_file() else None))
        options.setdefault("name", raw.name)
        return _with_sections(EMVolumeDataset(srcs, fmt="tiff", labels_key=None, target=target, **options),
                              sections, unit)
    if not raw.is_file():
        raise DataError("file not found", source=raw)
    options.setdefault("name", _stem(raw))
    ds = EMVolumeDataset([_Source(_stem(raw), raw, Path(labels).expanduser() if labels else None)],
                         fmt="tiff", labels_key=None, target=target, **options)
    return _with_sections(ds, sections, unit)


__all__ = ["EMSections", "EMVolumeDataset", "boundaries_from_instances", "instance_ids"]
