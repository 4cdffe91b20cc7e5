"""Results database: round trip, filters, find, CSV export, atomic inserts, concurrent writers, CLI."""

from __future__ import annotations

import csv
import math
import multiprocessing as mp
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from medprobe.cli.main import main
from medprobe.errors import ConfigError
from medprobe.results import SCHEMA_VERSION, ResultsDB, collect_environment


def _record(**over: object) -> dict:
    rec = {
        "task": "pneumonia", "task_type": "binary",
        "config": {"encoder": "dinov3-vits16", "head": "logreg", "C": 1.0, "seed": 0},
        "encoder": "dinov3-vits16", "weights": "ab" * 32, "dataset": "medmnist:pneumoniamnist",
        "dataset_fingerprint": "f00d", "split": {"train": 100, "val": 20, "test": 30, "kind": "official"},
        "seed": 0, "head": "logreg", "head_params": {"C": 1.0}, "layers": [2, 5, 8, 11], "resolution": [224, 224],
        "preprocess": {"intensity": "auto"}, "device": "cpu",
        "timings": {"extraction_s": 1.5, "head_fit_s": 0.25, "total_s": 2.0, "cached": False},
        "compute": {"gflops": 4.6, "images_per_s": 100.0, "peak_mem_mb": None},
        "labels": {"sweep": "s1", "cell": "a"},
    }
    rec.update(over)
    return rec


