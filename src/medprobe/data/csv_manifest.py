"""Datasets described by a CSV manifest of image files + labels.

``create_dataset("csv:/data/labels.csv", label_columns=["label"], task="binary")`` -- generic manifest:

* ``path_column`` (default ``path``): file path, relative to ``root`` (default: the CSV's folder);
* labels: one column (binary 0/1, multi-class / ordinal index or class name), several 0/1 columns
  (multi-label, label names = column names), or one column of ``sep``-separated names (multi-label,
  e.g. ``"Effusion|Mass"``; ``no_finding`` such as ``"No Finding"`` -> all zeros);
* regression (``task="regression"``): one or more numeric target columns (``label_columns`` a list or a
  comma list ``"age,bmi"``); ``Item.label`` is a float (one column) or a float64 vector; target names =
  the column names (``TaskInfo("regression", classes=names)``); an empty or non-numeric cell raises
  :class:`DataError` naming the CSV, row and column;
* survival (``task="survival"``): two numeric columns, follow-up time then event (1) / censored (0)
  (``label_columns=time,event``); ``Item.label`` is ``[time, event]``; ``TaskInfo("survival", ("time", "event"))``;
* optional ``patient_column``, ``split_column`` (train / val / test), ``id_column``;
* groups: ``patient_column`` (a column), or ``group_pattern`` (a regex on the file name; its ``group`` named
  group, else its first group) for a video / sequence / patient id: no group is ever in two splits;
* ``label_map``: ``{raw value: class}`` applied to the label column first (AutoLaparo phases 1-7 -> 0-6);
* 2D pixel spacing per image: ``spacing_column`` (mm per pixel: one number, or ``"row,col"`` / ``"rowxcol"``;
  e.g. HC18's ``pixel size(mm)``) or one ``spacing`` for every image, else a DICOM file's ``PixelSpacing``
  (or ``ImagerPixelSpacing``); items then carry ``meta['spacing_source']`` and distances are in mm; without
  any of them, 2D spacing is unknown (pixels).

Worked examples: ``nih14:`` (NIH ChestX-ray14) and ``rsna-pneumonia:`` (RSNA Pneumonia Detection).
Bad label values and missing files raise :class:`DataError` naming the CSV, row and value / path;
all files are checked at construction.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medprobe.data import register_dataset
from medprobe.data.base import Dataset, Item, Modality, TaskInfo
from medprobe.data.io import content_digest, read_image, read_volume
from medprobe.errors import ConfigError, DataError
from medprobe.utils import hash_obj

SPLIT_ALIASES = {"train": "train", "training": "train", "tr": "train",
                 "val": "val", "valid": "val", "validation": "val", "tune": "val", "dev": "val",
                 "test": "test", "testing": "test", "te": "test"}

NIH14_CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                 "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
                 "Hernia")


@dataclass
class Record:
    """One case of a manifest: a file, its label and where it was listed (for error messages)."""

    path: Path
    label: Any
    id: str
    patient: str | None = None
    split: str | None = None
    where: str = ""
    spacing: tuple[float, ...] | None = None  # mm per pixel axis, when the manifest says


# ----------------------------------------------------------------------------------------- CSV helpers
def read_csv_rows(csv_path: Path, required: Sequence[str] = ()) -> tuple[list[str], list[tuple[int, dict]]]:
    """Rows of a CSV as ``(line number, {column: value})``; DataError on missing file / columns."""
    if not csv_path.is_file():
        raise DataError("CSV file not found", source=csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows = []
            for row in reader:
                rows.append((reader.line_num, {k: (v or "").strip() if isinstance(v, str) else v
                                               for k, v in row.items() if k is not None}))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read CSV ({type(e).__name__}: {e})", source=csv_path) from None
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"missing column(s) {missing}; columns are {header}", source=csv_path)
    return header, rows


def _where(row_no: int, line: int) -> str:
    return f"row {row_no} (line {line})"


def _int_value(v: str) -> int | None:
    try:
        f = float(v)
    except ValueError:
        return None
    return int(f) if np.isfinite(f) and f.is_integer() else None


def parse_label(value: str, task: TaskInfo, where: str, column: str, csv_path: Path | str) -> int:
    """Parse one single-label cell (0/1 for binary; index or class name otherwise)."""
    v = value.strip()
    if v == "":
        raise DataError(f"{where}, column {column!r}: empty label value ''", source=csv_path)
    k = task.n_classes
    if task.classes and v in task.classes and not (task.type == "binary" and v in ("0", "1")):
        return task.classes.index(v)
    iv = _int_value(v)
    if task.type == "binary":
        if iv not in (0, 1):
            raise DataError(f"{where}, column {column!r}: label value {value!r} not allowed for a binary "
                            "task (expected 0 or 1)", source=csv_path)
        return iv
    if iv is None or iv < 0 or (k and iv >= k):
        allowed = f"0..{k - 1}" if k else "a non-negative integer"
        if task.classes:
            allowed += " or a class name"
        raise DataError(f"{where}, column {column!r}: label value {value!r} not allowed for a {task.type} "
                        f"task (expected {allowed})", source=csv_path)
    return iv


def parse_target(value: str, where: str, column: str, csv_path: Path | str) -> float:
    """Parse one regression target cell: a finite number."""
    v = value.strip()
    if v == "":
        raise DataError(f"{where}, column {column!r}: empty regression target ''", source=csv_path)
    try:
        f = float(v)
    except ValueError:
        f = None
    if f is None or not np.isfinite(f):
        raise DataError(f"{where}, column {column!r}: regression target {value!r} is not a finite number",
                        source=csv_path)
    return f


def parse_spacing(value: Any, where: str, column: str, source: Path | str | None, ndim: int = 2) -> tuple[float, ...]:
    """A pixel spacing cell: one positive number (isotropic) or ``ndim`` numbers (``"0.1,0.2"``, ``"0.1x0.2"``)."""
    raw = value if isinstance(value, (list, tuple)) else str(value).replace("x", ",").replace(" ", "").split(",")
    try:
        vals = tuple(float(v) for v in raw if str(v) != "")
    except (TypeError, ValueError):
        vals = ()
    if len(vals) == 1:
        vals = vals * ndim
    if len(vals) != ndim or not all(np.isfinite(v) and v > 0 for v in vals):
        raise DataError(f"{where}, column {column!r}: pixel spacing {value!r} is not {ndim} positive numbers (mm)",
                        source=source)
    return vals


def dicom_pixel_spacing(path: Path) -> tuple[tuple[float, float], str] | None:
    """``((row, col) mm, tag)`` from a 2D DICOM header (``PixelSpacing``, else ``ImagerPixelSpacing``); None
    when the file is not DICOM or says nothing (its header only is read)."""
    from medprobe.data.io import is_dicom_file, suffix_of

    if suffix_of(path) not in (".dcm", ".dicom") and not is_dicom_file(path):
        return None
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # unreadable headers are reported by the image reader
        return None
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        v = getattr(ds, tag, None)
        if v is not None and len(v) == 2 and all(float(x) > 0 for x in v):
            return (float(v[0]), float(v[1])), tag
    return None


def split_columns(columns: Sequence[str] | str | None, header: Sequence[str] = ()) -> list[str]:
    """Label columns as a list: a string is one column if the CSV has it, else a comma list."""
    if columns is None:
        return []
    if isinstance(columns, str):
        if columns in header or "," not in columns:
            return [columns]
        return [c.strip() for c in columns.split(",") if c.strip()]
    return list(columns)


def parse_multilabel_cell(value: str, classes: Sequence[str], sep: str, no_finding: str | None, where: str,
                          column: str, csv_path: Path | str) -> np.ndarray:
    """``"A|B"`` -> 0/1 vector over ``classes``; ``no_finding`` -> zeros."""
    v = value.strip()
    if v == "":
        raise DataError(f"{where}, column {column!r}: empty label value ''", source=csv_path)
    out = np.zeros(len(classes), dtype=np.uint8)
    if no_finding is not None and v == no_finding:
        return out
    for name in (s.strip() for s in v.split(sep)):
        if name not in classes:
            raise DataError(f"{where}, column {column!r}: unknown label {name!r} in {value!r}",
                            source=csv_path)
        out[classes.index(name)] = 1
    return out


def _task_from(task: str | TaskInfo | None, classes: Sequence[str] | None) -> TaskInfo | None:
    if task is None:
        return None if classes is None else TaskInfo("multiclass" if len(classes) > 2 else "binary",
                                                    tuple(classes))
    if isinstance(task, TaskInfo):
        return task
    if task not in ("binary", "multiclass", "multilabel", "ordinal", "regression", "survival"):
        raise ConfigError(f"task must be binary, multiclass, multilabel, ordinal, regression or survival, got {task!r}")
    cl: tuple[str, ...] = tuple(classes) if classes is not None else (("0", "1") if task == "binary" else ())
    return TaskInfo(task, cl)  # type: ignore[arg-type]


def records_from_csv(csv_path: str | Path, *, root: str | Path | None = None, path_column: str = "path",
                     label_columns: Sequence[str] | str | None = None, task: str | TaskInfo | None = None,
                     classes: Sequence[str] | None = None, sep: str | None = None,
                     no_finding: str | None = "No Finding", patient_column: str | None = None,
                     split_column: str | None = None, id_column: str | None = None,
                     path_suffix: str = "", spacing_column: str | None = None,
                     label_map: Mapping[Any, Any] | None = None) -> tuple[list[Record], TaskInfo]:
    """Parse a manifest CSV into records + the task; every label (and spacing) is validated here.

    ``label_map`` (``{raw value: class name or index}``) rewrites the (single) label column first, e.g.
    AutoLaparo's phases ``{1: 0, ..., 7: 6}``; a value it does not list is an error naming the row."""
    csv_path = Path(csv_path)
    extra = [c for c in (patient_column, split_column, id_column, spacing_column) if c]
    header, rows = read_csv_rows(csv_path)
    label_columns = split_columns(label_columns, header)
    if label_map is not None:
        rows = _map_labels(rows, label_map, label_columns, csv_path)
    missing = [c for c in (path_column, *label_columns, *extra) if c not in header]
    if missing:
        raise DataError(f"missing column(s) {missing}; columns are {header}", source=csv_path)
    base = Path(root) if root is not None else csv_path.parent
    info = _task_from(task, classes)
    survival = info is not None and info.type == "survival"
    if survival:  # two numeric columns, time then event (0/1): parsed as regression targets, checked below
        if len(label_columns) != 2:
            raise ConfigError(f"a survival task needs two label columns, time and event (label_columns=time,event); "
                              f"got {label_columns}", csv_path)
        info = TaskInfo("regression", tuple(label_columns))
    regression = info is not None and info.type == "regression"
    multi_cols = not regression and (len(label_columns) > 1
                                     or (info is not None and info.type == "multilabel" and not sep))
    if sep and len(label_columns) != 1:
        raise ConfigError("a separator-coded multi-label column needs exactly one label column", csv_path)
    if regression:
        if sep:
            raise ConfigError("sep= (separator-coded multi-label) does not apply to a regression task", csv_path)
        if not label_columns:
            raise ConfigError("a regression task needs at least one target column (label_columns=...)",
                              csv_path)
        names = tuple(classes) if classes is not None else tuple(label_columns)
        if len(names) != len(label_columns):
            raise ConfigError(f"{len(label_columns)} target columns but {len(names)} target names", csv_path)
        info = TaskInfo("regression", names)
    elif sep:
        if classes is None:  # label names = all names seen, sorted
            seen = {s.strip() for _, r in rows for s in r[label_columns[0]].split(sep) if s.strip()}
            seen.discard(no_finding or "")
            classes = sorted(seen)
        info = TaskInfo("multilabel", tuple(classes))
    elif multi_cols:
        info = TaskInfo("multilabel", tuple(classes) if classes is not None else tuple(label_columns))
        if info.n_classes != len(label_columns):
            raise ConfigError(f"{len(label_columns)} label columns but {info.n_classes} label names",
                              csv_path)
    elif label_columns and info is None:  # infer binary / multiclass from integer values
        col = label_columns[0]
        vals = []
        for r, (line, row) in enumerate(rows, 1):
            iv = _int_value(row[col])
            if iv is None or iv < 0:
                raise DataError(f"{_where(r, line)}, column {col!r}: label value {row[col]!r} is not a "
                                "non-negative integer (pass classes=... for named labels)", source=csv_path)
            vals.append(iv)
        k = max(vals, default=1) + 1
        absent = sorted(set(range(k)) - set(vals))
        if k > 2 and absent:  # e.g. a stray 7 in a 0/1 column would silently make an 8-class task
            r = vals.index(k - 1) + 1
            raise DataError(f"{_where(r, rows[r - 1][0])}, column {col!r}: label {k - 1} makes classes 0..{k - 1}, "
                            f"but {', '.join(map(str, absent[:5]))}{' ...' if len(absent) > 5 else ''} never "
                            "occur: a typo? (give task=... and classes=... to declare the classes)", source=csv_path)
        info = TaskInfo("binary", ("0", "1")) if k <= 2 else TaskInfo("multiclass", tuple(map(str, range(k))))
    elif info is None:
        info = TaskInfo("none")
    if info.type in ("multiclass", "ordinal") and not info.classes and label_columns:
        col = label_columns[0]
        k = max((_int_value(row[col]) or 0 for _, row in rows), default=0) + 1
        info = TaskInfo(info.type, tuple(map(str, range(k))))
    records = []
    for r, (line, row) in enumerate(rows, 1):
        where = _where(r, line)
        rel = row[path_column]
        if not rel:
            raise DataError(f"{where}: empty {path_column!r}", source=csv_path)
        p = Path(rel + path_suffix)
        p = p if p.is_absolute() else base / p
        if regression:
            values = [parse_target(row[c], where, c, csv_path) for c in label_columns]
            label: Any = values[0] if len(values) == 1 else np.array(values, dtype=np.float64)
            if survival and (values[0] < 0 or values[1] not in (0.0, 1.0)):
                raise DataError(f"{where}: survival time must be >= 0 and event 0 or 1, got {values[0]!r}, "
                                f"{values[1]!r}", source=csv_path)
        elif sep:
            label = parse_multilabel_cell(row[label_columns[0]], info.classes, sep, no_finding, where,
                                               label_columns[0], csv_path)
        elif multi_cols:
            label = np.array([parse_label(row[c], TaskInfo("binary", ("0", "1")), where, c, csv_path)
                              for c in label_columns], dtype=np.uint8)
        elif label_columns:
            label = parse_label(row[label_columns[0]], info, where, label_columns[0], csv_path)
        else:
            label = None
        split = None
        if split_column:
            sv = row[split_column].strip().lower()
            if sv not in SPLIT_ALIASES:
                raise DataError(f"{where}, column {split_column!r}: split value {row[split_column]!r} is "
                                "not one of train / val / test", source=csv_path)
            split = SPLIT_ALIASES[sv]
        rid = row[id_column] if id_column else None
        sp = parse_spacing(row[spacing_column], where, spacing_column, csv_path) if spacing_column else None
        records.append(Record(path=p, label=label, id=rid or "", where=where,
                              patient=row[patient_column] if patient_column else None, split=split, spacing=sp))
    _assign_ids(records, base)
    if survival:
        info = TaskInfo("survival", ("time", "event"))
    return records, info


