"""PET/CT segmentation in the challenges' native layouts, PET resampled onto the CT grid.

* ``autopet:<root>`` -- AutoPET-II (FDG-PET-CT-Lesions, NIfTI release): ``<root>/<patient>/<study>/CT.nii.gz``,
  ``SUV.nii.gz`` (PET in SUV) and ``SEG.nii.gz`` (lesions, on the PET grid). The SUV volume is resampled onto
  the CT grid (trilinear, world coordinates from both affines; 0 outside the PET field of view) and the lesion
  mask likewise (nearest neighbour). Classes background, lesion. A patient with several studies is one group.
* ``hecktor:<root>`` -- HECKTOR 2022: ``imagesTr/<case>__CT.nii.gz``, ``imagesTr/<case>__PT.nii.gz`` (PET in
  SUV) and ``labelsTr/<case>.nii.gz`` (on the CT grid; 1 GTVp, 2 GTVn). PET is resampled onto the CT grid.
  The case id (``CHUM-001``) is the patient; its centre (``CHUM``) is ``Item.meta['centre']``.

Items are ``(X, Y, Z, 2)`` float32 with channel 0 = CT (HU) and channel 1 = PET (SUV) (``channel_names``),
reoriented to canonical RAS like every volume; spacing and affine are the CT's. What was resampled, and how, is
in ``Item.meta['resampled']``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medprobe.data import register_dataset
from medprobe.data.base import Dataset, Item, Modality, TaskInfo
from medprobe.data.io import VolumeData, files_fingerprint, read_volume
from medprobe.errors import DataError, MedprobeError


def resample_onto(moving: VolumeData, fixed: VolumeData, order: int = 1) -> np.ndarray:
    """``moving``'s array sampled on ``fixed``'s voxel grid through both voxel->world affines (``order`` 1:
    trilinear, 0: nearest); zero outside ``moving``'s field of view. Returns ``fixed``'s spatial shape."""
    from scipy import ndimage

    m = np.linalg.inv(np.asarray(moving.affine, dtype=np.float64)) @ np.asarray(fixed.affine, dtype=np.float64)
    src = np.asarray(moving.array)
    if src.ndim != 3:
        raise DataError(f"expected a 3D volume, got shape {src.shape}")
    shape = tuple(int(s) for s in fixed.array.shape[:3])
    if np.allclose(m, np.eye(4), atol=1e-6) and src.shape == shape:
        return src.copy()
    dtype = np.float32 if order > 0 else src.dtype
    return ndimage.affine_transform(src.astype(np.float32) if order > 0 else src, m[:3, :3], offset=m[:3, 3],
                                    output_shape=shape, order=order, mode="constant", cval=0).astype(dtype)


class PetCtDataset(Dataset):
    """CT + PET (resampled onto the CT) + label per case (module docstring)."""

    spatial_dims = 3
    modality: Modality = "petct"
    channel_names = ("CT", "PET")

    def __init__(self, name: str, root: Path, cases: list[dict[str, Any]], classes: tuple[str, ...],
                 label_on: str) -> None:
        if not cases:
            raise DataError("no PET/CT cases found", source=root)
        self.name, self.root, self.cases, self.label_on = name, root, cases, label_on
        self.task = TaskInfo("segmentation", classes)
        self._fp: str | None = None

    def __len__(self) -> int:
        return len(self.cases)

    def ids(self) -> list[str]:
        return [c["id"] for c in self.cases]

    def labels(self) -> list[Any]:
        return [None] * len(self.cases)

    def patients(self) -> list[str]:
        return [c["patient"] for c in self.cases]

    def fingerprint(self) -> str:
        if self._fp is None:
            files = [c[k] for c in self.cases for k in ("ct", "pet", "label")]
            self._fp = files_fingerprint(files, {"name": self.name, "ids": self.ids(), "patients": self.patients(),
                                                 "resample": "pet->ct trilinear, label nearest"})
        return self._fp

    def load(self, i: int) -> Item:
        c = self.cases[i]
        try:
            ct, pet, lab = read_volume(c["ct"]), read_volume(c["pet"]), read_volume(c["label"])
        except MedprobeError as e:
            raise DataError(str(e), source=c["id"]) from None
        for v, what in ((ct, "CT"), (pet, "PET"), (lab, "label")):
            if v.array.ndim != 3:
                raise DataError(f"{what} volume has shape {v.array.shape}, expected 3D", source=c["id"])
        pet_on_ct = resample_onto(pet, ct, order=1)
        label = lab.array if self.label_on == "ct" and lab.array.shape == ct.array.shape \
            else resample_onto(lab, ct, order=0)
        label = np.rint(np.asarray(label, dtype=np.float64)).astype(np.int64)
        k = self.task.n_classes
        if label.min() < 0 or label.max() >= k:
            raise DataError(f"label values {sorted(np.unique(label).tolist())[:8]} outside 0..{k - 1}",
                            source=c["label"])
        image = np.stack([np.asarray(ct.array, dtype=np.float32), pet_on_ct.astype(np.float32)], axis=-1)
        meta = {"resampled": {"pet": f"{tuple(pet.array.shape)} at {tuple(round(s, 3) for s in pet.spacing)} mm "
                                     "-> CT grid, trilinear",
                              "label": "on the CT grid" if self.label_on == "ct" else "PET grid -> CT grid, nearest"},
                "channels": list(self.channel_names), **c.get("meta", {})}
        return Item(id=c["id"], image=image, spatial_dims=3, spacing=ct.spacing, mask=label.astype(np.uint8),
                    affine=ct.affine, slice_axis=2, patient=c["patient"], source=str(c["ct"]), meta=meta)


@register_dataset("autopet")
def create_autopet(arg: str = "", root: str | Path | None = None, pet_name: str = "SUV.nii.gz",
                   ct_name: str = "CT.nii.gz", label_name: str = "SEG.nii.gz", limit: int | None = None
                   ) -> PetCtDataset:
    """``autopet:<root>``: ``<patient>/<study>/{CT,SUV,SEG}.nii.gz`` (module docstring)."""
    top = Path(arg or root or "").expanduser()
    if not str(top) or not top.is_dir():
        raise DataError("AutoPET folder not found (give autopet:/path/to/FDG-PET-CT-Lesions)", source=top)
    cases = []
    for ct in sorted(top.glob(f"*/*/{ct_name}")):
        study = ct.parent
        missing = [n for n in (pet_name, label_name) if not (study / n).is_file()]
        if missing:
            raise DataError(f"study has {ct_name} but not {', '.join(missing)}", source=study)
        cases.append({"id": f"{study.parent.name}/{study.name}", "patient": study.parent.name, "ct": ct,
                      "pet": study / pet_name, "label": study / label_name})
    if limit is not None:
        cases = cases[: int(limit)]
    return PetCtDataset("autopet-ii", top, cases, ("background", "lesion"), label_on="pet")


@register_dataset("hecktor")
def create_hecktor(arg: str = "", root: str | Path | None = None, images: str = "imagesTr",
                   labels: str = "labelsTr", limit: int | None = None) -> PetCtDataset:
    """``hecktor:<root>``: ``imagesTr/<case>__CT|__PT.nii.gz`` + ``labelsTr/<case>.nii.gz`` (module docstring)."""
    top = Path(arg or root or "").expanduser()
    if not str(top) or not top.is_dir():
        raise DataError("HECKTOR folder not found (give hecktor:/path/to/hecktor2022)", source=top)
    img_dir, lab_dir = top / images, top / labels
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise DataError("folder not found", source=d)
    cases = []
    for ct in sorted(img_dir.glob("*__CT.nii*")):
        case = ct.name.split("__CT")[0]
        ext = ct.name[len(case) + len("__CT"):]
        pet = img_dir / f"{case}__PT{ext}"
        lab = lab_dir / f"{case}{ext}"
        missing = [p.name for p in (pet, lab) if not p.is_file()]
        if missing:
            raise DataError(f"case {case} has a CT but not {', '.join(missing)}", source=top)
        cases.append({"id": case, "patient": case, "ct": ct, "pet": pet, "label": lab,
                      "meta": {"centre": case.split("-")[0]}})
    if limit is not None:
        cases = cases[: int(limit)]
    return PetCtDataset("hecktor2022", top, cases, ("background", "GTVp", "GTVn"), label_on="ct")


__all__ = ["PetCtDataset", "create_autopet", "create_hecktor", "resample_onto"]
