"""Launched sweeps (medprobe.pipeline.launch): cluster options, the job graph, the local launcher giving the rows of
the in-process sweep, a job killed mid-way resumed by a rerun without a duplicate row, and the SLURM path through
submitit against a fake SLURM (tests/_fake_slurm.py: sbatch / srun / sacct / scancel that record their calls and
really run the jobs, honouring arrays and afterok dependencies)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from medprobe.errors import ConfigError
from medprobe.pipeline.launch import ClusterConfig, build_graph, load_cluster_config, read_state
from medprobe.pipeline.sweep import expand, run_sweep, sweep_from_dict
from medprobe.results import ResultsDB
from medprobe.results.shards import list_shards

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import _fake_slurm as fake_slurm  # noqa: E402

pytest.importorskip("submitit")

BASE = {"dataset": "phantom:xray2d-binary", "data": {"n": 24, "size": 32}, "encoder": "none",
        "split": {"fractions": [0.5, 0.2, 0.3]}, "features": {"progress": False}, "audit": {"mode": "off"},
        "metrics": {"bootstrap": 50}, "head_params": {"logreg": {"Cs": [1.0]}}}


def _sweep(tmp: Path, name: str, tasks: list[dict[str, Any]], grid: dict[str, Any]) -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"name": name, "base": BASE, "tasks": tasks, "grid": grid}), encoding="utf-8")
    return p


@pytest.fixture
def cluster_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's cluster defaults (read through $MEDPROBE_CLUSTER_CONFIG): quick polling for tests."""
    f = tmp_path / "cluster.yaml"
    f.write_text(yaml.safe_dump({"poll_s": 0.2, "partition": "gpu", "time": "1:00:00", "retries": 0}),
                 encoding="utf-8")
    monkeypatch.setenv("MEDPROBE_CLUSTER_CONFIG", str(f))
    return f


def test_cluster_options_file_flags_and_errors(cluster_file: Path) -> None:
    cfg = load_cluster_config(overrides={"partition": "a100", "gpus": 2, "sbatch": ["--constraint=h100",
                                                                                  "#SBATCH --exclusive",
                                                                                  "--mail-type FAIL"]})
    assert (cfg.partition, cfg.gpus, cfg.time, cfg.poll_s, cfg.retries) == ("a100", 2, 60, 0.2, 0)
    assert cfg.extra_sbatch() == {"constraint": "h100", "exclusive": True, "mail-type": "FAIL"}
    assert load_cluster_config(overrides={"time": "1-12"}).time == 36 * 60
    assert load_cluster_config(overrides={"time": "2-00:30:00"}).time == 2 * 1440 + 30
    assert load_cluster_config(overrides={"time": "30:30"}).time == 31  # SLURM: minutes:seconds
    assert load_cluster_config(overrides={"time": 90}).time == 90
    cluster_file.write_text("partiton: gpu\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cluster.yaml: unknown key 'partiton' \(did you mean 'partition'\?\)"):
        load_cluster_config()
    cluster_file.write_text("", encoding="utf-8")  # an empty file: no defaults
    with pytest.raises(ConfigError, match="time: a time limit"):
        load_cluster_config(overrides={"time": "soon"})
    with pytest.raises(ConfigError, match="cluster config file not found"):
        load_cluster_config(path=cluster_file.parent / "nope.yaml")


