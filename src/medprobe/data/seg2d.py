"""2D image + mask folders (PNG / TIFF / JPEG / BMP / ``.npy``) for semantic segmentation.

``create_dataset("seg2d:/data/set", images="image", masks="label", classes=["background", "membrane"],
mask_values={0: 1, 255: 0})`` pairs ``<root>/<images>/<name>.*`` with
``<root>/<masks>/<name><mask_suffix>.*`` by file stem (natural order: ``2`` before ``10``). Two mask layouts:

* label maps: one mask per image holding class values;
* one mask per class: ``<masks>/<class>/<name>.png`` (non-zero = that class); sub-folder names are
  the classes (``classes`` defaults to ``["background", *sorted(sub-folders)]``). A class mask missing
  for an image means "class absent"; where class masks overlap the later class in ``classes`` wins (counted in
  ``Item.meta['issues']``).

Mask values -> class indices: ``mask_values={raw: class_index}`` (keys may be ints, numeric strings or
RGB tuples for colour masks); every value found must be mapped. Without a mapping the values must already be
class indices ``0..K-1``; a binary ``{0, 255}`` mask with two classes is read as ``255 -> 1``.

Groups: ``group_pattern`` (a regex on the image file name; its ``group`` named group, else its first group)
gives each image its video / sequence / patient id (``Dataset.patients()``), so generated splits and folds
keep every frame of one video in one split (e.g. ``"^(seq_\\d+)_"``).

Pixel spacing (mm): ``spacing=(row, col)`` for every image, or per image from a CSV: ``spacing_csv=<file>``
(relative to the root), ``spacing_column`` (e.g. HC18's ``"pixel size(mm)"``), ``spacing_id_column`` (file
name or stem, default ``filename``). Without either the spacing is unknown and distances are in pixels.

Images or masks without a partner raise one ``DataError`` listing them. ``isbi2012:/path/isbi2012-em``
is the ISBI 2012 EM membrane set (``train/image``, ``train/label``; label 0 = membrane -> class 1;
4 nm pixels, so ``spacing=(4e-6, 4e-6)`` mm; serial sections 50 nm thick, the challenge's 4 x 4 x 50 nm, which
``section_nm`` overrides and instance outputs record as their z resolution).

EM neuron instances (``isbi2012`` options): ``target="instances"`` makes a ``TaskInfo("instances")`` dataset
whose masks are the 4-connected components of the non-membrane label of each section (ids 1..n, membrane 0);
``sections={train: [0, 20], val: [..], test: [20, 30]}`` assigns the sections (files in natural order) to
splits by half-open index ranges (``null`` = the end, negative = from the end); sections outside every range
are dropped. The ranges become the dataset's official split (see :func:`parse_sections`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from medprobe.data import register_dataset
from medprobe.data.base import Dataset, Item, Modality, TaskInfo
from medprobe.data.io import files_fingerprint, read_image, suffix_of
from medprobe.errors import ConfigError, DataError, MedprobeError

EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".npy")


def natural_key(s: str) -> list[Any]:
    """Sort key that orders embedded numbers numerically (``img2`` < ``img10``)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def _stem(p: Path) -> str:
    suf = suffix_of(p)
    return p.name[: -len(suf)] if suf else p.name


