"""Image classification from a folder tree: one sub-folder per class.

``create_dataset("folder:/data/tiles")`` with ``/data/tiles/<class>/**/<image>``; classes are the sorted
sub-folder names (label = index). If the top level holds ``train`` / ``val`` / ``test`` folders, each with
class sub-folders, they give the official split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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
                        name: str | None = None) -> ManifestDataset:
    """``folder:<path>`` (or ``root=``): sorted class sub-folders, image files by extension."""
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
    found = sorted({c.name for _, g in groups for c in _subdirs(g)})
    cls = list(classes) if classes is not None else found
    if not cls:
        raise DataError("no class sub-folders found", source=top)
    unknown = [c for c in found if c not in cls]
    if unknown:
        raise DataError(f"class folder(s) {unknown} not in the given classes {cls}", source=top)
    records: list[Record] = []
    for split, g in groups:
        for c in _subdirs(g):
            files = _images(c, exts)
            if not files:
                raise DataError(f"class folder has no image files ({', '.join(exts)})", source=c)
            for f in files:
                rel = f.relative_to(top).as_posix()
                records.append(Record(path=f, label=cls.index(c.name), id=rel.rsplit(".", 1)[0], split=split,
                                      where=rel))
    task = TaskInfo("binary" if len(cls) == 2 else "multiclass", tuple(cls))
    return ManifestDataset(records, task=task, source=top, name=name or top.name, modality=modality)


__all__ = ["create_image_folder"]
