"""Report: analysis content and the self-contained HTML / Markdown / CSV files, on a synthetic results DB."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from medprobe.report import build_report
from medprobe.report.analyze import collect, settings_of
from medprobe.report.pca import pca_rgb
from medprobe.report.reference import match_task, reference_rows
from medprobe.results import ResultsDB

ENCODERS = {"dinov3-vits16": (21.6, 12, 0.0), "dinov3-vitb16": (85.7, 12, 0.03), "dinov3-vitl16": (300.0, 24, 0.05)}


def _add(db: ResultsDB, task: str, enc: str, *, res: int = 224, layer: int | None = None, budget: float = 1.0,
         seed: int = 0, head: str = "logreg", pretrained: bool = True, n: int = 80) -> str:
    params, depth, boost = ENCODERS[enc]
    layer = depth - 1 if layer is None else layer
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    skill = 0.6 + boost + 0.02 * np.log2(res / 112) + 0.1 * budget + 0.01 * layer
    score = np.clip(y * skill + rng.normal(0, 0.35, n) + (1 - skill) * 0.5, 0, 1)
    proba = np.stack([1 - score, score], 1)
    from medprobe.metrics import bootstrap_ci

    ci = bootstrap_ci(y, proba, "binary", n_resamples=100, seed=0)
    cfg = {"task": task, "encoder": enc, "res": res, "layer": layer, "budget": budget, "seed": seed, "head": head}
    record = {
        "task": task, "task_type": "binary", "config": cfg, "config_hash": f"{abs(hash(str(cfg))):x}",
        "encoder": enc, "weights": "w.pth" if pretrained else "random", "pretrained": pretrained,
        "dataset": task, "split": {"budget": budget, "n_train": int(200 * budget), "n_test": n,
                                   "test_ids_hash": "same"},
        "seed": seed, "head": head, "layer": [layer], "resolution": [res, res],
        "compute": {"gflops": params * (res / 224) ** 2 * 0.2, "images_per_s": 1000 / params, "peak_rss_mb": 900.0},
        "notes": {"cache_key": "nope", "sweep": "syn"},
    }
    preds = {"ids": np.asarray([f"c{i}" for i in range(n)]), "y_true": y, "y_score": proba}
    return db.add_run(record, ci, predictions=preds)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("rep")
    db = ResultsDB(d / "db")
    for task in ("nih14", "rsna-pneumonia"):
        for enc in ENCODERS:
            for seed in (0, 1):
                for res in (112, 224, 448):
                    _add(db, task, enc, res=res, seed=seed)
    for layer in range(0, 12, 3):  # layer curve for one encoder, one task
        _add(db, "nih14", "dinov3-vits16", layer=layer)
    for b in (0.1, 0.25, 0.5):  # label-efficiency curve
        _add(db, "nih14", "dinov3-vitb16", budget=b)
    _add(db, "rsna-pneumonia", "dinov3-vits16", pretrained=False)
    out = build_report(db, d / "report.html", cache_dir=d / "cache", n_boot=100)
    assert out == d / "report.html"
    return d


def test_html_is_self_contained(report_dir: Path) -> None:
    text = (report_dir / "report.html").read_text(encoding="utf-8")
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', text)
    assert "url(" not in text and "@import" not in text
    imgs = re.findall(r'<img [^>]*src="([^"]+)"', text)
    assert imgs and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert "Content-Security-Policy" in text and 'id="status"' in text


def test_report_sections(report_dir: Path) -> None:
    text = (report_dir / "report.html").read_text(encoding="utf-8")
    assert 'id="untrained-banner"' in text and "pipeline check, not a score" in text
    for fig in ("nih14-params", "nih14-resolution", "nih14-layers", "nih14-labels", "nih14-pareto", "cd"):
        assert f'data-fig="{fig}"' in text, fig
    for tab in ("nih14-leaderboard", "nih14-verdicts", "nih14-compute", "comparisons", "mean-ranks",
                "study-table-2", "verdicts"):
        assert f'data-table="{tab}"' in text, tab
    assert "GFLOPs" in text and "images/s" in text and "peak mem MB" in text
    assert "PCA of patch features" in text and "panel skipped" in text  # cache key 'nope' is not found


def test_markdown_and_csv(report_dir: Path) -> None:
    md = (report_dir / "report.md").read_text(encoding="utf-8")
    assert "## Task: nih14" in md and "| rank | encoder |" in md
    lb = report_dir / "report-nih14-leaderboard.csv"
    rows = list(csv.DictReader(lb.open(encoding="utf-8")))
    assert rows and {"encoder", "auc", "low", "high", "gflops", "images_per_s"} <= set(rows[0])
    comp = list(csv.DictReader((report_dir / "report-comparisons.csv").open(encoding="utf-8")))
    assert len(comp) >= 6 and all(r["p_holm"] for r in comp)
    assert all(float(r["p_holm"]) >= float(r["p_boot"]) for r in comp)
    study = list(csv.DictReader((report_dir / "report-study-vs-measured.csv").open(encoding="utf-8")))
    assert {r["row"] for r in study if r["table"] == "2"} == {"BiomedCLIP", "DINOv3-S", "DINOv3-B", "DINOv3-L"}
    s = next(r for r in study if r["task"] == "nih14" and r["row"] == "DINOv3-S" and r["metric"] == "auc")
    assert float(s["paper"]) == 0.7788
    # logreg rows at 112-448 px are not the study's linear probe at 256 px: no paper-protocol cell, a best setting
    assert s["medprobe"] == "" and "not under the paper's protocol" in s["status"] and float(s["best"]) > 0.5


def test_verdicts_detect_resolution_trend(report_dir: Path) -> None:
    rows = list(csv.DictReader((report_dir / "report-verdicts.csv").open(encoding="utf-8")))
    axes = {r["axis"] for r in rows}
    assert {"model size", "resolution", "layer", "budget"} <= axes
    assert all(r["verdict"] in ("improves", "flat", "worsens") or r["verdict"].startswith("peaks at") for r in rows)


def test_settings_average_seeds(report_dir: Path) -> None:
    pts = collect(ResultsDB(report_dir / "db").runs())
    s = settings_of([p for p in pts if p["task"] == "nih14" and p["resolution"] == 112], "auc")
    assert {x["n_seeds"] for x in s} == {2}


def test_pca_rgb_range_and_shape() -> None:
    rng = np.random.default_rng(0)
    grids = [rng.normal(size=(16, 5, 7)), rng.normal(size=(16, 5, 7))]
    out = pca_rgb(grids)
    assert [o.shape for o in out] == [(5, 7, 3), (5, 7, 3)]
    assert all(o.min() >= 0 and o.max() <= 1 for o in out)


def test_reference_table() -> None:
    refs = reference_rows()
    assert any(r["task"] == "nih14" and r["encoder"] == "dinov3-vitl16" and r["value"] == 0.7865 for r in refs)
    assert match_task("NIH-14") == "nih14" and match_task("rsna") == "rsna-pneumonia" and match_task("x") is None


def test_empty_db(tmp_path: Path) -> None:
    out = build_report(ResultsDB(tmp_path / "none"), tmp_path / "r.html")
    assert "No results" in out.read_text(encoding="utf-8")
