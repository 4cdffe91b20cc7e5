"""``medprobe study --plan``: cells, extractions, encoder passes, GFLOPs (the encoders' counted FLOPs) and GPU-hours
per study table, checked against numbers computed by hand from the same FLOP counter."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medprobe.cli.main import main
from medprobe.encoders.flops import spec_gflops
from medprobe.pipeline.study_plan import STUDY_SIZES, plan_lines, study_plan
from medprobe.pipeline.sweep import expand, sweep_from_dict

GRID = {"encoder": ["dinov3-vits16"], "resolution": [224, 256], "head": ["linear", "logreg"], "seed": [0, 1]}


@pytest.fixture(autouse=True)
def _flops_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # counted FLOPs are remembered here


def _sweep() -> dict:
    return {"name": "mini-study", "tasks": [{"name": "nih14", "dataset": "phantom:xray2d-binary"},
                                            {"name": "msd-heart", "dataset": "phantom:ct3d-binary",
                                             "grid": {"resolution": [224], "fold": [0, 1]},
                                             "split": {"folds": 5}}], "grid": GRID}


def test_plan_counts_cells_extractions_passes_and_gflops() -> None:
    sw = sweep_from_dict(_sweep())
    plan = study_plan(sw, count_data=False)
    cells = expand(sw)
    nih = STUDY_SIZES["nih14"].items
    heart = STUDY_SIZES["msd-heart"]
    g224, g256 = spec_gflops("dinov3-vits16", 224), spec_gflops("dinov3-vits16", 256)
    assert g224 and g256
    # nih14: 2 resolutions x 2 heads x 2 seeds = 8 cells, 2 extractions; msd-heart: 2 folds x 2 x 2 = 8, 1 extraction
    assert sum(plan.cells_by_table.values()) == len(cells) == 16
    by_task = {}
    for g in plan.groups:
        by_task.setdefault(g.task, []).append(g)
    assert sorted(g.resolution for g in by_task["nih14"]) == [(224, 224), (256, 256)]
    assert [g.cells for g in by_task["nih14"]] == [4, 4] and len(by_task["msd-heart"]) == 1
    assert by_task["msd-heart"][0].cells == 8  # the fold axis shares one extraction
    assert sum(g.passes for g in by_task["nih14"]) == 2 * nih
    assert by_task["msd-heart"][0].passes == heart.items * heart.per_item  # one pass per slice
    total = sum(g.gflops for g in plan.groups)
    assert total == pytest.approx(nih * (g224 + g256) + heart.items * heart.per_item * g224)
    plan.gflops_per_s, plan.gpu, plan.speed_from = 1000.0 * g224, "H100", "given"
    lines = plan_lines(plan)
    tot = next(x for x in lines if x.strip().startswith("total"))
    assert f"{total / (1000.0 * g224) / 3600:.1f}" in tot and " 16 " in tot and " 3 " in tot
    # grouped by the paper's table numbers, as medprobe study's coverage prints them
    assert any(x.strip().startswith("Table 2. Chest X-ray") and "112,120 images" in x for x in lines)
    assert any(x.strip().startswith("Tables 10-11. MSD 3D segmentation") and "20 volumes" in x for x in lines)
    assert plan.cells_by_table == {"2": 8, "10-11": 8}


def test_study_plan_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "mini.yaml"
    p.write_text(yaml.safe_dump(_sweep()), encoding="utf-8")
    assert main(["study", "--sweep", str(p), "--data-root", str(tmp_path), "--plan", "--gpu", "A100",
                 "--images-per-s", "1500", "--reference", "dinov3-vits16@224"]) == 0
    out = capsys.readouterr().out
    assert "GPU-hours on A100" in out and "dinov3-vits16@224 at 1,500 img/s, given" in out
    assert "head training not included" in out
    assert main(["study", "--sweep", str(p), "--data-root", str(tmp_path), "--plan", "--db", str(tmp_path / "db")]) == 0
    assert "give --images-per-s N" in capsys.readouterr().out  # no speed given, none measured in the database
    assert main(["study", "--sweep", str(p), "--plan", "--images-per-s", "10", "--reference", "none@224"]) == 2
    assert "cannot be counted" in capsys.readouterr().err


def test_speed_measured_in_the_results_database(tmp_path: Path) -> None:
    from medprobe.pipeline.study_plan import speed_from_db
    from medprobe.results import ResultsDB

    db = ResultsDB(tmp_path / "db")
    rec = {"task": "t", "task_type": "binary", "encoder": "dinov3-vitb16", "head": "logreg", "config": {}}
    for i, (ips, gpu, cached) in enumerate([(1000.0, "NVIDIA A100-SXM4-80GB", False), (3000.0, "NVIDIA A100", False),
                                            (2000.0, "NVIDIA A100", False), (9999.0, "NVIDIA A100", True),
                                            (50.0, "cpu", False)]):
        db.add_run({**rec, "config_hash": f"h{i}", "timings": {"cached": cached},
                    "compute": {"images_per_s": ips, "gflops": 35.0, "device": f"cuda:0 ({gpu})"}}, {"auc": 0.5})
    speed, why = speed_from_db(db, "a100")
    assert speed == 2000.0 * 35.0 and "median of 3 measured extraction(s)" in why  # cached reruns do not count
    assert speed_from_db(db, "H100") is None
