"""The typed task config: one parser for YAML, CLI flags and sweep cells; canonical hashes; one-line errors
naming the file, the key path and the closest valid key at every level; ``medprobe config``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medprobe.cli.main import build_parser, main
from medprobe.errors import ConfigError
from medprobe.pipeline.sweep import expand, load_sweep, run_sweep
from medprobe.pipeline.task import TaskSpec, config_keys, load_task, parse_task
from medprobe.results import ResultsDB

REPO = Path(__file__).resolve().parents[1]
TASK = {"name": "t", "dataset": "phantom:xray2d-binary", "data": {"n": 40, "size": 32}, "encoder": "none",
        "heads": ["logreg"], "preprocess": {"resolution": 32}, "split": {"fractions": [0.6, 0.2, 0.2]}}
FLAGS = ["--dataset", "phantom:xray2d-binary", "--data-opt", "n=40", "--data-opt", "size=32", "--encoder", "none",
         "--head", "logreg", "--resolution", "32x32", "--split", "fractions:0.6,0.2,0.2"]


def _write(path: Path, obj: object) -> Path:
    path.write_text(yaml.safe_dump(obj), encoding="utf-8")
    return path


def _spec_from_flags(argv: list[str]) -> TaskSpec:
    from medprobe.cli.cmd_run import task_from_args

    args = build_parser().parse_args(["run", *argv])
    return task_from_args(args)[0]


def test_equal_settings_written_differently_hash_equal() -> None:
    hashes = {parse_task({"preprocess": {"resolution": r}}).config_hash("logreg")
              for r in (224, "224", [224, 224], (224, 224), "224x224")}
    assert len(hashes) == 1
    a = parse_task({"features": {"layers": [11, 5, 2, 8]}, "budget": 1.0, "split": "official"})
    b = parse_task({"features": {"layers": "2,5,8,11"}, "budget": "all", "split": {"kind": "official"}})
    assert a.config_hash("knn") == b.config_hash("knn")
    # things that change no number do not change the hash; things that do, do
    c = parse_task({"name": "other", "device": "cpu", "cache_dir": "/x", "notes": {"a": 1},
                    "features": {"batch_size": 7, "progress": False}})
    assert c.config_hash("logreg") == TaskSpec().config_hash("logreg")
    assert parse_task({"seed": 1}).config_hash("logreg") != TaskSpec().config_hash("logreg")
    assert parse_task({"features": {"token": "mean"}}).config_hash("logreg") != TaskSpec().config_hash("logreg")
    # canonical form re-parses to itself (what with_overrides and the sweep rely on)
    d = parse_task(TASK).to_dict()
    assert parse_task(d).to_dict() == d and d["preprocess"]["resolution"] == [32, 32]
    assert d["split"] == {"kind": "fractions", "fractions": [0.6, 0.2, 0.2], "folds": None, "fold": 0,
                          "val_fraction": 0.2, "seed": None}


def test_cli_yaml_and_sweep_cell_share_one_hash_and_the_sweep_skips_a_run(tmp_path: Path) -> None:
    yml = _write(tmp_path / "t.yaml", TASK)
    from_yaml = load_task(yml)
    from_flags = _spec_from_flags([*FLAGS, "--name", "cli-name"])
    sweep = _write(tmp_path / "s.yaml", {"name": "sw", "tasks": [{"task": str(yml)}],
                                         "grid": {"encoder": ["none"], "resolution": [[32, 32]], "head": ["logreg"]}})
    cell = expand(load_sweep(sweep))[0]
    h = from_yaml.config_hash("logreg")
    assert from_flags.config_hash("logreg") == h == cell.config_hash
    assert _spec_from_flags([str(yml)]).config_hash("logreg") == h
    # `medprobe run` with flags, then the sweep: its one cell is found done and skipped
    db = tmp_path / "res" / "results.db"
    cache = tmp_path / "cache"
    assert main(["run", *FLAGS, "--db", str(db), "--cache-dir", str(cache)]) == 0
    out = run_sweep(load_sweep(sweep), db=ResultsDB(db), cache_dir=str(cache), echo=lambda s: None)
    assert (out["total"], out["ran"], out["skipped"]) == (1, 0, 1)
    assert len(ResultsDB(db).runs()) == 1


# -------------------------------------------------------------------------------- misspelt keys per level
TASK_TYPOS = [
    ({"hedas": ["logreg"]}, "'hedas'", "'heads'"),
    ({"split": {"fractions": [0.6, 0.2, 0.2], "sed": 3}}, "'split.sed'", "'split.seed'"),
    ({"preprocess": {"resolution": 32, "intensty": "minmax"}}, "'preprocess.intensty'", "'preprocess.intensity'"),
    ({"features": {"layrs": "four"}}, "'features.layrs'", "'features.layers'"),
    ({"metrics": {"bootstapp": 10}}, "'metrics.bootstapp'", "'metrics.bootstrap'"),
    ({"data": {"n": 40, "sise": 32}}, "'data.sise'", "'data.size'"),
    ({"head_params": {"logreg": {"max_iters": 5}}}, "'head_params.logreg.max_iters'", "'head_params.logreg.max_iter'"),
    ({"head_params": {"logrge": {}}}, "'head_params.logrge'", "'head_params.logreg'"),
]


@pytest.mark.parametrize("typo,key,hint", TASK_TYPOS, ids=[t[1] for t in TASK_TYPOS])
def test_task_yaml_typo_at_every_level(tmp_path: Path, capsys: pytest.CaptureFixture[str], typo: dict, key: str,
                                       hint: str) -> None:
    raw = {**TASK, **typo} if "data" not in typo else {**TASK, "data": typo["data"]}
    if "split" in typo:
        raw["split"] = typo["split"]
    yml = _write(tmp_path / "bad.yaml", raw)
    rc = main(["run", str(yml), "--db", str(tmp_path / "db"), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(yml) in err and f"unknown key {key}" in err and f"did you mean {hint}" in err
    assert not (tmp_path / "c").exists()  # nothing was extracted before the check


SWEEP_TYPOS = [
    ({"gird": {}}, "'gird'", "'grid'"),
    ({"grid": {"resolutoin": [32]}}, "'grid.resolutoin'", "'grid.resolution'"),
    ({"tasks": [{"task": "TASK", "grid": {"sed": [1]}}]}, "'tasks[t].grid.sed'", "'tasks[t].grid.seed'"),
    ({"base": {"featurs": {"amp": "off"}}}, "'featurs'", "'features'"),
    ({"tasks": [{"task": "TASK", "preprocess": {"resize": "stretch", "interpolaton": "bicubic"}}]},
     "'preprocess.interpolaton'", "'preprocess.interpolation'"),
]


@pytest.mark.parametrize("typo,key,hint", SWEEP_TYPOS, ids=[t[1] for t in SWEEP_TYPOS])
def test_sweep_yaml_typo_at_every_level(tmp_path: Path, capsys: pytest.CaptureFixture[str], typo: dict, key: str,
                                        hint: str) -> None:
    yml = _write(tmp_path / "t.yaml", TASK)
    raw: dict = {"name": "sw", "tasks": [str(yml)], "grid": {"encoder": ["none"]}, **typo}
    raw["tasks"] = [({**e, "task": str(yml)} if isinstance(e, dict) else e) for e in raw["tasks"]]
    sweep = _write(tmp_path / "s.yaml", raw)
    rc = main(["sweep", str(sweep), "--dry-run", "--db", str(tmp_path / "db")])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and str(sweep) in err
    assert f"unknown key {key}" in err and f"did you mean {hint}" in err


def test_typo_inside_a_task_file_of_a_sweep_names_that_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    yml = _write(tmp_path / "t.yaml", {**TASK, "features": {"tokne": "cls"}})
    sweep = _write(tmp_path / "s.yaml", {"tasks": [str(yml)]})
    assert main(["sweep", str(sweep), "--dry-run", "--db", str(tmp_path / "db")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"medprobe: error: {yml}:") and "'features.tokne'" in err and "'features.token'" in err


@pytest.mark.parametrize("flags,needle", [
    (["--split", "fractions:a,b,c"], "split: must be official"),
    (["--split", "folds:x:0"], "split: must be official"),
    (["--budget", "abc"], "budget: must be a fraction"),
    (["--resolution", "12y"], "preprocess.resolution: must be N, HxW"),
    (["--seed", "x"], "seed: must be a whole number"),
    (["--layers", "fuor"], "features.layers: must be"),
    (["--batch-size", "0"], "features.batch_size: must be >= 1"),
])
def test_bad_flag_values_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str],
                                      needle: str) -> None:
    rc = main(["run", *FLAGS, *flags, "--db", str(tmp_path / "db"), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("medprobe: error: command line:") and needle in err


def test_value_errors_name_the_key_path() -> None:
    with pytest.raises(ConfigError, match=r"preprocess.channels: must be one of .* \(did you mean 'replicate'\?\)"):
        parse_task({"preprocess": {"channels": "replicat"}}, "x.yaml")
    with pytest.raises(ConfigError, match="x.yaml: split: fold 7 out of range for 5 folds"):
        parse_task({"split": {"folds": 5, "fold": 7}}, "x.yaml")
    with pytest.raises(ConfigError, match="metrics.alpha: must be > 0"):
        parse_task({"metrics": {"alpha": 0}}, "x.yaml")


def test_config_show_and_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    yml = _write(tmp_path / "t.yaml", TASK)
    assert main(["config", "show", str(yml), "--head", "logreg,knn"]) == 0
    out = capsys.readouterr().out
    shown = yaml.safe_load(out)
    assert shown["preprocess"]["resolution"] == [32, 32] and shown["features"]["token"] == "cls"
    spec = load_task(yml, heads=["logreg", "knn"])
    assert f"logreg: {spec.config_hash('logreg')}" in out and f"knn: {spec.config_hash('knn')}" in out
    assert main(["config", "keys"]) == 0
    out = capsys.readouterr().out
    for path, _typ, _default, _numbers, _help in config_keys():
        assert path in out
    line = next(ln for ln in out.splitlines() if ln.startswith("features.batch_size"))
    assert " no " in line  # batch size changes no number
    assert next(ln for ln in out.splitlines() if ln.startswith("preprocess.resolution")).count(" yes ") == 1


def test_config_commands_do_not_import_torch(tmp_path: Path) -> None:
    yml = _write(tmp_path / "t.yaml", TASK)
    code = ("import sys; from medprobe.cli.main import main; "
            f"main(['config', 'show', {str(yml)!r}]); main(['config', 'keys']); "
            "print('TORCH', 'torch' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "TORCH False" in out.stdout


def test_shipped_task_yamls_all_parse() -> None:
    for p in sorted((REPO / "tasks").glob("*.yaml")):
        spec = load_task(p)
        assert spec.name == p.stem


def test_config_hash_carries_the_defaults_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A row stored under older defaults (e.g. decoders with the image stem) is not taken for a new run's."""
    import medprobe.pipeline.task as task_mod

    spec = parse_task({"heads": ["decoder2d"]})
    now = spec.config_hash("decoder2d")
    monkeypatch.setattr(task_mod, "DEFAULTS_EPOCH", task_mod.DEFAULTS_EPOCH - 1)
    assert spec.config_hash("decoder2d") != now