def _files_by_stem(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    dup: list[str] = []
    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.startswith(".") and suffix_of(f) in EXTENSIONS:
            s = _stem(f)
            if s in out:
                dup.append(s)
            out[s] = f
    if dup:
        raise DataError(f"several files share the stem(s) {', '.join(sorted(set(dup))[:10])}", source=folder)
    return out


def _list_problem(kind: str, names: list[str]) -> str:
    shown = ", ".join(names[:10]) + (f" ... (+{len(names) - 10} more)" if len(names) > 10 else "")
    return f"{len(names)} {kind}: {shown}"


def parse_mask_values(mask_values: dict[Any, int] | None, n_classes: int) -> dict[Any, int] | None:
    if mask_values is None:
        return None
    out: dict[Any, int] = {}
    for k, v in dict(mask_values).items():
        key: Any = k
        if isinstance(k, str):
            key = tuple(int(x) for x in k.strip("()[] ").split(",")) if "," in k else int(float(k))
        elif isinstance(k, (list, tuple)):
            key = tuple(int(x) for x in k)
        else:
            key = int(k)
        if not 0 <= int(v) < n_classes:
            raise ConfigError(f"mask_values maps {k!r} to class {v}, outside 0..{n_classes - 1}")
        out[key] = int(v)
    return out


def map_mask_values(raw: np.ndarray, mask_values: dict[Any, int] | None, n_classes: int, cid: str,
                    fname: str, colour: bool = False) -> np.ndarray:
    """Raw mask values -> class indices (rules in the module docstring); ``DataError`` on unknown values.

    ``colour=True``: the last axis of ``raw`` holds RGB(A) channels (matched against tuple keys).
    """
    k = n_classes
    if colour:
        if mask_values is not None and any(isinstance(key, tuple) for key in mask_values):
            out = np.full(raw.shape[:-1], -1, dtype=np.int16)
            for key, cls in mask_values.items():
                if isinstance(key, tuple):
                    out[np.all(raw[..., : len(key)] == np.asarray(key, dtype=raw.dtype), axis=-1)] = cls
            if (out < 0).any():
                left = np.unique(raw[out < 0].reshape(-1, raw.shape[-1]), axis=0)[:5]
                raise DataError(f"mask colours {[tuple(int(x) for x in c) for c in left]} not in "
                                f"mask_values ({fname})", source=cid)
            return out.astype(np.uint8)
        if not all(np.array_equal(raw[..., 0], raw[..., c]) for c in range(1, raw.shape[-1])):
            raise DataError(f"colour mask {fname}: give mask_values with RGB tuples", source=cid)
        raw = raw[..., 0]
    if raw.dtype.kind == "f":
        if not np.isfinite(raw).all() or not np.array_equal(raw, np.round(raw)):
            raise DataError(f"mask {fname} has non-integer values", source=cid)
        raw = raw.astype(np.int64)
    if raw.dtype.kind == "b":
        raw = raw.astype(np.uint8)
    present = np.unique(raw)
    if mask_values is not None:
        scalar = {kk: v for kk, v in mask_values.items() if not isinstance(kk, tuple)}
        unknown = [int(v) for v in present if int(v) not in scalar]
        if unknown:
            raise DataError(f"mask values {unknown[:10]} not in mask_values {sorted(scalar)} ({fname})",
                            source=cid)
        out = np.zeros(raw.shape, dtype=np.uint8 if k <= 256 else np.int32)
        for kk, v in scalar.items():
            if v:
                out[raw == kk] = v
        return out
    vals = {int(v) for v in present}
    if k == 2 and vals <= {0, 255}:
        return (raw == 255).astype(np.uint8)
    bad = sorted(v for v in vals if not 0 <= v < k)
    if bad:
        raise DataError(f"mask values {bad[:10]} are not class indices 0..{k - 1}; pass mask_values "
                        f"({fname})", source=cid)
    return raw.astype(np.uint8 if k <= 256 else np.int32)


class Seg2DDataset(Dataset):
    """Folder of 2D images and their masks (see module docstring)."""

    spatial_dims = 2

    def __init__(self, root: str | Path, *, images: str = "images", masks: str = "masks",
                 classes: list[str] | tuple[str, ...] | None = None,
                 mask_values: dict[Any, int] | None = None, mask_suffix: str = "",
                 modality: Modality = "generic", spacing: Any = None,
                 name: str | None = None, limit: int | None = None, spacing_csv: str | Path | None = None,
                 spacing_column: str = "pixel size(mm)", spacing_id_column: str = "filename",
                 group_pattern: str | None = None) -> None:
        self.root = Path(root).expanduser()
        self.image_dir = self.root / images
        self.mask_dir = self.root / masks
        for d, what in ((self.image_dir, "images"), (self.mask_dir, "masks")):
            if not d.is_dir():
                raise DataError(f"{what} folder not found", source=d)
        self.name = name or self.root.name
        self.modality = modality
        from medprobe.data.csv_manifest import parse_spacing

        if spacing is not None and spacing_csv is not None:
            raise ConfigError("give spacing (every image) or spacing_csv (per image), not both", self.root)
        self.spacing = parse_spacing(spacing, "option", "spacing", self.root) if spacing is not None else (1.0, 1.0)
        self.spacing_source: str | None = "dataset option 'spacing'" if spacing is not None else None
        self._spacings: dict[str, tuple[float, ...]] = {}
        self.mask_suffix = mask_suffix
        imgs = _files_by_stem(self.image_dir)
        subdirs = sorted((d for d in self.mask_dir.iterdir() if d.is_dir() and not d.name.startswith(".")),
                         key=lambda d: natural_key(d.name))
        top_masks = _files_by_stem(self.mask_dir)
        self.per_class = bool(subdirs) and not top_masks
        if self.per_class:
            names = [d.name for d in subdirs]
            if classes is None:
                classes = ["background", *names]
            classes = list(classes)
            missing = [c for c in classes[1:] if c not in names]
            if missing:
                raise DataError(f"no mask sub-folder for class(es) {', '.join(missing)}",
                                source=self.mask_dir)
            self._class_dirs = {c: _files_by_stem(self.mask_dir / c) for c in classes[1:]}
            mask_stems: set[str] = set().union(*[set(d) for d in self._class_dirs.values()])
        else:
            classes = list(classes) if classes is not None else ["background", "foreground"]
            mask_stems = set(top_masks)
        if len(classes) < 2:
            raise ConfigError("a segmentation dataset needs at least two classes (background first)")
        self.task = TaskInfo("segmentation", tuple(str(c) for c in classes))
        self.mask_values = parse_mask_values(mask_values, len(classes))
        want = {s + mask_suffix: s for s in imgs}
        no_mask = sorted((s for m, s in want.items() if m not in mask_stems), key=natural_key)
        no_image = sorted((m for m in mask_stems if m not in want), key=natural_key)
        if no_mask or no_image:
            parts = ([_list_problem("image(s) without a mask", no_mask)] if no_mask else []) + \
                    ([_list_problem("mask(s) without an image", no_image)] if no_image else [])
            raise DataError("unpaired files: " + "; ".join(parts), source=self.root)
        self._ids = sorted(imgs, key=natural_key)
        if limit is not None:
            self._ids = self._ids[: int(limit)]
        if not self._ids:
            raise DataError("no images found", source=self.image_dir)
        self._images = imgs
        self._masks = top_masks
        self._fp: str | None = None
        self.group_pattern = group_pattern
        self._groups: list[str] | None = None
        if group_pattern:
            from medprobe.data.splits import compile_group_pattern, group_from_name

            pat = compile_group_pattern(group_pattern, self.root)
            self._groups = [group_from_name(self._images[c].name, pat, self.image_dir) for c in self._ids]
        if spacing_csv is not None:
            self._read_spacings(Path(spacing_csv), spacing_column, spacing_id_column)

    def _read_spacings(self, csv_path: Path, column: str, id_column: str) -> None:
        """Per-image spacing from a CSV (rows matched by file name or stem); every image needs a row."""
        from medprobe.data.csv_manifest import parse_spacing, read_csv_rows

        path = csv_path if csv_path.is_absolute() else self.root / csv_path
        _, rows = read_csv_rows(path, [id_column, column])
        for r, (line, row) in enumerate(rows, 1):
            key = _stem(Path(row[id_column]))
            self._spacings[key] = parse_spacing(row[column], f"row {r} (line {line})", column, path)
        missing = [c for c in self._ids if c not in self._spacings]
        if missing:
            raise DataError(_list_problem(f"image(s) without a {column!r} row", missing), source=path)
        self.spacing_source = f"csv column {column!r} ({path.name})"

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[str]:
        return list(self._ids)

    def labels(self) -> list[Any]:
        return [None] * len(self._ids)

    def patients(self) -> list[str]:
        """Per-image group (video / sequence / patient) from ``group_pattern``; else each image alone."""
        return list(self._groups) if self._groups is not None else self.ids()

    def _mask_files(self, cid: str) -> list[Path]:
        key = cid + self.mask_suffix
        if self.per_class:
            return [d[key] for d in self._class_dirs.values() if key in d]
        return [self._masks[key]]

    def fingerprint(self) -> str:
        if self._fp is None:
            files: list[Path] = []
            for cid in self._ids:
                files += [self._images[cid], *self._mask_files(cid)]
            mv = None if self.mask_values is None else sorted((str(k), v)
                                                              for k, v in self.mask_values.items())
            extra: dict[str, Any] = {"ids": self._ids, "classes": list(self.task.classes), "mask_values": mv,
                     "per_class": self.per_class}
            if self._spacings:  # unchanged fingerprints without a spacing CSV
                extra["spacing"] = [self._spacings[c] for c in self._ids]
            if self._groups is not None:  # unchanged fingerprints without groups
                extra["groups"] = self._groups
            self._fp = files_fingerprint(files, extra)
        return self._fp

    def load(self, i: int) -> Item:
        cid = self._ids[i]
        img_path = self._images[cid]
        try:
            image = read_image(img_path)
        except MedprobeError as e:
            raise DataError(str(e), source=cid) from None
        hw = image.shape[:2]
        issues: list[str] = []
        files = self._mask_files(cid)
        if self.per_class:
            mask = np.zeros(hw, dtype=np.uint8 if self.task.n_classes <= 256 else np.int32)
            hit = np.zeros(hw, dtype=np.uint8)
            key = cid + self.mask_suffix
            for c, folder in enumerate(self._class_dirs.values(), start=1):
                if key not in folder:
                    continue
                m = self._read_mask(cid, folder[key], hw)
                on = (m[..., 0] if m.ndim == 3 else m) > 0
                hit += on
                mask[on] = c
            overlap = int((hit > 1).sum())
            if overlap:
                issues.append(f"{overlap} pixels in several class masks (later class kept)")
        else:
            raw = self._read_mask(cid, files[0], hw)
            mask = map_mask_values(raw, self.mask_values, self.task.n_classes, cid, files[0].name,
                                   colour=raw.ndim == 3)
        meta: dict[str, Any] = {"mask_files": [str(f) for f in files], "issues": issues}
        if self.spacing_source:
            meta["spacing_source"] = self.spacing_source
        return Item(id=cid, image=image, spatial_dims=2, spacing=self._spacings.get(cid, self.spacing), mask=mask,
                    patient=cid if self._groups is None else self._groups[i], source=str(img_path), meta=meta)

    def _read_mask(self, cid: str, path: Path, hw: tuple[int, ...]) -> np.ndarray:
        try:
            m = read_image(path)
        except MedprobeError as e:
            raise DataError(str(e), source=cid) from None
        if m.shape[:2] != hw:
            raise DataError(f"image shape {tuple(hw)} != mask shape {tuple(m.shape[:2])} ({path.name})",
                            source=cid)
        return m


@register_dataset("seg2d")
def _seg2d(arg: str, **options: Any) -> Dataset:
    """``seg2d:/path`` with ``images=``, ``masks=``, ``classes=``, ``mask_values=``, ``mask_suffix=`` ..."""
    if not arg:
        raise ConfigError("seg2d: give the dataset folder, e.g. 'seg2d:/data/set'")
    return Seg2DDataset(arg, **options)


# ------------------------------------------------------------------------------ section splits (EM stacks)
SECTION_SPLITS = ("train", "val", "test")
SectionRanges = dict[str, list[tuple[str | None, int | None, int | None]]]


def parse_sections(sections: Any, where: str | None = None) -> SectionRanges:
    """``{split: [start, stop]}`` or ``{split: {volume: [start, stop], ...}}`` -> ``{split: [(volume or None
    = every volume, start, stop)]}``; ``ConfigError`` (one line) on a malformed value."""
    if not isinstance(sections, dict) or not sections:
        raise ConfigError(f"sections must map train/val/test to [start, stop] section ranges, got {sections!r}",
                          where)
    out: SectionRanges = {}
    for split, spec in sections.items():
        if split not in SECTION_SPLITS:
            raise ConfigError(f"sections: unknown split {split!r} (use {', '.join(SECTION_SPLITS)})", where)
        entries = [(str(k), v) for k, v in spec.items()] if isinstance(spec, dict) else [(None, spec)]
        for vol, rng in entries:
            if isinstance(rng, str) and ":" in rng:
                rng = rng.split(":")
            ok = isinstance(rng, (list, tuple)) and len(rng) == 2
            try:
                bounds = [None if v in (None, "", "null") else int(v) for v in rng] if ok else []
            except (TypeError, ValueError):
                ok = False
            if not ok:
                what = f"sections.{split}" + (f".{vol}" if vol else "")
                raise ConfigError(f"{what} must be [start, stop] (half-open section indices), got {rng!r}", where)
            out.setdefault(split, []).append((vol, bounds[0], bounds[1]))
    return out


def resolve_sections(parsed: SectionRanges, n_sections: dict[str, int], where: str | None = None
                     ) -> list[tuple[str, str, int, int]]:
    """Concrete ``(split, volume, start, stop)`` ranges (volumes in ``n_sections`` order, splits train, val,
    test); a range outside its volume, an unknown volume, or a section in two splits is one ``ConfigError``."""
    out: list[tuple[str, str, int, int]] = []
    used: dict[tuple[str, int], str] = {}
    for split in SECTION_SPLITS:
        for vol, a, b in parsed.get(split, []):
            if vol is not None and vol not in n_sections:
                raise ConfigError(f"sections.{split}: unknown volume {vol!r} (volumes: {', '.join(n_sections)})",
                                  where)
            for v in [vol] if vol is not None else list(n_sections):
                n = n_sections[v]
                lo = 0 if a is None else (a + n if a < 0 else a)
                hi = n if b is None else (b + n if b < 0 else b)
                if not 0 <= lo < hi <= n:
                    raise ConfigError(f"sections.{split}: range [{a}, {b}] is outside volume {v!r} with {n} "
                                      f"sections (or empty)", where)
                for z in range(lo, hi):
                    if (v, z) in used:
                        raise ConfigError(f"sections: section {z} of {v!r} is in both {used[(v, z)]} and {split}",
                                          where)
                    used[(v, z)] = split
                out.append((split, v, lo, hi))
    return out


def instances_from_membrane(membrane: np.ndarray) -> np.ndarray:
    """Instance ids (int64; 0 = membrane) = 4-connected components of the non-membrane pixels of a section."""
    from scipy import ndimage

    lab, _ = ndimage.label(np.asarray(membrane) == 0)
    return lab.astype(np.int64)


class SectionStack2D(Dataset):
    """A stack stored as one 2D file per section (ISBI 2012): optional instance targets and section splits."""

    spatial_dims = 2

    def __init__(self, base: Seg2DDataset, *, target: str = "labels", sections: Any = None,
                 section_nm: float | None = None) -> None:
        if target not in ("labels", "instances"):
            raise ConfigError(f"target must be 'labels' or 'instances', got {target!r}", base.name)
        if section_nm is not None and (isinstance(section_nm, bool) or not isinstance(section_nm, (int, float))
                                       or not section_nm > 0):
            raise ConfigError(f"section_nm must be a positive number (nm), got {section_nm!r}", base.name)
        self.base, self.target = base, target
        self.section_nm = None if section_nm is None else float(section_nm)
        self.name, self.modality, self.spacing = base.name, base.modality, base.spacing
        self.task = TaskInfo("instances") if target == "instances" else base.task
        n = len(base)
        self.sections = parse_sections(sections, base.name) if sections is not None else None
        if self.sections is None:
            self._rows = [("", j) for j in range(n)]
        else:
            self._rows = [(split, z) for split, _, a, b in resolve_sections(self.sections, {base.name: n}, base.name)
                          for z in range(a, b)]
        self._fp: str | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def ids(self) -> list[str]:
        ids = self.base.ids()
        return [ids[j] for _, j in self._rows]

    def labels(self) -> list[Any]:
        return [None] * len(self._rows)

    def splits(self) -> dict[str, list[int]] | None:
        if self.sections is None:
            return None
        return {k: [i for i, (s, _) in enumerate(self._rows) if s == k] for k in SECTION_SPLITS}

    def fingerprint(self) -> str:
        if self._fp is None:
            from medprobe.utils import hash_obj

            self._fp = hash_obj({"base": self.base.fingerprint(), "target": self.target, "rows": self._rows}, n=20)
        return self._fp

    def load(self, i: int) -> Item:
        split, j = self._rows[i]
        item = self.base.load(j)
        meta = {**item.meta, "section": j, "split": split or None, "instance": self.target == "instances"}
        if self.section_nm is not None:
            meta["section_nm"] = self.section_nm
        mask = item.mask
        if self.target == "instances" and mask is not None:
            mask = instances_from_membrane(mask)
        from dataclasses import replace

        return replace(item, mask=mask, meta=meta)


ISBI2012_MASK_VALUES = {0: 1, 255: 0}  # label 0 = membrane (class 1), 255 = cell interior (background)
ISBI2012_SECTION_NM = 50.0  # serial-section thickness: the challenge's voxels are 4 x 4 x 50 nm


@register_dataset("isbi2012")
def _isbi2012(arg: str, **options: Any) -> Dataset:
    """``isbi2012:/path/isbi2012-em`` (holding ``train/image`` + ``train/label``, or that ``train``)."""
    if not arg:
        raise ConfigError("isbi2012: give the folder, e.g. 'isbi2012:/data/isbi2012-em'")
    root = Path(arg).expanduser()
    split = options.pop("split", "train")
    if (root / split / "image").is_dir():
        root = root / split
    options.setdefault("images", "image")
    options.setdefault("masks", "label")
    options.setdefault("classes", ["background", "membrane"])
    options.setdefault("mask_values", ISBI2012_MASK_VALUES)
    options.setdefault("modality", "em")
    options.setdefault("name", "isbi2012")
    options.setdefault("spacing", (4e-6, 4e-6))
    target = options.pop("target", "labels")
    sections = options.pop("sections", None)
    section_nm = options.pop("section_nm", ISBI2012_SECTION_NM)
    base = Seg2DDataset(root, **options)
    if target == "labels" and sections is None:
        return base
    return SectionStack2D(base, target=target, sections=sections, section_nm=section_nm)


__all__ = ["ISBI2012_MASK_VALUES", "SECTION_SPLITS", "SectionStack2D", "Seg2DDataset", "instances_from_membrane",
           "map_mask_values", "natural_key", "parse_mask_values", "parse_sections", "resolve_sections"]
