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
    # titles as the reference file prints them (report/paper_tables.json), then the paper's protocol
    assert "Table 8. EDD 2020 (%; baselines from EAT [81])" in lines and \
        "Table 2. Chest X-ray linear probe (all at 256×256)" in lines
    t8 = out.split("Table 8.")[1].split("Table 9.")[0]
    assert "tasks: edd2020 (2 cells)" in t8 and "  the paper's protocol: decoder2d" in t8
    assert any(x.split() == ["DINOv3-S", "reproducible"] for x in t8.splitlines())
    assert any(x.split() == ["DINOv3-B", "untrained-only"] for x in t8.splitlines())
    l_row = next(x for x in t8.splitlines() if x.strip().startswith("DINOv3-L"))  # a printed row the sweep lacks
    assert "not in the sweep (dinov3-vitl16 is not in this sweep's grid)" in l_row
    assert "not supported: TransUnet, Unet, HarDNet" in t8
    assert "EAT -- a trained method quoted from the literature" in t8
    assert f"data of edd2020: {tmp_path / 'data' / 'edd2020'}" in t8
    assert "weights not found: B -> run UNTRAINED (random weights)" in t8
    assert f"dinov3-vitb16: {tmp_path / 'w' / 'missing.pth'}" in out  # where the weights were looked for
    t2 = out.split("Table 2.")[1].split("Table 3.")[0]
    # the grid has logreg, not the study's linear probe: each row says what its cell needs
    s_row = next(x for x in t2.splitlines() if x.strip().startswith("DINOv3-S"))
    assert "not in the sweep (medprobe produces it; needs a cell with head linear, which this sweep lacks (data " \
        "missing))" in s_row
    assert "not in the sweep (biomedclip is not in this sweep's grid)" in t2
    assert "data of nih14 MISSING (data.root)" in t2
    assert f"{tmp_path / 'data' / 'nih-chestxray14'}" in t2  # where it looked
    assert "Not a study task: pneumonia-toy" in out
    # pneumonia-toy (no study table) needs no files: its 2 cells count as found
    assert "cells: 6 in the grid: 2 reproducible (data + weights), 2 untrained-only (UNTRAINED pipeline checks), " \
        "0 missing weights, 2 missing data" in out
    wsi = next(x for x in lines if "not in this sweep (tasks" in x and "camelyon16-to-17" in x)  # a whole-slide table
    assert "camelyon16-to-17" in wsi
    assert "would run 4 of 4 runnable cell(s):" in out and "edd2020/dinov3-vitb16" in out
    assert "pneumonia-toy/dinov3-vits16" in out
    assert main(["study", "--sweep", str(y), "--data-root", str(tmp_path / "data"), "--dry-run", "--trained-only",
                 "--db", str(tmp_path / "db")]) == 0
    out = capsys.readouterr().out
    assert "would run 2 of 2 runnable cell(s):" in out and "edd2020/dinov3-vitb16" not in out.split("would run")[1]
    assert "weights not found: B -> left out (--trained-only)" in out
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
    from medprobe.pipeline.study_tables import STUDY_TABLES

    assert all(t.title in out for t in STUDY_TABLES)
    assert "msd-hippocampus (30 cells)" in out
    s_row = next(x for x in out.split("Tables 10-11.")[1].splitlines() if x.strip().startswith("DINOv3-S"))
    assert "untrained-only: msd-hippocampus" in s_row  # data found; no DINOv3 weights on this machine
    assert f"data of msd-hippocampus: {shared_data / 'msd-task04-hippocampus'}" in out
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
    from medprobe.report.study import load_study_why

    why = load_study_why(db)  # the reasons the report shows in cells without a run (medprobe report reads them)
    assert why["nih14"].startswith("missing data: data.root of task nih14 not found (looked in ")
    assert why["msd-hippocampus:dinov3-vits16"].startswith("missing weights (")
    assert why["camus:MIND + ConvexAdam"].startswith("not in the sweep: medprobe produces it, encoder-free")
