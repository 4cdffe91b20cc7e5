"""Python API for notebooks: medprobe.run(task) and medprobe.results.load(db) -> pandas.DataFrame."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import medprobe
from medprobe.errors import ConfigError
from medprobe.pipeline import parse_task
from medprobe.results import ResultsDB, load
from medprobe.results.frame import run_row

pd = pytest.importorskip("pandas")


def _task(tmp: Path) -> dict[str, Any]:
    return {"name": "frame", "dataset": "phantom:xray2d-binary", "data": {"n": 24, "size": 32}, "encoder": "none",
            "preprocess": {"resolution": 32}, "split": {"fractions": [0.5, 0.2, 0.3]},
            "features": {"progress": False, "token": "mean"}, "metrics": {"bootstrap": 50},
            "heads": ["logreg", "knn"], "head_params": {"logreg": {"Cs": [1.0]}}, "cache_dir": str(tmp / "cache")}


def test_run_then_load(tmp_path: Path) -> None:
    db = tmp_path / "res" / "results.db"
    rows = medprobe.run(_task(tmp_path), db=db, verbose=False)  # a mapping
    assert [r["head"] for r in rows] == ["logreg", "knn"]
    yaml_file = tmp_path / "t.yaml"
    import yaml

    yaml_file.write_text(yaml.safe_dump({**_task(tmp_path), "name": "frame-yaml", "heads": ["logreg"], "seed": 2}))
    rows += medprobe.run(yaml_file, db=ResultsDB(db), verbose=False)  # a YAML path
    rows += medprobe.run(parse_task({**_task(tmp_path), "name": "frame-spec", "seed": 1}), db=db,
                         verbose=False)  # a TaskSpec
    assert len(rows) == 5

    df = load(db)
    assert isinstance(df, pd.DataFrame) and len(df) == 5
    assert list(df["run_id"]) == [r["run_id"] for r in rows]  # oldest first, one row per result
    by_id = df.set_index("run_id")
    for r in rows:
        value, low, high = r["metrics"]["auc"]
        got = by_id.loc[r["run_id"]]
        assert got["auc"] == pytest.approx(value) and got["auc_low"] == pytest.approx(low)
        assert got["auc_high"] == pytest.approx(high) and got["auc_low"] <= got["auc"] <= got["auc_high"]
    assert set(df["config.features.token"]) == {"mean"}
    assert set(df["config.preprocess.resolution"]) == {(32, 32)}  # lists become tuples (groupable)
    assert set(df["task"]) == {"frame", "frame-yaml", "frame-spec"} and set(df["encoder"]) == {"none"}
    assert "timings.total_s" in df.columns and str(df["created"].dtype).startswith("datetime64")
    assert df.groupby("head")["auc"].count().to_dict() == {"knn": 2, "logreg": 3}
    only = load(str(db), head="knn")
    assert list(only["head"]) == ["knn", "knn"]
    assert load(ResultsDB(db), task="nothing").empty


def test_run_row_splits_and_flattening() -> None:
    run = {"run_id": "r1", "task": "t", "layers": [11], "metrics_all": {"test": {"auc": (0.8, 0.7, 0.9)},
                                                                        "val": {"auc": (0.75, None, None)}},
           "config": {"features": {"token": "cls"}, "heads": ["logreg"], "data": {}}, "timings": {"total_s": 2.0}}
    row = run_row(run)
    assert row["auc"] == 0.8 and row["auc_low"] == 0.7 and row["auc_high"] == 0.9
    assert row["val/auc"] == 0.75 and row["val/auc_low"] is None  # other splits keep their split as a prefix
    assert row["config.features.token"] == "cls" and row["config.heads"] == ("logreg",)
    assert row["config.data"] == {} and row["layers"] == (11,) and row["timings.total_s"] == 2.0
    assert run_row(run, split="val")["auc"] == 0.75 and run_row(run, split="val")["test/auc"] == 0.8


def test_load_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="no results database"):
        load(tmp_path / "none.db")
    with pytest.raises(ConfigError, match="db must be"):
        load(3)
    with pytest.raises(ConfigError, match="task must be"):
        medprobe.run(42)
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'medprobe\[pandas\]'"):
        load(tmp_path / "none.db")


def test_import_medprobe_is_torch_free() -> None:
    code = ("import sys, medprobe, medprobe.results; from medprobe.results import load; "
            "assert callable(medprobe.run); "
            "bad = [m for m in ('torch', 'pandas') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
