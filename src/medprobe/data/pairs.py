"""Registration pairs: a fixed and a moving image (+ optional label maps and landmarks) per case.

Kinds (``create_dataset("<kind>:<path>", **options)``):

* ``pairs-csv:<file.csv>`` -- columns ``fixed``, ``moving`` (paths, relative to the CSV), optional ``id``,
  ``fixed_label``, ``moving_label``, ``fixed_landmarks``, ``moving_landmarks`` (CSV files of voxel coordinates,
  one point a row);
* ``learn2reg:<dir>`` -- a Learn2Reg ``dataset.json`` listing pairs (``registration_val`` / ``registration_test``
  / ``training_paired_images``, chosen by ``split``), labels from ``labelsTr/`` and keypoints from
  ``keypointsTr/`` when present;
* ``camus:<dir>`` -- per patient ``patientXXXX_{2CH,4CH}_{ED,ES}[_gt].nii.gz``, pair = ED (fixed) and ES
  (moving) of each view; labels 1 LV cavity, 2 myocardium, 3 left atrium;
* ``acdc:<dir>`` -- per patient the ED and ES frames named in ``Info.cfg`` (``patientXXX_frameNN[_gt].nii.gz``);
* ``seg-pairs:<any segmentation dataset spec>`` -- inter-subject pairs drawn (seeded) from a segmentation
  dataset such as ``msd:<dir>``: ``n_pairs`` pairs with fixed != moving.

Every kind takes ``shape`` (resample the fixed image to this grid, e.g. the study's 128x128 / 128x128x32).
The moving image (and its labels, nearest neighbour) is resampled onto the fixed image's grid through the
affines (3D) or by scaling (2D); what was done is recorded in ``PairItem.meta["resampled"]``. Checked per pair
(one ``DataError`` line ``"<pair>: <problem>"``): images of different dimensionality, a label map on one side
only, label values that differ between the sides, images that do not overlap in world space, missing files.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medprobe.data import create_dataset, register_dataset
from medprobe.data.base import Item, PairDataset, PairItem, TaskInfo
from medprobe.data.io import files_fingerprint, read_image, read_volume
from medprobe.errors import ConfigError, DataError
from medprobe.utils import hash_obj

__all__ = ["PairList", "make_pair", "read_any", "resample_to_grid"]

Loader = Callable[[], Item]


def read_any(path: str | Path, label: bool = False, pid: str = "") -> Item:
    """A 2D image or 3D volume file as an :class:`Item` (NIfTI / NRRD / MHA volumes canonical RAS; a
    NIfTI with one slice or a PNG/TIFF is 2D)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{pid + ': ' if pid else ''}missing file {p}")
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")):
        vol = read_volume(p)
        arr = vol.array
        if arr.ndim == 3 and arr.shape[2] == 1:  # 2D NIfTI (CAMUS)
            return Item(id=p.name, image=arr[:, :, 0], spatial_dims=2, spacing=vol.spacing[:2], source=str(p))
        return Item(id=p.name, image=arr, spatial_dims=3, spacing=vol.spacing, affine=vol.affine, source=str(p))
    arr = read_image(p)
    if arr.ndim == 3 and not label:
        arr = arr.mean(axis=2)
    return Item(id=p.name, image=arr[..., 0] if arr.ndim == 3 else arr, spatial_dims=2,
                spacing=(1.0, 1.0), source=str(p))


def _labels_int(lab: np.ndarray, pid: str, side: str) -> np.ndarray:
    lab = np.asarray(lab)
    if lab.ndim == lab.ndim and np.issubdtype(lab.dtype, np.floating):
        if not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab)):
            raise DataError(f"{pid}: {side} label map has non-integer values")
    return lab.astype(np.int16)


def _world_box(item: Item) -> tuple[np.ndarray, np.ndarray]:
    shape = np.asarray(item.spatial_shape, dtype=np.float64)
    aff = item.affine if item.affine is not None else np.eye(4)
    corners = np.array(np.meshgrid(*[[-0.5, s - 0.5] for s in shape], indexing="ij")).reshape(3, -1)
    world = aff[:3, :3] @ corners + aff[:3, 3:4]
    return world.min(1), world.max(1)


