"""Sweeps: grid expansion, resumption after a kill (only missing cells run), cell tags and compute columns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medprobe.errors import ConfigError
from medprobe.pipeline.sweep import expand, load_sweep, run_sweep, sweep_from_dict
from medprobe.results import ResultsDB

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "base": {"dataset": "phantom:xray2d-binary", "data": {"n": 24, "size": 32}, "encoder": "none",
             "split": {"fractions": [0.5, 0.2, 0.3]}, "features": {"progress": False},
             "metrics": {"bootstrap": 50}, "head_params": {"logreg": {"Cs": [1.0]}}},
    "tasks": [{"name": "xa"}, {"name": "xb", "data": {"seed": 1}}],
    "grid": {"resolution": [32, 64], "head": ["logreg"], "seed": [0, 1, 2]},
}


def test_expand_order_axes_and_layers() -> None:
    sw = sweep_from_dict({
        "base": {"dataset": "phantom:xray2d-binary"},
        "tasks": [{"name": "a"}],
        "grid": {"encoder": ["dinov3-vits16", "dinov3-vitl16"], "weights": {"dinov3-vits16": "/w/s.pth"},
                 "resolution": [112, "native"], "layer": "all", "head": ["logreg", "knn"],
                 "budget": [0.1, "5/class"], "seed": [0, 1]},
    })
    cells = expand(sw)
    assert len(cells) == (12 + 24) * 2 * 2 * 2 * 2
    assert [c.index for c in cells] == list(range(1, len(cells) + 1))
    assert len({c.config_hash for c in cells}) == len(cells)
    # outer axes change slowest: one extraction per (task, encoder, resolution) group, contiguous
    groups = [c.group for c in cells]
    assert len({g for g in groups}) == 4 and sum(a != b for a, b in zip(groups, groups[1:])) == 3
    c0 = cells[0]
    assert c0.spec.weights == "/w/s.pth" and (c0.spec.features.layers, c0.spec.features.select) == ("all", 0)
    assert c0.spec.preprocess.resolution == (112, 112)
    big = [c for c in cells if c.axes["encoder"] == "dinov3-vitl16"]
    assert big[0].spec.weights is None  # not in the weights map -> random (labelled untrained by the pipeline)
    assert {c.axes["layer"] for c in big} == set(range(24))
    native = [c for c in cells if c.axes["resolution"] == "native"]
    assert native and all(c.spec.preprocess.resolution is None for c in native)
    assert c0.spec.notes["sweep"] == sw.name and c0.spec.notes["cell"] == c0.key


def test_sweep_yaml_errors(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"tasks": ["nope.yaml"], "grid": {"encoder": ["none"]}}), encoding="utf-8")
    with pytest.raises(ConfigError, match="not found"):
        load_sweep(p)
    p.write_text(yaml.safe_dump({"tasks": [{"name": "a"}], "grid": {"colour": [1]}}), encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown key 'grid.colour'"):
        load_sweep(p)


def test_study_and_demo_configs() -> None:
    sw = load_sweep(REPO / "sweeps" / "dinov3-medical.yaml", skip_missing=True)
    cells = expand(sw)
    tasks = {c.axes["task"] for c in cells}
    assert {"nih14", "rsna-pneumonia", "ct-rate", "kvasir-capsule", "autolaparo"} <= tasks
    nih = {c.axes["resolution"] for c in cells if c.axes["task"] == "nih14"}
    assert nih == {"224", "256", "384", "512", "768", "1024"}
    dinov3 = {"dinov3-vits16", "dinov3-vitb16", "dinov3-vitl16"}
    # DINOv3 S/B/L everywhere, and the study's comparison encoders on their tables (issue 10)
    assert dinov3 <= {c.axes["encoder"] for c in cells}
    assert {c.axes["encoder"] for c in cells if c.axes["task"] == "nih14"} == dinov3 | {"biomedclip", "rad-dino",
                                                                                          "resnet50"}
    assert {"ct-clip", "swin-unetr"} <= {c.axes["encoder"] for c in cells if c.axes["task"] == "ct-rate"}
    assert {"resnet50", "uni", "conch"} <= {c.axes["encoder"] for c in cells if c.axes["task"] == "camelyon16"}
    assert all(c.spec.weights for c in cells)  # every encoder has a path for the user to fill
    from medprobe.pipeline.demo import DEMO_SWEEP

    assert yaml.safe_load((REPO / "sweeps" / "demo.yaml").read_text(encoding="utf-8")) == DEMO_SWEEP


def _start(cfg: Path, db: Path, cache: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-m", "medprobe.cli.main", "sweep", str(cfg), "--db", str(db),
                             "--cache-dir", str(cache)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)


def test_killed_sweep_reruns_only_missing_cells(tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY), encoding="utf-8")
    db_path, cache = tmp_path / "db", tmp_path / "cache"
    proc = _start(cfg, db_path, cache)
    seen: list[str] = []
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    for line in proc.stdout:  # kill as soon as 4 cells are stored
        seen.append(line)
        if sum("finished:" in s for s in seen) >= 4 or time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    db = ResultsDB(db_path)
    first = db.runs()
    assert 4 <= len(first) < 12, "".join(seen)
    done_hashes = {r["config_hash"] for r in first}

    log: list[str] = []
    res = run_sweep(load_sweep(cfg), db=db, cache_dir=str(cache), echo=log.append)
    assert res["skipped"] == len(first) and res["ran"] == 12 - len(first) and res["failed"] == 0
    skipped = [s for s in log if "done already: skipped" in s]
    running = [s for s in log if s.startswith("running cell")]
    assert len(skipped) == len(first) and len(running) == 12 - len(first)
    assert any(s.startswith("[tiny] ") and "ETA" in s for s in log)
    by_key = {c.key: c for c in expand(load_sweep(cfg))}
    for s in skipped:  # the skipped cells are exactly those stored before the kill
        assert by_key[s.split("skipped ")[1]].config_hash in done_hashes
    rows = db.runs()
    assert len(rows) == 12 and len({r["config_hash"] for r in rows}) == 12
    assert {r["sweep"] for r in rows} == {"tiny"}
    assert {r["labels"]["cell"] for r in rows} == set(by_key)
    for r in rows:  # compute beside every score, also for runs that reused cached features
        assert "gflops" in r["compute"] and r["compute"]["images_per_s"] is not None
    assert any(r["timings"]["cached"] for r in rows)

    log.clear()
    again = run_sweep(load_sweep(cfg), db=db, cache_dir=str(cache), echo=log.append)
    assert again["ran"] == 0 and again["skipped"] == 12


def test_cli_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medprobe.cli.main import main

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY), encoding="utf-8")
    assert main(["sweep", str(cfg), "--db", str(tmp_path / "db"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "cell 12/12 todo" in out and "dry run: 0 done, 12 to run" in out
    assert not (tmp_path / "db" / "results.db").exists()