def _map_labels(rows: list[tuple[int, dict]], label_map: Mapping[Any, Any], label_columns: list[str],
                csv_path: Path) -> list[tuple[int, dict]]:
    """Rows with the label column rewritten by ``label_map`` (keys compared as text; ``1`` matches ``"1"``
    and ``"1.0"``)."""
    if len(label_columns) != 1:
        raise ConfigError("label_map needs exactly one label column", csv_path)
    col = label_columns[0]

    def key(v: Any) -> str:
        iv = _int_value(str(v)) if not isinstance(v, bool) else None
        return str(iv) if iv is not None else str(v).strip()

    lm = {key(k): str(v) for k, v in label_map.items()}
    out = []
    for r, (line, row) in enumerate(rows, 1):
        k = key(row[col])
        if k not in lm:
            raise DataError(f"{_where(r, line)}, column {col!r}: label value {row[col]!r} is not in label_map "
                            f"({', '.join(sorted(lm))})", source=csv_path)
        out.append((line, {**row, col: lm[k]}))
    return out


def apply_group_pattern(records: list[Record], pattern: str, source: Path) -> None:
    """Each record's patient = its group (video / sequence / patient) from its file name by ``pattern``."""
    from medprobe.data.splits import compile_group_pattern, group_from_name

    pat = compile_group_pattern(pattern, source)
    for r in records:
        r.patient = group_from_name(r.path.name, pat, f"{source}: {r.where}")