def resample_to_grid(item: Item, shape: tuple[int, ...], affine: np.ndarray | None,
                     order: int = 1, image: np.ndarray | None = None) -> np.ndarray:
    """``image`` (default ``item.image``) of ``item`` sampled on a target grid: through the affines for 3D
    (``affine`` = the target's voxel->world), by scaling the axes for 2D (or when an affine is missing)."""
    src = np.asarray(item.image if image is None else image)
    src = src.astype(np.float32) if order > 0 else src
    if item.spatial_dims == 3 and affine is not None and item.affine is not None:
        m = np.linalg.inv(item.affine) @ affine
        return ndimage.affine_transform(src, m[:3, :3], offset=m[:3, 3], output_shape=shape, order=order,
                                        mode="constant", cval=0.0 if order else 0)
    if tuple(src.shape) == tuple(shape):
        return src
    factors = [t / s for t, s in zip(shape, src.shape)]
    out = ndimage.zoom(src, factors, order=order, mode="nearest", grid_mode=True)
    return out[tuple(slice(0, n) for n in shape)]


def _reshape_fixed(fixed: Item, shape: tuple[int, ...]) -> Item:
    """The fixed item on a grid of ``shape`` covering the same field of view (affine and spacing updated)."""
    old = np.asarray(fixed.spatial_shape, dtype=np.float64)
    scale = old / np.asarray(shape, dtype=np.float64)
    aff = None
    if fixed.affine is not None:
        aff = fixed.affine.copy()
        aff[:3, :3] = fixed.affine[:3, :3] @ np.diag(scale)
        aff[:3, 3] = fixed.affine[:3, :3] @ (0.5 * scale - 0.5) + fixed.affine[:3, 3]
    img = resample_to_grid(fixed, shape, aff, order=1)
    mask = resample_to_grid(fixed, shape, aff, order=0, image=fixed.mask) if fixed.mask is not None else None
    sp = tuple(float(s * f) for s, f in zip(fixed.spacing or (1.0,) * len(shape), scale))
    return Item(id=fixed.id, image=img, spatial_dims=fixed.spatial_dims, spacing=sp, mask=mask, affine=aff,
                source=fixed.source, meta={**fixed.meta, "landmarks": _scale_points(fixed, 1 / scale)})


def _scale_points(item: Item, factor: np.ndarray) -> np.ndarray | None:
    pts = item.meta.get("landmarks")
    return None if pts is None else (np.asarray(pts, dtype=np.float64) + 0.5) * factor - 0.5


