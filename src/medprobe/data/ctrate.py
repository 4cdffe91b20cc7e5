"""CT-RATE with its official split: ``ct-rate:<dataset folder>``.

The release holds ``multi_abnormality_labels/train_predicted_labels.csv`` and ``valid_predicted_labels.csv``
(``VolumeName`` + 18 abnormality columns) and the volumes under ``train/`` and ``valid/`` (nested
``train_1/train_1_a/train_1_a_1.nii.gz``). The official validation set is the test split (as in the study);
validation = a seeded, patient-level ``val_fraction`` of the training patients (``val_fraction: 0`` for none).
Patients are the volume name's first two parts (``train_1``), so no patient is in two splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medprobe.data import register_dataset
from medprobe.data.base import Modality
from medprobe.data.csv_manifest import ManifestDataset
from medprobe.errors import ConfigError, DataError


@register_dataset("ct-rate")
def create_ct_rate(arg: str = "", root: str | Path | None = None,
                   train_csv: str = "multi_abnormality_labels/train_predicted_labels.csv",
                   valid_csv: str = "multi_abnormality_labels/valid_predicted_labels.csv",
                   train_dir: str = "train", valid_dir: str = "valid", label_columns: Sequence[str] | None = None,
                   val_fraction: float = 0.1, seed: int = 0, modality: Modality = "ct",
                   check_files: bool = True) -> ManifestDataset:
    """``ct-rate:<dataset folder>``: the official train / valid CSVs as train(+val) / test (module docstring)."""
    from medprobe.data.splits import split_by_patient, validate_splits
    from medprobe.data.volumes import create_volumes

    top = Path(arg or root or "").expanduser()
    if not str(top) or not top.is_dir():
        raise DataError("CT-RATE dataset folder not found (give ct-rate:/path/to/dataset)", source=top)
    if not 0 <= float(val_fraction) < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}", top)
    parts: list[ManifestDataset] = []
    for csv_name, sub in ((train_csv, train_dir), (valid_csv, valid_dir)):
        csv_path = top / csv_name
        vol_root = top / sub if (top / sub).is_dir() else top
        part = create_volumes(str(csv_path), root=vol_root, label_columns=label_columns, modality=modality,
                              name="ct-rate", check_files=check_files)
        assert isinstance(part, ManifestDataset)
        parts.append(part)
    tr, te = parts
    if tr.task != te.task:
        raise DataError(f"the train and valid CSVs have different label columns ({list(tr.task.classes)} vs "
                        f"{list(te.task.classes)})", source=top / valid_csv)
    records = tr.records + te.records
    n_tr = len(tr.records)
    patients = [r.patient or r.id for r in records]
    train_idx = list(range(n_tr))
    if val_fraction > 0:
        inner = split_by_patient([patients[i] for i in train_idx], (1 - val_fraction, val_fraction), seed=seed)
        splits = {"train": inner["train"], "val": inner["test"], "test": list(range(n_tr, len(records)))}
    else:
        splits = {"train": train_idx, "test": list(range(n_tr, len(records)))}
    validate_splits(dict(splits), patients, top)  # type: ignore[arg-type]
    for name, idx in splits.items():
        for i in idx:
            records[i].split = name
    meta = {"official_split": {"train": str(top / train_csv), "test": str(top / valid_csv),
                               "val": f"seeded patient-level {val_fraction} of train (seed {seed})"}}
    return ManifestDataset(records, task=tr.task, source=top / train_csv, name="ct-rate", modality=modality,
                           spatial_dims=3, check_files=check_files, splits=splits, meta=meta)


__all__ = ["create_ct_rate"]
