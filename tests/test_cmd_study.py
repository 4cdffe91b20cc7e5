"""``medprobe study``: table-by-table coverage (data and weights found or missing), torch-free until it runs, and a
run of the runnable part on ../shared/data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medprobe.cli.main import main

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "sweeps" / "dinov3-medical.yaml"


def _small_sweep(tmp_path: Path) -> Path:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth").write_bytes(b"")
    y = tmp_path / "study.yaml"
    y.write_text(f"""name: mini-study
tasks:
  - {{task: {REPO / 'tasks' / 'seg-edd2020.yaml'}, name: edd2020, grid: {{head: [decoder2d]}}}}
  - {{task: {REPO / 'tasks' / 'nih14.yaml'}}}
  - {{name: pneumonia-toy, dataset: "medmnist:pneumoniamnist"}}
grid:
  encoder: [dinov3-vits16, dinov3-vitb16]
  weights:
    dinov3-vits16: {tmp_path / 'w' / 'dinov3_vits16_pretrain_lvd1689m-08c60483.pth'}
    dinov3-vitb16: {tmp_path / 'w' / 'missing.pth'}
  head: [logreg]
""", encoding="utf-8")
    (tmp_path / "data" / "edd2020").mkdir(parents=True)
    return y


def test_coverage_table_by_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    y = _small_sweep(tmp_path)
    assert main(["study", "--sweep", str(y), "--data-root", str(tmp_path / "data"), "--dry-run",
                 "--db", str(tmp_path / "db")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "Table: 2D segmentation (endoscopy)" in lines and any(x.startswith("Table: 3D segmentation") for x in lines)
    edd = next(x for x in lines if x.strip().startswith("edd2020"))
    assert "S: reproducible" in edd and "B: untrained" in edd and "2 cells" in edd
    assert f"data: {tmp_path / 'data' / 'edd2020'}" in out
    assert "missing.pth): runs UNTRAINED" in out
    nih = next(x for x in lines if x.strip().startswith("nih14"))
    assert "S: no data" in nih and "B: no data" in nih
    assert f"{tmp_path / 'data' / 'nih-chestxray14'}" in out  # where it looked
    assert "Not a study task: pneumonia-toy" in out
    assert "cells: 1 reproducible (data + weights), 1 runnable only as UNTRAINED pipeline checks, 2 without data" \
        in out
    wsi = next(x for x in lines if "not in this sweep (" in x and "camelyon16" in x)  # the whole-slide table
    assert "bcnb-er" in wsi and "camelyon16-to-17" in wsi
    assert "would run 2 of 2 runnable cell(s):" in out and "edd2020/dinov3-vitb16" in out
    assert main(["study", "--sweep", str(y), "--data-root", str(tmp_path / "data"), "--dry-run", "--trained-only",
                 "--db", str(tmp_path / "db")]) == 0
    out = capsys.readouterr().out
    assert "would run 1 of 1 runnable cell(s):" in out and "edd2020/dinov3-vitb16" not in out.split("would run")[1]
    assert main(["study", "--sweep", str(y), "--task", "nope", "--dry-run"]) == 2
    assert main(["study", "--sweep", str(y), "--set", "bogus", "--data-root", str(tmp_path / "data")]) == 2


def test_study_dry_run_on_shared_data_is_torch_free(shared_data: Path, tmp_path: Path) -> None:
    code = ("import sys; from medprobe.cli.main import main; "
            f"rc = main(['study', '--sweep', {str(SWEEP)!r}, '--data-root', {str(shared_data)!r}, '--dry-run', "
            f"'--db', {str(tmp_path / 'db')!r}]); print('TORCH', 'torch' in sys.modules, 'RC', rc)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "TORCH False RC 0" in out
    assert out.count("Table: ") == 8
    hip = next(x for x in out.splitlines() if x.strip().startswith("msd-hippocampus"))
    assert "30 cells" in hip and "S: untrained" in hip  # data found; no DINOv3 weights on this machine
    assert f"data: {shared_data / 'msd-task04-hippocampus'}" in out
    assert "would run 30 of 30 runnable cell(s):" in out


def test_study_runs_the_runnable_part_on_shared_data(shared_data: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from medprobe.results import ResultsDB

    db = tmp_path / "db"
    # a fast check: one cell, 8 cases, the image-only encoder at 32 px, one short epoch (each recorded)
    rc = main(["study", "--sweep", str(SWEEP), "--data-root", str(shared_data), "--db", str(db),
               "--cache-dir", str(tmp_path / "cache"), "--task", "msd-hippocampus", "--limit", "1",
               "--set", "encoder=none", "--set", "data.limit=8", "--set", "preprocess.resolution=32",
               "--set", "head_params.decoder3d.epochs=1", "--set", "head_params.decoder3d.iters_per_epoch=2",
               "--set", "head_params.decoder3d.val_cases=1", "--set", "head_params.decoder3d.width=8",
               "--set", "metrics.bootstrap=20", "--set", "audit.mode=off", "--set", "features.progress=false"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "--limit 1: 29 cell(s) left for a later run" in out and "1 ran" in out
    runs = ResultsDB(db).runs()
    assert len(runs) == 1
    r = runs[0]
    assert r["task"] == "msd-hippocampus" and r["config"]["dataset"] == f"msd:{shared_data / 'msd-task04-hippocampus'}"
    assert r["config"]["split"] == {**r["config"]["split"], "kind": "folds", "folds": 5, "fold": 0}
    assert r["sweep"] == "dinov3-medical" and not r["pretrained"] and 0 <= r["metrics"]["dice"][0] <= 1
