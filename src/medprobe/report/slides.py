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

from medprobe.report.analyze import SLIDE_PANEL, Figure, Table, ci_text
from medprobe.report.html import Section

_COLS = ("auc", "auc_seeds", "acc", "balanced_acc", "f1_macro", "tile_auc")
PANEL = SLIDE_PANEL  # the report panel a task family declares (``report_panels``) for rows these sections show


def is_slide_point(p: Mapping[str, Any]) -> bool:
    """True for a result row whose family declared this panel (the slides family: slide-level MIL heads)."""
    return PANEL in (p.get("panels") or ())




def slide_table(points: Sequence[Mapping[str, Any]]) -> Table:
    """One row per slide run: encoder, head, seeds, test slides, metrics (mean over seeds [95% CI over slides];
    ``auc_seeds``: [95% t-interval over seeds])."""
    t = Table("slides", "Slide-level results (mean over seeds; 95% CI over test slides, auc_seeds over seeds)",
              ["encoder", "head", "seeds", *_COLS, "run"])
    for p in sorted(points, key=lambda q: (q["method"], q["head"])):
        m = p.get("metrics") or {}
        seeds = m.get("n_seeds", "?")
        t.add([p["method"], p["head"], str(seeds), *(ci_text(m.get(c)) for c in _COLS), p["run_id"][:10]],
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


def tissue_kept(r: Mapping[str, Any]) -> float | None:
    """The share of a slide's non-background thumbnail area its tissue mask kept (None: not recorded)."""
    v = ((r.get("mask") or {}).get("stats") or {}).get("kept_fraction")
    return float(v) if isinstance(v, (int, float)) else None


def tiles_table(info: Mapping[str, Any]) -> Table:
    """Per test slide: tiles, label, predicted score (mean over seeds), the tissue kept (share of the thumbnail's
    non-background area inside the tissue mask; flagged under ``KEPT_WARNING``)."""
    from medprobe.preprocess.tissue import KEPT_WARNING

    t = Table("slide-tiles", "Tiles per test slide", ["slide", "label", "score", "tiles", "tissue kept",
                                                      "tile level", "µm/px"],
              note=f"tissue kept: share of the thumbnail's non-background area inside the tissue mask ('low' under "
                   f"{KEPT_WARNING:.0%}: tiles miss tissue the slide shows)")
    for r in info.get("items", []):
        s = r.get("score")
        score = s[-1] if isinstance(s, list) and s and not isinstance(s[0], list) else s
        plan = r.get("plan") or {}
        kept = tissue_kept(r)
        shown = "n/a" if kept is None else f"{kept:.1%}" + (" (low)" if kept < KEPT_WARNING else "")
        t.add([str(r["id"]), str(r.get("label")), ci_text(score) if isinstance(score, (int, float)) else str(score),
               str(r.get("n_tiles")), shown, str(plan.get("level", "?")), str(plan.get("target_mpp", "?"))],
              [r["id"], r.get("label"), score, r.get("n_tiles"), kept, plan.get("level"), plan.get("target_mpp")])
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


MIN_FIGURE_PX = 600  # a slide figure is at least this wide (smaller views are enlarged)


def _outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a boolean mask (inside pixels with a 4-neighbour outside or on the border)."""
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return np.asarray(mask, dtype=bool) & ~inner


def _fig_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def heatmap_figure(view: np.ndarray, coords: np.ndarray, scores: np.ndarray, size0: float,
                   scale: tuple[float, float], mask: np.ndarray | None, title: str) -> bytes:
    """PNG: the slide view with each tile tinted by its attention rank, the tissue mask's outline over it, and a
    colour bar; the view is drawn pixel for pixel (enlarged by a whole factor to at least ``MIN_FIGURE_PX``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure
    from PIL import Image

    k = max(1, -(-MIN_FIGURE_PX // max(view.shape[1], 1)))  # ceil
    if k > 1:
        view = np.repeat(np.repeat(view, k, axis=0), k, axis=1)
        scale = (scale[0] * k, scale[1] * k)
    hm = heatmap(view, coords, scores, size0, scale)
    h, w = hm.shape[:2]
    if mask is not None and mask.size:
        m = np.asarray(Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST))
        edge = _outline(m > 127)
        if max(h, w) >= 800:  # 2 px lines on a large view
            thick = edge.copy()
            thick[1:] |= edge[:-1]
            thick[:, 1:] |= edge[:, :-1]
            edge = thick
        hm[edge] = (0, 160, 60)
    bar, top = 110, 34  # px for the colour bar column and the title
    fig = MplFigure(figsize=((w + bar) / 100, (h + top) / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, w / (w + bar), h / (h + top)))
    ax.imshow(hm, interpolation="nearest")
    ax.set_axis_off()
    fig.text(0.01, 1 - 6 / (h + top), title, va="top", ha="left", fontsize=11)
    cax = fig.add_axes((w / (w + bar) + 12 / (w + bar), 0.1 * h / (h + top), 16 / (w + bar), 0.8 * h / (h + top)))
    stops = _colormap(np.linspace(0, 1, 256)) / 255.0
    cax.imshow(stops[::-1, None, :], aspect="auto", extent=(0, 1, 0, 1))
    cax.set_xticks([])
    cax.yaxis.tick_right()
    cax.set_yticks([0, 0.5, 1], ["least", "median", "most"], fontsize=8)
    cax.set_title("attention\nrank", fontsize=8)
    fig.text(w / (w + bar) + 4 / (w + bar), 0.02, "green: tissue\noutline", fontsize=7, color=(0, 0.5, 0.2))
    return _fig_png(fig)


def top_tiles_figure(strip: np.ndarray, tile_px: int, attention: Sequence[float], title: str,
                     per_row: int = 4) -> bytes:
    """PNG: the most attended tiles at the tile scale (each drawn pixel for pixel), ``per_row`` to a row, each
    captioned with its rank and attention weight."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    n = strip.shape[1] // max(tile_px, 1)
    cols = min(per_row, max(n, 1))
    rows = max(1, -(-n // cols))
    gap, cap, top = 8, 22, 30
    w = cols * tile_px + (cols + 1) * gap
    h = rows * (tile_px + cap) + rows * gap + top
    fig = MplFigure(figsize=(w / 100, h / 100), dpi=100)
    FigureCanvasAgg(fig)
    fig.text(gap / w, 1 - 6 / h, title, va="top", ha="left", fontsize=11)
    for t in range(n):
        r, c = divmod(t, cols)
        x0 = gap + c * (tile_px + gap)
        y0 = top + r * (tile_px + cap + gap) + cap  # from the top
        ax = fig.add_axes((x0 / w, 1 - (y0 + tile_px) / h, tile_px / w, tile_px / h))
        ax.imshow(strip[:, t * tile_px:(t + 1) * tile_px], interpolation="nearest")
        ax.set_axis_off()
        fig.text(x0 / w, 1 - (y0 - 4) / h, f"#{t + 1}  attention {attention[t]:.3g}", fontsize=8,
                 va="bottom", ha="left")
    return _fig_png(fig)


def slide_figures(d: Path, info: Mapping[str, Any], limit: int = 4) -> list[Figure]:
    """Per test slide (up to ``limit``, positives first, slides with a view first): the attention heat-map over
    the slide with its tissue outline, and its most attended tiles at full resolution."""
    from PIL import Image

    try:
        att = np.load(d / "attention.npz")
    except (OSError, ValueError):
        return []
    rows = list(info.get("items", []))
    # positive slides first, those given a view (larger image, top tiles) first among them; order kept within
    rows.sort(key=lambda r: (-float(np.max(r.get("label") or 0)), "view" not in r))
    figs: list[Figure] = []
    for r in rows:
        if len(figs) >= 2 * limit:
            break
        j = r["index"]
        mask_meta, plan = r.get("mask") or {}, r.get("plan") or {}
        mshape, ds = mask_meta.get("shape"), mask_meta.get("downsample")
        view_f, thumb_f = d / str(r.get("view", "")), d / str(r.get("thumbnail", ""))
        if f"attention_{j}" not in att.files or not mshape or not ds:
            continue
        w0, h0 = mshape[1] * float(ds[0]), mshape[0] * float(ds[1])  # level-0 size the mask covers
        if r.get("view") and view_f.is_file():
            view = np.asarray(Image.open(view_f).convert("RGB"))
        elif thumb_f.is_file():
            view = np.asarray(Image.open(thumb_f).convert("RGB"))
        else:
            continue
        scale = (view.shape[1] / w0, view.shape[0] / h0)  # view px per level-0 px
        mask_f = d / str(r.get("tissue_png", ""))
        mask = np.asarray(Image.open(mask_f).convert("L")) > 127 if r.get("tissue_png") and mask_f.is_file() else None
        kept = tissue_kept(r)
        label = f"{r['id']} (label {r.get('label')}, {r.get('n_tiles')} tiles"
        label += f", tissue kept {kept:.0%})" if kept is not None else ")"
        png = heatmap_figure(view, att[f"coords_{j}"], att[f"attention_{j}"], float(plan.get("size0", 0)), scale,
                             mask, label)
        figs.append(Figure(f"slide-{info.get('head', '')}-{r['id']}", f"{r['id']} (label {r.get('label')})", png,
                           "attention rank over the slide (red: most attended), tissue-mask outline in green; click "
                           "to enlarge"))
        top: dict[str, Any] = r.get("top_tiles") or {}
        top_f = d / str(top.get("file", ""))
        if top.get("file") and top_f.is_file():
            strip = np.asarray(Image.open(top_f).convert("RGB"))
            tpx = int(top["tile_px"]) if top.get("tile_px") else int(strip.shape[0])
            png = top_tiles_figure(strip, tpx, top.get("attention", []),
                                   f"{r['id']}: the {strip.shape[1] // max(tpx, 1)} most attended tiles "
                                   f"({tpx} px at {plan.get('target_mpp', '?')} µm/px, as encoded)")
            figs.append(Figure(f"slide-top-{info.get('head', '')}-{r['id']}", f"{r['id']}: most attended tiles",
                               png, "full resolution; #1 is the most attended tile"))
    return figs


def slide_sections(db_root: Path, points: Sequence[Mapping[str, Any]], limit: int = 4) -> list[Section]:
    """The slide panels of one task's points (empty when no point comes from the slides family)."""
    pts = [p for p in points if is_slide_point(p)]
    if not pts:
        return []
    task = str(pts[0]["task"])
    slug = "".join(ch if ch.isalnum() else "-" for ch in task.lower()).strip("-") or "task"
    sec = Section("Slides: MIL heads, attention and tissue", f"slides-{slug}", tables=[slide_table(pts)], wide=True)
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


__all__ = ["heatmap", "heatmap_figure", "is_slide_point", "slide_figures", "slide_sections", "slide_table",
           "tiles_table", "tissue_kept", "top_tiles_figure"]