def _assign_ids(records: list[Record], base: Path) -> None:
    """Ids default to the file stem; relative paths when stems collide."""
    if all(r.id for r in records):
        return
    stems = [r.path.name.split(".")[0] for r in records]
    if len(set(stems)) == len(stems):
        for r, s in zip(records, stems):
            r.id = r.id or s
        return
    for r in records:
        if not r.id:
            try:
                r.id = r.path.relative_to(base).as_posix()
            except ValueError:
                r.id = r.path.as_posix()


# ---------------------------------------------------------------------------------------------- dataset
class ManifestDataset(Dataset):
    """Files + labels listed by a manifest (2D images via ``read_image``, 3D via ``read_volume``)."""

    def __init__(self, records: list[Record], *, task: TaskInfo, source: str | Path, name: str = "manifest",
                 modality: Modality = "generic", spatial_dims: int = 2, check_files: bool = True,
                 splits: dict[str, list[int]] | None = None, meta: dict[str, Any] | None = None,
                 spacing_source: str | None = None) -> None:
        self.source = Path(source)
        self.spacing_source = spacing_source  # where 2D records' spacing came from (None: unknown, pixels)
        if not records:
            raise DataError("manifest lists no cases", source=self.source)
        self.records = records
        self.task, self.name, self.modality, self.spatial_dims = task, name, modality, spatial_dims
        self.meta = dict(meta or {})
        ids = [r.id for r in records]
        if len(set(ids)) != len(ids):
            seen: dict[str, str] = {}
            for r in records:
                if r.id in seen:
                    raise DataError(f"{r.where}: case id {r.id!r} repeats {seen[r.id]}", source=self.source)
                seen[r.id] = r.where
        self._sigs: list[tuple[int, int]] | None = None
        if check_files:
            self._sigs = self._check_files()
        self._splits = splits if splits is not None else self._splits_from_records()
        self._fp: str | None = None

    def _check_files(self) -> list[tuple[int, int]]:
        sigs, missing = [], []
        for r in self.records:
            try:
                st = os.stat(r.path)
                sigs.append((st.st_size, st.st_mtime_ns))
            except OSError:
                missing.append(r)
                sigs.append((-1, -1))
        if missing:
            shown = "; ".join(f"{r.where}: {r.path}" for r in missing[:3])
            more = f"; ... and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DataError(f"{len(missing)} of {len(self.records)} listed files are missing: {shown}{more}",
                            source=self.source)
        return sigs

    def _splits_from_records(self) -> dict[str, list[int]] | None:
        tags = [r.split for r in self.records]
        if all(t is None for t in tags):
            return None
        first: dict[str, Record] = {}  # a patient's cases must all be in one split (no leakage)
        for r in self.records:
            if r.patient is None:
                continue
            prev = first.setdefault(r.patient, r)
            if prev.split != r.split:
                raise DataError(f"{r.where}: patient {r.patient!r} is in split {r.split!r} but {prev.where} puts "
                                f"it in {prev.split!r}", source=self.source)
        out: dict[str, list[int]] = {}
        for i, t in enumerate(tags):
            out.setdefault(str(t), []).append(i)
        return {k: out[k] for k in ("train", "val", "test") if k in out}

    def __len__(self) -> int:
        return len(self.records)

    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    def labels(self) -> list[Any]:
        return [r.label.copy() if isinstance(r.label, np.ndarray) else r.label for r in self.records]

    def patients(self) -> list[str]:
        return [r.patient if r.patient else r.id for r in self.records]

    def splits(self) -> dict[str, list[int]] | None:
        return None if self._splits is None else {k: list(v) for k, v in self._splits.items()}

    def load(self, i: int) -> Item:
        r = self.records[i]
        label = r.label.copy() if isinstance(r.label, np.ndarray) else r.label
        if self.spatial_dims == 3:
            vol = read_volume(r.path)
            return Item(id=r.id, image=vol.array, spatial_dims=3, spacing=vol.spacing, label=label,
                        affine=vol.affine, slice_axis=vol.slice_axis, patient=r.patient, source=str(r.path),
                        meta={"split": r.split} if r.split else {})
        img = read_image(r.path)
        meta: dict[str, Any] = {"split": r.split} if r.split else {}
        spacing: tuple[float, ...] = r.spacing or (1.0, 1.0)
        if r.spacing is not None and self.spacing_source:
            meta["spacing_source"] = self.spacing_source
        elif (hdr := dicom_pixel_spacing(r.path)) is not None:
            spacing, meta["spacing_source"] = hdr[0], f"DICOM header ({hdr[1]})"
        return Item(id=r.id, image=img, spatial_dims=2, spacing=spacing, label=label,
                    patient=r.patient, source=str(r.path), meta=meta)

    def fingerprint(self) -> str:
        if self._fp is None:
            sigs = self._sigs if self._sigs is not None else self._check_files()
            labels = [r.label.tolist() if isinstance(r.label, np.ndarray) else r.label for r in self.records]
            d = {"name": self.name, "task": self.task.to_dict(), "ids": self.ids(),
                 "files": [[r.path.name, s[0], content_digest(r.path)] for r, s in zip(self.records, sigs)],
                 "labels": labels, "patients": self.patients(), "splits": self._splits}
            if any(r.spacing is not None for r in self.records):  # unchanged fingerprints without spacing
                d["spacing"] = [r.spacing for r in self.records]
            self._fp = hash_obj(d)
        return self._fp


