"""Report panels beyond the probe leaderboard: calibration (every row that records ECE / Brier / NLL, with
reliability diagrams from the stored per-case probabilities), the few-shot protocol (``kshot:<k>x<draws>``
budgets: mean and CI over draws, a metric-vs-k plot), retrieval rows (``retrieval`` panel: every cut-off, within
and across splits, the duplicates the audit removed) and survival rows (``survival`` panel: Harrell's and Uno's
c-index). Which rows a panel shows is read from the rows (their metrics, budget, or the panels their family
declared), never from family or head names.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medprobe.report.analyze import Figure, Table, ci_text
from medprobe.report.html import Section

RETRIEVAL_PANEL = "retrieval"
SURVIVAL_PANEL = "survival"
_CAL = ("ece", "ece_mass", "brier", "nll")
_KSHOT = re.compile(r"^kshot:(\d+)x(\d+)$")




def _point(v: Any) -> float:
    try:
        return float(v[0]) if isinstance(v, (list, tuple)) else float(v)
    except (TypeError, ValueError):
        return math.nan


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in s.lower()).strip("-") or "x"


# ---------------------------------------------------------------------------------- calibration
def reliability_png(y_true: np.ndarray, y_score: np.ndarray, task: str, title: str) -> bytes:
    """A reliability diagram: accuracy vs confidence per bin, equal-width and equal-mass bins, the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medprobe.metrics.calibration import reliability_curve

    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect")
    for strategy, marker in (("width", "o"), ("mass", "s")):
        r = reliability_curve(y_true, y_score, task, strategy=strategy)
        ax.plot(r.confidence, r.accuracy, marker=marker, ms=4, lw=1.2, label=f"equal-{strategy} bins")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence" if task != "multilabel" else "predicted probability")
    ax.set_ylabel("accuracy" if task != "multilabel" else "observed frequency")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def calibration_section(db: Any, points: Sequence[Mapping[str, Any]], limit: int = 6) -> Section | None:
    """ECE (equal width / mass), Brier and NLL of every row that records them, and reliability diagrams of the
    first ``limit`` rows whose per-case probabilities are stored."""
    rows = [p for p in points if "ece" in (p.get("metrics") or {})]
    if not rows:
        return None
    t = Table(f"calibration-{_slug(rows[0]['task'])}", "Calibration (95% CIs over test cases; lower is better)",
              ["encoder", "head", "budget", *_CAL, "run"])
    rows = sorted(rows, key=lambda q: (_point(q["metrics"].get("ece")), q["method"], q["head"]))
    for p in rows:
        m = p["metrics"]
        t.add([p["method"], p["head"], p["budget_label"], *(ci_text(m.get(k)) for k in _CAL), p["run_id"][:10]],
              [p["method"], p["head"], p["budget_label"], *(m.get(k) for k in _CAL), p["run_id"]])
    figs: list[Figure] = []
    notes = ["ECE: equal-width and equal-mass bins (15); Brier and NLL as scikit-learn; head_params.<head>.calibrate:"
             " temperature fits a temperature on validation (recorded as selected.temperature)."]
    for p in rows:
        if len(figs) >= limit or not p.get("predictions_path"):
            continue
        try:
            pr = db.load_predictions(p["run_id"])
            if "y_score" not in pr or "y_true" not in pr:
                continue
            title = f"{p['method']} {p['head']} ({p['budget_label']})"
            png = reliability_png(pr["y_true"], pr["y_score"], p["task_type"], title)
        except Exception as e:  # a moved or unreadable predictions file: the table still stands
            notes.append(f"reliability diagram of run {p['run_id'][:10]} unavailable ({type(e).__name__})")
            continue
        figs.append(Figure(f"reliability-{p['run_id'][:8]}", title, png, f"run {p['run_id'][:10]}"))
    return Section("Calibration", f"calibration-{_slug(rows[0]['task'])}", tables=[t], figures=figs, notes=notes)


