"""k-fold cross-validation as a sweep axis, aggregated over folds (mean and CI across folds and over cases)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from medprobe.errors import ConfigError
from medprobe.pipeline.sweep import expand, run_sweep, sweep_from_dict
from medprobe.report.folds import fold_summaries, t_interval


def _cv_sweep(dataset: str, data: dict, fold: object = "all", cache: Path | None = None) -> dict:  # type: ignore[type-arg]
    task = {"name": "msd-hippocampus", "kind": "segmentation", "dataset": dataset, "data": data,
            "split": {"folds": 5, "fold": 0, "val_fraction": 0.2}, "encoder": "none",
            "preprocess": {"resolution": 32}, "features": {"progress": False}, "heads": ["decoder3d"],
            "head_params": {"decoder3d": {"width": 8, "epochs": 1, "iters_per_epoch": 2, "batch_size": 1,
                                          "crop_depth": 8, "val_cases": 1}},
            "metrics": {"bootstrap": 50, "overlays": 0}, "audit": {"mode": "off"}}
    if cache is not None:
        task["cache_dir"] = str(cache)
    return {"name": "cv", "tasks": [task], "grid": {"fold": fold}}


def test_fold_axis_expands_to_every_fold() -> None:
    sw = sweep_from_dict(_cv_sweep("phantom:mri3d-segmentation", {}))
    cells = expand(sw)
    assert [c.axes["fold"] for c in cells] == [0, 1, 2, 3, 4]
    assert [c.spec.split.fold for c in cells] == [0, 1, 2, 3, 4]
    assert all(c.spec.split.folds == 5 and c.spec.split.val_fraction == 0.2 for c in cells)
    assert cells[3].key == "msd-hippocampus/none/r32/f3/Ldefault/decoder3d/ball/s0"
    assert len({c.config_hash for c in cells}) == 5
    assert [c.axes["fold"] for c in expand(sweep_from_dict(_cv_sweep("phantom:mri3d-segmentation", {},
                                                                     fold=[1, 3])))] == [1, 3]
    for bad in ([5], [1, 1], "x"):
        with pytest.raises(ConfigError, match="grid.fold"):
            expand(sweep_from_dict(_cv_sweep("phantom:mri3d-segmentation", {}, fold=bad)))
    d = _cv_sweep("phantom:mri3d-segmentation", {})
    d["tasks"][0]["split"] = {"fractions": [0.6, 0.2, 0.2]}
    with pytest.raises(ConfigError, match="needs split: {folds: k}"):
        expand(sweep_from_dict(d))
    no_axis = _cv_sweep("phantom:mri3d-segmentation", {})
    del no_axis["grid"]
    cells = expand(sweep_from_dict(no_axis))
    assert len(cells) == 1 and "/f0/" not in cells[0].key  # keys without the axis are unchanged


def test_fold_axis_drives_a_datasets_own_folds() -> None:
    """BCNB-style tasks pick their fold through data.fold: the axis sets it, and the report groups the rows."""
    from medprobe.report.folds import fold_of

    sw = sweep_from_dict({"name": "cv", "tasks": [{"task": "tasks/bcnb-er.yaml"}],
                          "grid": {"fold": "all", "head": ["abmil"]}},
                         source=str(Path(__file__).resolve().parents[1] / "sweeps" / "x.yaml"))
    cells = expand(sw)
    assert [c.spec.data["fold"] for c in cells] == [0, 1, 2, 3, 4]
    assert all(c.spec.data["target"] == "ER" and c.spec.data["folds"] == 5 for c in cells)
    assert len({c.config_hash for c in cells}) == 5 and cells[2].key.split("/")[3] == "f2"
    assert [fold_of({"config": c.spec.to_dict()}) for c in cells] == [(i, 5) for i in range(5)]


def test_t_interval_by_hand() -> None:
    m, lo, hi = t_interval([0.70, 0.74, 0.72, 0.76, 0.68])
    sd = float(np.std([0.70, 0.74, 0.72, 0.76, 0.68], ddof=1))
    half = 2.7764451051977987 * sd / math.sqrt(5)  # t_{0.975, 4}
    assert m == pytest.approx(0.72) and lo == pytest.approx(0.72 - half) and hi == pytest.approx(0.72 + half)
    assert math.isnan(t_interval([0.5])[1]) and math.isnan(t_interval([])[0])


def test_hippocampus_5fold_cv_one_sweep_with_aggregation(shared_data: Path, tmp_path: Path) -> None:
    from medprobe.report import build_report
    from medprobe.report.analyze import collect
    from medprobe.results import ResultsDB

    sw = sweep_from_dict(_cv_sweep(f"msd:{shared_data / 'msd-task04-hippocampus'}", {"limit": 10},
                                   cache=tmp_path / "cache"))
    db = ResultsDB(tmp_path / "db")
    res = run_sweep(sw, db=db, echo=lambda s: None)
    assert res["ran"] == 5 and res["failed"] == 0
    runs = db.runs()
    assert sorted(r["config"]["split"]["fold"] for r in runs) == [0, 1, 2, 3, 4]
    tested = [cid for r in runs for cid in db.load_predictions(r["run_id"])["ids"].tolist()]
    assert len(tested) == 10 and len(set(tested)) == 10  # every case tested exactly once over the folds
    rows = fold_summaries(collect(runs), db, n_boot=200)
    assert len(rows) == 1
    r = rows[0]
    per_fold = [next(x for x in runs if x["config"]["split"]["fold"] == f)["metrics"]["dice"][0] for f in range(5)]
    assert r["folds"] == [0, 1, 2, 3, 4] and r["scores"] == pytest.approx(per_fold)
    assert r["mean"] == pytest.approx(float(np.mean(per_fold))) and r["low"] < r["mean"] < r["high"]
    per_case = np.concatenate([db.load_predictions(x["run_id"])["values"][:, list(
        db.load_predictions(x["run_id"])["metric_names"]).index("dice")] for x in runs])
    assert r["n_cases"] == 10 and r["cases_mean"] == pytest.approx(float(np.nanmean(per_case)))
    assert r["cases_low"] <= r["cases_mean"] <= r["cases_high"]
    out = build_report(db, tmp_path / "report.html", pca=False, n_boot=50)
    md = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "Cross-validation: aggregation over folds" in md and "| 5/5 |" in md
    with open(tmp_path / "report-cross-validation.csv", encoding="utf-8", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 1 and float(table[0]["mean"]) == pytest.approx(r["mean"])
    assert int(table[0]["n_cases"]) == 10
