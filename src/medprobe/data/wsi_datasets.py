"""Whole-slide datasets: one :class:`~medprobe.data.Item` per slide, its image a :class:`~medprobe.data.slides.Slide`.

* ``camelyon16:<root>`` -- ``training/{normal,tumor}/*.tif``, ``testing/images/test_*.tif`` and the test
  reference CSV (``Test_001,Tumor,...``); binary normal / tumor; the official split (270 train / 129 test in the
  full set), an optional seeded validation share of the training slides. Lesion annotations (ASAP XML,
  ``<slide id>.xml`` in ``training/lesion_annotations``, ``lesion_annotations``, ``annotations`` or
  ``testing/lesion_annotations``) give tile labels (``tile_labels``): the slide family then reports the attention's
  tile-level AUC.
* ``camelyon17:<root>`` -- ``**/patient_XXX_node_N.tif`` + ``stage_labels.csv``; the centre comes from the patient
  number (20 patients per centre); slide targets ``tumour`` (binary, same classes as CAMELYON16, so a model
  trained there tests here) or ``stage`` (negative / itc / micro / macro). By default every slide is in the
  ``test`` split: an external test set.
* ``bcnb:<root>`` -- BCNB: clinical table (``patient-clinical-data.xlsx`` or a CSV export) + ``WSIs/<id>.jpg``;
  five binary targets (ALN N0 vs N+, ER, PR, HER2 positive, Ki67 >= 14 %); split = one fold of a patient-level
  5-fold cross-validation with train / val / test 7:1:2.
* ``slides:<file.csv>`` -- a generic manifest: ``path`` + label column(s), optional patient / split / id / mpp
  columns (the ``csv:`` manifest's options).

Every kind takes ``mpp`` (µm per level-0 pixel for every slide, overriding headers; needed for slides whose
header has none, such as BCNB's JPEGs) and ``check_files``. ``labels()``, ``patients()`` and ``splits()`` come
from the tables: no slide is opened until ``load(i)``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medprobe.data import register_dataset
from medprobe.data.base import Item, TaskInfo
from medprobe.data.csv_manifest import (
    ManifestDataset,
    Record,
    read_csv_rows,
    records_from_csv,
)
from medprobe.data.slides import open_slide
from medprobe.errors import ConfigError, DataError
from medprobe.utils import hash_obj

SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm",
                    ".jpg", ".jpeg", ".png")
CAMELYON_CLASSES = ("normal", "tumor")
C17_STAGES = ("negative", "itc", "micro", "macro")
BCNB_TARGETS = ("ALN", "ER", "PR", "HER2", "Ki67")
BCNB_COLUMNS = {"ALN": "ALN status", "ER": "ER", "PR": "PR", "HER2": "HER2", "Ki67": "Ki67"}
BCNB_CLASSES = {"ALN": ("N0", "N+"), "ER": ("negative", "positive"), "PR": ("negative", "positive"),
                "HER2": ("negative", "positive"), "Ki67": ("low", "high")}


def _check_mpp(mpp: Any, source: str | Path) -> float | None:
    if mpp is None:
        return None
    try:
        m = float(mpp)
    except (TypeError, ValueError):
        m = float("nan")
    if not (np.isfinite(m) and m > 0):
        raise ConfigError(f"mpp must be a positive number of µm per pixel, got {mpp!r}", source)
    return m


class SlideDataset(ManifestDataset):
    """Slides listed with their labels; ``load(i)`` opens slide ``i`` (a :class:`Slide`, a RegionSource).

    ``mpps[i]``: the explicit pixel size of slide ``i`` (None: from its header); ``slide_meta[i]``: extra
    per-slide fields (all targets, centre, stage...) copied into ``Item.meta``."""

    unit = "slide"

    def __init__(self, records: list[Record], *, task: TaskInfo, source: str | Path, name: str,
                 mpps: Sequence[float | None] | None = None, slide_meta: Sequence[dict[str, Any]] | None = None,
                 splits: dict[str, list[int]] | None = None, check_files: bool = True,
                 meta: dict[str, Any] | None = None) -> None:
        super().__init__(records, task=task, source=source, name=name, modality="pathology", spatial_dims=2,
                         check_files=check_files, splits=splits, meta=meta)
        self.annotations: list[Path | None] = []  # per slide: its lesion annotation file (ASAP XML), if any
        self.mpps: list[float | None] = list(mpps) if mpps is not None else [None] * len(records)
        self.slide_meta: list[dict[str, Any]] = [dict(m) for m in slide_meta] if slide_meta is not None else \
            [{} for _ in records]
        if len(self.mpps) != len(records) or len(self.slide_meta) != len(records):
            raise ConfigError("mpps / slide_meta must have one entry per slide", source)

    def paths(self) -> list[Path]:
        """The slide files, in dataset order."""
        return [r.path for r in self.records]

    def tile_labels(self, i: int, coords: np.ndarray, size0: float) -> np.ndarray | None:
        """1 per lesion tile of slide ``i`` (tile centre inside its lesion annotation), 0 otherwise; None when the
        slide has no annotation file. Tumour slides of CAMELYON16 ship one; a normal slide has no lesion."""
        if not any(a is not None for a in self.annotations):
            return None  # a dataset without lesion annotations: tile labels unknown
        path = self.annotations[i]
        if path is None:  # annotated set: a slide without a file has no lesion if it is negative
            return np.zeros(len(coords), np.int64) if not np.any(self.records[i].label) else None
        from medprobe.data.annotations import read_asap_xml

        return read_asap_xml(path).tile_labels(coords, size0)

    def load(self, i: int) -> Item:
        r = self.records[i]
        slide = open_slide(r.path, mpp=self.mpps[i])
        mpp = float(slide.mpp) if slide.mpp is not None else float("nan")
        meta: dict[str, Any] = {"split": r.split, "slide_path": str(r.path), "mpp": slide.mpp,
                                "mpp_source": slide.mpp_source, **self.slide_meta[i]}
        label = r.label.copy() if isinstance(r.label, np.ndarray) else r.label
        return Item(id=r.id, image=slide, spatial_dims=2, spacing=(mpp / 1000.0, mpp / 1000.0), label=label,
                    patient=r.patient, source=str(r.path), meta=meta)

    def fingerprint(self) -> str:
        if self._fp is None:
            base = super().fingerprint()
            self._fp = hash_obj({"base": base, "mpps": self.mpps, "slide_meta": self.slide_meta})
        return self._fp

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["unit"] = self.unit
        d.update({k: v for k, v in self.meta.items() if k not in d})
        return d


def _root(arg: str, root: str | Path | None, kind: str) -> Path:
    top = Path(arg or root or "")
    if not str(top):
        raise ConfigError(f"give the dataset folder: {kind}:/path/to/{kind}", f"{kind}:")
    if not top.is_dir():
        raise DataError("dataset folder not found", source=top)
    return top


def _slides_in(folder: Path, exts: Sequence[str] = (".tif", ".tiff")) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts
                  and not p.name.startswith("."))


def _find_dir(top: Path, *names: str) -> Path | None:
    """The first of ``names`` (case-insensitive path parts) under ``top`` that exists."""
    for name in names:
        p = top
        for part in name.split("/"):
            hits = [c for c in p.iterdir() if c.is_dir() and c.name.lower() == part.lower()] if p.is_dir() else []
            if not hits:
                p = top / "__missing__"
                break
            p = hits[0]
        if p.is_dir():
            return p
    return None


# ----------------------------------------------------------------------------------------- CAMELYON16
def _read_reference(path: Path) -> dict[str, tuple[int, str]]:
    """CAMELYON16 test reference: ``{test_001: (label, row description)}`` from ``Test_001,Tumor,...`` rows."""
    import csv

    if not path.is_file():
        raise DataError("CAMELYON16 test reference CSV not found (give reference_csv=...)", source=path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read CSV ({type(e).__name__}: {e})", source=path) from None
    out: dict[str, tuple[int, str]] = {}
    classes = {"normal": 0, "tumor": 1, "tumour": 1}
    for n, row in enumerate(rows, 1):
        cells = [c.strip() for c in row]
        if len(cells) < 2 or cells[1].lower() not in classes:
            if n == 1:  # a header row
                continue
            raise DataError(f"row {n}: expected '<slide>,Tumor|Normal,...', got {','.join(cells)!r}", source=path)
        sid = Path(cells[0]).stem.lower()
        out[sid] = (classes[cells[1].lower()], f"row {n}")
    if not out:
        raise DataError("reference CSV lists no slides", source=path)
    return out


@register_dataset("camelyon16")
def create_camelyon16(arg: str = "", root: str | Path | None = None, reference_csv: str | Path | None = None,
                      val_fraction: float = 0.0, seed: int = 0, mpp: float | None = None,
                      check_files: bool = True) -> SlideDataset:
    """CAMELYON16 (see the module docstring); ``val_fraction`` > 0 holds out a seeded, label-stratified share of
    the training slides as ``val``."""
    from medprobe.data.splits import split_by_patient

    top = _root(arg, root, "camelyon16")
    m = _check_mpp(mpp, top)
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}", top)
    records: list[Record] = []
    for cls in CAMELYON_CLASSES:
        d = _find_dir(top, f"training/{cls}", f"train/{cls}")
        for p in _slides_in(d) if d else []:
            records.append(Record(path=p, label=CAMELYON_CLASSES.index(cls), id=p.stem, patient=p.stem,
                                  split="train", where=str(p.relative_to(top))))
    if not records:
        raise DataError("no training slides found (expected training/normal/*.tif and training/tumor/*.tif)",
                        source=top)
    test_dir = _find_dir(top, "testing/images", "testing", "test")
    test_files = _slides_in(test_dir) if test_dir else []
    if test_files:
        if reference_csv is not None:
            ref_path = Path(reference_csv)
            ref_path = ref_path if ref_path.is_absolute() else top / ref_path
        else:
            cands = [top / "testing" / "reference.csv", top / "testing" / "evaluation" / "reference.csv",
                     top / "reference.csv", top / "testing" / "images" / "reference.csv"]
            ref_path = next((c for c in cands if c.is_file()), cands[0])
        ref = _read_reference(ref_path)
        for p in test_files:
            hit = ref.get(p.stem.lower())
            if hit is None:
                raise DataError(f"test slide {p.name} is not in the reference CSV {ref_path}", source=p)
            records.append(Record(path=p, label=hit[0], id=p.stem, patient=p.stem, split="test",
                                  where=str(p.relative_to(top))))
    n_train = sum(r.split == "train" for r in records)
    if val_fraction > 0:
        train_idx = [i for i, r in enumerate(records) if r.split == "train"]
        inner = split_by_patient([records[i].id for i in train_idx], (1 - val_fraction, val_fraction), seed=seed,
                                 stratify=[records[i].label for i in train_idx])
        for j in inner["test"]:
            records[train_idx[j]].split = "val"
    meta = {"n_training_slides": n_train, "n_test_slides": len(records) - n_train, "val_fraction": val_fraction,
            "seed": seed, "official_counts": [270, 129]}
    ds = SlideDataset(records, task=TaskInfo("binary", CAMELYON_CLASSES), source=top, name="camelyon16",
                      mpps=[m] * len(records), check_files=check_files, meta=meta)
    _attach_annotations(ds, top, "training/lesion_annotations", "lesion_annotations", "annotations",
                        "testing/lesion_annotations", "testing/annotations")
    return ds


def _attach_annotations(ds: SlideDataset, top: Path, *folders: str) -> None:
    """Each slide's lesion outline ``<slide id>.xml`` (ASAP) found in one of ``folders`` under ``top``."""
    dirs = [top / f for f in folders if (top / f).is_dir()]
    ds.annotations = [next((d / f"{r.id}.xml" for d in dirs if (d / f"{r.id}.xml").is_file()), None)
                      for r in ds.records]
    ds.meta["n_annotated_slides"] = sum(a is not None for a in ds.annotations)


