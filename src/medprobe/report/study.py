"""The report's study section: one table per table of the study (Tables 2-16, :mod:`.reference`), each printed
cell medprobe can produce beside medprobe's cell **run under the paper's protocol** (same encoder, head recipe --
the linear probe's ``preset: study`` --, resolution, inputs, k-fold CV, as the cell's protocol states), with its CI
and the difference, and medprobe's best setting of that encoder on the task in a separate, labelled column.

A cell that has no such run says why: medprobe cannot produce it (a quoted or trained method, an undescribed
dataset: the reference file's ``why``), the task or the encoder was not run here (the caller may pass the reason
per task, e.g. data or weights not found), or it ran but not under the paper's protocol (what differs).
Choices the paper leaves open (layer, token, windowing, ...) are medprobe's: when several settings match the stated
protocol the best is shown and counted. CIs: the mean of the per-seed bootstrap bounds over test cases; k-fold
rows: the t-interval of the mean over folds. Deltas are medprobe minus the paper, in the paper's units.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medprobe.report.analyze import Table, fmt
from medprobe.report.folds import fold_of, t_interval
from medprobe.report.reference import (
    DINO_ROWS,
    STUDY,
    Cell,
    Protocol,
    best_comparison,
    match_task,
    paper_cells,
    paper_tables,
    protocols,
)

COLUMNS = ["method", "column", "paper", "medprobe (paper's protocol)", "CI", "Δ vs paper", "run (paper's protocol)",
           "medprobe best (any setting)", "best setting", "paper's best comparison", "why / notes"]
RAW_COLUMNS = ["table", "row", "variant", "column", "task", "metric", "direction", "paper", "paper_sd", "medprobe",
               "low", "high", "delta", "n", "setting", "untrained", "best", "best_low", "best_high", "best_setting",
               "comparison", "status", "notes"]
MEAN_OF_TASKS = "msd"  # the MSD 'Avg' cells: the mean of the row's per-task cells (all of them needed)


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _value(p: Mapping[str, Any], metric: str) -> tuple[float, float, float]:
    v = (p.get("metrics") or {}).get(metric)
    if v is None:
        return math.nan, math.nan, math.nan
    if isinstance(v, (list, tuple)):
        return _f(v[0]), _f(v[1]) if len(v) > 1 else math.nan, _f(v[2]) if len(v) > 2 else math.nan
    return _f(v), math.nan, math.nan


def _param(p: Mapping[str, Any], key: str) -> Any:
    """A head parameter of a row: the head's recorded parameters, else the task file's ``head_params``."""
    hp = p.get("head_params")
    if isinstance(hp, Mapping) and key in hp:
        return hp[key]
    cfg = (p.get("config") or {}).get("head_params") or {}
    own = cfg.get(p.get("head_name") or p["head"]) if isinstance(cfg, Mapping) else None
    return own.get(key) if isinstance(own, Mapping) else None


def _inputs(v: Any) -> str:
    return "+".join(x.strip().upper() for x in str(v or "").replace(",", "+").split("+") if x.strip())


def protocol_gaps(match: Mapping[str, Any], p: Mapping[str, Any], encoder: str | None) -> list[str]:
    """How a row differs from a cell's protocol (empty: run under the paper's protocol)."""
    gaps = []
    if not match.get("encoder_free") and encoder is not None and p["encoder"] != encoder:
        gaps.append(f"encoder {p['encoder']} (paper: {encoder})")
    head = p.get("head_name") or p["head"]
    if head != match["head"]:
        gaps.append(f"head {head} (paper: {match['head']})")
    for k, want in (match.get("head_params") or {}).items():
        got = _param(p, k)
        if got != want:
            gaps.append(f"{k} {'not recorded' if got is None else got} (paper: {want})")
    res = match.get("resolution")
    if res and p.get("resolution") not in res:
        gaps.append(f"resolution {p.get('resolution')} (paper: {'/'.join(str(r) for r in res)})")
    if match.get("inputs") and _inputs(p.get("inputs")) != _inputs(match["inputs"]):
        gaps.append(f"inputs {p.get('inputs') or 'all channels'} (paper: {match['inputs']})")
    if match.get("folds"):
        f = fold_of(p)
        if f is None or f[1] != int(match["folds"]):
            gaps.append(f"{'no k-fold split' if f is None else f'{f[1]}-fold'} (paper: {match['folds']}-fold CV)")
    return gaps


def _aggregate(runs: Sequence[Mapping[str, Any]], metric: str, folds: bool) -> tuple[float, float, float, str]:
    """(value, low, high, what n is) of one setting's runs: mean over seeds with the mean per-seed CI bounds, or for
    k-fold rows the mean over folds (each fold's seeds averaged first) with the t-interval over folds."""
    vals = [(_value(p, metric), fold_of(p)) for p in runs]
    vals = [(v, f) for v, f in vals if math.isfinite(v[0])]
    if not vals:
        return math.nan, math.nan, math.nan, ""
    if folds:
        per: dict[int, list[float]] = {}
        k = 0
        for v, f in vals:
            fi, k = (f if f is not None else (0, 1))
            per.setdefault(fi, []).append(v[0])
        m, lo, hi = t_interval([sum(x) / len(x) for x in per.values()])
        return m, lo, hi, f"{len(per)} of {k} folds"
    lows = [v[1] for v, _ in vals if math.isfinite(v[1])]
    highs = [v[2] for v, _ in vals if math.isfinite(v[2])]
    n = len(vals)
    return (sum(v[0] for v, _ in vals) / n, sum(lows) / len(lows) if lows else math.nan,
            sum(highs) / len(highs) if highs else math.nan, f"{n} seed{'s' if n > 1 else ''}")


SHOWN_PARAMS = ("preset", "features")  # head parameters a setting's label names (the study's recipes differ there)


def _settings(pts: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Rows grouped into settings: everything but the seed and the fold equal (head parameters and inputs
    included), scored by the mean of ``metric``; settings without the metric are left out."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in pts:
        hp = {k: v for k, v in (p.get("head_params") or {}).items() if k not in ("seed", "seeds")}
        key = json.dumps([p["encoder"], p["pretrained"], p.get("resolution"), str(p.get("layer")), p["head"],
                          p.get("budget_label"), _inputs(p.get("inputs")), hp], sort_keys=True, default=str)
        groups.setdefault(key, []).append(p)
    out = []
    for runs in groups.values():
        vals = [v for v in (_value(p, metric)[0] for p in runs) if math.isfinite(v)]
        if not vals:
            continue
        p0 = runs[0]
        extra = [f"{k} {_param(p0, k)}" for k in SHOWN_PARAMS if _param(p0, k) is not None]
        label = (f"{p0['method']} {p0.get('resolution')}px L{p0.get('layer')} {p0['head']}"
                 + (f" ({', '.join(extra)})" if extra else "")
                 + (f" b={p0['budget_label']}" if p0.get("budget_label") not in (None, "all") else ""))
        out.append({"pretrained": bool(p0["pretrained"]), "score": sum(vals) / len(vals), "label": label,
                    "runs": runs})
    return out


def _pick(pts: list[dict[str, Any]], metric: str, hib: bool) -> tuple[dict[str, Any] | None, int]:
    """The best setting (trained weights first) of rows by ``metric``, and how many settings there were."""
    sets = _settings(pts, metric)
    if not sets:
        return None, 0
    best = max(sets, key=lambda s: (s["pretrained"], s["score"] if hib else -s["score"]))
    return best, len(sets)


class _Group:
    """The cells of one printed row on one task under one protocol (e.g. DINOv3-S, NIH-14, linear @256)."""

    def __init__(self, cells: list[Cell], prot: Protocol) -> None:
        self.cells, self.prot, self.c0 = cells, prot, cells[0]
        self.same: dict[str, tuple[float, float, float, str]] = {}
        self.best: dict[str, tuple[float, float, float, str]] = {}
        self.same_setting = self.best_setting = ""
        self.untrained = self.best_untrained = False
        self.status = ""

    def measure(self, task_pts: list[dict[str, Any]], why: Mapping[str, str]) -> None:
        c0, match = self.c0, self.prot.match
        enc = c0.encoder
        mine = task_pts if (match or {}).get("encoder_free") or enc is None else \
            [p for p in task_pts if p["encoder"] == enc]
        rank = c0.metric
        folds = bool((match or {}).get("folds"))
        if c0.why:
            self.status = c0.why
        elif not task_pts:
            self.status = why.get(c0.task) or f"not run here: no row of task {c0.task} in this database"
        elif not mine:
            self.status = why.get(f"{c0.task}:{enc}") or f"not run here with {enc}"
        if match is not None and mine:
            same = [p for p in mine if not protocol_gaps(match, p, enc)]
            if same:
                s, n = _pick(same, rank, c0.higher_is_better)
                if s is None:
                    self.status = f"the run under the paper's protocol has no {rank}"
                else:
                    self.untrained = not s["pretrained"]
                    self.same = {c.metric: _aggregate(s["runs"], c.metric, folds) for c in self.cells}
                    self.same_setting = s["label"] + (f"; best of {n} settings matching the paper" if n > 1 else "")
                    if self.untrained:
                        self.status = "random weights (UNTRAINED): a pipeline check, not a score"
            else:
                closest = min((protocol_gaps(match, p, enc) for p in mine), key=len)
                self.status = "ran, not under the paper's protocol: " + "; ".join(closest[:3])
        if not self.same and not c0.why and why.get(f"{c0.task}:{c0.label}"):
            self.status = why[f"{c0.task}:{c0.label}"]  # e.g. a row no cell of the study sweep runs
        if mine:
            b, _ = _pick(mine, rank, c0.higher_is_better)
            if b is not None:
                self.best_untrained = not b["pretrained"]
                self.best = {c.metric: _aggregate(b["runs"], c.metric, bool(fold_of(b["runs"][0]))) for c in self.cells}
                self.best_setting = b["label"] + (" (UNTRAINED)" if self.best_untrained else "")


def _digits(c: Cell) -> int:
    s = c.printed.split(" ±")[0]
    return len(s.split(".")[1]) if "." in s else 0


def _show(c: Cell, v: tuple[float, float, float, str] | None, untrained: bool) -> tuple[str, str, float, float, float]:
    if not v or not math.isfinite(v[0]):
        return "", "", math.nan, math.nan, math.nan
    k, d = c.scale, max(_digits(c), 2)
    x, lo, hi = v[0] * k, v[1] * k, v[2] * k
    ci = f"[{fmt(lo, d)}, {fmt(hi, d)}]" if math.isfinite(lo) and math.isfinite(hi) else ""
    return fmt(x, d) + (" (UNTRAINED)" if untrained else ""), ci, x, lo, hi


def _mean_of_tasks(groups: list[_Group], target: _Group) -> None:
    """The MSD 'Avg' cell: the mean of the same row's per-task values (all tasks needed), each column."""
    parts = [g for g in groups if g.c0.table == target.c0.table and g.c0.row == target.c0.row
             and g.c0.variant == target.c0.variant and g.c0.task != MEAN_OF_TASKS]
    metric = target.c0.metric
    for attr in ("same", "best"):
        vals = [getattr(g, attr).get(metric) for g in parts]
        got = [v for v in vals if v and math.isfinite(v[0])]
        if parts and len(got) == len(parts):
            getattr(target, attr)[metric] = (sum(v[0] for v in got) / len(got), math.nan, math.nan,
                                             f"mean of {len(got)} tasks")
        elif attr == "same":
            target.status = (f"needs all {len(parts)} per-task values under the paper's protocol; {len(got)} "
                             "measured here")
    target.untrained = any(g.untrained for g in parts)
    target.same_setting = "mean of the per-task runs above" if target.same else ""
    target.best_setting = "mean of the per-task best settings" if target.best else ""


STUDY_WHY_FILE = "study-why.json"  # beside the results database: medprobe study's reasons, read by the report


def save_study_why(root: str | Path, why: Mapping[str, str], sweep: str | None = None) -> Path:
    """Write ``medprobe study``'s reasons (see :func:`study_tables`' ``why``) into the results folder ``root``."""
    from medprobe.utils import atomic_write_json

    path = Path(root) / STUDY_WHY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"format": 1, "sweep": sweep, "why": dict(why)})
    return path