def make_pair(pid: str, fixed: Item, moving: Item, shape: tuple[int, ...] | None = None) -> PairItem:
    """Check a pair and put the moving image (labels, landmarks) on the fixed image's grid."""
    if fixed.spatial_dims != moving.spatial_dims:
        raise DataError(f"{pid}: fixed image is {fixed.spatial_dims}D {fixed.spatial_shape} but moving image is "
                        f"{moving.spatial_dims}D {moving.spatial_shape}")
    if (fixed.mask is None) != (moving.mask is None):
        side = "fixed" if fixed.mask is not None else "moving"
        raise DataError(f"{pid}: only the {side} image has a label map (give both or neither)")
    if fixed.mask is not None and moving.mask is not None:
        vf, vm = set(np.unique(fixed.mask).tolist()), set(np.unique(moving.mask).tolist())
        if vf != vm:
            raise DataError(f"{pid}: label values differ between fixed {sorted(vf)} and moving {sorted(vm)}")
    if fixed.spatial_dims == 3 and fixed.affine is not None and moving.affine is not None:
        (alo, ahi), (blo, bhi) = _world_box(fixed), _world_box(moving)
        if np.any(ahi <= blo) or np.any(bhi <= alo):
            raise DataError(f"{pid}: fixed and moving images do not overlap in world space (fixed spans "
                            f"{np.round(alo, 1).tolist()}..{np.round(ahi, 1).tolist()} mm, moving "
                            f"{np.round(blo, 1).tolist()}..{np.round(bhi, 1).tolist()} mm)")
    resampled: dict[str, Any] = {}
    if shape is not None and tuple(shape) != fixed.spatial_shape:
        if len(shape) != fixed.spatial_dims:
            raise ConfigError(f"{pid}: shape {tuple(shape)} is not {fixed.spatial_dims}D")
        resampled["fixed"] = {"from": list(fixed.spatial_shape), "to": list(shape)}
        fixed = _reshape_fixed(fixed, tuple(shape))
    same = moving.spatial_shape == fixed.spatial_shape and (
        moving.affine is None or fixed.affine is None or np.allclose(moving.affine, fixed.affine, atol=1e-4))
    if not same:
        resampled["moving"] = {"from": list(moving.spatial_shape), "to": list(fixed.spatial_shape),
                               "spacing_from": list(moving.spacing)}
        grid = fixed.spatial_shape
        img = resample_to_grid(moving, grid, fixed.affine, order=1)
        mask = resample_to_grid(moving, grid, fixed.affine, order=0, image=moving.mask) \
            if moving.mask is not None else None
        pts = moving.meta.get("landmarks")
        if pts is not None:
            pts = np.asarray(pts, dtype=np.float64)
            if fixed.affine is not None and moving.affine is not None:
                m = np.linalg.inv(fixed.affine) @ moving.affine
                pts = pts @ m[:3, :3].T + m[:3, 3]
            else:
                f = np.asarray(grid, dtype=np.float64) / np.asarray(moving.spatial_shape, dtype=np.float64)
                pts = (pts + 0.5) * f - 0.5
        moving = Item(id=moving.id, image=img, spatial_dims=moving.spatial_dims, spacing=fixed.spacing,
                      mask=mask, affine=fixed.affine, source=moving.source, meta={**moving.meta, "landmarks": pts})
    return PairItem(id=pid, fixed=fixed, moving=moving, meta={"resampled": resampled})


def _with_label(img: Item, label: Item | None, pid: str, side: str) -> Item:
    if label is not None:
        lab = _labels_int(np.asarray(label.image), pid, side)
        if lab.shape != img.spatial_shape:
            raise DataError(f"{pid}: {side} label shape {lab.shape} differs from its image {img.spatial_shape}")
        img.mask = lab
    return img


