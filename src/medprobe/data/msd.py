"""Medical Segmentation Decathlon (MSD) and nnU-Net raw dataset layouts.

``create_dataset("msd:/data/Task04_Hippocampus")`` and
``create_dataset("nnunet:/data/Dataset004_Hippocampus")`` read ``imagesTr/`` + ``labelsTr/``
(+ ``imagesTs/`` with ``include_test=True``) and ``dataset.json``:

* MSD: ``modality`` {"0": "MRI"}, ``labels`` {"0": "background", "1": "Anterior", ...}, ``training``
  [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}], optional ``test``. Images may be
  4D (X, Y, Z, C) files; an nnU-Net v1 conversion (``x_0000.nii.gz`` ... next to a MSD json) also works.
* nnU-Net v2: ``channel_names`` {"0": "T2", "1": "ADC"}, ``labels`` {"background": 0, "a": 1},
  ``file_ending``; cases are the files of ``labelsTr``; channel ``c`` of case ``x`` is
  ``imagesTr/x_{c:04d}<ending>``. Several channel files are stacked into one ``(X, Y, Z, C)`` image.

Items carry ``mask`` (integer label map, class index = position in ``task.classes``; background is
class 0), ``spacing``, ``affine`` and ``slice_axis`` from :func:`medprobe.data.io.read_volume`
(canonical RAS, axis 2 axial), ``patient`` = case id. Label values that are not ``0..K-1`` are remapped
to class indices (original values in ``meta['label_values']``).

Validation policy (checked on every :meth:`load`; each failure is one ``DataError`` line
``"<case>: <problem>"``):

* errors: a missing image / channel / label file, image vs label (or channel vs channel) shape
  mismatch, affine mismatch beyond ``affine_tol`` (mm), NaN / inf voxels in the image, label values
  not declared in ``dataset.json``, non-integer label values (float label files are cast to int only
  when every value is integral);
* warning: an empty label volume (background only) is legitimate in some datasets (cases without a
  lesion), so it is recorded in ``Item.meta['issues']`` and the case loads; ``strict_empty=True``
  turns it into an error.

Nothing is dropped silently: a run that loads every case stops at the first bad one. Use
:func:`validate_all` to list every problem in one pass (headers first: shape / affine mismatches are
found without reading voxels), or :func:`drop_invalid` to continue on the valid cases with the
skipped ones listed. :func:`resample_item` / :func:`restore_to_original` train at a target spacing
and put predictions back on the original grid.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medprobe.data import register_dataset
from medprobe.data.base import Dataset, Item, Modality, Subset, TaskInfo
from medprobe.data.io import VolumeData, files_fingerprint, read_volume, suffix_of
from medprobe.errors import ConfigError, DataError, MedprobeError
from medprobe.utils import hash_obj

_VOLUME_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
_MRI_NAMES = {"mri", "mr", "t1", "t1w", "t2", "t2w", "flair", "adc", "dwi", "t1gd", "t1c", "t1ce", "pd",
              "swi", "bold", "dce", "hbv", "cine"}
_NORM_NAMES = {"zscore", "nonorm", "rescale_to_0_1", "rgb_to_0_1", "noresampling", "ct_norm"}


# ---------------------------------------------------------------------------------------- helpers
def _strip_ending(name: str) -> tuple[str, str]:
    """``("case", ".nii.gz")`` from a file name."""
    low = name.lower()
    for end in _VOLUME_ENDINGS:
        if low.endswith(end):
            return name[: -len(end)], name[-len(end):]
    suf = suffix_of(name)
    return (name[: -len(suf)] if suf else name), suf


def _volume_files(folder: Path, ending: str | None = None) -> list[Path]:
    if not folder.is_dir():
        return []
    out = []
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or not f.is_file():  # skips macOS '._x.nii.gz' resource forks
            continue
        ok = f.name.endswith(ending) if ending else _strip_ending(f.name)[1] in _VOLUME_ENDINGS
        if ok:
            out.append(f)
    return out


def modality_from_names(names: list[str]) -> Modality:
    """Map dataset.json modality / channel names (``CT``, ``MRI``, ``T2``, ``PET`` ...) to a modality."""
    low = {str(n).strip().lower().replace("-", "").replace(" ", "") for n in names}
    low -= _NORM_NAMES
    has_ct = any(n == "ct" or n.startswith("ct") and not n.startswith("cta") for n in low) or "cta" in low
    has_pet = any("pet" in n for n in low)
    if has_ct and has_pet:
        return "petct"
    if has_pet:
        return "pet"
    if has_ct:
        return "ct"
    if low and all(n in _MRI_NAMES or n.startswith(("t1", "t2", "mr")) for n in low):
        return "mri"
    if any(n in ("us", "ultrasound") for n in low):
        return "us"
    return "generic"


def _canonical_header_geometry(path: Path) -> tuple[tuple[int, ...], np.ndarray] | None:
    """Spatial shape and RAS affine after canonical reorientation, from a NIfTI header only (else None)."""
    if suffix_of(path) not in (".nii", ".nii.gz"):
        return None
    try:
        import nibabel as nib
        import nibabel.orientations as nio
        from nibabel.spatialimages import SpatialImage

        img = nib.load(str(path))
        if not isinstance(img, SpatialImage):
            return None
        shape = tuple(int(s) for s in img.shape[:3])
        affine = np.asarray(img.affine, dtype=np.float64)
        ornt = nio.io_orientation(affine)
        new_shape = tuple(shape[int(ax)] for ax in np.argsort(ornt[:, 0]))
        return new_shape, affine @ nio.inv_ornt_aff(ornt, shape)
    except Exception:  # unreadable header: the full read reports it
        return None


def _affine_mismatch(a: np.ndarray, b: np.ndarray, tol: float) -> str | None:
    diff = float(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float))))
    if diff > tol:
        return f"max abs difference {diff:.4g} > {tol:g}"
    return None


def _to_int_labels(lab: np.ndarray) -> np.ndarray:
    """Integer label map (uint8 / int16 / int32) or ``ValueError`` naming the problem."""
    if lab.dtype.kind == "b":
        return lab.astype(np.uint8)
    if lab.dtype.kind == "f":
        if not np.isfinite(lab).all():
            raise ValueError(f"label has {int((~np.isfinite(lab)).sum())} NaN/inf voxels")
        r = np.round(lab)
        if not np.array_equal(r, lab):
            bad = np.unique(lab[r != lab])[:5]
            raise ValueError(f"label has non-integer values (e.g. {', '.join(f'{v:g}' for v in bad)})")
        lab = r.astype(np.int64)
    elif lab.dtype.kind not in "iu":
        raise ValueError(f"label dtype {lab.dtype} is not numeric")
    if lab.size == 0:
        return lab.astype(np.uint8)
    lo, hi = int(lab.min()), int(lab.max())
    for dt in (np.uint8, np.int16, np.int32, np.int64):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return lab.astype(dt, copy=False)
    return lab  # pragma: no cover


def _present_values(lab: np.ndarray) -> np.ndarray:
    if lab.size and lab.min() >= 0 and lab.max() < 1 << 16:
        counts = np.bincount(lab.ravel().astype(np.intp, copy=False))
        return np.nonzero(counts)[0]
    return np.unique(lab)


# ---------------------------------------------------------------------------------------- dataset
@dataclass
class _Case:
    id: str
    images: list[Path]  # one file (3D or 4D) or one file per channel
    label: Path | None
    split: str = "train"
    problems: list[str] = field(default_factory=list)  # found while indexing (missing files)


class SegmentationDecathlon(Dataset):
    """MSD / nnU-Net raw folder as a lazy 3D segmentation dataset (see module docstring)."""

    spatial_dims = 3

    def __init__(self, root: str | Path, *, layout: str = "auto", include_test: bool = False,
                 strict_empty: bool = False, affine_tol: float = 1e-3, modality: Modality | None = None,
                 cases: list[str] | None = None, limit: int | None = None, name: str | None = None) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError("dataset folder not found", source=self.root)
        js_path = self.root / "dataset.json"
        if not js_path.is_file():
            raise DataError("no dataset.json in the dataset folder", source=self.root)
        try:
            self._json_text = js_path.read_text(encoding="utf-8")
            self.meta_json: dict[str, Any] = json.loads(self._json_text)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read dataset.json ({type(e).__name__}: {e})", source=js_path) from None
        if not isinstance(self.meta_json, dict):
            raise DataError("dataset.json is not a JSON object", source=js_path)
        if layout == "auto":
            v2 = "channel_names" in self.meta_json or "file_ending" in self.meta_json
            layout = "nnunet" if v2 else "msd"
        if layout not in ("msd", "nnunet"):
            raise ConfigError(f"layout must be 'auto', 'msd' or 'nnunet', got {layout!r}")
        self.layout = layout
        self.strict_empty, self.affine_tol = bool(strict_empty), float(affine_tol)
        self.include_test = include_test
        self.name = name or str(self.meta_json.get("name") or self.root.name)
        self.label_values, classes = self._parse_labels(js_path)
        self.task = TaskInfo("segmentation", tuple(classes))
        chan = self.meta_json.get("channel_names") or self.meta_json.get("modality") or {}
        if not isinstance(chan, dict):
            raise DataError("'modality' / 'channel_names' must be an object {\"0\": name}", source=js_path)
        self.channel_names = [str(chan[k]) for k in sorted(chan, key=lambda k: int(k))] if chan else []
        self.modality = modality or modality_from_names(self.channel_names)
        self._cases = self._index_nnunet() if layout == "nnunet" else self._index_msd(js_path)
        if cases is not None:
            want = set(cases)
            unknown = sorted(want - {c.id for c in self._cases})
            if unknown:
                raise ConfigError(f"unknown case ids: {', '.join(unknown[:10])}", source=self.root)
            self._cases = [c for c in self._cases if c.id in want]
        if limit is not None:
            self._cases = self._cases[: int(limit)]
        if not self._cases:
            raise DataError("no cases found (empty imagesTr / labelsTr?)", source=self.root)
        seen: set[str] = set()
        dup = [c.id for c in self._cases if c.id in seen or seen.add(c.id)]  # type: ignore[func-returns-value]
        if dup:
            raise DataError(f"duplicate case ids: {', '.join(dup[:10])}", source=self.root)
        self._fp: str | None = None

    # -- indexing
    def _parse_labels(self, js_path: Path) -> tuple[list[int], list[str]]:
        labels = self.meta_json.get("labels")
        if not isinstance(labels, dict) or not labels:
            raise DataError("dataset.json has no 'labels' object", source=js_path)
        pairs: list[tuple[int, str]] = []
        for k, v in labels.items():
            try:
                if isinstance(v, str):  # MSD: {"0": "background"}
                    pairs.append((int(k), v))
                elif isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer():
                    pairs.append((int(v), str(k)))  # nnU-Net v2: {"background": 0}
                else:
                    raise ValueError
            except ValueError:
                raise DataError(f"unsupported label entry {k!r}: {v!r} (region-based labels are not "
                                "supported)", source=js_path) from None
        pairs.sort()
        values = [v for v, _ in pairs]
        if len(set(values)) != len(values):
            raise DataError(f"duplicate label values in 'labels': {values}", source=js_path)
        if values[0] != 0:
            raise DataError("'labels' must declare value 0 (background)", source=js_path)
        return values, [n for _, n in pairs]

    def _ending(self) -> str:
        end = self.meta_json.get("file_ending")
        return str(end) if end else ".nii.gz"

    def _channel_files(self, folder: Path, case: str, ending: str) -> tuple[list[Path], list[str]]:
        """Files of a case's image: ``case<ending>`` or ``case_0000<ending>``...; plus problems."""
        single = folder / f"{case}{ending}"
        if self.layout == "msd" and single.is_file():
            return [single], []
        n = max(len(self.channel_names), 1)
        files = [folder / f"{case}_{c:04d}{ending}" for c in range(n)]
        missing = [f for f in files if not f.is_file()]
        if self.layout == "msd" and len(missing) == len(files):
            return [single], [f"image file {folder.name}/{single.name} not found"]
        probs = []
        for f in missing:
            c = int(f.name[len(case) + 1: len(case) + 5])
            cname = self.channel_names[c] if c < len(self.channel_names) else "?"
            probs.append(f"missing channel {c} ({cname}) file {folder.name}/{f.name}")
        extra = [f for f in folder.glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}")
                 if int(f.name[len(case) + 1: len(case) + 5]) >= n]
        if extra:
            probs.append(f"{len(extra)} channel file(s) beyond the {n} declared in dataset.json "
                         f"(e.g. {sorted(extra)[0].name})")
        return files, probs

    def _index_msd(self, js_path: Path) -> list[_Case]:
        out: list[_Case] = []
        training = self.meta_json.get("training")
        if training is None:  # no list: pair labelsTr files by name
            training = [{"image": f"./imagesTr/{f.name}", "label": f"./labelsTr/{f.name}"}
                        for f in _volume_files(self.root / "labelsTr")]
        if not isinstance(training, list):
            raise DataError("'training' must be a list of {image, label}", source=js_path)
        for entry in training:
            if not isinstance(entry, dict) or "image" not in entry:
                raise DataError(f"bad 'training' entry {entry!r}", source=js_path)
            img_rel = Path(str(entry["image"]))
            case, ending = _strip_ending(img_rel.name)
            files, probs = self._channel_files(self.root / img_rel.parent, case, ending)
            lab = self.root / str(entry["label"]) if entry.get("label") else None
            if lab is None:
                probs.append("no label file in dataset.json")
            elif not lab.is_file():
                probs.append(f"label file {lab.parent.name}/{lab.name} not found")
            out.append(_Case(case, files, lab, "train", probs))
        if self.include_test:
            tests = self.meta_json.get("test")
            names = ([Path(str(t)).name for t in tests] if isinstance(tests, list)
                     else [f.name for f in _volume_files(self.root / "imagesTs")])
            ids: list[str] = []
            for nm in names:
                case, ending = _strip_ending(nm)
                if (m := _CHANNEL_RE.match(case)) is not None:  # x_0000.nii.gz: channel file of case x
                    case = m.group("case")
                if case in ids:
                    continue
                ids.append(case)
                files, probs = self._channel_files(self.root / "imagesTs", case, ending)
                out.append(_Case(case, files, None, "test", probs))
        return out

    def _index_nnunet(self) -> list[_Case]:
        ending = self._ending()
        out: list[_Case] = []
        for lab in _volume_files(self.root / "labelsTr", ending):
            case = lab.name[: -len(ending)]
            files, probs = self._channel_files(self.root / "imagesTr", case, ending)
            out.append(_Case(case, files, lab, "train", probs))
        labelled = {c.id for c in out}
        img_ids = {m.group("case") for f in _volume_files(self.root / "imagesTr", ending)
                   if (m := _CHANNEL_RE.match(f.name[: -len(ending)]))}
        orphans = sorted(img_ids - labelled)
        for case in orphans:  # images without a label file: listed as broken cases, never dropped silently
            files, probs = self._channel_files(self.root / "imagesTr", case, ending)
            out.append(_Case(case, files, self.root / "labelsTr" / f"{case}{ending}", "train",
                             probs + [f"label file labelsTr/{case}{ending} not found"]))
        if self.include_test:
            test_ids = sorted({m.group("case") for f in _volume_files(self.root / "imagesTs", ending)
                               if (m := _CHANNEL_RE.match(f.name[: -len(ending)]))})
            for case in test_ids:
                files, probs = self._channel_files(self.root / "imagesTs", case, ending)
                out.append(_Case(case, files, None, "test", probs))
        return out

    # -- Dataset API
    def __len__(self) -> int:
        return len(self._cases)

    def ids(self) -> list[str]:
        return [c.id for c in self._cases]

    def labels(self) -> list[Any]:
        return [None] * len(self._cases)

    def splits(self) -> dict[str, list[int]] | None:
        if not self.include_test:
            return None
        return {"train": [i for i, c in enumerate(self._cases) if c.split == "train"], "val": [],
                "test": [i for i, c in enumerate(self._cases) if c.split == "test"]}

    def fingerprint(self) -> str:
        if self._fp is None:
            files: list[Path] = []
            for c in self._cases:
                files += c.images + ([c.label] if c.label is not None else [])
            self._fp = files_fingerprint(files, {"ids": self.ids(), "json": hash_obj(self._json_text),
                                                 "layout": self.layout, "strict_empty": self.strict_empty})
        return self._fp

    def _fail(self, case: _Case, problem: str) -> DataError:
        return DataError(problem, source=case.id)

    def _read(self, case: _Case, path: Path) -> VolumeData:
        try:
            return read_volume(path)
        except MedprobeError as e:
            raise self._fail(case, str(e)) from None

    def check_headers(self, i: int) -> list[str]:
        """Problems found from file names and NIfTI headers only (missing files, shape / affine mismatch)."""
        case = self._cases[i]
        if case.problems:
            return list(case.problems)
        geo = [_canonical_header_geometry(f) for f in case.images]
        lab_geo = _canonical_header_geometry(case.label) if case.label is not None else None
        if any(g is None for g in geo) or (case.label is not None and lab_geo is None):
            return []
        probs = []
        ref_shape, ref_aff = geo[0]  # type: ignore[misc]
        for c, g in enumerate(geo[1:], start=1):
            shp, aff = g  # type: ignore[misc]
            if shp != ref_shape:
                probs.append(f"channel {c} shape {shp} != channel 0 shape {ref_shape}")
            elif (m := _affine_mismatch(aff, ref_aff, self.affine_tol)) is not None:
                probs.append(f"channel {c} affine differs from channel 0 ({m})")
        if lab_geo is not None:
            if lab_geo[0] != ref_shape:
                probs.append(f"image shape {ref_shape} != label shape {lab_geo[0]}")
            elif (m := _affine_mismatch(ref_aff, lab_geo[1], self.affine_tol)) is not None:
                probs.append(f"image and label orientation / affine differ ({m})")
        return probs

    def load(self, i: int) -> Item:
        case = self._cases[i]
        if case.problems:
            raise self._fail(case, "; ".join(case.problems))
        vols = [self._read(case, f) for f in case.images]
        ref = vols[0]
        for c, v in enumerate(vols[1:], start=1):
            if v.array.shape[:3] != ref.array.shape[:3]:
                raise self._fail(case, f"channel {c} shape {v.array.shape[:3]} != channel 0 shape "
                                       f"{ref.array.shape[:3]}")
            if (m := _affine_mismatch(v.affine, ref.affine, self.affine_tol)) is not None:
                raise self._fail(case, f"channel {c} affine differs from channel 0 ({m})")
        if len(vols) == 1:
            image = ref.array
        else:
            parts = [v.array if v.array.ndim == 4 else v.array[..., None] for v in vols]
            dt = np.result_type(*[p.dtype for p in parts])
            image = np.concatenate([p.astype(dt, copy=False) for p in parts], axis=-1)
        if image.dtype.kind == "f":
            bad = int(np.count_nonzero(~np.isfinite(image)))
            if bad:
                raise self._fail(case, f"image has {bad} NaN/inf voxels")
        issues: list[str] = []
        mask = None
        meta: dict[str, Any] = {"split": case.split, "files": [str(f) for f in case.images]}
        if case.label is not None:
            lv = self._read(case, case.label)
            lab = lv.array
            if lab.ndim != 3:
                raise self._fail(case, f"label must be 3D, got shape {lab.shape}")
            if lab.shape != image.shape[:3]:
                raise self._fail(case, f"image shape {image.shape[:3]} != label shape {lab.shape}")
            if (m := _affine_mismatch(ref.affine, lv.affine, self.affine_tol)) is not None:
                raise self._fail(case, f"image and label orientation / affine differ ({m})")
            try:
                mask = _to_int_labels(lab)
            except ValueError as e:
                raise self._fail(case, str(e)) from None
            present = _present_values(mask)
            unknown = sorted(set(present.tolist()) - set(self.label_values))
            if unknown:
                raise self._fail(case, f"label values {unknown} not in dataset.json labels "
                                       f"{self.label_values}")
            if self.label_values != list(range(len(self.label_values))):
                lut = np.zeros(max(self.label_values) + 1, dtype=np.uint8 if len(self.label_values) < 256
                               else np.int32)
                lut[self.label_values] = np.arange(len(self.label_values))
                mask = lut[mask]
                meta["label_values"] = list(self.label_values)
            if not np.any(present != 0):
                if self.strict_empty:
                    raise self._fail(case, "label volume is empty (background only)")
                issues.append("label volume is empty (background only)")
            meta["label_file"] = str(case.label)
        meta["issues"] = issues
        return Item(id=case.id, image=image, spatial_dims=3, spacing=tuple(ref.spacing), mask=mask,
                    affine=ref.affine, slice_axis=ref.slice_axis, patient=case.id,
                    source=str(case.images[0]) if len(case.images) == 1 else str(case.images[0].parent),
                    meta=meta)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(layout=self.layout, channels=self.channel_names, root=str(self.root))
        return d


