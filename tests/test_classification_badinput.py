"""Issue 3 acceptance: bad input to ``medprobe run`` (classification) fails cleanly.

Each case must give exit code 2, exactly ONE line on stderr (``medprobe: error: <file>: <where>: <problem>``)
naming the file (and the row where there is one) and the problem, and leave nothing half-written: the results
database keeps exactly the run it had before (no new run or metric rows, no predictions file without its
run) and the feature cache stays empty. Inputs are tiny files the tests write; no shared data is needed.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medprobe.cli.main import main
from medprobe.results import ResultsDB


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Path]:
    """A results database already holding one complete run (with predictions), an empty cache, 8 PNGs."""
    db = tmp_path / "db" / "results.db"
    ResultsDB(db).add_run({"task": "earlier", "task_type": "binary", "encoder": "dinov3-vits16", "head": "logreg",
                           "weights": "random:seed=0", "config": {"x": 1}},
                          {"auc": (0.7, 0.6, 0.8)},
                          predictions={"ids": np.array(["a", "b"]), "y_true": np.array([0, 1]),
                                       "y_score": np.array([[0.6, 0.4], [0.3, 0.7]])})
    img = tmp_path / "img"
    img.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(img / f"c{i}.png")
    return {"root": tmp_path, "db": db, "cache": tmp_path / "cache", "img": img}


def _db_state(db: Path) -> tuple[list[str], int, list[str]]:
    con = sqlite3.connect(db)
    try:
        runs = sorted(r[0] for r in con.execute("SELECT run_id FROM runs"))
        n_metrics = con.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    finally:
        con.close()
    preds = sorted(p.name for p in (db.parent / "predictions").iterdir())
    return runs, n_metrics, preds


def _fail(env: dict[str, Path], dataset: str, opts: list[str], capsys: pytest.CaptureFixture[str],
          extra: list[str] | None = None) -> str:
    """Run ``medprobe run`` expecting a clean failure; returns the one error line."""
    before = _db_state(env["db"])
    assert len(before[0]) == 1 and before[2] == [f"{before[0][0]}.npz"]
    capsys.readouterr()
    argv = ["run", "--dataset", dataset, *[a for o in opts for a in ("--data-opt", o)], "--encoder",
            "dinov3-vits16", "--resolution", "16", "--layers", "0", "--head", "logreg,knn", "--device", "cpu",
            "--db", str(env["db"]), "--cache-dir", str(env["cache"]), *(extra or [])]
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("medprobe: error: "), err
    assert _db_state(env["db"]) == before  # no new runs / metrics, no orphan predictions
    assert not env["cache"].exists() or not any(env["cache"].iterdir())
    leftovers = [p.name for p in env["db"].parent.iterdir() if p.name not in
                 ("results.db", "results.db-wal", "results.db-shm", "predictions")]
    assert not leftovers, leftovers
    return lines[0]


def _csv(env: dict[str, Path], text: str) -> Path:
    p = env["root"] / "labels.csv"
    p.write_text(text, encoding="utf-8")
    return p


def test_label_value_not_allowed_for_binary_task(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = _csv(env, "path,label\n" + "".join(f"img/c{i}.png,{y}\n" for i, y in enumerate([0, 1, 2, 0, 1, 0])))
    line = _fail(env, f"csv:{csv_path}", ["task=binary", "label_columns=label"], capsys)
    assert f"{csv_path}:" in line and "row 3 (line 4)" in line and "'2'" in line and "binary" in line, line


def test_medmnist_label_value_not_allowed(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    npz = env["root"] / "breastmnist.npz"  # a binary MedMNIST name, with a class index 2 in the test labels
    arrays = {}
    for s, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{s}_images"] = np.zeros((n, 28, 28), np.uint8)
        arrays[f"{s}_labels"] = np.array([[i % 2] for i in range(n)], np.uint8)
    arrays["test_labels"][1, 0] = 2
    np.savez(npz, **arrays)
    line = _fail(env, f"medmnist:{npz}", [], capsys)
    assert f"{npz}:" in line and "test_labels row 1" in line and "[2]" in line and "binary" in line, line


def test_row_pointing_at_missing_file(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rows = [f"img/c{i}.png,{i % 2}\n" for i in range(6)]
    rows[4] = "img/gone.png,0\n"
    csv_path = _csv(env, "path,label\n" + "".join(rows))
    line = _fail(env, f"csv:{csv_path}", [], capsys)
    assert f"{csv_path}:" in line and "row 5 (line 6)" in line and "gone.png" in line and "missing" in line, line


def test_patient_in_two_splits(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    splits = ["train", "train", "val", "test", "train", "test"]
    pids = ["p1", "p2", "p3", "p4", "p5", "p1"]  # p1 in train (row 1) and test (row 6)
    csv_path = _csv(env, "path,label,pid,split\n" + "".join(
        f"img/c{i}.png,{i % 2},{p},{s}\n" for i, (p, s) in enumerate(zip(pids, splits))))
    line = _fail(env, f"csv:{csv_path}", ["label_columns=label", "patient_column=pid", "split_column=split"], capsys)
    assert f"{csv_path}:" in line and "row 6 (line 7)" in line and "'p1'" in line, line
    assert "'test'" in line and "'train'" in line and "row 1 (line 2)" in line, line


def test_empty_test_split(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    splits = ["train", "train", "val", "train", "val", "train"]  # a split column without any 'test' row
    csv_path = _csv(env, "path,label,split\n" + "".join(
        f"img/c{i}.png,{i % 2},{s}\n" for i, s in enumerate(splits)))
    line = _fail(env, f"csv:{csv_path}", ["label_columns=label", "split_column=split"], capsys)
    assert f"{csv_path}:" in line and "split 'test' is empty" in line, line


def test_volumes_csv_bad_label(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    vol = env["root"] / "v.npy"  # never read: the label is refused first
    np.save(vol, np.zeros((4, 4, 4), np.float32))
    csv_path = _csv(env, f"path,label\n{vol},0\n{vol},1\n{vol},yes\n")
    line = _fail(env, f"volumes:{csv_path}", ["task=binary"], capsys)
    assert f"{csv_path}:" in line and "row 3 (line 4)" in line and "'yes'" in line, line


def _bad_npz(root: Path) -> Path:
    npz = root / "crafted.npz"
    np.savez(npz, train_images=np.zeros((4, 28, 28), np.uint8), train_labels=np.zeros((4, 1), np.uint8),
             val_images=np.zeros((2, 28, 28), np.uint8), val_labels=np.zeros((2, 1), np.uint8),
             images=np.zeros((2, 28, 28), np.uint8))
    return npz


def test_npz_without_expected_keys(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    npz = _bad_npz(env["root"])
    line = _fail(env, f"medmnist:{npz}", [], capsys)
    assert f"{npz}:" in line and "missing keys" in line and "test_images" in line and "test_labels" in line, line


def test_cli_subprocess_one_line_and_exit_code(env: dict[str, Path]) -> None:
    """The installed entry point, as a user runs it: exit 2 and a single stderr line, database untouched."""
    npz = _bad_npz(env["root"])
    before = _db_state(env["db"])
    p = subprocess.run([sys.executable, "-m", "medprobe.cli.main", "run", "--dataset", f"medmnist:{npz}",
                        "--head", "logreg", "--device", "cpu", "--db", str(env["db"]),
                        "--cache-dir", str(env["cache"])], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and lines[0].startswith(f"medprobe: error: {npz}: missing keys"), p.stderr
    assert p.stdout == ""
    assert _db_state(env["db"]) == before
