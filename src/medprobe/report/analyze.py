"""Turn result rows into report content: points, per-task analysis (curves, verdicts, Pareto, comparisons),
cross-task ranks (the study-vs-measured tables: :mod:`.study`). Pure computation (figures are PNG bytes)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medprobe.analysis import (
    best_per_budget,
    friedman_test,
    holm,
    mean_ranks,
    nemenyi_cd,
    paired_bootstrap,
    pareto_front,
    plots,
    trend_verdict,
    wilcoxon_signed_rank,
)
from medprobe.errors import MedprobeError

LOWER_IS_BETTER = {"voi", "voi_split", "voi_merge", "are", "arand", "cremi_score", "hd95", "asd", "loss", "brier",
                   "ece", "tre", "mae", "rmse", "folding_pct", "folding_fraction", "std_log_jacobian", "hd95_px",
                   "asd_px", "ece_mass", "nll"}
CLASSIFICATION_TYPES = ("binary", "multiclass", "multilabel", "ordinal")
# What a row says about itself for reports is in its record (``report``: ``rank_by``, ``paired_scores``, ``panels``,
# ``probe``, declared by its task family and head). Rows recorded before those facts were stored read the
# equivalents from their metrics, task type and head:
LEGACY_RANK_BY = ("auc", "acc", "balanced_acc", "dice", "miou", "iou", "r2", "mae", "arand", "voi")
LEGACY_LINEAR_PROBES = ("linear", "logreg")  # the heads that were the study's linear probe before heads said so
SLIDE_PANEL = "slide-mil"  # medprobe.report.slides (legacy rows: those that count their seeds)


@dataclass
class Table:
    """A report table: display cells (strings) and raw values for CSV."""

    slug: str
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    raw: list[list[Any]] = field(default_factory=list)
    note: str = ""
    raw_columns: list[str] | None = None  # CSV header when raw rows differ from the display columns

    def add(self, display: list[str], raw: list[Any] | None = None) -> None:
        self.rows.append(display)
        self.raw.append(raw if raw is not None else display)


@dataclass
class Figure:
    slug: str
    title: str
    png: bytes
    caption: str = ""


@dataclass
class TaskReport:
    task: str
    task_type: str
    metric: str
    higher_is_better: bool
    n_runs: int
    untrained: int
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    best: dict[str, Any] | None = None
    settings: list[dict[str, Any]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ points
def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def fmt(v: Any, digits: int = 4) -> str:
    x = _f(v)
    if not math.isfinite(x):
        return "–"
    return f"{x:.{digits}f}"


def ci_text(v: Any) -> str:
    """``(mean, lo, hi)`` -> ``"0.812 [0.790, 0.833]"`` (a number alone -> ``"0.812"``; missing -> ``"n/a"``)."""
    if isinstance(v, (list, tuple)) and len(v) == 3:
        m, lo, hi = (float(x) if x is not None else math.nan for x in v)
        if not math.isfinite(m):
            return "n/a"
        return f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) and math.isfinite(hi) else f"{m:.3f}"
    if isinstance(v, (int, float)) and math.isfinite(float(v)):
        return f"{float(v):.3f}"
    return "n/a"


def _budget_label(b: Any) -> str:
    return "all" if b in (None, 1, 1.0, "all") else str(b)


def method_label(encoder: str, pretrained: bool) -> str:
    return encoder if pretrained else f"{encoder} (untrained)"


def head_label(head: str, head_params: Any) -> str:
    """The head's name; a decoder that also saw the raw image (``use_image``) is labelled ``+ image stem``."""
    return f"{head} + image stem" if isinstance(head_params, Mapping) and head_params.get("use_image") else head