# --------------------------------------------------------------------------------- validation
def validate_all(dataset: Dataset, include_warnings: bool = True) -> list[tuple[str, str]]:
    """Check every case; return ``[(case_id, problem), ...]`` (empty when all cases are fine).

    Header-level problems (missing files, shape / affine mismatches) are found without reading
    voxels when the dataset offers ``check_headers``; other cases are fully loaded. Warnings
    (``Item.meta['issues']``, e.g. an empty label) are listed as ``"warning: ..."``.
    """
    out: list[tuple[str, str]] = []
    ids = dataset.ids()
    for i in range(len(dataset)):
        check = getattr(dataset, "check_headers", None)
        probs = check(i) if check is not None else []
        if probs:
            out += [(ids[i], p) for p in probs]
            continue
        try:
            item = dataset.load(i)
        except MedprobeError as e:
            out.append((ids[i], e.problem if e.source == ids[i] else str(e)))
            continue
        if include_warnings:
            out += [(ids[i], f"warning: {p}") for p in item.meta.get("issues", [])]
    return out


def drop_invalid(dataset: Dataset) -> tuple[Subset, list[tuple[str, str]]]:
    """The valid cases as a :class:`Subset`, plus the ``(case_id, problem)`` list of skipped ones."""
    problems = validate_all(dataset, include_warnings=False)
    bad = {cid for cid, _ in problems}
    keep = [i for i, cid in enumerate(dataset.ids()) if cid not in bad]
    return Subset(dataset, keep, tag="valid"), problems