def test_job_graph_extraction_once_per_feature_group() -> None:
    sw = sweep_from_dict({"name": "g", "base": BASE, "tasks": [{"name": "xa"}, {"name": "xb", "data": {"seed": 1}}],
                          "grid": {"resolution": [32, 64], "head": ["logreg", "knn"], "seed": [0, 1, 2]}})
    cells = expand(sw)  # 2 tasks x 2 resolutions x 3 seeds x 2 heads = 24 cells, 4 feature groups
    jobs = build_graph(cells, cells_per_job=2)
    ext = [j for j in jobs if j.kind == "extract"]
    heads = [j for j in jobs if j.kind == "cells"]
    assert len(ext) == 4 and all(len(j.cells) == 6 and not j.deps for j in ext)
    assert len(heads) == 12 and all(len(j.cells) == 2 and len(j.deps) == 1 for j in heads)
    for j in heads:  # a head job waits on the extraction job of its own features, and is one seed's two heads
        (dep,) = [e for e in ext if e.name == j.deps[0]]
        assert {c.key for c in j.cells} <= {c.key for c in dep.cells}
        assert {c.head for c in j.cells} == {"logreg", "knn"} and len({c.axes["seed"] for c in j.cells}) == 1
    assert sorted(c.key for j in heads for c in j.cells) == sorted(c.key for c in cells)
    solo = build_graph(cells, cells_per_job=6)  # one head job per group: it extracts itself
    assert [j.kind for j in solo] == ["cells"] * 4 and all(not j.deps for j in solo)
    multi = build_graph(cells, cells_per_job=6, extract_gpus=4)  # multi-GPU extraction is always its own job
    assert [j.kind for j in multi].count("extract") == 4
    auto = build_graph(cells, cells_per_job=None, workers=2)  # local default: 4 groups keep 2 workers busy
    assert [len(j.cells) for j in auto] == [6, 6, 6, 6] and all(j.kind == "cells" for j in auto)
    auto = build_graph(cells, cells_per_job=None, workers=8)  # 2 head jobs per group, after its extraction
    assert [j.kind for j in auto].count("extract") == 4 and [len(j.cells) for j in auto if j.kind == "cells"] == \
        [4, 2] * 4  # cells differing only in the head stay together (3 seeds x 2 heads over 2 jobs)
    slurm = build_graph(cells, cells_per_job=None)  # SLURM default: one cell (one run of its heads) a job
    assert [len(j.cells) for j in slurm if j.kind == "cells"] == [2] * 12


def _metrics(db: ResultsDB) -> dict[str, Any]:
    return {r["config_hash"]: (r["labels"]["cell"], r["metrics"]) for r in db.runs()}


@pytest.mark.slow
def test_local_launcher_gives_the_rows_of_the_inprocess_sweep(tmp_path: Path, cluster_file: Path) -> None:
    path = _sweep(tmp_path, "twelve", [{"name": "xa"}, {"name": "xb", "data": {"seed": 1}}],
                  {"resolution": [32], "head": ["logreg"], "seed": [0, 1, 2, 3, 4, 5]})
    here = ResultsDB(tmp_path / "inprocess")
    res = run_sweep(path, db=here, cache_dir=str(tmp_path / "cache-a"), echo=lambda s: None)
    assert res["ran"] == 12
    lines: list[str] = []
    cfg = load_cluster_config(overrides={"workers": 3, "cells_per_job": 3})
    launched = ResultsDB(tmp_path / "launched")
    res = run_sweep(path, db=launched, cache_dir=str(tmp_path / "cache-b"), launcher="local", cluster=cfg,
                    echo=lines.append)
    assert res["ran"] == 12 and res["failed"] == 0 and res["total"] == 12, lines
    assert any(line.startswith("job graph: 2 extraction job(s), 4 head job(s) for 12 cell(s)") for line in lines)
    assert not launched.path.exists() and len(list_shards(launched.root)) == 12  # jobs wrote shards only
    a, b = _metrics(here), _metrics(launched)
    assert set(a) == set(b) and len(a) == 12
    assert all(a[h] == b[h] for h in a)  # same cells, same metrics with the same CIs
    state = read_state(launched.root / "jobs" / "twelve")
    assert state is not None and {j["status"] for j in state["jobs"].values()} == {"done"}
    ext = [j for j in state["jobs"].values() if j["kind"] == "extract"]
    assert len(ext) == 2 and all(Path(j["attempts"][0]["stderr"]).is_file() for j in state["jobs"].values())
    res = run_sweep(path, db=launched, launcher="local", cluster=cfg, echo=lines.append)  # all stored: no job
    assert res["skipped"] == 12 and res["ran"] == 0


def _children(pid: int) -> list[int]:
    try:
        txt = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="utf-8")
    except OSError:
        return []
    return [int(x) for x in txt.split()]


