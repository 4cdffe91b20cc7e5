"""Image classification from a folder tree: one sub-folder per class.

``create_dataset("folder:/data/tiles")`` with ``/data/tiles/<class>/**/<image>``; classes are the sorted
sub-folder names (label = index). If the top level holds ``train`` / ``val`` / ``test`` folders, each with
class sub-folders, they give the official split.

Class subsets and label maps: ``classes=[...]`` fixes the classes and their order (label = index); class
folders not listed stop with an error unless ``unlisted="drop"`` (then they are left out and recorded in the
dataset's ``meta['dropped_classes']``; e.g. Kvasir-Capsule's 11 of 14 classes). ``label_map={folder: class}``
renames (or merges) folders first; a folder mapped to ``null`` is dropped.

Groups: ``group_pattern`` (a regex; its ``group`` named group, else its first group) takes the video /
sequence / patient id from each file's name, so that a generated split never puts frames of one video in two
splits (Kvasir-Capsule: ``"^([0-9a-f]+)_"``). Without it every image is its own group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medprobe.data import register_dataset
from medprobe.data.base import Modality, TaskInfo
from medprobe.data.csv_manifest import ManifestDataset, Record
from medprobe.data.io import IMAGE_EXTENSIONS, suffix_of
from medprobe.errors import ConfigError, DataError

_SPLIT_DIRS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}


def _subdirs(p: Path) -> list[Path]:
    return sorted((d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _images(d: Path, exts: Sequence[str]) -> list[Path]:
    return sorted(f for f in d.rglob("*")
                  if f.is_file() and not f.name.startswith(".") and suffix_of(f) in exts)


@register_dataset("folder")
def create_image_folder(arg: str, root: str | Path | None = None, extensions: Sequence[str] | None = None,
                        classes: Sequence[str] | None = None, modality: Modality = "generic",
                        name: str | None = None, unlisted: str = "error",
                        label_map: Mapping[str, Any] | None = None,
                        group_pattern: str | None = None) -> ManifestDataset:
    """``folder:<path>`` (or ``root=``): sorted class sub-folders, image files by extension (options: module
    docstring)."""
    from medprobe.data.splits import compile_group_pattern, group_from_name

    top = Path(arg or root or "")
    if not str(top):
        raise ConfigError("give the folder: folder:/path/to/classes", "folder:")
    if not top.is_dir():
        raise DataError("folder not found", source=top)
    exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}"
                 for e in (extensions or IMAGE_EXTENSIONS))
    dirs = _subdirs(top)
    split_dirs = [d for d in dirs if d.name.lower() in _SPLIT_DIRS]
    groups: list[tuple[str | None, Path]] = [(None, top)]
    if split_dirs and len(split_dirs) == len(dirs):
        groups = [(_SPLIT_DIRS[d.name.lower()], d) for d in split_dirs]
    if unlisted not in ("error", "drop"):
        raise ConfigError(f"unlisted must be 'error' or 'drop', got {unlisted!r}", top)
    folders = sorted({c.name for _, g in groups for c in _subdirs(g)})
    lmap = {str(k): (None if v is None else str(v)) for k, v in (label_map or {}).items()}
    stray = [k for k in lmap if k not in folders]
    if stray:
        raise ConfigError(f"label_map names folder(s) {stray} that do not exist (folders: {folders})", top)
    mapped = {f: lmap.get(f, f) for f in folders}
    found = sorted({m for m in mapped.values() if m is not None})
    cls = list(classes) if classes is not None else found
    if not cls:
        raise DataError("no class sub-folders found", source=top)
    absent = [c for c in cls if c not in found]
    if absent:
        raise DataError(f"class(es) {absent} have no folder (folders: {folders})", source=top)
    unknown = [c for c in found if c not in cls]
    if unknown and unlisted != "drop":
        raise DataError(f"class folder(s) {unknown} not in the given classes {cls} (unlisted: drop leaves them "
                        "out)", source=top)
    dropped = sorted({f for f, m in mapped.items() if m is None or m not in cls})
    pattern = compile_group_pattern(group_pattern, top) if group_pattern else None
    records: list[Record] = []
    for split, g in groups:
        for c in _subdirs(g):
            target = mapped[c.name]
            if target is None or target not in cls:
                continue
            files = _images(c, exts)
            if not files:
                raise DataError(f"class folder has no image files ({', '.join(exts)})", source=c)
            for f in files:
                rel = f.relative_to(top).as_posix()
                patient = group_from_name(f.name, pattern, c) if pattern is not None else None
                records.append(Record(path=f, label=cls.index(target), id=rel.rsplit(".", 1)[0], split=split,
                                      where=rel, patient=patient))
    task = TaskInfo("binary" if len(cls) == 2 else "multiclass", tuple(cls))
    meta = {"dropped_classes": dropped, "label_map": lmap, "group_pattern": group_pattern}
    return ManifestDataset(records, task=task, source=top, name=name or top.name, modality=modality,
                           meta=meta)


__all__ = ["create_image_folder"]