def _landmarks(path: str | Path | None, pid: str) -> np.ndarray | None:
    if not path:
        return None
    p = Path(path)
    if not p.exists():
        raise DataError(f"{pid}: missing file {p}")
    try:
        return np.loadtxt(p, delimiter=",", ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise DataError(f"{pid}: cannot read landmarks {p} ({e})") from None


class PairList(PairDataset):
    """Pairs given as ``(id, fixed spec, moving spec)`` where a spec is ``{"image", "label", "landmarks"}``
    paths (or ``{"item": loader}`` for items from another dataset)."""

    def __init__(self, name: str, pairs: list[tuple[str, dict[str, Any], dict[str, Any]]], spatial_dims: int,
                 shape: tuple[int, ...] | None = None, classes: tuple[str, ...] = (), modality: Any = "generic",
                 fingerprint_extra: Any = None) -> None:
        self.name, self._pairs, self.spatial_dims, self.shape = name, pairs, spatial_dims, shape
        self.modality = modality
        self.task = TaskInfo("registration", classes=classes)
        self._fp_extra = fingerprint_extra

    def __len__(self) -> int:
        return len(self._pairs)

    def ids(self) -> list[str]:
        return [p[0] for p in self._pairs]

    def _side(self, pid: str, spec: dict[str, Any], side: str) -> Item:
        if "item" in spec:
            it: Item = spec["item"]()
            return Item(id=it.id, image=it.image, spatial_dims=it.spatial_dims, spacing=it.spacing,
                        mask=None if it.mask is None else np.asarray(it.mask).astype(np.int16), affine=it.affine,
                        source=it.source, meta={"landmarks": None})
        img = read_any(spec["image"], pid=pid)
        lab = read_any(spec["label"], label=True, pid=pid) if spec.get("label") else None
        img = _with_label(img, lab, pid, side)
        img.meta["landmarks"] = _landmarks(spec.get("landmarks"), pid)
        return img

    def splits(self) -> dict[str, list[int]] | None:
        """Registration is zero-shot (every pair is scored); a nominal split keeps split checks satisfied."""
        n = len(self)
        return {"train": [0], "val": [], "test": list(range(1, n))} if n >= 2 else None

    def load_pair(self, i: int) -> PairItem:
        pid, f, m = self._pairs[i]
        return make_pair(pid, self._side(pid, f, "fixed"), self._side(pid, m, "moving"), self.shape)

    def fingerprint(self) -> str:
        paths = sorted({str(v) for _, f, m in self._pairs for s in (f, m) for k, v in s.items()
                        if k != "item" and v})
        return files_fingerprint(paths, extra=[self.ids(), self.shape, self._fp_extra]) if paths \
            else hash_obj([self.ids(), self.shape, self._fp_extra], n=16)


def _shape(shape: Any) -> tuple[int, ...] | None:
    if shape is None:
        return None
    if isinstance(shape, str):
        shape = [int(s) for s in re.split(r"[x,\s]+", shape.strip()) if s]
    if isinstance(shape, int):
        raise ConfigError(f"shape {shape}: give one size per axis, e.g. [128, 128, 32]")
    return tuple(int(s) for s in shape)


@register_dataset("pairs-csv")
def pairs_csv(path: str, shape: Any = None) -> PairList:
    """Pairs from a CSV (see the module docstring); each path is checked now, naming the row's pair."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: pairs CSV not found")
    with p.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"fixed", "moving"} <= set(rows[0]):
        raise DataError(f"{p}: needs columns 'fixed' and 'moving' (has {', '.join(rows[0]) if rows else 'no rows'})")
    pairs = []
    dims = 2
    for n, row in enumerate(rows, start=2):
        pid = (row.get("id") or "").strip() or f"pair{n - 1}"
        sides = []
        for side in ("fixed", "moving"):
            spec = {}
            for key, col in (("image", side), ("label", f"{side}_label"), ("landmarks", f"{side}_landmarks")):
                v = (row.get(col) or "").strip()
                if not v:
                    continue
                q = Path(v) if Path(v).is_absolute() else p.parent / v
                if not q.exists():
                    raise DataError(f"{p} line {n} ({pid}): {col} file {v} does not exist")
                spec[key] = str(q)
            if "image" not in spec:
                raise DataError(f"{p} line {n} ({pid}): no {side} image")
            sides.append(spec)
        if str(sides[0]["image"]).lower().endswith((".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")):
            dims = 3
        pairs.append((pid, sides[0], sides[1]))
    return PairList(f"pairs-csv:{p.stem}", pairs, dims, _shape(shape))


@register_dataset("learn2reg")
def learn2reg(path: str, split: str = "registration_val", shape: Any = None) -> PairList:
    """Pairs listed in a Learn2Reg ``dataset.json`` (``split``: the key listing them)."""
    root = Path(path)
    js = root / "dataset.json"
    if not js.is_file():
        raise DataError(f"{root}: no dataset.json (not a Learn2Reg folder)")
    meta = json.loads(js.read_text(encoding="utf-8"))
    listed = meta.get(split)
    if not isinstance(listed, list) or not listed:
        keys = [k for k, v in meta.items() if isinstance(v, list) and v and isinstance(v[0], dict)
                and "fixed" in v[0]]
        raise ConfigError(f"{js}: no pair list {split!r} (pair lists: {', '.join(keys) or 'none'})")

    def side(rel: str) -> dict[str, Any]:
        img = (root / rel).resolve()
        spec: dict[str, Any] = {"image": str(img)}
        lab = Path(str(img).replace("imagesTr", "labelsTr").replace("imagesTs", "labelsTs"))
        if lab != img and lab.exists():
            spec["label"] = str(lab)
        kp = Path(str(img).replace("imagesTr", "keypointsTr").replace("imagesTs", "keypointsTs"))
        kp = kp.with_name(kp.name.replace(".nii.gz", ".csv"))
        if kp.exists():
            spec["landmarks"] = str(kp)
        return spec

    pairs = []
    for e in listed:
        f, m = side(e["fixed"]), side(e["moving"])
        pid = f"{Path(e['fixed']).name.split('.')[0]}<-{Path(e['moving']).name.split('.')[0]}"
        pairs.append((pid, f, m))
    labels = meta.get("labels") or {}
    classes = tuple(str(labels[k]) for k in sorted(labels, key=lambda s: int(s))) if isinstance(labels, dict) else ()
    return PairList(f"learn2reg:{meta.get('name', root.name)}", pairs, 3, _shape(shape), classes, "mri")


@register_dataset("camus")
def camus(path: str, views: Any = ("2CH", "4CH"), shape: Any = (128, 128)) -> PairList:
    """CAMUS echocardiography: ED (fixed) <-> ES (moving) per patient and view, resampled to ``shape``."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: CAMUS folder not found")
    views = [views] if isinstance(views, str) else list(views)
    pairs = []
    for pdir in sorted(d for d in root.iterdir() if d.is_dir() and d.name.startswith("patient")):
        for v in views:
            def spec(ph: str, pdir: Path = pdir, v: str = v) -> dict[str, Any]:
                base = pdir / f"{pdir.name}_{v}_{ph}"
                s = {"image": f"{base}.nii.gz"}
                if Path(f"{base}_gt.nii.gz").exists():
                    s["label"] = f"{base}_gt.nii.gz"
                return s
            if Path(spec("ED")["image"]).exists():
                pairs.append((f"{pdir.name}_{v}", spec("ED"), spec("ES")))
    if not pairs:
        raise DataError(f"{root}: no patientXXXX/patientXXXX_<view>_ED.nii.gz files")
    return PairList(f"camus:{root.name}", pairs, 2, _shape(shape), ("background", "lv", "myocardium", "la"),
                    "ultrasound")