# ----------------------------------------------------------------------------------------- factories
@register_dataset("csv")
def create_csv_dataset(arg: str, root: str | Path | None = None, path_column: str = "path",
                       label_columns: Sequence[str] | str | None = None, task: str | TaskInfo | None = None,
                       classes: Sequence[str] | None = None, sep: str | None = None,
                       no_finding: str | None = "No Finding", patient_column: str | None = None,
                       split_column: str | None = None, id_column: str | None = None, spatial_dims: int = 2,
                       modality: Modality = "generic", name: str | None = None,
                       check_files: bool = True, spacing_column: str | None = None,
                       spacing: Any = None, label_map: Mapping[Any, Any] | None = None,
                       group_pattern: str | None = None) -> ManifestDataset:
    """``csv:<labels.csv>``: a generic manifest (see the module docstring for the options)."""
    if not arg:
        raise ConfigError("give the CSV path: csv:/path/labels.csv", "csv:")
    csv_path = Path(arg)
    if spacing_column and spacing is not None:
        raise ConfigError("give spacing_column (per image) or spacing (every image), not both", csv_path)
    if patient_column and group_pattern:
        raise ConfigError("give patient_column (a column) or group_pattern (from file names), not both", csv_path)
    records, info = records_from_csv(csv_path, root=root, path_column=path_column,
                                     label_columns=label_columns, task=task, classes=classes, sep=sep,
                                     no_finding=no_finding, patient_column=patient_column,
                                     split_column=split_column, id_column=id_column, spacing_column=spacing_column,
                                     label_map=label_map)
    if group_pattern:
        apply_group_pattern(records, group_pattern, csv_path)
    source = f"csv column {spacing_column!r}" if spacing_column else None
    if spacing is not None:
        sp = parse_spacing(spacing, "option", "spacing", csv_path)
        for r in records:
            r.spacing = sp
        source = "dataset option 'spacing'"
    return ManifestDataset(records, task=info, source=csv_path, name=name or csv_path.stem, modality=modality,
                           spatial_dims=spatial_dims, check_files=check_files, spacing_source=source)


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError("official split list not found (pass official_split=False for a patient split)",
                        source=path)
    return [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]