@pytest.mark.slow
def test_job_killed_midway_is_retried_then_resumed_by_a_rerun_without_duplicates(tmp_path: Path,
                                                                                  cluster_file: Path) -> None:
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs /proc to find the job's worker process")
    path = _sweep(tmp_path, "kill", [{"name": "xa"}], {"resolution": [32], "head": ["logreg"], "seed": [0, 1, 2, 3]})
    db = ResultsDB(tmp_path / "runs")
    cmd = [sys.executable, "-m", "medprobe.cli.main", "sweep", str(path), "--db", str(db.root), "--cache-dir",
           str(tmp_path / "cache"), "--launcher", "local", "--workers", "1", "--cells-per-job", "4", "--retries", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    jobs = db.root / "jobs" / "kill" / "jobs.json"
    killed: list[str] = []  # attempt ids whose worker was killed
    stored_at_kill: list[int] = []
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and len(killed) < 2:
        # each attempt is killed once it stored a row of its own: the first is retried by the controller, the
        # retry (which skips the stored cell) is killed too, and then the job has failed for good
        n = len(list_shards(db.root))
        if n > len(killed) and jobs.is_file():
            (job,) = json.loads(jobs.read_text(encoding="utf-8"))["jobs"].values()
            att = str(job["attempts"][-1]["id"]) if job["attempts"] else None
            workers = _children(int(att)) if att and att not in killed else []
            if workers:
                os.kill(workers[0], signal.SIGKILL)
                killed.append(str(att))
                stored_at_kill.append(n)
        time.sleep(0.02)
    out, _ = proc.communicate(timeout=400)
    assert len(killed) == 2 and stored_at_kill[0] < stored_at_kill[1] < 4, out
    assert "failed (ended without a result (killed" in out and "retrying (1/1)" in out, out
    assert proc.returncode == 1 and "FAILED: ended without a result (killed" in out, out
    before = {r["config_hash"]: r["run_id"] for r in db.runs()}
    assert len(before) == stored_at_kill[1]  # the retry resumed: it did not redo the first attempt's cell
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(before)} of 4 cells done already: skipped" in proc.stdout
    rows = db.runs()
    after = {r["config_hash"]: r["run_id"] for r in rows}
    assert len(rows) == len(after) == 4  # no duplicate row
    assert all(after[h] == rid for h, rid in before.items())  # rows finished before the kills are kept, not redone
    log = json.loads(jobs.read_text(encoding="utf-8"))
    assert [j["status"] for j in log["jobs"].values()] == ["done"]


@pytest.mark.slow
def test_ctrl_c_cancels_the_running_jobs(tmp_path: Path, cluster_file: Path) -> None:
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs /proc to find the job's worker process")
    path = _sweep(tmp_path, "stop", [{"name": "xs", "data": {"seed": 5}}],
                  {"resolution": [32], "head": ["logreg"], "seed": [0, 1]})
    db = ResultsDB(tmp_path / "runs")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "medprobe.cli.main", "sweep", str(path), "--db", str(db.root),
                             "--launcher", "local", "--workers", "1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    jobs = db.root / "jobs" / "stop" / "jobs.json"
    worker = None
    deadline = time.time() + 300
    while time.time() < deadline and worker is None and proc.poll() is None:
        if jobs.is_file():
            (job,) = json.loads(jobs.read_text(encoding="utf-8"))["jobs"].values()
            kids = _children(int(job["attempts"][-1]["id"])) if job["attempts"] else []
            worker = kids[0] if kids else None
        time.sleep(0.05)
    assert worker is not None
    proc.send_signal(signal.SIGINT)  # Ctrl-C in the controller
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted: cancelled 1 job(s)" in out, out
    deadline = time.time() + 30
    while time.time() < deadline and Path(f"/proc/{worker}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{worker}").exists()  # the job's worker is gone too
    (job,) = json.loads(jobs.read_text(encoding="utf-8"))["jobs"].values()
    assert job["status"] == "cancelled" and db.runs() == []