def load_study_why(root: str | Path) -> dict[str, str]:
    """The reasons :func:`save_study_why` wrote into ``root`` ({} when none, or unreadable)."""
    path = Path(root) / STUDY_WHY_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in (doc.get("why") or {}).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def study_tables(points: list[dict[str, Any]], why: Mapping[str, str] | None = None,
                 all_tables: bool = False) -> tuple[list[Table], list[str]]:
    """One :class:`Table` per study table (those with a run of one of their tasks, or all), and notes.

    ``why``: the reason a task (``task``), an encoder on it (``task:encoder``) or a printed row (``task:row``, e.g.
    ``camus:MIND + ConvexAdam``) was not run, e.g. from ``medprobe study``'s coverage (data or weights not found,
    no cell of the sweep); shown in the cells that have no run."""
    why = dict(why or {})
    prots = protocols()
    by_task: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        key = match_task(p["task"])
        if key:
            by_task.setdefault(key, []).append(p)
    tables: list[Table] = []
    skipped: list[str] = []
    for pt in paper_tables():
        cells = paper_cells(pt.id)
        shown = [c for c in cells if c.encoder is not None or prots[c.protocol].match is not None]
        if not any(c.task in by_task for c in cells) and not all_tables:
            skipped.append(pt.id)
            continue
        groups: dict[tuple[str, str | None, str, str], _Group] = {}
        for c in shown:
            g = groups.get((c.row, c.variant, c.task, c.protocol))
            if g is None:
                groups[(c.row, c.variant, c.task, c.protocol)] = _Group([c], prots[c.protocol])
            else:
                g.cells.append(c)
        glist = list(groups.values())
        for g in glist:
            if g.c0.task != MEAN_OF_TASKS:
                g.measure(by_task.get(g.c0.task, []), why)
        for g in glist:
            if g.c0.task == MEAN_OF_TASKS:
                _mean_of_tasks(glist, g)
        quoted = [r for r in pt.rows if all(c.encoder is None and prots[c.protocol].match is None
                                            for c in cells if c.label == r)]
        used = sorted({c.protocol for c in shown}, key=list(prots).index)
        note = " ".join([*pt.notes, *(f"Protocol '{k}': {prots[k].text}." for k in used if prots[k].match),
                         *([f"Comparison rows medprobe cannot run (their cells are in the reference file, the best "
                            f"per column is shown): {', '.join(quoted)}."] if quoted else [])])
        tab = Table(f"study-table-{pt.id}", f"Study Table {pt.id}: {pt.title}", list(COLUMNS), note=note,
                    raw_columns=list(RAW_COLUMNS))
        cell_group = {c.key: g for g in glist for c in g.cells}
        for c in shown:
            g = cell_group[c.key]
            same = g.same.get(c.metric)
            best = g.best.get(c.metric)
            s_txt, s_ci, x, lo, hi = _show(c, same, g.untrained)
            b_txt, b_ci, bx, blo, bhi = _show(c, best, g.best_untrained)
            delta = x - c.value if (c.value is not None and math.isfinite(x) and not g.untrained) else math.nan
            d = max(_digits(c), 2)
            comp = best_comparison(c.table, c.column) if c.encoder in DINO_ROWS else None
            comp_txt = "" if comp is None else f"{comp.label} {comp.printed.split(' ±')[0]}"
            status = g.status if not math.isfinite(x) or g.untrained else ""
            why_txt = "; ".join([*([status] if status else []), *c.notes])
            arrow = "↑" if c.higher_is_better else "↓"
            col = c.column if c.column.endswith(("↑", "↓")) else f"{c.column} {arrow}"
            n_txt = same[3] if same and math.isfinite(x) else ""
            tab.add([c.label, col, c.printed, s_txt, s_ci, "" if not math.isfinite(delta) else f"{delta:+.{d}f}",
                     f"{g.same_setting}; {n_txt}" if g.same_setting and n_txt else g.same_setting,
                     f"{b_txt} {b_ci}".strip(), g.best_setting if b_txt else "", comp_txt, why_txt],
                    [c.table, c.row, c.variant, c.column, c.task, c.metric, c.direction, c.value, c.sd, x, lo, hi,
                     delta, n_txt, g.same_setting, g.untrained, bx, blo, bhi, g.best_setting if b_txt else "",
                     comp_txt, status, "; ".join(c.notes)])
        tables.append(tab)
    notes = [f"paper: {STUDY}, every printed cell in medprobe/report/paper_tables.json; 'medprobe (paper's "
             "protocol)' = rows whose encoder, head recipe, resolution, inputs and k-fold CV equal the cell's stated "
             "protocol (choices the paper leaves open are medprobe's; several matching settings: the best, counted); "
             "'medprobe best' = the best setting of that encoder on the task under any protocol; Δ = medprobe - paper "
             "in the paper's units"]
    if skipped:
        notes.append(f"study tables with no run of their tasks in this database (not shown): {', '.join(skipped)}")
    return tables, notes


def study_table(tasks: Any, points: list[dict[str, Any]], tables: list[Table] | None = None) -> Table | None:
    """Every study table's lines in one table (``study-vs-measured``: the CSV of the whole comparison); ``tables``:
    those :func:`study_tables` made already (``tasks`` is unused, kept for callers)."""
    tabs = tables if tables is not None else study_tables(points)[0]
    if not tabs:
        return None
    out = Table("study-vs-measured", "Study vs measured (all study tables)", ["table", *COLUMNS],
                note=f"study: {STUDY}; per table in the study section", raw_columns=list(RAW_COLUMNS))
    for t in tabs:
        tid = t.slug.removeprefix("study-table-")
        for row, raw in zip(t.rows, t.raw):
            out.add([tid, *row], raw)
    return out


__all__ = ["COLUMNS", "RAW_COLUMNS", "STUDY_WHY_FILE", "load_study_why", "protocol_gaps", "save_study_why",
           "study_table", "study_tables"]
