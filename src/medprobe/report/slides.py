"""Report panels of slide tasks (the ``slides`` family): the slide-level table with CIs (over test slides and over
seeds), tiles per slide, and per test slide its thumbnail, tissue mask and the MIL head's attention heat-map.

Reads what the family wrote beside the results database (``outputs/<run_id>/slides/``: ``slides.json``,
``attention.npz``, the tissue-mask PNGs and thumbnails); it never reopens a slide.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medprobe.report.analyze import SLIDE_PANEL, Figure, Table
from medprobe.report.html import Section

_COLS = ("auc", "auc_seeds", "acc", "balanced_acc", "f1_macro", "tile_auc")
PANEL = SLIDE_PANEL  # the report panel a task family declares (``report_panels``) for rows these sections show


def is_slide_point(p: Mapping[str, Any]) -> bool:
    """True for a result row whose family declared this panel (the slides family: slide-level MIL heads)."""
    return PANEL in (p.get("panels") or ())


def _ci(v: Any) -> str:
    if isinstance(v, (list, tuple)) and len(v) == 3:
        m, lo, hi = (float(x) if x is not None else math.nan for x in v)
        if not math.isfinite(m):
            return "n/a"
        return f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) and math.isfinite(hi) else f"{m:.3f}"
    if isinstance(v, (int, float)) and math.isfinite(float(v)):
        return f"{float(v):.3f}"
    return "n/a"


def slide_table(points: Sequence[Mapping[str, Any]]) -> Table:
    """One row per slide run: encoder, head, seeds, test slides, metrics (mean over seeds [95% CI over slides];
    ``auc_seeds``: [95% t-interval over seeds])."""
    t = Table("slides", "Slide-level results (mean over seeds; 95% CI over test slides, auc_seeds over seeds)",
              ["encoder", "head", "seeds", *_COLS, "run"])
    for p in sorted(points, key=lambda q: (q["method"], q["head"])):
        m = p.get("metrics") or {}
        seeds = m.get("n_seeds", "?")
        t.add([p["method"], p["head"], str(seeds), *(_ci(m.get(c)) for c in _COLS), p["run_id"][:10]],
              [p["method"], p["head"], seeds, *(m.get(c) for c in _COLS), p["run_id"]])
    return t


def _outputs(db_root: Path, p: Mapping[str, Any]) -> tuple[Path, dict[str, Any]] | None:
    d = Path(db_root) / "outputs" / str(p["run_id"]) / "slides"
    f = d / "slides.json"
    if not f.is_file():
        return None
    try:
        return d, json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def tiles_table(info: Mapping[str, Any]) -> Table:
    """Per test slide: tiles, label, predicted score (mean over seeds)."""
    t = Table("slide-tiles", "Tiles per test slide", ["slide", "label", "score", "tiles", "tile level", "µm/px"])
    for r in info.get("items", []):
        s = r.get("score")
        score = s[-1] if isinstance(s, list) and s and not isinstance(s[0], list) else s
        plan = r.get("plan") or {}
        t.add([str(r["id"]), str(r.get("label")), _ci(score) if isinstance(score, (int, float)) else str(score),
               str(r.get("n_tiles")), str(plan.get("level", "?")), str(plan.get("target_mpp", "?"))],
              [r["id"], r.get("label"), score, r.get("n_tiles"), plan.get("level"), plan.get("target_mpp")])
    return t


def _colormap(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 (blue - cyan - yellow - red)."""
    stops = np.array([[49, 54, 149], [69, 117, 180], [171, 217, 233], [254, 224, 144], [244, 109, 67],
                      [165, 0, 38]], dtype=np.float64)
    x = np.clip(v, 0, 1) * (len(stops) - 1)
    i = np.minimum(x.astype(int), len(stops) - 2)
    f = (x - i)[..., None]
    return (stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)


