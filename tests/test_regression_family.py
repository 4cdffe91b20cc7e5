"""The regression task family end to end: phantoms with a known continuous target (lesion diameter in mm)
and real MSD hippocampus MRI with each case's labelled hippocampus volume in mm^3 as the target."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from medprobe.cli.main import main
from medprobe.pipeline.run import run_task
from medprobe.pipeline.task import parse_task
from medprobe.results import ResultsDB


@pytest.fixture(scope="module", autouse=True)
def _single_thread(single_thread: None) -> None:
    """Module-wide: see conftest.single_thread."""


def test_phantom_diameter_ridge_on_none_reaches_r2_09(tmp_path: Path) -> None:
    spec = parse_task({"name": "diam", "dataset": "phantom:xray2d-regression", "data": {"n": 200, "size": 64},
                       "encoder": "none", "heads": ["ridge", "linear"], "preprocess": {"resolution": 64},
                       "features": {"token": "mean"}, "split": {"fractions": [0.6, 0.2, 0.2]},
                       "metrics": {"bootstrap": 200}, "cache_dir": str(tmp_path / "cache")})
    rows = run_task(spec, db=ResultsDB(tmp_path / "res"), verbose=False)
    by = {r["head"]: r for r in rows}
    r2, lo, hi = by["ridge"]["metrics"]["r2"]
    assert r2 >= 0.9 and lo <= r2 <= hi
    for r in rows:
        assert set(r["metrics"]) >= {"mae", "rmse", "r2", "pearson_r"}
        rec = r["record"]
        assert rec["task_type"] == "regression" and rec["config"]["family"] == "regression"
    assert by["ridge"]["record"]["head_params"]["selected"]["alpha"] > 0
    # the stored predictions are the scored ones: recompute MAE from them
    db = ResultsDB(tmp_path / "res")
    p = db.load_predictions(by["ridge"]["run_id"])
    assert np.mean(np.abs(p["y_true"] - p["y_pred"])) == pytest.approx(by["ridge"]["metrics"]["mae"][0])
    # the same numbers again from the same config + seed (features now from the cache)
    again = run_task(spec, db=ResultsDB(tmp_path / "res2"), verbose=False)
    assert again[0]["metrics"]["r2"] == by["ridge"]["metrics"]["r2"]


def test_ct3d_phantom_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "--dataset", "phantom:ct3d-regression", "--data-opt", "n=40", "--data-opt", "size=[32,32,12]",
            "--encoder", "none", "--head", "ridge", "--resolution", "32", "--token", "mean",
            "--db", str(tmp_path / "res"), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "mae" in out and "r2" in out and "ridge" in out


def test_hippocampus_volume_from_the_image(shared_data: Path, tmp_path: Path) -> None:
    """Target: each case's hippocampus (anterior + posterior) volume in mm^3, from its label and spacing."""
    import nibabel as nib

    root = shared_data / "msd-task04-hippocampus"
    labels = sorted((root / "labelsTr").glob("hippocampus_*.nii.gz"))[:60]
    rows = []
    for lab in labels:
        img = nib.load(str(lab))
        vox = float(np.prod(img.header.get_zooms()[:3]))
        rows.append({"path": str(root / "imagesTr" / lab.name),
                     "volume_mm3": f"{float((np.asarray(img.dataobj) > 0).sum()) * vox:.3f}"})
    csv_path = tmp_path / "volumes.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "volume_mm3"])
        w.writeheader()
        w.writerows(rows)
    spec = parse_task({"name": "hippo-volume", "dataset": f"volumes:{csv_path}",
                       "data": {"task": "regression", "label_columns": "volume_mm3", "modality": "mri"},
                       "encoder": "none", "heads": ["ridge"], "preprocess": {"resolution": 48},
                       "features": {"token": "mean", "pooling": "mean"}, "split": {"fractions": [0.6, 0.2, 0.2]},
                       "metrics": {"bootstrap": 200}, "cache_dir": str(tmp_path / "cache")})
    out = run_task(spec, db=ResultsDB(tmp_path / "res"), verbose=True)[0]
    m = out["metrics"]
    truth = np.asarray([float(r["volume_mm3"]) for r in rows])
    assert out["record"]["split"]["n_test"] == 12 and out["record"]["notes"]["target"] == "volume_mm3"
    # MAE in mm^3, with a CI; a real image-based estimate is better than predicting nothing (MAE of 0)
    mae, lo, hi = m["mae"]
    assert 0 < lo <= mae <= hi and mae < np.abs(truth - truth.mean()).mean() * 3
    for k in ("rmse", "r2", "pearson_r"):
        assert np.isfinite(m[k][0])
