"""The command line as a researcher expects it: help everywhere, the lists reachable, light commands without
torch, the family taken from the dataset, and ``run --dry-run``."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from medprobe.cli.main import build_parser, main
from medprobe.pipeline import parse_task
from medprobe.pipeline.plan import make_plan
from medprobe.results import ResultsDB


def _commands(p: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...],
                                                                                     argparse.ArgumentParser]]:
    out = [(path, p)]
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                out += _commands(sp, (*path, name))
    return out


COMMANDS = _commands(build_parser())


def test_command_tree_is_complete() -> None:
    paths = {" ".join(p) for p, _ in COMMANDS}
    for want in ("run", "results list", "results show", "results export", "config show", "config keys",
                 "cache list", "cache verify", "cache rm", "datasets", "heads", "models", "report", "sweep"):
        assert want in paths, want


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "medprobe")
def test_every_option_has_help_with_an_example(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    parser = dict(COMMANDS)[path]
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
            continue
        name = "/".join(a.option_strings) or a.dest
        assert a.help and a.help != argparse.SUPPRESS, f"{' '.join(path)} {name}: no help text"
        if a.nargs != 0:  # takes a value: show one
            assert "e.g." in a.help, f"{' '.join(path)} {name}: help has no example: {a.help!r}"
    with pytest.raises(SystemExit) as e:
        main([*path, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: medprobe")


def test_run_help_ends_with_where_the_lists_are(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    tail = out[out.index("where to find the lists:"):]
    for cmd in ("medprobe models", "medprobe datasets", "medprobe heads"):
        assert cmd in tail
    kind = out[out.index("\n  --kind KIND"):out.index("\n  --db DB")]
    assert "override" in kind and "task type" in kind and "--dry-run" in out


def test_light_commands_import_no_torch(tmp_path: Path) -> None:
    code = f"""
import sys
from medprobe.cli.main import main
for argv in (["--help"], ["results", "list", "--db", {str(tmp_path / "x.db")!r}], ["report", "--help"],
             ["config", "keys"], ["datasets"], ["datasets", "seg2d"], ["run", "--help"], ["cache", "--help"],
             ["cache", "list", "--cache-dir", {str(tmp_path / "c")!r}],
             ["cache", "verify", "--cache-dir", {str(tmp_path / "c")!r}]):
    try:
        main(argv)
    except SystemExit:
        pass
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not bad, bad[:5]
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


def test_datasets_lists_kinds_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    from medprobe.data import dataset_kinds

    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for kind in dataset_kinds():
        assert f"\n{kind}:ARG " in "\n" + out
    lines = out.splitlines()
    phantom = lines[lines.index(next(ln for ln in lines if ln.startswith("phantom:ARG"))) + 1]
    assert phantom.strip() == "options: n, size, seed, splits"  # the factory's `options` attribute
    assert "limit_seed=0" in out and "size=None" in out  # keyword parameters with defaults (medmnist)
    assert main(["datasets", "seg2d"]) == 0
    assert "mask_values" in capsys.readouterr().out  # one kind in full: its docstring
    assert main(["datasets", "nope"]) == 2
    assert "unknown dataset kind 'nope'" in capsys.readouterr().err


def test_heads_grouped_by_family(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["heads"]) == 0
    out = capsys.readouterr().out
    sections = {}
    for block in out.split("\n\n")[0].split("\n"):
        if not block.startswith(" "):
            current = block.split(" ")[0]
            sections[current] = []
        elif not block.strip().startswith("params:"):
            sections[current].append(block.split()[0])
    assert {"abmil", "knn", "linear", "logreg", "meanpool", "transmil"} <= set(sections["classification"])
    assert sections["classification"] == sorted(sections["classification"])
    assert sections["regression"] == ["linear", "ridge"]
    assert {"decoder2d", "decoder3d", "linear"} <= set(sections["segmentation"])
    assert "max_iter=200" in out and "refit_on='train+val'" in out  # parameters with their defaults
    assert main(["heads", "decoder2d"]) == 0
    params = capsys.readouterr().out.split("params: ")[1].strip().split(", ")
    assert "epochs" in {x.split("=")[0] for x in params}
    assert all("=" in x for x in params), params  # training options show the family's defaults too
    assert main(["heads", "ridge"]) == 0
    assert "classification" not in capsys.readouterr().out
    assert main(["heads", "nope"]) == 2