# ---------------------------------------------------------------------------------- resampling
def _fit_shape(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Crop / edge-pad the leading axes of ``a`` to ``shape`` (fixes zoom rounding)."""
    sl = tuple(slice(0, s) for s in shape)
    a = a[sl]
    pad = [(0, max(0, s - a.shape[k])) for k, s in enumerate(shape)] + [(0, 0)] * (a.ndim - len(shape))
    return np.pad(a, pad, mode="edge") if any(p[1] for p in pad) else a


def _zoom(a: np.ndarray, factors: tuple[float, ...], order: int, shape: tuple[int, ...]) -> np.ndarray:
    from scipy.ndimage import zoom

    nd = len(factors)
    if a.ndim > nd:  # channels last: resample each channel
        chans = [_zoom(a[..., c], factors, order, shape) for c in range(a.shape[-1])]
        return np.stack(chans, axis=-1)
    src = a.astype(np.float32) if (order > 0 and a.dtype.kind not in "f") else a
    out = zoom(src, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
    out = _fit_shape(out, shape)
    if order > 0 and a.dtype.kind != "f":
        out = out.astype(np.float32)
    return np.ascontiguousarray(out)


def resample_item(item: Item, target_spacing: tuple[float, ...] | float, order: int = 1) -> Item:
    """Copy of ``item`` resampled to ``target_spacing`` (image: spline ``order``, mask: nearest).

    ``meta['original_shape']`` / ``meta['original_spacing']`` keep the source grid for
    :func:`restore_to_original`; the affine is updated so world coordinates stay aligned
    (pixel-area convention: the volume's outer edges are kept).
    """
    nd = item.spatial_dims
    if isinstance(target_spacing, (int, float)):
        tgt: tuple[float, ...] = (float(target_spacing),) * nd
    else:
        tgt = tuple(float(s) for s in target_spacing)
    if len(tgt) != nd or any(s <= 0 for s in tgt):
        raise ConfigError(f"target spacing {tgt} must have {nd} positive values")
    src = tuple(float(s) for s in item.spacing) if item.spacing else (1.0,) * nd
    shape = item.spatial_shape
    new_shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, src, tgt))
    factors = tuple(m / n for m, n in zip(new_shape, shape))
    image = _zoom(np.asarray(item.image), factors, order, new_shape)
    mask = None if item.mask is None else _zoom(item.mask, factors, 0, new_shape)
    affine = None
    if item.affine is not None:
        scale = np.eye(4)
        for k, f in enumerate(factors[:3]):
            scale[k, k] = 1.0 / f
            scale[k, 3] = 0.5 / f - 0.5
        affine = np.asarray(item.affine, float) @ scale
    meta = dict(item.meta)
    meta.setdefault("original_shape", tuple(shape))
    meta.setdefault("original_spacing", src)
    new_spacing = tuple(s / f for s, f in zip(src, factors))
    return Item(id=item.id, image=image, spatial_dims=nd, spacing=new_spacing, label=item.label,
                mask=mask, affine=affine, slice_axis=item.slice_axis, patient=item.patient,
                source=item.source, meta=meta)


def restore_to_original(mask: np.ndarray, original_shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resample of a label map back to ``original_shape`` (undoes :func:`resample_item`)."""
    mask = np.asarray(mask)
    shape = tuple(int(s) for s in original_shape)
    nd = len(shape)
    factors = tuple(n / m for n, m in zip(shape, mask.shape[:nd]))
    return _zoom(mask, factors, 0, shape)


# -------------------------------------------------------------------------------------- registry
def _make(arg: str, layout: str, options: dict[str, Any]) -> SegmentationDecathlon:
    if not arg:
        raise ConfigError(f"{layout}: give the dataset folder, e.g. '{layout}:/data/Task04_Hippocampus'")
    options.setdefault("layout", "auto" if layout == "msd" else layout)
    return SegmentationDecathlon(arg, **options)


@register_dataset("msd")
def _msd(arg: str, **options: Any) -> Dataset:
    """``msd:/path/TaskXX_Name`` (MSD layout; a nnU-Net v2 dataset.json is detected too)."""
    return _make(arg, "msd", options)


@register_dataset("nnunet")
def _nnunet(arg: str, **options: Any) -> Dataset:
    """``nnunet:/path/DatasetXXX_Name`` (nnU-Net v2 raw layout)."""
    return _make(arg, "nnunet", options)


__all__ = ["SegmentationDecathlon", "drop_invalid", "modality_from_names", "resample_item",
           "restore_to_original", "validate_all"]