def heatmap(thumb: np.ndarray, coords: np.ndarray, scores: np.ndarray, size0: float, scale: tuple[float, float],
            alpha: float = 0.55) -> np.ndarray:
    """The thumbnail with each tile's footprint tinted by its attention rank (percentile within the slide).

    ``coords``: level-0 (x, y) top-left corners; ``size0``: tile side in level-0 px; ``scale``: thumbnail px per
    level-0 px (x, y)."""
    out = np.asarray(thumb, dtype=np.float64).copy()
    h, w = out.shape[:2]
    if len(scores) == 0:
        return out.astype(np.uint8)
    ranks = np.argsort(np.argsort(scores)) / max(len(scores) - 1, 1)
    colours = _colormap(ranks).astype(np.float64)
    for (x, y), c in zip(np.asarray(coords), colours):
        x0, y0 = int(x * scale[0]), int(y * scale[1])
        x1, y1 = max(int((x + size0) * scale[0]), x0 + 1), max(int((y + size0) * scale[1]), y0 + 1)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 > x0 and y1 > y0:
            out[y0:y1, x0:x1] = (1 - alpha) * out[y0:y1, x0:x1] + alpha * c
    return np.clip(out, 0, 255).astype(np.uint8)


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def slide_figures(d: Path, info: Mapping[str, Any], limit: int = 4) -> list[Figure]:
    """Heat-map (thumbnail + attention) and tissue mask of up to ``limit`` test slides, positives first."""
    from PIL import Image

    try:
        att = np.load(d / "attention.npz")
    except (OSError, ValueError):
        return []
    rows = list(info.get("items", []))
    rows.sort(key=lambda r: -float(np.max(r.get("label") or 0)))  # positive slides first, order kept within
    figs: list[Figure] = []
    for r in rows[:limit]:
        j = r["index"]
        thumb_f, mask_f = d / str(r.get("thumbnail", "")), d / str(r.get("tissue_png", ""))
        if not thumb_f.is_file() or f"attention_{j}" not in att.files:
            continue
        thumb = np.asarray(Image.open(thumb_f).convert("RGB"))
        mask = r.get("mask") or {}
        plan = r.get("plan") or {}
        mshape, ds = mask.get("shape"), mask.get("downsample")
        if not mshape or not ds:
            continue
        # thumbnail px per level-0 px: the JPEG may be smaller than the mask it was saved with
        sx = thumb.shape[1] / (mshape[1] * float(ds[0]))
        sy = thumb.shape[0] / (mshape[0] * float(ds[1]))
        hm = heatmap(thumb, att[f"coords_{j}"], att[f"attention_{j}"], float(plan.get("size0", 0)), (sx, sy))
        panels = [hm]
        if mask_f.is_file():
            m = np.asarray(Image.open(mask_f).convert("L").resize((thumb.shape[1], thumb.shape[0])))
            panels.append(np.repeat(m[..., None], 3, axis=2))
        gap = np.full((thumb.shape[0], 6, 3), 255, np.uint8)
        both = np.concatenate([panels[0], *(x for p in panels[1:] for x in (gap, p))], axis=1)
        figs.append(Figure(f"slide-{info.get('head', '')}-{r['id']}", f"{r['id']} (label {r.get('label')})",
                           _png(both), f"attention rank over the thumbnail (red: most attended) and the tissue mask; "
                                       f"{r.get('n_tiles')} tiles"))
    return figs


def slide_sections(db_root: Path, points: Sequence[Mapping[str, Any]], limit: int = 4) -> list[Section]:
    """The slide panels of one task's points (empty when no point comes from the slides family)."""
    pts = [p for p in points if is_slide_point(p)]
    if not pts:
        return []
    task = str(pts[0]["task"])
    slug = "".join(ch if ch.isalnum() else "-" for ch in task.lower()).strip("-") or "task"
    sec = Section("Slides: MIL heads, attention and tissue", f"slides-{slug}", tables=[slide_table(pts)])
    best = max(pts, key=lambda p: _point(p.get("metrics", {}).get("auc")))
    found = _outputs(db_root, best)
    if found is None:
        sec.notes.append("no slide outputs beside the database for the best run (heat-maps unavailable)")
        return [sec]
    d, info = found
    sec.tables.append(tiles_table(info))
    figs = slide_figures(d, info, limit)
    sec.figures.extend(figs)
    sec.notes.append(f"heat-maps of {best['method']} {best['head']} (run {str(best['run_id'])[:10]}), the best slide "
                     f"AUC of this task; attention averaged over seeds, shown as its rank within each slide")
    return [sec]


def _point(v: Any) -> float:
    if isinstance(v, (list, tuple)) and v:
        v = v[0]
    try:
        f = float(v)
    except (TypeError, ValueError):
        return -math.inf
    return f if math.isfinite(f) else -math.inf


__all__ = ["heatmap", "is_slide_point", "slide_figures", "slide_sections", "slide_table", "tiles_table"]