def test_seg2d_isbi_runs_without_kind(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The family comes from the dataset's task type: seg2d + decoder2d needs no --kind (real ISBI 2012 EM)."""
    task = tmp_path / "seg.yaml"
    task.write_text("name: isbi-seg2d\nencoder: none\npreprocess: {resolution: 64}\n"
                    "split: {fractions: [0.5, 0.25, 0.25]}\nfeatures: {progress: false}\n"
                    "metrics: {bootstrap: 50, overlays: 0}\n"
                    "head_params:\n  decoder2d: {epochs: 1, iters_per_epoch: 2, batch_size: 2, width: 16}\n")
    db = tmp_path / "res"
    rc = main(["run", str(task), "--dataset", f"seg2d:{shared_data / 'isbi2012-em' / 'train'}",
               "--data-opt", "images=image", "--data-opt", "masks=label",
               "--data-opt", "classes=[background, membrane]", "--data-opt", "mask_values={0: 1, 255: 0}",
               "--data-opt", "limit=8", "--head", "decoder2d", "--db", str(db),
               "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    (row,) = ResultsDB(db).runs()
    assert row["task_type"] == "segmentation" and row["head"] == "decoder2d"
    assert row["config"]["kind"] is None and row["config"]["family"] == "segmentation"
    assert 0 < row["metrics"]["dice/membrane"][0] <= 1


FLAGS = ["--dataset", "phantom:xray2d-binary", "--data-opt", "n=24", "--data-opt", "size=32", "--encoder", "none",
         "--resolution", "32", "--split", "fractions:0.5,0.2,0.3", "--head", "logreg,knn", "--device", "cpu"]


def test_dry_run_before_and_after(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, cache = tmp_path / "res" / "results.db", tmp_path / "cache"
    flags = [*FLAGS, "--db", str(db), "--cache-dir", str(cache)]
    assert main(["run", *flags, "--dry-run"]) == 0
    before = capsys.readouterr().out
    assert "nothing is run or written" in before and "dataset: phantom:xray2d-binary" in before
    assert "will extract 24 items (24 images)" in before and "no row stored: will run" in before
    assert "one batch of 8 measured" in before and "estimated extraction" in before  # batch_size auto: 8 timed
    assert not db.exists() and not any(p.is_dir() for p in cache.glob("*"))  # nothing written
    assert main(["run", *flags]) == 0
    capsys.readouterr()
    rows = {r["head"]: r for r in ResultsDB(db).runs()}
    assert main(["run", *flags, "--dry-run"]) == 0
    after = capsys.readouterr().out
    assert "will extract nothing" in after and "features: cached" in after
    for head in ("logreg", "knn"):  # the hash shown is the stored row's
        r = rows[head]
        assert f"{head:<10} {r['config_hash']}  row stored: run {r['run_id'][:8]}" in after
    assert len(ResultsDB(db).runs()) == 2  # the dry run added nothing


def test_plan_counts_slices_of_volumes(tmp_path: Path) -> None:
    spec = parse_task({"name": "v", "dataset": "phantom:ct3d-binary", "data": {"n": 6, "size": 24},
                       "encoder": "none", "preprocess": {"resolution": 32}, "split": {"fractions": [0.5, 0.2, 0.3]},
                       "features": {"progress": False}, "heads": ["logreg"], "cache_dir": str(tmp_path / "cache"),
                       "device": "cpu", "metrics": {"bootstrap": 20}}, source="t")
    db = ResultsDB(tmp_path / "res")
    plan = make_plan(spec, db=db, measure=False)
    assert not plan.cached and plan.rows_exact and plan.n_items == 6 and plan.measured is None
    from medprobe.pipeline.run import run_task

    run_task(spec, db=db, verbose=False)
    done = make_plan(spec, db=db, measure=False)
    assert done.cached and done.to_extract == 0 and done.cache_key == plan.cache_key
    assert done.n_rows == plan.n_rows > plan.n_items  # slices counted from the volumes = rows the engine wrote
    assert done.heads[0].stored_run is not None