@register_dataset("acdc")
def acdc(path: str, shape: Any = (128, 128, 32)) -> PairList:
    """ACDC cardiac MRI: ED (fixed) <-> ES (moving) frames of each patient (from ``Info.cfg``)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: ACDC folder not found")
    pairs = []
    for pdir in sorted(d for d in root.iterdir() if d.is_dir() and d.name.startswith("patient")):
        cfg = pdir / "Info.cfg"
        if not cfg.is_file():
            raise DataError(f"{pdir.name}: no Info.cfg")
        info = dict(ln.split(":", 1) for ln in cfg.read_text(encoding="utf-8").splitlines() if ":" in ln)
        try:
            ed, es = int(info["ED"]), int(info["ES"])
        except (KeyError, ValueError):
            raise DataError(f"{cfg}: needs integer 'ED:' and 'ES:' lines") from None

        def spec(fr: int, pdir: Path = pdir) -> dict[str, Any]:
            base = pdir / f"{pdir.name}_frame{fr:02d}"
            s = {"image": f"{base}.nii.gz"}
            if Path(f"{base}_gt.nii.gz").exists():
                s["label"] = f"{base}_gt.nii.gz"
            return s
        pairs.append((pdir.name, spec(ed), spec(es)))
    if not pairs:
        raise DataError(f"{root}: no patientXXX folders")
    return PairList(f"acdc:{root.name}", pairs, 3, _shape(shape), ("background", "rv", "myocardium", "lv"), "mri")


@register_dataset("seg-pairs")
def seg_pairs(path: str, n_pairs: int = 20, seed: int = 0, shape: Any = None) -> PairList:
    """Inter-subject pairs (fixed != moving, seeded) from a segmentation dataset spec, e.g. ``msd:<dir>``."""
    base = create_dataset(path)
    n = len(base)
    if n < 2:
        raise DataError(f"{path}: needs at least 2 cases for inter-subject pairs (has {n})")
    rng = np.random.default_rng(seed)
    ids = base.ids()
    chosen: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    while len(chosen) < min(int(n_pairs), n * (n - 1)):
        a, b = (int(v) for v in rng.choice(n, size=2, replace=False))
        if (a, b) not in seen:
            seen.add((a, b))
            chosen.append((a, b))
    pairs = [(f"{ids[a]}<-{ids[b]}", {"item": (lambda a=a: base.load(a))}, {"item": (lambda b=b: base.load(b))})
             for a, b in chosen]
    return PairList(f"seg-pairs:{base.name}", pairs, base.spatial_dims, _shape(shape), tuple(base.task.classes),
                    base.modality, fingerprint_extra=[base.fingerprint(), n_pairs, seed])
