"""The results store on both backends: a SQLite file (with the result shards of launched jobs) and a real PostgreSQL
server started for this test session (pgserver's wheel). Same API, same answers; writers racing on many processes
lose nothing and duplicate nothing; shards are one store with the database until ``results merge`` compacts them."""

from __future__ import annotations

import math
import multiprocessing as mp
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medprobe.cli.main import main
from medprobe.errors import ConfigError
from medprobe.results import ResultsDB
from medprobe.results.shards import list_shards, shard_dir


def _record(**over: Any) -> dict[str, Any]:
    rec = {"task": "pneumonia", "task_type": "binary", "config": {"head": "logreg", "seed": 0},
           "encoder": "dinov3-vits16", "weights": "ab" * 32, "dataset": "medmnist:pneumoniamnist", "seed": 0,
           "head": "logreg", "layers": [11], "resolution": [224, 224], "labels": {"sweep": "s1", "cell": "a"},
           "timings": {"total_s": 1.0}, "compute": {"gflops": 4.6}}
    rec.update(over)
    return rec


@pytest.fixture(scope="session")
def pg_url_base() -> Iterator[str]:
    """A real PostgreSQL server for the session (pgserver ships the server binaries in its wheel). Its data folder
    is directly under the temp root: run as root, pgserver runs the server as its own user, who must reach it."""
    pgserver = pytest.importorskip("pgserver")
    pytest.importorskip("psycopg")
    data = tempfile.mkdtemp(prefix="medprobe-pg-")
    srv = pgserver.get_server(data, cleanup_mode="stop")
    try:
        yield str(srv.get_uri())
    finally:
        srv.cleanup()
        shutil.rmtree(data, ignore_errors=True)


def _new_database(base: str) -> str:
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    head, sep, query = base.partition("?")
    return f"{head.rsplit('/', 1)[0]}/{name}{sep}{query}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., ResultsDB]:
    """``store(shards=False)`` opens the test's store (a fresh SQLite folder, or a fresh database on the server)."""
    if request.param == "sqlite":
        def make(shards: bool = False) -> ResultsDB:
            return ResultsDB(tmp_path / "res", shards=shards)
    else:
        url = _new_database(request.getfixturevalue("pg_url_base"))

        def make(shards: bool = False) -> ResultsDB:
            return ResultsDB(url, shards=shards, files=tmp_path / "files")  # type: ignore[call-arg]
    make.backend = request.param  # type: ignore[attr-defined]
    return make


def test_same_api_on_both_backends(store: Callable[..., ResultsDB]) -> None:
    db = store()
    assert not db.exists() and db.runs() == [] and db.find("x") is None
    preds = {"case_ids": np.array(["c1", "c2", "c3"]), "y_score": np.array([0.1, 0.8, 0.6], np.float32)}
    a = db.add_run(_record(created="2025-01-01T00:00:00.000000+00:00", seed=2**40),
                   {"auc": (0.91, 0.85, 0.95), "acc": 0.8, "f1": (math.nan, math.nan, math.nan), "val/auc": 0.93},
                   predictions=preds)
    b = db.add_run(_record(encoder="dinov3-vitb16", weights="random:seed=3", labels={"sweep": "s2"}),
                   {"auc": (0.55, 0.5, 0.6)})
    c = db.add_run(_record(config={"other": 1}, task_type="multiclass"), {"acc": 0.6})
    assert db.exists() and [r["run_id"] for r in db.runs()] == [a, b, c]
    r = db.get(a[:8])
    assert r["metrics"]["auc"] == (0.91, 0.85, 0.95) and r["metrics"]["acc"] == (0.8, None, None)
    assert math.isnan(r["metrics"]["f1"][0]) and r["metrics"]["f1"][1:] == (None, None)
    assert r["metrics_all"]["val"] == {"auc": (0.93, None, None)} and r["seed"] == 2**40
    assert r["layers"] == [11] and r["labels"] == {"sweep": "s1", "cell": "a"} and r["pretrained"] is True
    np.testing.assert_array_equal(db.load_predictions(a)["y_score"], preds["y_score"])
    assert [x["run_id"] for x in db.runs(encoder="dinov3-vitb16")] == [b]
    assert [x["run_id"] for x in db.runs(sweep="s1", pretrained=True)] == [a, c]
    assert [x["run_id"] for x in db.runs(task_type=["multiclass", "nope"])] == [c]
    assert db.find(r["config_hash"])["run_id"] == b  # latest with that hash (a's created is older)
    assert db.stored_hashes([r["config_hash"], "0" * 16]) == {r["config_hash"]}
    assert [t["run_id"] for t in db.metrics_table("auc")] == [a, b]
    with pytest.raises(ConfigError, match="unknown run id"):
        db.get("zzzz")
    with pytest.raises(ConfigError, match="task_type must be a lowercase word"):
        db.add_run(_record(task_type="Bad!"), {"auc": 1.0})
    db.add_run(_record(run_id="feed01"), {"auc": 0.1})
    with pytest.raises(ConfigError, match="cannot store run feed01"):  # a duplicate id leaves nothing behind
        db.add_run(_record(run_id="feed01"), {"auc": 0.3}, predictions=preds)
    assert db.get("feed01")["metrics"]["auc"] == (0.1, None, None)
    assert not (db.root / "predictions" / "feed01.npz").exists()
    db.delete(a)
    assert [x["run_id"] for x in db.runs()] == [b, c, "feed01"] and not Path(r["predictions_path"]).exists()