def _nih_image_index(root: Path, image_dir: str | Path | None) -> dict[str, Path] | Path:
    """The folder holding the PNGs, or a name -> path map over the official ``images_0XX/images`` folders."""
    if image_dir is not None:
        d = Path(image_dir)
        return d if d.is_absolute() else root / d
    if (root / "images").is_dir():
        return root / "images"
    index: dict[str, Path] = {}
    for sub in sorted(root.glob("images_*")):
        inner = sub / "images" if (sub / "images").is_dir() else sub
        with os.scandir(inner) as it:
            for e in it:
                index[e.name] = Path(e.path)
    return index if index else root / "images"


@register_dataset("nih14")
def create_nih14(arg: str = "", root: str | Path | None = None, image_dir: str | Path | None = None,
                 csv_name: str = "Data_Entry_2017.csv", official_split: bool = True,
                 val_fraction: float = 0.1, seed: int = 0, check_files: bool = True) -> ManifestDataset:
    """NIH ChestX-ray14: ``Data_Entry_2017.csv`` + ``train_val_list.txt`` / ``test_list.txt``.

    14-label multi-label task (``Finding Labels`` '|'-separated, ``No Finding`` -> zeros), patients from
    ``Patient ID``. Official test list; ``val`` is a seeded patient-level ``val_fraction`` of train_val.
    Images in ``image_dir`` (default ``<root>/images`` or the official ``images_0XX/images`` folders).
    """
    from medprobe.data.splits import split_by_patient, validate_splits

    root_p = Path(arg or root or ".")
    csv_path = root_p / csv_name
    _, rows = read_csv_rows(csv_path, ["Image Index", "Finding Labels", "Patient ID"])
    images = _nih_image_index(root_p, image_dir)
    records = []
    for r, (line, row) in enumerate(rows, 1):
        where = _where(r, line)
        fname = row["Image Index"]
        path = images.get(fname, root_p / "images" / fname) if isinstance(images, dict) else images / fname
        label = parse_multilabel_cell(row["Finding Labels"], NIH14_CLASSES, "|", "No Finding", where,
                                      "Finding Labels", csv_path)
        records.append(Record(path=path, label=label, id=Path(fname).stem, patient=row["Patient ID"],
                              where=where))
    task = TaskInfo("multilabel", NIH14_CLASSES)
    ds = ManifestDataset(records, task=task, source=csv_path, name="nih14", modality="xray",
                         check_files=check_files)
    patients = ds.patients()
    if official_split:
        test_names = set(_read_list(root_p / "test_list.txt"))
        trval_names = set(_read_list(root_p / "train_val_list.txt"))
        trval, test = [], []
        for i, rec in enumerate(records):
            fname = rec.path.name
            if fname in test_names:
                test.append(i)
            elif fname in trval_names:
                trval.append(i)
            else:
                raise DataError(f"{rec.where}: {fname} is in neither train_val_list.txt nor test_list.txt",
                                source=csv_path)
        inner = split_by_patient([patients[i] for i in trval], (1 - val_fraction, val_fraction), seed=seed)
        splits = {"train": sorted(trval[j] for j in inner["train"]),
                  "val": sorted(trval[j] for j in inner["test"]), "test": test}
    else:
        splits = split_by_patient(patients, (0.7, 0.1, 0.2), seed=seed)
    validate_splits(dict(splits), patients, csv_path)  # type: ignore[arg-type]
    ds._splits = splits
    for name, idx in splits.items():
        for i in idx:
            records[i].split = name
    return ds


