"""Report panels of issue 27: calibration (table + reliability diagrams from stored probabilities), few-shot
(kshot budgets, metric vs k), retrieval and survival tables -- from one results database of real runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medprobe.metrics.calibration import reliability_curve


@pytest.mark.shared_data
def test_report_shows_calibration_fewshot_retrieval(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "medmnist"
    if not (root / "pneumoniamnist.npz").is_file():
        pytest.skip(f"{root / 'pneumoniamnist.npz'} is absent")
    from medprobe.pipeline.run import run_task
    from medprobe.pipeline.task import parse_task
    from medprobe.report import build_report
    from medprobe.results import ResultsDB

    db = ResultsDB(tmp_path / "db" / "r.db")
    base = {"name": "pneu", "dataset": "medmnist:pneumoniamnist", "data": {"root": str(root), "limit": "200,40,100"},
            "encoder": "none", "preprocess": {"resolution": 16}, "metrics": {"bootstrap": 50},
            "cache_dir": str(tmp_path / "cache"), "audit": {"mode": "off"}}
    run_task(parse_task({**base, "heads": ["knn", "prototype"]}), db=db, verbose=False)
    for b in ("kshot:2x3", "kshot:8x3"):
        run_task(parse_task({**base, "heads": ["prototype", "simpleshot"], "budget": b}), db=db, verbose=False)
    run_task(parse_task({**base, "name": "pneu-retrieval", "kind": "retrieval", "heads": ["cosine"]}), db=db,
             verbose=False)
    out = build_report(db, tmp_path / "report.html", pca=False, n_boot=50)
    html = out.read_text(encoding="utf-8")
    md = out.with_suffix(".md").read_text(encoding="utf-8")
    for title in ("Calibration", "Few-shot", "Retrieval"):
        assert f">{title}<" in html, title
    assert html.count("reliability-") >= 2 and "fewshot-pneu" in html
    assert "ece_mass" in md and "map@5" in md and "within_map@5" in md
    fewshot = md.split("Few-shot (mean over seeded draws")[1]
    assert "simpleshot" in fewshot and "prototype" in fewshot


def test_reliability_curve_multilabel_pools_labels() -> None:
    y = np.array([[1, 0], [0, 1], [1, 1]])
    s = np.array([[0.9, 0.2], [0.1, 0.7], [0.8, 0.6]])
    r = reliability_curve(y, s, "multilabel", strategy="width", n_bins=2)
    assert r.count.tolist() == [2, 4]  # six case x label probabilities: 0.2, 0.1 | 0.9, 0.7, 0.8, 0.6
    np.testing.assert_allclose(r.accuracy, [0.0, 1.0])