def collect(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat point per run (latest run per config hash): task, encoder, method, resolution, layer, head,
    budget, seed, metrics, compute, cache key, ..."""
    latest: dict[str, Mapping[str, Any]] = {}
    for r in runs:
        latest[str(r.get("config_hash") or r["run_id"])] = r  # runs come oldest first
    out = []
    for r in latest.values():
        labels = dict(r.get("labels") or {})
        extra = dict(r.get("extra") or {})
        comp = dict(r.get("compute") or {})
        cfg = dict(r.get("config") or {})
        split = dict(r.get("split") or {})
        layer = extra.get("layer", r.get("layers"))
        if isinstance(layer, list):
            layer = layer[0] if len(layer) == 1 else "concat"
        res = r.get("resolution")
        res_v = int(res[0]) if isinstance(res, list) and res else (int(res) if isinstance(res, (int, float)) else None)
        params = comp.get("params_m")
        depth = comp.get("depth")
        if params is None or depth is None:
            try:
                from medprobe.encoders.registry import get_spec

                spec = get_spec(r["encoder"])
                params = spec.params_m if params is None else params
                depth = spec.depth if depth is None else depth
            except MedprobeError:
                pass
        pre = bool(r.get("pretrained"))
        layer_tag = "last" if isinstance(layer, int) and depth and layer == int(depth) - 1 else str(layer)
        mem = comp.get("peak_mem_mb", comp.get("peak_rss_mb"))
        metrics = dict(r.get("metrics") or {})
        facts = dict(extra.get("report") or {})
        out.append({
            "run_id": r["run_id"], "created": r.get("created"), "task": r["task"], "task_type": r["task_type"],
            "dataset": r.get("dataset"), "encoder": r["encoder"], "weights": r.get("weights"), "pretrained": pre,
            "method": method_label(r["encoder"], pre) + (f" [{labels['inputs']}]" if labels.get("inputs") else ""),
            "head": head_label(r["head"], r.get("head_params")), "head_name": r["head"],
            "head_params": dict(r.get("head_params") or {}), "inputs": labels.get("inputs"),
            "resolution": res_v, "layer": layer,
            "layer_tag": layer_tag, "depth": depth, "budget": split.get("budget", cfg.get("budget")),
            "budget_label": _budget_label(split.get("budget", cfg.get("budget"))), "n_train": split.get("n_train"),
            "test_ids_hash": split.get("test_ids_hash"), "seed": r.get("seed"), "metrics": metrics,
            "rank_by": tuple(facts.get("rank_by", LEGACY_RANK_BY)),
            "paired_scores": bool(facts.get("paired_scores", r["task_type"] in CLASSIFICATION_TYPES)),
            "panels": tuple(facts.get("panels", (SLIDE_PANEL,) if "n_seeds" in metrics else ())),
            "probe": str(facts.get("probe") or ("linear" if r["head"] in LEGACY_LINEAR_PROBES else r["head"])),
            "gflops": comp.get("gflops"), "images_per_s": comp.get("images_per_s"), "peak_mem_mb": mem,
            "params_m": params, "cache_key": labels.get("cache_key"), "config": cfg, "sweep": r.get("sweep"),
            "preprocess": r.get("preprocess"), "units": dict(extra.get("units") or {}),
            "audit": labels.get("audit"),
            "cell": labels.get("cell"), "predictions_path": r.get("predictions_path"),
        })
    return out


def primary_metric(points: Sequence[Mapping[str, Any]]) -> tuple[str, bool]:
    """The headline metric of a task's points and whether higher is better."""
    names: dict[str, int] = {}
    for p in points:
        for k in p["metrics"]:
            names[k] = names.get(k, 0) + 1
    for cand in points[0].get("rank_by", ()):
        if cand in names:
            return cand, cand not in LOWER_IS_BETTER
    if not names:
        return "score", True
    m = max(sorted(names), key=lambda k: names[k])
    return m, m not in LOWER_IS_BETTER


def _score(p: Mapping[str, Any], metric: str) -> tuple[float, float, float]:
    v = p["metrics"].get(metric)
    if v is None:
        return math.nan, math.nan, math.nan
    return _f(v[0]), _f(v[1]), _f(v[2])


SETTING_KEYS = ("encoder", "pretrained", "resolution", "layer", "head", "budget_label")


def settings_of(points: Sequence[Mapping[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Points averaged over seeds: one per (encoder, weights, resolution, layer, head, budget)."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for p in points:
        groups.setdefault(tuple(str(p[k]) for k in SETTING_KEYS), []).append(p)
    out = []
    for ps in groups.values():
        sc = [_score(p, metric) for p in ps]
        vals = [s[0] for s in sc if math.isfinite(s[0])]
        if not vals:
            continue
        p0 = ps[0]
        lows = [s[1] for s in sc if math.isfinite(s[1])]
        highs = [s[2] for s in sc if math.isfinite(s[2])]
        ips = [_f(p["images_per_s"]) for p in ps if math.isfinite(_f(p["images_per_s"]))]
        mems = [_f(p["peak_mem_mb"]) for p in ps if math.isfinite(_f(p["peak_mem_mb"]))]
        label = f"{p0['method']} {p0['resolution']}px L{p0['layer']} {p0['head']}" + (
            f" b={p0['budget_label']}" if p0["budget_label"] != "all" else "")
        out.append({**{k: p0[k] for k in ("task", "task_type", "encoder", "pretrained", "method", "resolution",
                                          "layer", "layer_tag", "head", "budget", "budget_label", "params_m",
                                          "gflops", "depth")},
                    "score": float(np.mean(vals)), "low": float(np.mean(lows)) if lows else math.nan,
                    "high": float(np.mean(highs)) if highs else math.nan,
                    "seed_sd": float(statistics.stdev(vals)) if len(vals) > 1 else math.nan,
                    "n_seeds": len(vals), "n_train": p0["n_train"],
                    "images_per_s": float(np.mean(ips)) if ips else math.nan,
                    "peak_mem_mb": max(mems) if mems else math.nan, "label": label, "runs": list(ps)})
    return out


def _good(s: Mapping[str, Any], hib: bool) -> float:
    v = _f(s["score"])
    return -math.inf if not math.isfinite(v) else (v if hib else -v)


# ------------------------------------------------------------------------------------------------ per task
_DIMS = {"head": "head", "resolution": "resolution", "layer": "layer_tag", "budget": "budget_label"}


def _curve(task: TaskReport, settings: list[dict[str, Any]], best: Mapping[str, Any], axis: str, x_key: str,
           group: str, x_of: Any = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows for one curve per line (``group``): settings varying only ``axis``, every other axis held at one
    value -- per line the slice with the most points on the axis (ties: the best setting's slice, then the
    best score) -- and per-line verdicts on all runs (seeds kept)."""
    fixed_dims = [d for a, d in _DIMS.items() if a != axis and d != group]
    buckets: dict[tuple[str, tuple[str, ...]], list[dict[str, Any]]] = {}
    for s in settings:
        x = x_of(s) if x_of else s.get(x_key)
        if not math.isfinite(_f(x)):
            continue
        key = (str(s[group]), tuple(str(s[d]) for d in fixed_dims))
        buckets.setdefault(key, []).append({**s, x_key: _f(x)})
    best_fixed = tuple(str(best[d]) for d in fixed_dims)
    chosen: dict[str, tuple[tuple[int, bool, float], list[dict[str, Any]]]] = {}  # line -> (rank, slice)
    for (line, fx), rs in buckets.items():
        rank = (len({r[x_key] for r in rs}), fx == best_fixed, max(_good(r, task.higher_is_better) for r in rs))
        if line not in chosen or rank > chosen[line][0]:
            chosen[line] = (rank, rs)
    rows = [r for _, rs in chosen.values() for r in rs]
    verdicts: list[dict[str, Any]] = []
    by_line: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_line.setdefault(str(r[group]), []).append(r)
    for line, rs in sorted(by_line.items()):
        xs, ys, lo, hi = [], [], [], []
        for r in rs:
            for p in r["runs"]:
                v, a, b = _score(p, task.metric)
                if math.isfinite(v):
                    xs.append(_f(r[x_key]))
                    ys.append(v)
                    lo.append(a if math.isfinite(a) else math.nan)
                    hi.append(b if math.isfinite(b) else math.nan)
        if len(set(xs)) < 2:
            continue
        use_ci = all(math.isfinite(v) for v in lo + hi)
        tv = trend_verdict(xs, ys, lo if use_ci else None, hi if use_ci else None,
                           higher_is_better=task.higher_is_better)
        verdicts.append({"task": task.task, "axis": axis, "line": line, "n": len(xs), **tv})
    return rows, verdicts


def analyse_task(points: list[dict[str, Any]]) -> TaskReport:
    """Leaderboard, scaling / resolution / layer / label-efficiency curves with verdicts, Pareto front."""
    metric, hib = primary_metric(points)
    t0 = points[0]
    task = TaskReport(task=t0["task"], task_type=t0["task_type"], metric=metric, higher_is_better=hib,
                      n_runs=len(points), untrained=sum(not p["pretrained"] for p in points))
    settings = settings_of(points, metric)
    settings.sort(key=lambda s: -_good(s, hib))
    task.settings = settings
    if not settings:
        task.notes.append(f"no run of this task has the metric {metric!r}")
        return task
    best = settings[0]
    task.best = best
    better = "higher" if hib else "lower"
    all_units = sorted({f"{m} in {u}" for p in points for m, u in (p.get("units") or {}).items()
                        if m in ("hd95", "asd")})
    if all_units:
        task.notes.append("distance units: " + ", ".join(all_units))
    units = {u for p in points if (u := (p.get("units") or {}).get(metric))}
    if len(units) > 1:
        task.notes.append(f"{metric} is in {' and '.join(sorted(units))} across these rows: not comparable")
    head = f"{metric} ({units.pop()})" if len(units) == 1 else metric

    lb = Table(f"{_slug(task.task)}-leaderboard", f"Leaderboard: {task.task} ({head}, {better} is better)",
               ["rank", "encoder", "res", "layer", "head", "budget", "seeds", head, "95% CI", "GFLOPs",
                "images/s", "peak mem MB", "params M"],
               note="mean over seeds; CI = bootstrap over test cases (mean of the per-seed bounds)",
               raw_columns=["rank", "encoder", "resolution", "layer", "head", "budget", "seeds", metric, "low",
                            "high", "gflops", "images_per_s", "peak_mem_mb", "params_m"])
    for i, s in enumerate(settings, 1):
        lb.add([str(i), s["method"], str(s["resolution"]), str(s["layer"]), s["head"], s["budget_label"],
                str(s["n_seeds"]), fmt(s["score"]), f"[{fmt(s['low'])}, {fmt(s['high'])}]", fmt(s["gflops"], 2),
                fmt(s["images_per_s"], 1), fmt(s["peak_mem_mb"], 0), fmt(s["params_m"], 1)],
               [i, s["method"], s["resolution"], s["layer"], s["head"], s["budget_label"], s["n_seeds"],
                s["score"], s["low"], s["high"], s["gflops"], s["images_per_s"], s["peak_mem_mb"], s["params_m"]])
    task.tables.append(lb)

    verdicts: list[dict[str, Any]] = []
    ylabel = f"{metric} ({better} is better)"
    rows, v = _curve(task, settings, best, "model size", "params_m", "head")
    # "model size" varies the encoder: every other axis fixed at the best setting
    rows = [r for r in rows if r["pretrained"] == best["pretrained"]]
    if len({r["params_m"] for r in rows}) >= 2:
        verdicts += v
        task.figures.append(Figure(f"{_slug(task.task)}-params", "score vs model size", plots.scaling_plot(
            rows, x="params_m", group="head", title=f"{task.task}: {metric} vs parameters", ylabel=ylabel),
            _caption(rows, ("resolution", "layer_tag", "budget_label"))))
    rows, v = _curve(task, settings, best, "resolution", "resolution", "method")
    if len({r["resolution"] for r in rows}) >= 2:
        verdicts += v
        task.figures.append(Figure(f"{_slug(task.task)}-resolution", "score vs resolution", plots.scaling_plot(
            rows, x="resolution", group="method", title=f"{task.task}: {metric} vs input resolution",
            ylabel=ylabel), _caption(rows, ("head", "layer_tag", "budget_label"))))
    rows, v = _curve(task, settings, best, "layer", "layer", "method",
                     x_of=lambda s: s["layer"] if isinstance(s["layer"], int) else math.nan)
    if len({r["layer"] for r in rows}) >= 2:
        verdicts += v
        task.figures.append(Figure(f"{_slug(task.task)}-layers", "layer-wise probing", plots.layer_curve(
            rows, group="method", title=f"{task.task}: {metric} by block", ylabel=ylabel),
            "every tapped block; " + _caption(rows, ("resolution", "head", "budget_label"))))
    rows, v = _curve(task, settings, best, "budget", "n_train", "method")
    if len({r["n_train"] for r in rows}) >= 2:
        verdicts += v
        rows = [{**r, "budget": r["n_train"]} for r in rows]
        task.figures.append(Figure(f"{_slug(task.task)}-labels", "label efficiency", plots.label_efficiency_plot(
            rows, group="method", title=f"{task.task}: {metric} vs labelled cases", ylabel=ylabel),
            "nested label budgets (per patient); " + _caption(rows, ("resolution", "head", "layer_tag"))))
    if verdicts:
        vt = Table(f"{_slug(task.task)}-verdicts", f"Scaling verdicts: {task.task}",
                   ["axis", "line", "points", "verdict", "best x", "rank corr.", "p", "test"])
        for d in verdicts:
            vt.add([d["axis"], d["line"], str(d["n"]), d["verdict"], f"{_f(d['best_x']):g}", fmt(d["statistic"], 3),
                    fmt(d["p_value"], 3), d["method"]],
                   [d["axis"], d["line"], d["n"], d["verdict"], d["best_x"], d["statistic"], d["p_value"], d["method"]])
        task.tables.append(vt)

    pts = [s for s in settings if math.isfinite(_f(s["gflops"]))]
    if pts:
        front = pareto_front(pts, cost_key="gflops", score_key="score", higher_is_better=hib)
        task.figures.append(Figure(f"{_slug(task.task)}-pareto", "score vs compute (Pareto front)",
                                   plots.pareto_plot(pts, front, label_key="label", higher_is_better=hib,
                                                     title=f"{task.task}: {metric} vs GFLOPs per image"),
                                   "grey: every setting; blue: not beaten by any cheaper setting"))
        costs = sorted({_f(p["gflops"]) for p in front})
        bpb = best_per_budget(pts, costs, cost_key="gflops", score_key="score", higher_is_better=hib)
        pt = Table(f"{_slug(task.task)}-compute", f"Best configuration per compute budget: {task.task}",
                   ["GFLOPs budget", "best setting", metric, "95% CI", "GFLOPs", "images/s"],
                   raw_columns=["gflops_budget", "setting", metric, "low", "high", "gflops", "images_per_s"])
        for c, p in bpb.items():
            if p is None:
                continue
            pt.add([f"≤ {c:.3g}", str(p["label"]), fmt(p["score"]), f"[{fmt(p['low'])}, {fmt(p['high'])}]",
                    fmt(p["gflops"], 2), fmt(p["images_per_s"], 1)],
                   [c, p["label"], p["score"], p["low"], p["high"], p["gflops"], p["images_per_s"]])
        task.tables.append(pt)
    return task


def audit_table(points: Sequence[Mapping[str, Any]], limit: int = 30) -> tuple[Table | None, list[str]]:
    """The leakage audit of a task's latest run: a table of suspicious pairs (test leaks first) and notes."""
    found = next((p["audit"] for p in sorted(points, key=lambda p: str(p.get("created") or ""), reverse=True)
                  if isinstance(p.get("audit"), Mapping) and p["audit"].get("ran")), None)
    if found is None:
        return None, ["no leakage audit recorded for this task (audit.mode: off, or rows made before the audit)"]
    notes = [f"{found.get('summary', '')} (audit.mode: {found.get('mode')})"]
    if found.get("dropped_from_test"):
        notes.append(f"dropped from test: {len(found['dropped_from_test'])} case(s)")
    if found.get("features_skipped"):
        notes.append(f"feature detector skipped: {found['features_skipped']}")
    t = Table(f"{_slug(str(points[0]['task']))}-audit", f"Leakage audit: suspicious pairs ({points[0]['task']})",
              ["case a", "case b", "splits", "found by", "hamming", "cosine"],
              note=f"first {limit} of {found.get('n_pairs', 0)} pairs; exact = identical decoded pixels, hash = "
                   "perceptual hash confirmed by thumbnail correlation, feature = cached-vector cosine")
    for r in list(found.get("pairs") or [])[:limit]:
        t.add([str(r["a"]), str(r["b"]), f"{r['split_a']}/{r['split_b']}", "+".join(r["kinds"]),
               "" if r.get("hamming") is None else str(r["hamming"]), "" if r.get("cosine") is None
               else f"{r['cosine']:.4f}"],
              [r["a"], r["b"], f"{r['split_a']}/{r['split_b']}", "+".join(r["kinds"]), r.get("hamming"),
               r.get("cosine")])
    return (t if t.rows else None), notes


def _caption(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    names = {"resolution": "resolution", "layer_tag": "layer", "budget_label": "budget", "head": "head"}
    parts = []
    for k in keys:
        vals = sorted({str(r[k]) for r in rows})
        parts.append(f"{names[k]} {'/'.join(vals)}")
    return "held fixed: " + ", ".join(parts)


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in s.lower()).strip("-") or "task"


# ------------------------------------------------------------------------------------------------ comparisons
def metric_fn(task_type: str, metric: str) -> Any:
    """``f(y_true, y_score) -> float`` for paired bootstrap on stored predictions."""
    from medprobe.metrics.classification import compute, prepare

    def f(y: np.ndarray, s: np.ndarray) -> float:
        prep = prepare(y, s, task_type)
        return float(compute(prep, np.ones((1, prep.n_cases)), [metric])[metric][0])

    return f


def _aligned(db: Any, a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pa, pb = db.load_predictions(a["run_id"]), db.load_predictions(b["run_id"])
    ia = [str(v) for v in pa["ids"]]
    pos = {v: i for i, v in enumerate(ia)}
    ib = [str(v) for v in pb["ids"]]
    if set(ia) != set(ib):
        raise MedprobeError("test cases differ")
    order = np.asarray([pos[v] for v in ib])
    return pb["y_true"], pa["y_score"][order], pb["y_score"]


def compare_task(db: Any, task: TaskReport, n_boot: int = 1000, max_methods: int = 8) -> list[dict[str, Any]]:
    """Encoder A vs B at the task's best setting (each method's own best when it lacks that setting):
    paired bootstrap on the same test cases (first shared seed), Wilcoxon over seeds when >= 2."""
    if task.best is None:
        return []
    best = task.best
    by_method: dict[str, dict[str, Any]] = {}
    for s in task.settings:  # sorted best first
        m = s["method"]
        same = all(str(s[k]) == str(best[k]) for k in ("resolution", "layer_tag", "head", "budget_label"))
        if m not in by_method or (same and not by_method[m]["_same"]):
            by_method[m] = {**s, "_same": same}
    methods = sorted(by_method, key=lambda m: -_good(by_method[m], task.higher_is_better))[:max_methods]
    out = []
    for i, ma in enumerate(methods):
        for mb in methods[i + 1:]:
            a, b = by_method[ma], by_method[mb]
            ra = {p["seed"]: p for p in a["runs"]}
            rb = {p["seed"]: p for p in b["runs"]}
            common = sorted(s for s in set(ra) & set(rb) if ra[s]["test_ids_hash"] == rb[s]["test_ids_hash"])
            row: dict[str, Any] = {"task": task.task, "a": ma, "b": mb, "setting_a": a["label"],
                                   "setting_b": b["label"], "seeds": len(common), "delta": math.nan,
                                   "low": math.nan, "high": math.nan, "p_boot": math.nan, "p_wilcoxon": math.nan,
                                   "note": ""}
            sa = [_score(ra[s], task.metric)[0] for s in common]
            sb = [_score(rb[s], task.metric)[0] for s in common]
            if common:
                row["delta"] = float(np.mean(sa) - np.mean(sb))
            if not common:
                row["note"] = "no shared test set"
            elif ra[common[0]].get("paired_scores") and rb[common[0]].get("paired_scores"):
                try:
                    y, ya, yb = _aligned(db, ra[common[0]], rb[common[0]])
                    bs = paired_bootstrap(y, ya, yb, metric_fn(task.task_type, task.metric), n_resamples=n_boot,
                                          seed=0)
                    row.update(delta=bs["delta"], low=bs["low"], high=bs["high"], p_boot=bs["p_value"])
                except (MedprobeError, KeyError, ValueError) as e:
                    row["note"] = f"bootstrap skipped: {e}"
            else:
                row["note"] = "paired bootstrap needs per-case classification scores"
            if len(common) >= 2:
                row["p_wilcoxon"] = wilcoxon_signed_rank(sa, sb)["p_value"]
            out.append(row)
    return out


def comparisons_table(rows: list[dict[str, Any]], n_boot: int) -> Table:
    """All comparisons with Holm-adjusted p-values (over every comparison of the report)."""
    hb = holm([r["p_boot"] for r in rows])
    hw = holm([r["p_wilcoxon"] for r in rows])
    t = Table("comparisons", "Pairwise comparisons (A - B)",
              ["task", "A", "B", "Δ (A-B)", "95% CI", "p boot", "p Holm", "seeds", "p Wilcoxon", "p Holm (W)",
               "note"],
              note=f"paired bootstrap over the same test cases ({n_boot} resamples, first shared seed); Wilcoxon "
                   "signed-rank over seeds when >= 2; Holm over all comparisons in this report",
              raw_columns=["task", "a", "b", "delta", "low", "high", "p_boot", "p_holm", "seeds", "p_wilcoxon",
                           "p_wilcoxon_holm", "note"])
    for r, ph, pw in zip(rows, hb, hw):
        sig = " *" if math.isfinite(_f(ph)) and ph < 0.05 else ""
        t.add([r["task"], r["a"], r["b"], fmt(r["delta"]) + sig, f"[{fmt(r['low'])}, {fmt(r['high'])}]",
               fmt(r["p_boot"], 3), fmt(ph, 3), str(r["seeds"]), fmt(r["p_wilcoxon"], 3), fmt(pw, 3), r["note"]],
              [r["task"], r["a"], r["b"], r["delta"], r["low"], r["high"], r["p_boot"], ph, r["seeds"],
               r["p_wilcoxon"], pw, r["note"]])
    return t


# ------------------------------------------------------------------------------------------------ across tasks
def ranks_across_tasks(tasks: list[TaskReport]) -> tuple[Table | None, Figure | None, list[str]]:
    """Mean ranks of methods (each at its best setting per task) over tasks; CD diagram when >= 2 tasks
    and >= 3 methods."""
    notes: list[str] = []
    per: dict[str, dict[str, float]] = {}
    for t in tasks:
        d: dict[str, float] = {}
        for s in t.settings:
            g = _good(s, t.higher_is_better)
            if math.isfinite(g) and (s["method"] not in d or g > d[s["method"]]):
                d[s["method"]] = g
        if d:
            per[t.task] = d
    if len(per) < 2:
        return None, None, ["mean ranks need >= 2 tasks"]
    common = set.intersection(*(set(d) for d in per.values()))
    if len(common) < 2:
        return None, None, ["mean ranks need >= 2 methods run on every task"]
    scores = {t: {m: d[m] for m in sorted(common)} for t, d in per.items()}
    mr = mean_ranks(scores, higher_is_better=True)  # scores are in "goodness" units
    tab = Table("mean-ranks", "Mean rank across tasks (1 = best)", ["method", "mean rank", "tasks"])
    for m, r in sorted(mr.items(), key=lambda kv: kv[1]):
        tab.add([m, f"{r:.2f}", str(len(scores))], [m, r, len(scores)])
    fig = None
    if len(common) >= 3:
        fr = friedman_test(scores)
        cd = nemenyi_cd(len(common), len(scores))
        tab.note = (f"Friedman chi2 = {fr['statistic']:.3f}, p = {fr['p_value']:.3g}; Iman-Davenport F p = "
                    f"{fr['f_p_value']:.3g}; Nemenyi CD = {cd:.3f} (alpha 0.05)")
        fig = Figure("cd", "critical-difference diagram", plots.critical_difference_plot(mr, cd),
                     f"{len(common)} methods over {len(scores)} tasks")
    else:
        notes.append("critical-difference diagram needs >= 3 methods")
    return tab, fig, notes
