"""Reports: one self-contained HTML file (+ Markdown + CSV per table) from a results database.

:func:`build_report` reads the runs (optionally of one sweep), analyses each task (leaderboard with compute
cost, scaling / resolution / layer / label-efficiency curves with verdicts, Pareto front, pairwise
comparisons with Holm), ranks methods across tasks (critical-difference diagram), places the study's
published numbers beside ours, and shows PCA-of-patch-feature pictures and segmentation overlays.
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medprobe.report.analyze import (
    Figure,
    Table,
    analyse_task,
    audit_table,
    collect,
    compare_task,
    comparisons_table,
    ranks_across_tasks,
)
from medprobe.report.html import Section, esc, render_html, render_md, write_all

__all__ = ["build_report"]


def _overlays(db_root: Path, points: list[dict[str, Any]], limit: int = 6) -> list[Figure]:
    figs: list[Figure] = []
    for p in points:
        d = db_root / "outputs" / p["run_id"]
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.png"))[:limit - len(figs)]:
            figs.append(Figure(f"overlay-{p['run_id'][:8]}-{f.stem}", f"{p['method']}: {f.stem}", f.read_bytes(),
                               f"{p['method']} {p['resolution']} px {p['head']} (run {p['run_id'][:10]})"))
        if len(figs) >= limit:
            break
    return figs


def _audit_thumbnails(points: list[dict[str, Any]], limit: int = 6) -> tuple[list[Figure], str | None]:
    """Side-by-side thumbnails of the first suspicious pairs of a task's audit (its dataset re-opened)."""
    import io

    import numpy as np
    from PIL import Image

    from medprobe.audit import grey_plane
    from medprobe.data import create_dataset

    found = next((p["audit"] for p in points if isinstance(p.get("audit"), dict) and p["audit"].get("pairs")), None)
    if found is None:
        return [], None
    cfg = next(p["config"] for p in points if p.get("audit") is found)
    try:
        ds = create_dataset(cfg["dataset"], **{k: v for k, v in (cfg.get("data") or {}).items()
                                               if k != "skip_invalid"})
        where = {c: i for i, c in enumerate(ds.ids())}

        def thumb(cid: str) -> np.ndarray:
            it = ds.load(where[cid])
            a = grey_plane(np.asarray(it.image), it.spatial_dims, it.slice_axis)
            lo, hi = np.percentile(a, [1, 99]) if a.size else (0.0, 1.0)
            g = (np.clip((a - lo) / max(float(hi - lo), 1e-6), 0, 1) * 255).astype(np.uint8)
            return np.asarray(Image.fromarray(g).resize((96, 96), Image.Resampling.NEAREST))

        figs = []
        for r in found["pairs"][:limit]:
            both = np.concatenate([thumb(r["a"]), np.full((96, 4), 255, np.uint8), thumb(r["b"])], axis=1)
            buf = io.BytesIO()
            Image.fromarray(both).save(buf, format="PNG")
            figs.append(Figure(f"audit-{r['a']}-{r['b']}", f"{r['a']} ~ {r['b']}", buf.getvalue(),
                               f"{r['split_a']}/{r['split_b']}, {'+'.join(r['kinds'])}"))
        return figs, None
    except Exception as e:  # the data moved or is not readable here: the table still stands
        return [], f"thumbnails unavailable ({type(e).__name__}: {e})"