@register_dataset("rsna-pneumonia")
def create_rsna_pneumonia(arg: str = "", root: str | Path | None = None, image_dir: str | Path | None = None,
                          csv_name: str = "stage_2_train_labels.csv", check_files: bool = True,
                          split_files: str | Mapping[str, str] | None = None) -> ManifestDataset:
    """RSNA Pneumonia Detection: ``stage_2_train_labels.csv`` (one row per box) -> one case per patient.

    Binary ``Target`` (1 = lung opacity / pneumonia); DICOM files ``<image_dir>/<patientId>.dcm``
    (default ``<root>/stage_2_train_images``). The competition has no labelled test split; the study used
    MGCA's split: ``split_files`` = a folder (relative to ``root``) holding MGCA's ``train.csv``, ``val.csv``
    (or ``valid.csv``) and ``test.csv``, or a mapping ``{train: file, val: file, test: file}``; each file lists
    ``patientId`` (one row per box is fine). Patients in no file are left out (counted in
    ``meta['unlisted_patients']``); a patient in two files is an error. Without ``split_files``: no official
    split (``splits()`` is None).
    """
    root_p = Path(arg or root or ".")
    csv_path = root_p / csv_name
    _, rows = read_csv_rows(csv_path, ["patientId", "Target"])
    img_dir = Path(image_dir) if image_dir is not None else root_p / "stage_2_train_images"
    if not img_dir.is_absolute():
        img_dir = root_p / img_dir
    task = TaskInfo("binary", ("no pneumonia", "pneumonia"))
    by_patient: dict[str, Record] = {}
    for r, (line, row) in enumerate(rows, 1):
        where = _where(r, line)
        pid = row["patientId"]
        if not pid:
            raise DataError(f"{where}: empty 'patientId'", source=csv_path)
        lab = parse_label(row["Target"], task, where, "Target", csv_path)
        prev = by_patient.get(pid)
        if prev is None:
            by_patient[pid] = Record(path=img_dir / f"{pid}.dcm", label=lab, id=pid, patient=pid, where=where)
        elif prev.label != lab:
            raise DataError(f"{where}: patient {pid} has Target {lab} but {prev.where} has {prev.label}",
                            source=csv_path)
    records = list(by_patient.values())
    meta: dict[str, Any] = {}
    if split_files is not None:
        files = read_split_files(split_files, root_p, "patientId")
        meta["split_files"] = {k: str(v) for k, v in files.items()}
        of: dict[str, str] = {}
        for split, f in files.items():
            _, srows = read_csv_rows(f, ["patientId"])
            for line, srow in srows:
                prev_split = of.setdefault(srow["patientId"], split)
                if prev_split != split:
                    raise DataError(f"line {line}: patient {srow['patientId']} is also listed in the {prev_split} "
                                    "file", source=f)
        unknown = sorted(set(of) - set(by_patient))
        if unknown:
            raise DataError(f"{len(unknown)} patient(s) of the split files are not in {csv_name} (e.g. "
                            f"{unknown[0]})", source=root_p)
        meta["unlisted_patients"] = sum(rec.id not in of for rec in records)
        records = [rec for rec in records if rec.id in of]
        for rec in records:
            rec.split = of[rec.id]
    return ManifestDataset(records, task=task, source=csv_path, name="rsna-pneumonia",
                           modality="xray", check_files=check_files, meta=meta)


