"""The study sweep: every named task file exists, every cell is listed by a dry run, every study task matches a
reference row (one per metric, with its definition), and every task's dataset options are valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medprobe.cli.main import main
from medprobe.pipeline.sweep import expand, load_sweep
from medprobe.pipeline.task import check_data_options
from medprobe.report.reference import (
    DEFINITIONS,
    METRIC_ALIASES,
    TABLES,
    match_task,
    reference_rows,
    reference_table,
    references_for,
)

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "sweeps" / "dinov3-medical.yaml"


def test_every_task_file_exists_and_dry_run_lists_every_cell(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    sw = load_sweep(SWEEP)  # raises on a missing task file (no --skip-missing-tasks)
    assert not sw.skipped_tasks
    cells = expand(sw)
    assert main(["sweep", str(SWEEP), "--db", str(tmp_path / "db"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "not found" not in out
    listed = re.findall(r"cell (\d+)/(\d+) todo: (\S+)", out)
    assert len(listed) == len(cells) and {k for _, _, k in listed} == {c.key for c in cells}
    assert f"dry run: 0 done, {len(cells)} to run" in out
    tasks = {c.axes["task"] for c in cells}
    for t in ("nih14", "rsna-pneumonia", "kvasir-capsule", "autolaparo", "ct-rate", "endovis2018", "edd2020",
              "autopet-ii", "hecktor2022", "msd-hippocampus", "msd-colon", "em-cremi-a", "reg-acdc"):
        assert t in tasks
    # MSD is 5-fold CV: every fold of every encoder is a cell
    hip = [c for c in cells if c.axes["task"] == "msd-heart"]
    assert sorted({c.axes["fold"] for c in hip}) == [0, 1, 2, 3, 4] and len(hip) == 15


def test_every_study_task_matches_a_reference_row() -> None:
    sw = load_sweep(SWEEP)
    tables = set()
    for spec in sw.tasks:
        key = match_task(spec.name)
        assert key is not None, f"sweep task {spec.name} matches no reference row"
        refs = references_for(spec.name)
        assert refs and all(r.definition for r in refs)
        tables.add(refs[0].table)
    assert tables == set(TABLES)  # every table of the study, whole slides included
    seen = set()
    for r in reference_table():
        assert r.table in TABLES and r.definition in DEFINITIONS.values() and r.metric in METRIC_ALIASES
        assert (r.task, r.metric, r.head) not in seen, f"two references for {r.task} {r.metric}"
        seen.add((r.task, r.metric, r.head))
    endo = [r for r in reference_rows() if r["task"] == "endovis2018"]
    assert {r["metric"] for r in endo} == {"binary_iou", "instrument_iou"}
    assert "miou" not in METRIC_ALIASES["binary_iou"]
    assert {r["value"] for r in endo if r["metric"] == "binary_iou"} == {86.05, 89.04, 92.19}
    assert match_task("seg-msd-task02-heart") == "msd-heart" and match_task("hippocampus-fold0") == "msd-hippocampus"
    assert match_task("pneumoniamnist") is None and match_task("seg-isbi2012") is None


def test_every_sweep_task_has_valid_dataset_options() -> None:
    from medprobe.pipeline.run import _family_data_options

    extra = _family_data_options()
    for spec in load_sweep(SWEEP).tasks:
        check_data_options(spec, SWEEP, extra=extra)  # a misspelt data option is one ConfigError line
    native = {s.name: s.dataset.partition(":")[0] for s in load_sweep(SWEEP).tasks}
    assert native["autolaparo"] == "autolaparo" and native["endovis2018"] == "endovis2018"
    assert native["edd2020"] == "edd2020" and native["autopet-ii"] == "autopet" and native["hecktor2022"] == "hecktor"
    assert native["ct-rate"] == "ct-rate"