def build_report(db: Any = None, out: str | Path = "report.html", sweep: str | None = None,
                 cache_dir: str | Path | None = None, title: str | None = None, n_boot: int = 1000,
                 pca: bool = True, pca_live: bool = True, pca_images: int = 3,
                 study_why: dict[str, str] | None = None) -> Path:
    """Write ``out`` (HTML), ``<stem>.md`` and ``<stem>-<table>.csv``; returns the HTML path.

    ``db``: a :class:`~medprobe.results.ResultsDB` or a path; ``sweep``: only rows tagged with that sweep;
    ``cache_dir``: extra feature-cache root searched for PCA pictures (besides each run's ``cache_dir`` and
    ``./medprobe-cache``); ``pca_live``: re-encode a few sample images when the cache holds no patch tokens;
    ``study_why``: why a study task (``task``), encoder on it (``task:encoder``) or printed row (``task:row``) was
    not run (e.g. data or weights not found), shown in the study section's cells without a run; default: the
    reasons ``medprobe study`` wrote beside the database (``study-why.json``), if any.
    """
    from medprobe.report.pca import task_pca
    from medprobe.results import ResultsDB
    from medprobe.utils import default_cache_dir

    db = db if isinstance(db, ResultsDB) else ResultsDB(db)
    out = Path(out)
    runs = db.runs(sweep=sweep) if sweep else db.runs()
    points = collect(runs)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = title or ("medprobe report" + (f": sweep {sweep}" if sweep else ""))
    n_untrained = sum(not p["pretrained"] for p in points)
    banner = None
    if n_untrained:
        banner = (f"UNTRAINED encoders: {n_untrained} of {len(points)} rows come from randomly initialised "
                  "weights — a pipeline check, not a score.")
    tasks_order: list[str] = []
    for p in points:
        if p["task"] not in tasks_order:
            tasks_order.append(p["task"])
    encoders = sorted({p["method"] for p in points})
    versions: dict[str, Any] = next((r["versions"] for r in runs if r.get("versions")), {})
    header_lines = [
        "What: frozen-encoder probing results (scores with 95% bootstrap CIs, compute cost per image).",
        f"When: {now}",
        f"Database: {db.path}" + (f" (sweep {sweep})" if sweep else ""),
        f"Rows: {len(points)} (latest run per configuration) from {len(runs)} stored runs; tasks: "
        f"{', '.join(tasks_order) or '-'}; encoders: {', '.join(encoders) or '-'}",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v) if versions else
        f"Python {platform.python_version()}",
    ]
    header_html = '<div class="meta">' + "".join(f"<div>{esc(x)}</div>" for x in header_lines) + "</div>"
    sections: list[Section] = []
    all_tables: list[Table] = []
    if not points:
        s = Section("No results", "empty", notes=[f"no runs in {db.path}" + (f" for sweep {sweep!r}" if sweep
                                                                           else "")])
        sections.append(s)
    task_reports = []
    comparisons: list[dict[str, Any]] = []
    roots = [cache_dir, default_cache_dir()]
    for t in tasks_order:
        pts = [p for p in points if p["task"] == t]
        tr = analyse_task(pts)
        task_reports.append(tr)
        comparisons += compare_task(db, tr, n_boot=n_boot)
        sec = Section(f"Task: {t}", f"task-{_slug(t)}", tables=list(tr.tables), notes=list(tr.notes))
        best = tr.best
        if best is not None:
            hib = "higher" if tr.higher_is_better else "lower"
            sec.html_intro = (f"<p><b>{esc(tr.task_type)}</b> task, {tr.n_runs} rows; headline metric "
                              f"<b>{esc(tr.metric)}</b> ({hib} is better). Best setting: <b>{esc(best['label'])}"
                              f"</b> = {best['score']:.4f} [{best['low']:.4f}, {best['high']:.4f}].</p>")
        if tr.untrained:
            sec.notes.insert(0, f"{tr.untrained} of {tr.n_runs} rows use UNTRAINED weights: a pipeline check, "
                                "not a score.")
        if tr.figures:
            sec.children.append(Section("Curves", f"curves-{_slug(t)}", figures=list(tr.figures)))
        if pca:
            png, note = task_pca(pts, roots, n_images=pca_images, live=pca_live)
            if png is not None:
                sec.children.append(Section("PCA of patch features (as RGB)", f"pca-{_slug(t)}", figures=[
                    Figure(f"pca-{_slug(t)}", f"PCA {t}", png, note)], wide=True))
            else:
                sec.children.append(Section("PCA of patch features (as RGB)", f"pca-{_slug(t)}",
                                            notes=[f"panel skipped: {note}"]))
        at, anotes = audit_table(pts)
        thumbs, tnote = _audit_thumbnails(pts)
        sec.children.append(Section("Leakage audit", f"audit-{_slug(t)}", tables=[at] if at else [],
                                    notes=anotes + ([tnote] if tnote else []), figures=thumbs))
        if at is not None:
            all_tables.append(at)
        from medprobe.report.slides import slide_sections

        sec.children += slide_sections(db.root, pts)  # slide tasks: heat-maps, tissue masks, tiles per slide
        from medprobe.report.beyond import beyond_sections

        sec.children += beyond_sections(db, pts)  # calibration, few-shot, retrieval, survival panels
        ov = _overlays(db.root, pts)
        if ov:
            sec.children.append(Section("Segmentation overlays", f"overlays-{_slug(t)}", figures=ov))
        all_tables += tr.tables
        sections.append(sec)
    if points:
        summary = Section("Across tasks", "across")
        vt = [t for tr in task_reports for t in tr.tables if t.slug.endswith("-verdicts")]
        if vt:
            merged = Table("verdicts", "Verdict table (all tasks)", ["task", *vt[0].columns],
                           raw_columns=["task", "axis", "line", "points", "verdict", "best_x", "statistic",
                                        "p_value", "test"])
            for tr in task_reports:
                for tab in tr.tables:
                    if tab.slug.endswith("-verdicts"):
                        for row, raw in zip(tab.rows, tab.raw):
                            merged.add([tr.task, *row], [tr.task, *raw])
            summary.tables.append(merged)
        if comparisons:
            summary.tables.append(comparisons_table(comparisons, n_boot))
        else:
            summary.notes.append("pairwise comparisons need >= 2 encoders on a task")
        rt, cd, notes = ranks_across_tasks(task_reports)
        summary.notes += notes
        if rt is not None:
            summary.tables.append(rt)
        if cd is not None:
            summary.figures.append(cd)
        from medprobe.report.folds import fold_table

        ft = fold_table(points, db, n_boot=n_boot)  # k-fold CV: mean and CI across folds and over cases
        if ft is not None:
            summary.tables.append(ft)
        all_tables += summary.tables
        sections.append(summary)
        from medprobe.report.study import study_table, study_tables

        if study_why is None:
            from medprobe.report.study import load_study_why

            study_why = load_study_why(db.root)
        st_tabs, st_notes = study_tables(points, why=study_why)
        if st_tabs:
            sections.append(Section("The study, table by table", "study", tables=st_tabs, notes=st_notes))
            all_tables += st_tabs
            combined = study_table(task_reports, points, tables=st_tabs)
            if combined is not None:
                all_tables.append(combined)  # the CSV of the whole comparison
        else:
            summary.notes.append("study vs measured: no task name matches the study's tasks (nih14, rsna-pneumonia, "
                                 "ct-rate, kvasir-capsule, autolaparo, endovis2018, edd2020, msd-*, ...)")
    html_text = render_html(title, header_html, banner, sections)
    md_text = render_md(title, header_lines, banner, sections)
    write_all(out, html_text, md_text, all_tables)
    return out


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in s.lower()).strip("-") or "task"

