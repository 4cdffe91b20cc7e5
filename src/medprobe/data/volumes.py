"""3D volumes (NIfTI, NRRD, MetaImage, DICOM series folders) with a CSV of per-volume labels.

``create_dataset("volumes:/data/labels.csv", root="/data/volumes", label_columns=[...], task=...)``

* CT-RATE style: a ``VolumeName`` column (``train_1_a_1.nii.gz``) + one 0/1 column per abnormality
  (multi-label; all other columns when ``label_columns`` is not given). Files are looked up as
  ``<root>/<name>``, then in CT-RATE's nested layout ``<root>[/<split>]/train_1/train_1_a/<name>``;
  the patient is the name's first two parts (``train_1``).
* Generic: a ``path`` column (file or DICOM folder, relative to ``root`` / the CSV's folder) + label
  columns, as for ``csv:`` manifests.
* Regression (``task="regression"``): one or more numeric target columns per volume (``label_columns`` a
  list or a comma list; default: every column other than the path / patient / split / id columns), e.g.
  a lesion volume in ml or an age; labels are floats (float64 vectors for several targets), and a bad cell
  raises ``DataError`` naming the CSV, row and column (see ``csv_manifest.parse_target``).

Items are ``(X, Y, Z[, C])`` reoriented to closest canonical RAS, ``slice_axis=2``, spacing from the header.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medprobe.data import register_dataset
from medprobe.data.base import Modality, TaskInfo
from medprobe.data.csv_manifest import ManifestDataset, read_csv_rows, records_from_csv, split_columns
from medprobe.errors import ConfigError


def ctrate_candidates(root: Path, name: str) -> list[Path]:
    """Where CT-RATE keeps ``name`` (``train_1_a_1.nii.gz`` -> ``train_1/train_1_a/train_1_a_1.nii.gz``)."""
    out = [root / name]
    parts = name.split(".")[0].split("_")
    if len(parts) >= 3:
        nested = Path("_".join(parts[:2])) / "_".join(parts[:3]) / name
        out += [root / nested, root / parts[0] / nested]
        if parts[0] == "valid":
            out.append(root / "validation" / nested)
    return out


@register_dataset("volumes")
def create_volumes(arg: str, root: str | Path | None = None, path_column: str | None = None,
                   label_columns: Sequence[str] | str | None = None, task: str | TaskInfo | None = None,
                   classes: Sequence[str] | None = None, sep: str | None = None,
                   patient_column: str | None = None, split_column: str | None = None,
                   id_column: str | None = None, modality: Modality = "generic", name: str | None = None,
                   check_files: bool = True) -> ManifestDataset:
    """``volumes:<labels.csv>``: one volume per row with its labels (see the module docstring)."""
    if not arg:
        raise ConfigError("give the labels CSV: volumes:/path/labels.csv", "volumes:")
    csv_path = Path(arg)
    header, _ = read_csv_rows(csv_path)
    if path_column is None:
        path_column = "VolumeName" if "VolumeName" in header else "path"
    ctrate = path_column == "VolumeName"
    if label_columns is None:
        skip = {path_column, patient_column, split_column, id_column}
        label_columns = [c for c in header if c not in skip and c]
    label_columns = split_columns(label_columns, header)
    if task is None and len(label_columns) > 1:
        task = "multilabel"
    base = Path(root) if root is not None else csv_path.parent
    records, info = records_from_csv(csv_path, root=base, path_column=path_column,
                                     label_columns=label_columns, task=task, classes=classes, sep=sep,
                                     patient_column=patient_column, split_column=split_column,
                                     id_column=id_column)
    if ctrate:
        for r in records:
            vol_name = r.path.name
            r.id = vol_name.split(".")[0]
            for c in ctrate_candidates(base, vol_name):
                if c.exists():
                    r.path = c
                    break
            if r.patient is None:
                parts = r.id.split("_")
                r.patient = "_".join(parts[:2]) if len(parts) >= 3 else r.id
    return ManifestDataset(records, task=info, source=csv_path, name=name or csv_path.stem, modality=modality,
                           spatial_dims=3, check_files=check_files)


__all__ = ["create_volumes", "ctrate_candidates"]
