"""Results written by milestone-1 medprobe (schema 1, tests/fixtures/results-m1) still load in ``results`` and
``report`` after the task-family change; the database is upgraded in place to schema 2 (open task types)
without losing a row or a metric, and then takes rows of new families."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from medprobe.cli.main import main
from medprobe.pipeline.run import run_task
from medprobe.pipeline.task import parse_task
from medprobe.results import SCHEMA_VERSION, ResultsDB

FIXTURE = Path(__file__).parent / "fixtures" / "results-m1"


def _counts(db: Path) -> tuple[int, int, int]:
    con = sqlite3.connect(db)
    try:
        ver = con.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        return (ver, con.execute("SELECT COUNT(*) FROM runs").fetchone()[0],
                con.execute("SELECT COUNT(*) FROM metrics").fetchone()[0])
    finally:
        con.close()


def test_milestone1_results_load_after_upgrade(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "old"
    shutil.copytree(FIXTURE, root)
    db_path = root / "results.db"
    ver, n_runs, n_metrics = _counts(db_path)
    assert (ver, n_runs) == (1, 3) and n_metrics > 0
    old_auc = {}
    con = sqlite3.connect(db_path)
    for run_id, value in con.execute("SELECT run_id, value FROM metrics WHERE name = 'auc'"):
        old_auc[run_id] = value
    con.close()

    assert main(["results", "list", "--db", str(root), "--metric", "auc"]) == 0
    out = capsys.readouterr().out
    assert all(r[:8] in out for r in old_auc) and "decoder2d" in out
    assert _counts(db_path) == (SCHEMA_VERSION, n_runs, n_metrics)  # upgraded, nothing lost
    db = ResultsDB(root)
    for r in db.runs():
        if r["run_id"] in old_auc:
            assert r["metrics"]["auc"][0] == pytest.approx(old_auc[r["run_id"]])
        assert db.load_predictions(r["run_id"])  # prediction files still found
    html = tmp_path / "report.html"
    assert main(["report", "--db", str(root), "--out", str(html), "--no-pca", "--bootstrap", "50"]) == 0
    text = html.read_text(encoding="utf-8")
    assert "logreg" in text and "knn" in text and "Rows: 3" in text
    # a new family's row joins the upgraded database
    spec = parse_task({"name": "diam", "dataset": "phantom:xray2d-regression", "data": {"n": 40, "size": 32},
                       "encoder": "none", "heads": ["ridge"], "preprocess": {"resolution": 32},
                       "split": {"fractions": [0.6, 0.2, 0.2]}, "metrics": {"bootstrap": 50},
                       "cache_dir": str(tmp_path / "cache")})
    run_task(spec, db=db, verbose=False)
    assert [r["task_type"] for r in db.runs()].count("regression") == 1
    assert _counts(db_path)[1] == n_runs + 1