def read_split_files(split_files: str | Mapping[str, str] | Path, root: Path, id_column: str) -> dict[str, Path]:
    """Official split files: a mapping ``{train|val|test: file}`` or a folder holding ``train.csv``,
    ``val.csv`` (or ``valid.csv`` / ``validation.csv``) and ``test.csv`` (relative paths against ``root``)."""
    if isinstance(split_files, Mapping):
        out: dict[str, Path] = {}
        for k, v in split_files.items():
            name = SPLIT_ALIASES.get(str(k).strip().lower())
            if name is None:
                raise ConfigError(f"split_files: unknown split {k!r} (use train, val, test)", root)
            q = Path(str(v)).expanduser()
            out[name] = q if q.is_absolute() else root / q
    else:
        d = Path(split_files).expanduser()
        d = d if d.is_absolute() else root / d
        if not d.is_dir():
            raise DataError("split_files folder not found", source=d)
        out = {}
        for split, names in (("train", ("train.csv",)), ("val", ("val.csv", "valid.csv", "validation.csv")),
                             ("test", ("test.csv",))):
            hit = next((d / n for n in names if (d / n).is_file()), None)
            if hit is not None:
                out[split] = hit
    for k in ("train", "test"):
        if k not in out:
            raise DataError(f"split_files: no {k} file (expected {k}.csv)", source=root)
    for f in out.values():
        if not f.is_file():
            raise DataError("split file not found", source=f)
    return out


__all__ = ["NIH14_CLASSES", "ManifestDataset", "Record", "apply_group_pattern", "create_csv_dataset", "create_nih14",
           "create_rsna_pneumonia", "dicom_pixel_spacing", "parse_label", "parse_multilabel_cell", "parse_spacing",
           "parse_target", "read_csv_rows", "read_split_files", "records_from_csv", "split_columns"]