def _racer(kind: str, where: str, files: str, tag: str, barrier: Any) -> None:
    db = ResultsDB(where, shards=True, **({"files": files} if kind == "postgresql" else {}))
    barrier.wait()  # every process starts its writes at the same moment
    for i in range(8):  # the same 8 cells in every process (a retried job racing its twin) ...
        db.add_run(_record(config_hash=f"shared{i:02d}", labels={"writer": tag, "cell": str(i)}), {"auc": i / 8},
                   predictions={"y": np.full(3, i)})
        # ... and cells of its own, finishing at the same moments
        db.add_run(_record(config_hash=f"{tag}{i:02d}", labels={"writer": tag, "cell": str(i)}), {"auc": 0.5})


def test_writers_finishing_at_once_lose_and_duplicate_nothing(store: Callable[..., ResultsDB]) -> None:
    db = store(shards=True)
    kind = store.backend  # type: ignore[attr-defined]
    where = str(db.path) if kind == "sqlite" else db.reopen_args()["path"]
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_racer, args=(kind, where, str(db.root), tag, barrier)) for tag in ("pa", "pb", "pc")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    rows = store().runs()
    hashes = [r["config_hash"] for r in rows]
    assert sorted(hashes) == sorted({*(f"shared{i:02d}" for i in range(8)),
                                     *(f"{t}{i:02d}" for t in ("pa", "pb", "pc") for i in range(8))})
    assert len(hashes) == len(set(hashes)) == 32  # nothing lost, nothing twice
    kept = {r["run_id"] for r in rows}
    files = {p.stem for p in (db.root / "predictions").glob("*.npz")}
    assert files == {r["run_id"] for r in rows if r["config_hash"].startswith("shared")} and files <= kept
    if kind == "sqlite":
        assert not ResultsDB(where).path.exists() and len(list_shards(db.root)) == 32  # jobs never touch the file