@pytest.mark.slow
def test_slurm_path_sbatch_parameters_and_dependencies(tmp_path: Path, cluster_file: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from medprobe.cli.main import main

    state = tmp_path / "slurm"
    for k, v in fake_slurm.install(tmp_path / "bin", state).items():
        monkeypatch.setenv(k, v)
    path = _sweep(tmp_path, "onslurm", [{"name": "xa"}], {"resolution": [32], "head": ["logreg"],
                                                          "seed": [0, 1, 2, 3]})
    db = tmp_path / "runs"
    args = ["sweep", str(path), "--db", str(db), "--cache-dir", str(tmp_path / "cache"), "--launcher", "slurm",
            "--gpus", "2", "--account", "proj7", "--time", "2:00:00", "--cells-per-job", "2",
            "--array-parallelism", "1", "--sbatch=--constraint=a100", "--setup", "echo medprobe-setup-line"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 ran, 0 skipped" in out
    subs = [c for c in fake_slurm.calls(state) if c["cmd"] == "sbatch"]
    assert len(subs) == 2  # one extraction job, then one array of the two head jobs
    ext, arr = subs[0]["params"], subs[1]["params"]
    for p in (ext, arr):  # the user file's partition, the flags' account, time, GPUs and extra line
        assert (p["partition"], p["account"], p["time"], p["gpus-per-node"], p["constraint"]) == \
            ("gpu", "proj7", "120", "2", "a100")
    assert "echo medprobe-setup-line" in subs[0]["script"] and "srun" in subs[0]["script"]
    assert "array" not in ext and "dependency" not in ext and ext["job-name"] == "mp-onslurm-extract"
    assert arr["array"] == "0-1%1" and arr["dependency"] == f"afterok:{subs[0]['id']}"
    assert arr["kill-on-invalid-dep"] == "yes"
    jobs = fake_slurm.jobs(state)
    ext_job, t0, t1 = jobs[subs[0]["id"]], jobs[f"{subs[1]['id']}_0"], jobs[f"{subs[1]['id']}_1"]
    assert all(j["state"] == "COMPLETED" for j in (ext_job, t0, t1))
    assert t0["started"] >= ext_job["ended"] and t1["started"] >= t0["ended"]  # afterok, then %1 parallelism
    rows = ResultsDB(db).runs()
    assert len(rows) == 4 and len(list_shards(db)) == 4
    assert main(["sweep", str(path), "--db", str(db), "--status"]) == 0
    status = capsys.readouterr().out
    assert "4 cells: 4 done" in status and f"job {subs[1]['id']}_0" in status

    # held jobs: --detach submits and returns, --status shows them waiting, --cancel cancels them
    cluster_file.write_text(yaml.safe_dump({"poll_s": 0.2, "partition": "hold"}), encoding="utf-8")
    more = _sweep(tmp_path, "held", [{"name": "xh", "data": {"seed": 7}}],
                  {"resolution": [32], "head": ["logreg"], "seed": [0, 1]})
    assert main(["sweep", str(more), "--db", str(db), "--launcher", "slurm", "--detach"]) == 0
    assert "detached" in capsys.readouterr().out
    assert main(["sweep", str(more), "--db", str(db), "--status"]) == 0
    status = capsys.readouterr().out
    assert "2 cells:" in status and "done" not in status.split(":", 1)[1].splitlines()[0]
    assert ("queued" in status or "waiting" in status) and "log " in status
    n_sbatch = len([c for c in fake_slurm.calls(state) if c["cmd"] == "sbatch"])
    assert main(["sweep", str(more), "--db", str(db), "--launcher", "slurm", "--detach"]) == 0  # launched again
    assert "3 job(s) of an earlier launch still queued or running: followed" in capsys.readouterr().out
    assert len([c for c in fake_slurm.calls(state) if c["cmd"] == "sbatch"]) == n_sbatch  # nothing resubmitted
    assert main(["sweep", str(more), "--db", str(db), "--cancel"]) == 0
    assert "cancelled" in capsys.readouterr().out
    cancels = [c for c in fake_slurm.calls(state) if c["cmd"] == "scancel"]
    assert cancels and {j["state"] for k, j in fake_slurm.jobs(state).items() if int(k.split("_")[0]) > int(
        subs[1]["id"])} == {"CANCELLED"}


def test_launcher_cli_errors(tmp_path: Path, cluster_file: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    from medprobe.cli.main import main

    path = _sweep(tmp_path, "errs", [{"name": "xa"}], {"resolution": [32], "head": ["logreg"], "seed": [0]})
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert main(["sweep", str(path), "--db", str(tmp_path / "r"), "--launcher", "slurm"]) == 2
    err = capsys.readouterr().err
    assert "sbatch, srun, sacct, scancel not found on PATH" in err and len(err.strip().splitlines()) == 1
    assert main(["sweep", str(path), "--db", str(tmp_path / "r"), "--launcher", "local", "--detach"]) == 2
    assert "--detach needs --launcher slurm" in capsys.readouterr().err
    assert main(["sweep", str(path), "--db", str(tmp_path / "r"), "--cancel"]) == 2
    assert "no launched jobs recorded" in capsys.readouterr().err
    assert main(["sweep", str(path), "--db", str(tmp_path / "r"), "--status"]) == 0
    assert "1 todo" in capsys.readouterr().out
    assert ClusterConfig().workers == 2