# ----------------------------------------------------------------------------------------- CAMELYON17
_C17_SLIDE = re.compile(r"^patient_(\d+)_node_(\d+)\.tif$", re.IGNORECASE)


@register_dataset("camelyon17")
def create_camelyon17(arg: str = "", root: str | Path | None = None, labels_csv: str | Path | None = None,
                      target: str = "tumour", itc_positive: bool = True, centres: Sequence[int] | None = None,
                      split: str = "test", mpp: float | None = None, check_files: bool = True) -> SlideDataset:
    """CAMELYON17 slides with stage labels (see the module docstring).

    ``target``: ``tumour`` (binary normal / tumor; ``itc_positive`` counts isolated tumour cells as tumour) or
    ``stage`` (ordinal negative / itc / micro / macro). ``centres``: keep these centres only. ``split``:
    ``test`` (every slide in the test split: an external test set) or ``none`` (no official split)."""
    top = _root(arg, root, "camelyon17")
    m = _check_mpp(mpp, top)
    tgt = str(target).lower()
    if tgt == "tumor":
        tgt = "tumour"
    if tgt not in ("tumour", "stage"):
        raise ConfigError(f"target must be 'tumour' or 'stage', got {target!r}", top)
    if split not in ("test", "none"):
        raise ConfigError(f"split must be 'test' or 'none', got {split!r}", top)
    keep_centres = None if centres is None else {int(c) for c in centres}
    if labels_csv is not None:
        csv_path = Path(labels_csv)
        csv_path = csv_path if csv_path.is_absolute() else top / csv_path
    else:
        csv_path = next((c for c in (top / "stage_labels.csv", top / "labels" / "stage_labels.csv")
                         if c.is_file()), top / "stage_labels.csv")
    _, rows = read_csv_rows(csv_path, ["patient", "stage"])
    files = {p.name.lower(): p for p in top.rglob("*.tif") if _C17_SLIDE.match(p.name)}
    records, metas = [], []
    for n, (line, row) in enumerate(rows, 1):
        mt = _C17_SLIDE.match(row["patient"].strip())
        if mt is None:  # a patient row (patient_000.zip, pN stage)
            continue
        where = f"row {n} (line {line})"
        stage = row["stage"].strip().lower()
        if stage not in C17_STAGES:
            raise DataError(f"{where}: stage {row['stage']!r} is not one of {', '.join(C17_STAGES)}", source=csv_path)
        pnum, node = int(mt.group(1)), int(mt.group(2))
        centre = (pnum // 20) % 5
        if keep_centres is not None and centre not in keep_centres:
            continue
        name = row["patient"].strip()
        path = files.get(name.lower(), top / f"centre_{centre}" / name)
        folder = re.match(r"^centre_(\d+)$", path.parent.name, re.IGNORECASE)
        if folder and int(folder.group(1)) != centre:
            raise DataError(f"{where}: {name} lies in {path.parent.name} but patient {pnum} belongs to centre "
                            f"{centre} (20 patients per centre)", source=csv_path)
        if tgt == "stage":
            label = C17_STAGES.index(stage)
        else:
            label = int(stage in (("itc", "micro", "macro") if itc_positive else ("micro", "macro")))
        records.append(Record(path=path, label=label, id=Path(name).stem, patient=f"patient_{pnum:03d}",
                              split="test" if split == "test" else None, where=where))
        metas.append({"centre": centre, "stage": stage, "node": node})
    if not records:
        raise DataError("stage labels list no slides" + (f" of centres {sorted(keep_centres)}" if keep_centres
                                                          is not None else ""), source=csv_path)
    task = TaskInfo("binary", CAMELYON_CLASSES) if tgt == "tumour" else TaskInfo("ordinal", C17_STAGES)
    meta = {"target": tgt, "itc_positive": bool(itc_positive), "centres": sorted({x["centre"] for x in metas}),
            "split_mode": split}
    ds = SlideDataset(records, task=task, source=csv_path, name="camelyon17", mpps=[m] * len(records),
                      slide_meta=metas, check_files=check_files, meta=meta)
    _attach_annotations(ds, top, "lesion_annotations", "annotations")  # 50 slides of the training centres
    return ds


# ----------------------------------------------------------------------------------------------- BCNB
def _read_table(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """A CSV, or an Excel sheet (needs pandas + openpyxl), as ``(header, [(line, row)])``."""
    if path.suffix.lower() in (".xlsx", ".xls"):
        if not path.is_file():
            raise DataError("clinical table not found", source=path)
        try:
            import pandas as pd

            df = pd.read_excel(path, dtype=str)
        except ImportError as e:
            raise DataError(f"reading Excel needs pandas and openpyxl ({e.name or e}); pip install openpyxl, or "
                            "save the sheet as CSV and pass clinical=<file.csv>", source=path) from None
        except Exception as e:
            raise DataError(f"cannot read Excel sheet ({type(e).__name__}: {e})", source=path) from None
        header = [str(c).strip() for c in df.columns]
        rows = []
        for k, rec in enumerate(df.itertuples(index=False), 2):
            rows.append((k, {h: ("" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip())
                             for h, v in zip(header, rec)}))
        return header, rows
    return read_csv_rows(path)


def _column(header: Sequence[str], want: str, source: Path) -> str:
    norm = {re.sub(r"[^a-z0-9+]", "", h.lower()): h for h in header}
    key = re.sub(r"[^a-z0-9+]", "", want.lower())
    if key not in norm:
        raise DataError(f"missing column {want!r}; columns are {list(header)}", source=source)
    return norm[key]


def _bcnb_value(target: str, raw: str, ki67_threshold: float, where: str, source: Path) -> int:
    v = raw.strip()
    if v == "":
        raise DataError(f"{where}, column {BCNB_COLUMNS[target]!r}: empty value", source=source)
    low = v.lower()
    if target == "ALN":
        if low.replace(" ", "") == "n0":
            return 0
        if low.replace(" ", "").startswith("n+"):
            return 1
    elif target == "Ki67":
        try:
            f = float(low.rstrip("%").strip())
        except ValueError:
            f = float("nan")
        if np.isfinite(f) and f >= 0:
            frac = f / 100.0 if (low.endswith("%") or f > 1.0) else f
            return int(frac >= ki67_threshold)
    else:
        if low in ("positive", "pos", "+", "1", "yes"):
            return 1
        if low in ("negative", "neg", "-", "0", "no"):
            return 0
    raise DataError(f"{where}, column {BCNB_COLUMNS[target]!r}: value {raw!r} not understood for {target}",
                    source=source)


@register_dataset("bcnb")
def create_bcnb(arg: str = "", root: str | Path | None = None, target: str = "ALN",
                clinical: str | Path | None = None, slide_dir: str | Path = "WSIs", slide_ext: str = ".jpg",
                folds: int = 5, fold: int = 0, val_fraction: float = 0.125, seed: int = 0,
                ki67_threshold: float = 0.14, mpp: float | None = None, check_files: bool = True) -> SlideDataset:
    """BCNB (see the module docstring). ``target``: ALN, ER, PR, HER2 or Ki67. Split: fold ``fold`` of a seeded,
    target-stratified, patient-level ``folds``-fold cross-validation; inside a fold ``val_fraction`` of the
    training patients validate (0.125 of 80 % gives 7:1:2)."""
    from medprobe.data.splits import kfold_by_patient, validate_splits

    top = _root(arg, root, "bcnb")
    m = _check_mpp(mpp, top)
    tmap = {t.lower(): t for t in BCNB_TARGETS}
    if str(target).lower() not in tmap:
        raise ConfigError(f"target must be one of {', '.join(BCNB_TARGETS)}, got {target!r}", top)
    tgt = tmap[str(target).lower()]
    if not 0 <= int(fold) < int(folds):
        raise ConfigError(f"fold must be in 0..{int(folds) - 1}, got {fold!r}", top)
    if not 0.0 < float(ki67_threshold) < 1.0:
        raise ConfigError(f"ki67_threshold is a fraction in (0, 1), got {ki67_threshold!r}", top)
    if clinical is not None:
        table = Path(clinical)
        table = table if table.is_absolute() else top / table
    else:
        cands = [top / n for n in ("patient-clinical-data.csv", "patient-clinical-data.xlsx")]
        table = next((c for c in cands if c.is_file()), cands[1])
    header, rows = _read_table(table)
    id_col = _column(header, "Patient ID", table)
    cols: dict[str, str] = {}
    for t in BCNB_TARGETS:  # the chosen target's column must exist; the others are recorded when present
        try:
            cols[t] = _column(header, BCNB_COLUMNS[t], table)
        except DataError:
            if t == tgt:
                raise
    sdir = Path(slide_dir)
    sdir = sdir if sdir.is_absolute() else top / sdir
    ext = slide_ext if slide_ext.startswith(".") else f".{slide_ext}"
    records, metas = [], []
    for n, (line, row) in enumerate(rows, 1):
        where = f"row {n} (line {line})"
        pid = row[id_col].strip()
        if pid.endswith(".0") and pid[:-2].isdigit():  # Excel integers read as text
            pid = pid[:-2]
        if not pid:
            raise DataError(f"{where}: empty {id_col!r}", source=table)
        targets: dict[str, int | None] = {}
        for t, col in cols.items():
            try:
                targets[t] = _bcnb_value(t, row[col], ki67_threshold, where, table)
            except DataError:
                if t == tgt:
                    raise
                targets[t] = None
        records.append(Record(path=sdir / f"{pid}{ext}", label=targets[tgt], id=pid, patient=pid, where=where))
        metas.append({"targets": targets})
    if not records:
        raise DataError("clinical table lists no patients", source=table)
    patients = [r.patient or r.id for r in records]
    fold_splits = kfold_by_patient(patients, k=int(folds), seed=int(seed), val_fraction=float(val_fraction),
                                   stratify=[r.label for r in records])[int(fold)]
    splits = {k: v for k, v in fold_splits.items() if v}
    validate_splits(dict(splits), patients, table)  # type: ignore[arg-type]
    for name, idx in splits.items():
        for i in idx:
            records[i].split = name
    meta = {"target": tgt, "folds": int(folds), "fold": int(fold), "val_fraction": float(val_fraction),
            "seed": int(seed), "ki67_threshold": float(ki67_threshold)}
    return SlideDataset(records, task=TaskInfo("binary", BCNB_CLASSES[tgt]), source=table, name=f"bcnb-{tgt}",
                        mpps=[m] * len(records), slide_meta=metas, splits=splits, check_files=check_files, meta=meta)


# ------------------------------------------------------------------------------------------- generic
@register_dataset("slides")
def create_slides_csv(arg: str, root: str | Path | None = None, path_column: str = "path",
                      label_columns: Sequence[str] | str | None = None, task: str | TaskInfo | None = None,
                      classes: Sequence[str] | None = None, patient_column: str | None = None,
                      split_column: str | None = None, id_column: str | None = None, mpp: float | None = None,
                      mpp_column: str | None = None, name: str | None = None,
                      check_files: bool = True) -> SlideDataset:
    """``slides:<file.csv>``: one slide per row (path relative to ``root`` / the CSV's folder), label column(s)
    as for ``csv:`` manifests, optional patient / split / id columns, and a pixel size for every slide
    (``mpp``) or per row (``mpp_column``; an empty cell falls back to ``mpp`` or the header)."""
    if not arg:
        raise ConfigError("give the CSV path: slides:/path/slides.csv", "slides:")
    csv_path = Path(arg)
    m = _check_mpp(mpp, csv_path)
    records, info = records_from_csv(csv_path, root=root, path_column=path_column, label_columns=label_columns,
                                     task=task, classes=classes, patient_column=patient_column,
                                     split_column=split_column, id_column=id_column)
    mpps: list[float | None] = [m] * len(records)
    if mpp_column:
        _, rows = read_csv_rows(csv_path, [mpp_column])
        for i, (line, row) in enumerate(rows):
            cell = row[mpp_column].strip()
            if cell:
                try:
                    mpps[i] = _check_mpp(cell, csv_path)
                except ConfigError:
                    raise DataError(f"row {i + 1} (line {line}), column {mpp_column!r}: mpp {cell!r} is not a "
                                    "positive number of µm per pixel", source=csv_path) from None
    return SlideDataset(records, task=info, source=csv_path, name=name or csv_path.stem, mpps=mpps,
                        check_files=check_files, meta={"mpp": m, "mpp_column": mpp_column})


__all__ = ["BCNB_TARGETS", "C17_STAGES", "CAMELYON_CLASSES", "SLIDE_EXTENSIONS", "SlideDataset", "create_bcnb",
           "create_camelyon16", "create_camelyon17", "create_slides_csv"]