def test_shards_and_database_are_one_store_until_merged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pd = pytest.importorskip("pandas")
    from medprobe.results import load

    main_db = ResultsDB(tmp_path / "runs")
    a = main_db.add_run(_record(config_hash="h-main", created="2025-01-01T00:00:00.000000+00:00"), {"auc": 0.7})
    job = ResultsDB(tmp_path / "runs", shards=True)
    b = job.add_run(_record(config_hash="h-job1", created="2025-01-03T00:00:00.000000+00:00"), {"auc": 0.8},
                    predictions={"y": np.arange(3)})
    c = job.add_run(_record(config_hash="h-job2", created="2025-01-02T00:00:00.000000+00:00", encoder="x"),
                    {"auc": (0.9, 0.85, 0.95)})
    assert job.add_run(_record(config_hash="h-main"), {"auc": 0.1}) == a  # stored already: not again
    assert job.add_run(_record(config_hash="h-job1"), {"auc": 0.1}) == b
    reader = ResultsDB(tmp_path / "runs")
    assert [r["run_id"] for r in reader.runs()] == [a, c, b]  # oldest first across the file and the shards
    assert reader.find("h-job2")["metrics"]["auc"] == (0.9, 0.85, 0.95) and reader.get(b[:7])["run_id"] == b
    assert [r["run_id"] for r in reader.runs(encoder="x")] == [c]
    frame = load(tmp_path / "runs")
    assert isinstance(frame, pd.DataFrame) and sorted(frame["run_id"]) == sorted([a, b, c])
    assert main(["results", "list", "--db", str(tmp_path / "runs")]) == 0
    listed = capsys.readouterr().out
    assert all(x[:8] in listed for x in (a, b, c))

    # a racing twin's row with a stored hash, and an interrupted merge (row in the file, shard still there)
    twin = ResultsDB(tmp_path / "other", shards=True)
    t = twin.add_run(_record(config_hash="h-main", labels={"twin": True}), {"auc": 0.2},
                     predictions={"y": np.arange(2)})
    (shard_dir(tmp_path / "other") / "h-main.json").rename(shard_dir(tmp_path / "runs") / "h-main.json")
    (tmp_path / "other" / "predictions" / f"{t}.npz").rename(tmp_path / "runs" / "predictions" / f"{t}.npz")
    assert [r["run_id"] for r in reader.runs()] == [a, c, b]  # the twin is hidden: its hash is stored
    assert main(["results", "merge", "--db", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "merged 2 row(s) from 3 shard(s)" in out and "1 dropped" in out
    assert list_shards(tmp_path / "runs") == [] and not (tmp_path / "runs" / "predictions" / f"{t}.npz").exists()
    assert [r["run_id"] for r in reader.runs()] == [a, c, b] and reader.load_predictions(b)["y"].tolist() == [0, 1, 2]
    again = ResultsDB(tmp_path / "runs", shards=True)
    assert again.add_run(_record(config_hash="h-job2"), {"auc": 0.3}) == c and list_shards(tmp_path / "runs") == []
    assert main(["results", "merge", "--db", str(tmp_path / "runs")]) == 0
    assert "nothing to merge" in capsys.readouterr().out


def test_unreadable_shard_is_left_out_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = ResultsDB(tmp_path, shards=True)
    a = db.add_run(_record(config_hash="good"), {"auc": 0.5})
    (shard_dir(tmp_path) / "junk.json").write_text("{not json", encoding="utf-8")
    assert [r["run_id"] for r in ResultsDB(tmp_path).runs()] == [a]
    err = capsys.readouterr().err
    assert "junk.json: not a readable results shard" in err and len(err.strip().splitlines()) == 1


def test_postgres_store_through_the_cli(pg_url_base: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = _new_database(pg_url_base)
    db = ResultsDB(url, files=tmp_path)  # type: ignore[call-arg]
    a = db.add_run(_record(), {"auc": (0.91, 0.88, 0.94)})
    assert type(db).__name__ == "PostgresResultsDB"
    assert main(["results", "list", "--db", url]) == 0
    assert a[:8] in capsys.readouterr().out
    assert main(["results", "merge", "--db", url]) == 0
    assert "nothing to merge" in capsys.readouterr().out
    bad = url.rsplit("/", 1)[0] + "/nonexistent_db?" + url.partition("?")[2]
    assert main(["results", "list", "--db", bad]) == 2
    err = capsys.readouterr().err
    assert "cannot connect to the results server" in err and len(err.strip().splitlines()) == 1


def test_sweep_into_postgres_keeps_files_under_the_files_folder(pg_url_base: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from medprobe.pipeline.sweep import run_sweep, sweep_from_dict

    monkeypatch.chdir(tmp_path)  # nothing may appear in the working folder (no 'postgresql:' folders)
    url = _new_database(pg_url_base)
    db = ResultsDB(url, files=tmp_path / "files")  # type: ignore[call-arg]
    base = {"dataset": "phantom:xray2d-binary", "data": {"n": 24, "size": 32}, "encoder": "none",
            "split": {"fractions": [0.5, 0.2, 0.3]}, "features": {"progress": False}, "audit": {"mode": "off"},
            "metrics": {"bootstrap": 20}, "head_params": {"logreg": {"Cs": [1.0]}}}
    sw = sweep_from_dict({"name": "pg", "base": base, "tasks": [{"name": "xa"}],
                          "grid": {"resolution": [32], "seed": [0, 1], "head": ["logreg"]}})
    res = run_sweep(sw, db=db, cache_dir=str(tmp_path / "cache"), echo=lambda s: None)
    assert res["ran"] == 2 and len(db.runs(sweep="pg")) == 2
    assert all(Path(r["predictions_path"]).parent == tmp_path / "files" / "predictions" for r in db.runs())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "files"]
    again = ResultsDB(url, files=tmp_path / "files")  # type: ignore[call-arg]
    assert run_sweep(sw, db=again, cache_dir=str(tmp_path / "cache"), echo=lambda s: None)["skipped"] == 2