# ---------------------------------------------------------------------------------- few-shot
def fewshot_section(points: Sequence[Mapping[str, Any]], metric: str = "auc") -> Section | None:
    """Rows run with ``budget: kshot:<k>x<draws>``: a table and, with two or more k, the metric against k."""
    rows = [p for p in points if isinstance(p.get("budget"), str) and _KSHOT.match(str(p["budget"]))]
    if not rows:
        return None
    cols = [c for c in ("auc", "acc", "balanced_acc", "ece") if any(c in p["metrics"] for p in rows)]
    metric = metric if metric in cols else (cols[0] if cols else metric)
    t = Table(f"fewshot-{_slug(rows[0]['task'])}", "Few-shot (mean over seeded draws [95% CI over draws])",
              ["encoder", "head", "k", "draws", *cols, "run"])
    curves: dict[str, list[tuple[int, float, float, float]]] = {}
    for p in sorted(rows, key=lambda q: (q["method"], q["head"], int(_KSHOT.match(q["budget"]).group(1)))):  # type: ignore[union-attr]
        k, draws = (int(x) for x in _KSHOT.match(p["budget"]).groups())  # type: ignore[union-attr]
        m = p["metrics"]
        t.add([p["method"], p["head"], str(k), str(draws), *(ci_text(m.get(c)) for c in cols), p["run_id"][:10]],
              [p["method"], p["head"], k, draws, *(m.get(c) for c in cols), p["run_id"]])
        v = m.get(metric)
        if isinstance(v, (list, tuple)) and len(v) == 3:
            curves.setdefault(f"{p['method']} {p['head']}", []).append((k, *(float(x) if x is not None else math.nan
                                                                             for x in v)))  # type: ignore[arg-type]
    figs = []
    if any(len({c[0] for c in pts}) >= 2 for pts in curves.values()):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        for label, pts in sorted(curves.items()):
            pts.sort()
            ks = [c[0] for c in pts]
            mean = np.array([c[1] for c in pts])
            lo = np.array([c[2] for c in pts])
            hi = np.array([c[3] for c in pts])
            ax.errorbar(ks, mean, yerr=[np.nan_to_num(mean - lo), np.nan_to_num(hi - mean)], marker="o", ms=4,
                        capsize=2, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("labelled cases per class (k)")
        ax.set_ylabel(metric)
        ax.legend(fontsize=6)
        figs.append(Figure(f"fewshot-{_slug(rows[0]['task'])}", f"{metric} vs k", _png(fig),
                           "mean over draws, 95% CI over draws"))
    return Section("Few-shot", f"fewshot-{_slug(rows[0]['task'])}", tables=[t], figures=figs)


# ---------------------------------------------------------------------------------- retrieval, survival
def _cutoff(key: str) -> tuple[int, str]:
    name, _, k = key.partition("@")
    return (int(k) if k.isdigit() else 0, name)


def retrieval_section(points: Sequence[Mapping[str, Any]]) -> Section | None:
    rows = [p for p in points if RETRIEVAL_PANEL in (p.get("panels") or ())]
    if not rows:
        return None
    keys = sorted({k for p in rows for k in p["metrics"] if "@" in k}, key=lambda k: (k.startswith("within_"),
                                                                                       _cutoff(k.split("_")[-1])))
    t = Table(f"retrieval-{_slug(rows[0]['task'])}", "Retrieval (test queries; across: train+val database, within: "
              "the other test cases; audit duplicates removed; 95% CI over queries)",
              ["encoder", "head", *keys, "run"])
    for p in sorted(rows, key=lambda q: (q["method"], q["head"])):
        m = p["metrics"]
        t.add([p["method"], p["head"], *(ci_text(m.get(k)) for k in keys), p["run_id"][:10]],
              [p["method"], p["head"], *(m.get(k) for k in keys), p["run_id"]])
    return Section("Retrieval", f"retrieval-{_slug(rows[0]['task'])}", tables=[t],
                   notes=["acc@k: a relevant case among the first k; map@k: AP@k normalised by min(k, relevant); "
                          "mv@k: the majority class of the first k is the query's."])


def survival_section(points: Sequence[Mapping[str, Any]]) -> Section | None:
    rows = [p for p in points if SURVIVAL_PANEL in (p.get("panels") or ())]
    if not rows:
        return None
    t = Table(f"survival-{_slug(rows[0]['task'])}", "Survival (95% CIs over test cases)",
              ["encoder", "head", "c_index", "c_index_uno", "run"])
    for p in sorted(rows, key=lambda q: (q["method"], q["head"])):
        m = p["metrics"]
        t.add([p["method"], p["head"], ci_text(m.get("c_index")), ci_text(m.get("c_index_uno")), p["run_id"][:10]],
              [p["method"], p["head"], m.get("c_index"), m.get("c_index_uno"), p["run_id"]])
    return Section("Survival", f"survival-{_slug(rows[0]['task'])}", tables=[t],
                   notes=["Harrell's c-index; Uno's IPCW c-index with the censoring distribution of the training "
                          "cases (medprobe.metrics.survival)."])


def beyond_sections(db: Any, points: Sequence[Mapping[str, Any]]) -> list[Section]:
    """Every panel of this module that has rows among ``points`` (one task's rows)."""
    out = [calibration_section(db, points), fewshot_section(points), retrieval_section(points),
           survival_section(points)]
    return [s for s in out if s is not None]


__all__ = ["beyond_sections", "calibration_section", "fewshot_section", "reliability_png", "retrieval_section",
           "survival_section"]
