"""Figures for reports. Every function returns PNG bytes.

Rendering goes through matplotlib's object API with the Agg canvas (no pyplot, no global backend
switch), so it is headless and safe to call from any thread. Colours follow the Okabe-Ito palette
(colour-blind safe) and also differ in marker shape; error bars come from ``low``/``high`` and are left
out where those are missing or NaN.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["scaling_plot", "layer_curve", "label_efficiency_plot", "pareto_plot", "critical_difference_plot",
           "PALETTE"]

PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
FONT = 8
LABELS = {"params_m": "parameters (M)", "resolution": "input resolution (px)", "layer": "block (0-based)",
          "budget": "labelled training cases", "gflops": "GFLOPs per image", "score": "score"}


def _fig(width: float = 5.0, height: float = 3.4) -> Figure:
    fig = Figure(figsize=(width, height), dpi=150)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _style(ax: Any, title: str | None, xlabel: str, ylabel: str) -> None:
    ax.set_title(title or "", fontsize=FONT + 1)
    ax.set_xlabel(xlabel, fontsize=FONT)
    ax.set_ylabel(ylabel, fontsize=FONT)
    ax.tick_params(labelsize=FONT - 1)
    ax.grid(True, alpha=0.3, linewidth=0.5)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _empty(ax: Any) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=FONT, transform=ax.transAxes)


def _lines(rows: Sequence[Mapping[str, Any]], x: str, y: str, group: str | Sequence[str], logx: bool,
           title: str | None, xlabel: str | None, ylabel: str | None) -> bytes:
    groups = (group,) if isinstance(group, str) else tuple(group)
    series: dict[str, list[tuple[float, float, float, float]]] = {}
    for r in rows:
        xv, yv = _f(r.get(x)), _f(r.get(y))
        if not (math.isfinite(xv) and math.isfinite(yv)):
            continue
        name = " / ".join(str(r[g]) for g in groups if r.get(g) is not None) or y
        series.setdefault(name, []).append((xv, yv, _f(r.get("low")), _f(r.get("high"))))
    fig = _fig()
    ax = fig.add_subplot(111)
    for i, (name, pts) in enumerate(sorted(series.items())):
        pts.sort()
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        lower = [p[1] - p[2] if math.isfinite(p[2]) else 0.0 for p in pts]
        upper = [p[3] - p[1] if math.isfinite(p[3]) else 0.0 for p in pts]
        colour = PALETTE[i % len(PALETTE)]
        ax.errorbar(xs, ys, yerr=[[max(v, 0.0) for v in lower], [max(v, 0.0) for v in upper]], color=colour,
                    marker=MARKERS[i % len(MARKERS)], markersize=4, linewidth=1.2, capsize=2.5,
                    elinewidth=0.8, label=name)
    if not series:
        _empty(ax)
    elif logx and all(v > 0 for pts in series.values() for v, *_ in pts):
        ax.set_xscale("log")
        ticks = sorted({p[0] for pts in series.values() for p in pts})
        if len(ticks) <= 8:
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks])
            ax.minorticks_off()
    _style(ax, title, xlabel or LABELS.get(x, x), ylabel or LABELS.get(y, y))
    if series:
        ax.legend(fontsize=FONT - 1, frameon=False, loc="best")
    return _png(fig)


def scaling_plot(rows: Sequence[Mapping[str, Any]], x: str = "params_m", y: str = "score",
                 group: str | Sequence[str] = "task", logx: bool = True, title: str | None = None,
                 xlabel: str | None = None, ylabel: str | None = None) -> bytes:
    """Metric against model size or resolution, one line per ``group`` value (e.g. task or encoder), with
    CI error bars from ``low``/``high``. Log x-axis when ``logx`` and every x is positive."""
    title = title or f"{LABELS.get(y, y)} vs {LABELS.get(x, x)}"
    return _lines(rows, x, y, group, logx, title, xlabel, ylabel)


def layer_curve(rows: Sequence[Mapping[str, Any]], group: str | Sequence[str] = ("task", "encoder"),
                y: str = "score",
                title: str | None = None, ylabel: str | None = None) -> bytes:
    """Probe score per tapped block (``layer``), one line per (task, encoder) present in the rows."""
    return _lines(rows, "layer", y, group, False, title or "score by layer", None, ylabel)


def label_efficiency_plot(rows: Sequence[Mapping[str, Any]], group: str | Sequence[str] = ("task", "encoder"),
                          y: str = "score", logx: bool = True, title: str | None = None,
                          ylabel: str | None = None) -> bytes:
    """Probe score against the number of labelled training cases (``budget``), one line per
    (task, encoder) present in the rows."""
    return _lines(rows, "budget", y, group, logx, title or "label efficiency", None, ylabel)


def pareto_plot(points: Sequence[Mapping[str, Any]], front: Sequence[Mapping[str, Any]],
                cost_key: str = "gflops", score_key: str = "score", label_key: str = "encoder",
                higher_is_better: bool = True, logx: bool = True, title: str | None = None) -> bytes:
    """Score against cost for every point (with CI bars); the Pareto ``front`` drawn as a step line with
    its points labelled by ``label_key``."""
    fig = _fig()
    ax = fig.add_subplot(111)
    pts = [(c, s, _f(p.get("low")), _f(p.get("high"))) for p in points
           if math.isfinite(c := _f(p.get(cost_key))) and math.isfinite(s := _f(p.get(score_key)))]
    fpts = sorted((c, s, str(p.get(label_key, ""))) for p in front
                  if math.isfinite(c := _f(p.get(cost_key))) and math.isfinite(s := _f(p.get(score_key))))
    if pts:
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                    yerr=[[max(p[1] - p[2], 0.0) if math.isfinite(p[2]) else 0.0 for p in pts],
                          [max(p[3] - p[1], 0.0) if math.isfinite(p[3]) else 0.0 for p in pts]],
                    fmt="o", color="#999999", markersize=3.5, elinewidth=0.7, capsize=2, label="all runs")
    if fpts:
        ax.step([p[0] for p in fpts], [p[1] for p in fpts], where="post", color=PALETTE[0], linewidth=1.3,
                label="Pareto front")
        ax.plot([p[0] for p in fpts], [p[1] for p in fpts], "o", color=PALETTE[0], markersize=4.5)
        for c, s, lab in fpts:
            if lab:
                ax.annotate(lab, (c, s), textcoords="offset points",
                            xytext=(3, 3 if higher_is_better else -8), fontsize=FONT - 2)
    if not pts and not fpts:
        _empty(ax)
    elif logx and all(p[0] > 0 for p in pts) and all(p[0] > 0 for p in fpts):
        ax.set_xscale("log")
    better = "higher" if higher_is_better else "lower"
    _style(ax, title or "score vs compute", LABELS.get(cost_key, cost_key),
           f"{LABELS.get(score_key, score_key)} ({better} is better)")
    if pts or fpts:
        ax.legend(fontsize=FONT - 1, frameon=False, loc="best")
    return _png(fig)


def _cliques(ranks: Sequence[float], cd: float) -> list[tuple[int, int]]:
    """Maximal runs ``[i, j]`` (indices into sorted ranks, j > i) whose rank span is at most ``cd``."""
    out: list[tuple[int, int]] = []
    for i in range(len(ranks)):
        j = i
        while j + 1 < len(ranks) and ranks[j + 1] - ranks[i] <= cd:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in out):
            out.append((i, j))
    return out


def critical_difference_plot(mean_ranks: Mapping[str, float], cd: float, title: str | None = None,
                             alpha: float = 0.05) -> bytes:
    """Demšar-style critical-difference diagram.

    A rank axis (1 = best, on the left) on top; the better half of the methods is labelled on the left,
    the rest on the right, each joined to its mean rank by an elbow line. Thick bars join groups of
    methods whose mean ranks differ by at most ``cd`` (not significantly different). The CD interval is
    drawn above the axis.
    """
    items = sorted(((float(r), str(m)) for m, r in mean_ranks.items() if math.isfinite(_f(r))))
    k = len(items)
    ranks = [r for r, _ in items]
    cliques = _cliques(ranks, cd) if math.isfinite(cd) else []
    n_side = max(math.ceil(k / 2), 1)
    bar_y0 = 0.12
    label_y0 = bar_y0 + 0.07 * len(cliques) + 0.2
    bottom = label_y0 + 0.25 * (n_side - 1) + 0.15
    top_margin = -0.5
    fig = _fig(6.0, 0.75 * (bottom - top_margin) + 0.1)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    lo_r = 1.0
    hi_r = float(max(k, 2, math.ceil(max((r for r, _ in items), default=1.0))))
    # data coordinates: x in [0, 1] across the axis (with margins for labels), y downward
    left, right = 0.22, 0.78

    def xr(rank: float) -> float:
        return left + (rank - lo_r) / (hi_r - lo_r) * (right - left)

    top = 0.0
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom, top_margin)
    ax.plot([xr(lo_r), xr(hi_r)], [top, top], color="black", linewidth=0.9)
    for t in range(int(lo_r), int(hi_r) + 1):
        ax.plot([xr(t), xr(t)], [top, top - 0.06], color="black", linewidth=0.8)
        ax.text(xr(t), top - 0.09, str(t), ha="center", va="bottom", fontsize=FONT - 1)
    for t in range(int(lo_r), int(hi_r)):
        ax.plot([xr(t + 0.5)] * 2, [top, top - 0.03], color="black", linewidth=0.6)
    if math.isfinite(cd) and cd > 0:
        x0 = xr(lo_r)
        x1 = xr(min(lo_r + cd, hi_r))
        ax.plot([x0, x1], [-0.32, -0.32], color="black", linewidth=1.2)
        for xv in (x0, x1):
            ax.plot([xv, xv], [-0.36, -0.28], color="black", linewidth=0.8)
        ax.text((x0 + x1) / 2, -0.35, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=FONT - 1)
    if not items:
        ax.text(0.5, 0.5, "no methods", ha="center", va="center", fontsize=FONT)
    # clique bars just under the axis
    for n, (i, j) in enumerate(cliques):
        yb = bar_y0 + 0.07 * n
        ax.plot([xr(ranks[i]) - 0.005, xr(ranks[j]) + 0.005], [yb, yb], color=PALETTE[3], linewidth=2.5,
                solid_capstyle="round")
    for idx, (r, m) in enumerate(items):
        on_left = idx < n_side
        row = idx if on_left else k - 1 - idx
        ly = label_y0 + 0.25 * row
        lx = left - 0.03 if on_left else right + 0.03
        ax.plot([xr(r), xr(r), lx], [top, ly, ly], color="black", linewidth=0.7)
        ax.text(lx - 0.01 if on_left else lx + 0.01, ly, f"{m} ({r:.2f})", ha="right" if on_left else "left",
                va="center", fontsize=FONT - 1)
    if title:
        ax.set_title(title, fontsize=FONT + 1)
    else:
        ax.set_title(f"mean rank (1 = best); bars join methods not significantly different "
                     f"(Nemenyi, alpha = {alpha:g})", fontsize=FONT - 1)
    return _png(fig)
