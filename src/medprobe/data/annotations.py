"""Slide lesion annotations (ASAP XML, as CAMELYON16/17 ship them) and the tile labels they imply.

An ASAP file holds ``<Annotation PartOfGroup=...><Coordinates><Coordinate Order X Y/>...`` polygons in level-0
pixels. In CAMELYON16 the groups ``_0`` and ``_1`` (CAMELYON17: ``metastases``) outline tumour, and ``_2``
(CAMELYON17: ``non-metastases``) marks normal tissue cut out of a tumour outline. A tile is a lesion tile when its
centre lies inside a tumour polygon and outside every exclusion polygon.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medprobe.errors import DataError

EXCLUDE_GROUPS = ("_2", "non-metastases", "exclusion")


@dataclass
class LesionAnnotation:
    """Tumour and exclusion polygons of one slide, each ``(K, 2)`` level-0 ``(x, y)`` float64."""

    tumour: list[np.ndarray] = field(default_factory=list)
    exclude: list[np.ndarray] = field(default_factory=list)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Bool per ``(x, y)`` point: inside a tumour polygon and outside every exclusion polygon."""
        from matplotlib.path import Path as MplPath

        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        inside = np.zeros(len(pts), dtype=bool)
        for poly in self.tumour:
            inside |= MplPath(poly).contains_points(pts)
        for poly in self.exclude:
            inside &= ~MplPath(poly).contains_points(pts)
        return inside

    def tile_labels(self, coords: np.ndarray, size0: float) -> np.ndarray:
        """1 for tiles (level-0 top-left ``coords``, side ``size0``) whose centre is a lesion point, else 0."""
        centres = np.asarray(coords, dtype=np.float64).reshape(-1, 2) + float(size0) / 2
        return self.contains(centres).astype(np.int64)


def read_asap_xml(path: str | Path, exclude_groups: Sequence[str] = EXCLUDE_GROUPS) -> LesionAnnotation:
    """The polygons of an ASAP annotation file; a malformed file is one DataError naming it."""
    p = Path(path)
    try:
        root = ET.parse(p).getroot()
    except (ET.ParseError, OSError) as e:
        raise DataError(f"not a readable ASAP annotation file ({type(e).__name__}: {e})", source=p) from None
    out = LesionAnnotation()
    excl = {g.lower() for g in exclude_groups}
    for ann in root.iter("Annotation"):
        pts: list[tuple[int, float, float]] = []
        for c in ann.iter("Coordinate"):
            try:
                pts.append((int(c.get("Order", len(pts))), float(c.get("X", "")), float(c.get("Y", ""))))
            except ValueError:
                raise DataError(f"annotation {ann.get('Name', '?')!r} has a coordinate without numeric X / Y",
                                source=p) from None
        if len(pts) < 3:
            continue  # a dot or a line outlines no area
        poly = np.asarray([(x, y) for _, x, y in sorted(pts)], dtype=np.float64)
        group = str(ann.get("PartOfGroup", "")).lower()
        (out.exclude if group in excl else out.tumour).append(poly)
    return out


__all__ = ["EXCLUDE_GROUPS", "LesionAnnotation", "read_asap_xml"]