def test_round_trip_with_cis_and_predictions(tmp_path: Path) -> None:
    db = ResultsDB(tmp_path / "res")
    assert not db.exists() and db.runs() == [] and db.find("x") is None
    preds = {"case_ids": np.array(["c1", "c2", "c3"]), "y_true": np.array([0, 1, 1]),
             "y_score": np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]], dtype=np.float32)}
    metrics = {"auc": (0.91, 0.85, 0.95), "acc": 0.8, "f1": (math.nan, math.nan, math.nan), "val/auc": 0.93}
    rid = db.add_run(_record(extra_note="kept"), metrics, predictions=preds)
    assert db.path == tmp_path / "res" / "results.db" and db.exists()
    assert len(rid) == 32

    r = db.get(rid[:6])
    assert r["run_id"] == rid and r["status"] == "complete" and r["created"].endswith("+00:00")
    assert r["metrics"]["auc"] == (0.91, 0.85, 0.95)
    assert r["metrics"]["acc"] == (0.8, None, None)
    assert math.isnan(r["metrics"]["f1"][0]) and r["metrics"]["f1"][1:] == (None, None)
    assert list(r["metrics"]) == ["acc", "auc", "f1"]
    assert r["metrics_all"]["val"] == {"auc": (0.93, None, None)} and r["metrics_split"] == "test"
    for k, v in _record().items():
        assert r[k] == v, k
    assert r["pretrained"] is True and r["sweep"] == "s1" and r["extra"] == {"extra_note": "kept"}
    assert set(r["versions"]) >= {"medprobe", "torch", "transformers", "numpy", "sklearn", "python"}
    assert r["config_hash"] and len(r["config_hash"]) == 16

    p = db.load_predictions(rid)
    assert set(p) == set(preds)
    for k in preds:
        np.testing.assert_array_equal(p[k], preds[k])
        assert p[k].dtype == preds[k].dtype
    assert Path(r["predictions_path"]) == tmp_path / "res" / "predictions" / f"{rid}.npz"

    con = sqlite3.connect(db.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    con.close()

    db.delete(rid)
    assert db.runs() == [] and not Path(r["predictions_path"]).exists()
    with pytest.raises(ConfigError, match="unknown run id"):
        db.get(rid)


def test_filters_find_and_metrics_table(tmp_path: Path) -> None:
    db = ResultsDB(tmp_path / "r.db")
    a = db.add_run(_record(created="2025-01-01T00:00:00.000000+00:00"), {"auc": 0.7})
    b = db.add_run(_record(encoder="dinov3-vitb16", head="mlp", weights="random:seed=3",
                           labels={"untrained": True, "sweep": "s2"}), {"auc": (0.55, 0.5, 0.6), "acc": 0.5})
    c = db.add_run(_record(task="derma", task_type="multiclass", config={"other": 1}), {"acc": 0.6})
    d = db.add_run(_record(created="2030-01-01T00:00:00.000000+00:00"), {"auc": 0.75})

    assert [r["run_id"] for r in db.runs()] == [a, b, c, d]
    assert [r["run_id"] for r in db.runs(task="pneumonia")] == [a, b, d]
    assert [r["run_id"] for r in db.runs(encoder="dinov3-vitb16")] == [b]
    assert [r["run_id"] for r in db.runs(head="mlp", sweep="s2")] == [b]
    assert [r["run_id"] for r in db.runs(sweep="s1")] == [a, c, d]
    assert [r["run_id"] for r in db.runs(task=["derma", "nope"])] == [c]
    assert [r["run_id"] for r in db.runs(status="complete", pretrained=False)] == [b]
    assert db.get(b)["pretrained"] is False and db.get(b)["weights"] == "random:seed=3"
    with pytest.raises(ConfigError, match="unknown results filter"):
        db.runs(colour="red")

    h = db.get(a)["config_hash"]
    assert db.get(d)["config_hash"] == h and db.get(c)["config_hash"] != h
    assert db.find(h)["run_id"] == d  # latest complete run with that hash
    assert [r["run_id"] for r in db.runs(config_hash=h)] == [a, b, d]
    assert db.find("0" * 16) is None

    tab = db.metrics_table("auc", task="pneumonia")
    assert [(t["run_id"], t["value"], t["low"], t["high"]) for t in tab] == [
        (a, 0.7, None, None), (b, 0.55, 0.5, 0.6), (d, 0.75, None, None)]
    assert tab[1]["encoder"] == "dinov3-vitb16" and tab[1]["metric"] == "auc" and tab[1]["layers"] == [2, 5, 8, 11]
    assert [t["run_id"] for t in db.metrics_table("acc")] == [b, c]

    rec = _record(layer="last", preprocessing={"intensity": "ct:lung"}, notes={"untrained": True})
    for k in ("layers", "preprocess", "labels"):
        del rec[k]
    e = db.get(db.add_run(rec, {"auc": 0.6}))
    assert (e["layers"], e["preprocess"], e["labels"], e["extra"]) == ("last", {"intensity": "ct:lung"},
                                                                       {"untrained": True}, {})
    db.delete(e["run_id"])

    with pytest.raises(ConfigError, match="lacks"):
        db.add_run({"task": "x"}, {"auc": 1.0})
    with pytest.raises(ConfigError, match="task_type must be a lowercase word"):  # any family's type is fine
        db.add_run(_record(task_type="Clustering!"), {"auc": 1.0})
    with pytest.raises(ConfigError, match="metric"):
        db.add_run(_record(), {"auc": (1.0, 2.0)})
    assert len(db.runs()) == 4

    x = db.add_run(_record(run_id="feed01"), {"auc": 0.1})
    db.add_run(_record(run_id="feed02"), {"auc": 0.2})
    assert x == "feed01" and db.get("feed01")["metrics"]["auc"] == (0.1, None, None)
    with pytest.raises(ConfigError, match="ambiguous"):
        db.get("feed")
    with pytest.raises(ConfigError, match="cannot store run feed01"):  # duplicate id
        db.add_run(_record(run_id="feed01"), {"auc": 0.3})
    assert db.get("feed01")["metrics"]["auc"] == (0.1, None, None)


def test_export_csv(tmp_path: Path) -> None:
    db = ResultsDB(tmp_path)
    a = db.add_run(_record(), {"auc": (0.9, 0.8, 0.95), "acc": 0.75})
    db.add_run(_record(task="other"), {"auc": 0.5})
    out = tmp_path / "out" / "res.csv"
    n = db.export_csv(out, task="pneumonia")
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert n == 2 == len(rows)
    assert [r["metric"] for r in rows] == ["acc", "auc"]
    assert all(r["run_id"] == a and r["task"] == "pneumonia" and r["split"] == "test" for r in rows)
    assert float(rows[1]["value"]) == 0.9 and float(rows[1]["low"]) == 0.8 and float(rows[1]["high"]) == 0.95
    assert rows[0]["low"] == "" and rows[0]["high"] == ""
    assert rows[0]["layers"] == "[2,5,8,11]" and rows[0]["pretrained"] == "true"
    assert not list(out.parent.glob(".*.tmp"))


def test_failed_insert_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = ResultsDB(tmp_path)
    keep = db.add_run(_record(), {"auc": 0.5}, predictions={"y_true": np.zeros(3)})
    preds = {"case_ids": np.array(["a", "b"]), "y_true": np.array([0, 1]), "y_score": np.array([0.2, 0.7])}

    # 1) SQLite constraint violated midway: the same metric twice in one split (primary key clash)
    with pytest.raises(ConfigError, match="cannot store run"):
        db.add_run(_record(), {"auc": 0.9, "acc": 0.8, "test/auc": 0.7}, predictions=preds)

    # 2) a Python exception raised inside the transaction after the run row and one metric went in
    def boom(self: ResultsDB, con: sqlite3.Connection, run_id: str, rows: list) -> None:
        sp, name, value, low, high = rows[0]
        con.execute("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)", (run_id, sp, name, value, low, high))
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ResultsDB, "_insert_metrics", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        db.add_run(_record(), {"auc": 0.9}, predictions=preds)

    con = sqlite3.connect(db.path)
    assert con.execute("SELECT run_id FROM runs").fetchall() == [(keep,)]
    assert con.execute("SELECT run_id FROM metrics").fetchall() == [(keep,)]
    con.close()
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == [f"{keep}.npz"]


def _writer(path: str, tag: str, n: int, barrier: object) -> None:
    db = ResultsDB(path)
    barrier.wait()  # type: ignore[attr-defined]
    for i in range(n):
        db.add_run(_record(labels={"sweep": tag, "cell": str(i)}), {"auc": (i / n, 0.0, 1.0), "acc": 0.5},
                   predictions={"y_score": np.full(4, i, dtype=np.float32)})


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    path = str(tmp_path / "shared")  # both processes also race to create the database
    n = 15
    procs = [ctx.Process(target=_writer, args=(path, tag, n, barrier)) for tag in ("p0", "p1")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    db = ResultsDB(path)
    for tag in ("p0", "p1"):
        runs = db.runs(sweep=tag)
        assert sorted(int(r["labels"]["cell"]) for r in runs) == list(range(n))
        assert all(set(r["metrics"]) == {"auc", "acc"} for r in runs)
    assert len(list((tmp_path / "shared" / "predictions").glob("*.npz"))) == 2 * n


def test_not_a_database(tmp_path: Path) -> None:
    bad = tmp_path / "junk.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="junk.db"):
        ResultsDB(bad).runs()


def test_collect_environment() -> None:
    env = collect_environment("cpu")
    assert env["device"] == "cpu"
    assert env["versions"]["numpy"] == np.__version__ and env["versions"]["python"].count(".") == 2


def test_env_var_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDPROBE_RESULTS", str(tmp_path / "envdb"))
    assert ResultsDB().path == tmp_path / "envdb" / "results.db"
    dbp = str(tmp_path / "cli.db")

    assert main(["results", "list", "--db", dbp]) == 2
    assert "no results database" in capsys.readouterr().err

    db = ResultsDB(dbp)
    a = db.add_run(_record(layers="last", resolution=448), {"auc": (0.912345, 0.88, 0.94), "acc": 0.8})
    b = db.add_run(_record(task="derma", task_type="multiclass", weights="random:seed=0", encoder="dinov3-vitl16"),
                   {"acc": 0.3})
    assert main(["results", "list", "--db", dbp]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and "test/auc" in lines[0]
    assert lines[1].startswith(a[:8]) and "0.9123 [0.8800, 0.9400]" in lines[1] and "448" in lines[1]
    assert "last" in lines[1] and ("ab" * 6) in lines[1]
    assert lines[2].startswith(b[:8]) and "UNTRAINED(random:seed=0)" in lines[2] and lines[2].rstrip().endswith("-")

    assert main(["results", "list", "--db", dbp, "--encoder", "dinov3-vitl16", "--metric", "acc"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith(b[:8]) and "0.3000" in lines[1]

    assert main(["results", "show", a[:10], "--db", dbp]) == 0
    out = capsys.readouterr().out
    assert a in out and "dinov3-vits16" in out and "config_hash" in out
    assert out.index("test/acc") < out.index("test/auc") and "0.9123 [0.8800, 0.9400]" in out

    assert main(["results", "show", "zzzz", "--db", dbp]) == 2
    err = capsys.readouterr().err
    assert "unknown run id" in err and len(err.strip().splitlines()) == 1

    out_csv = tmp_path / "x.csv"
    assert main(["results", "export", "--csv", str(out_csv), "--db", dbp, "--task", "pneumonia"]) == 0
    assert "wrote 2 rows" in capsys.readouterr().out
    rows = list(csv.DictReader(out_csv.open(encoding="utf-8")))
    assert {(r["run_id"], r["metric"]) for r in rows} == {(a, "acc"), (a, "auc")}
