"""The study as the study ran it (issue 23, part B): task files carry the study's protocol (linear ``preset:
study``, notes.study stored with every row), the study sweep's dry run covers every one of its 671 cells, and
``medprobe study --data-root`` finds every dataset (slide sets and ``external:`` parts included) on a tree of
empty stand-in folders. Torch-free and fast: nothing runs a model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from medprobe.cli.main import main
from medprobe.pipeline.study import (
    MISSING_WEIGHTS,
    NOT_IN_SWEEP,
    NOT_SUPPORTED,
    REPRODUCIBLE,
    UNTRAINED,
    locations,
    row_status,
    study_coverage,
    study_sweep,
    study_why,
)
from medprobe.pipeline.study_tables import STUDY_TABLES, table_of
from medprobe.pipeline.sweep import expand, load_sweep
from medprobe.pipeline.task import load_task
from medprobe.report.reference import match_task

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "sweeps" / "dinov3-medical.yaml"

# The study grid, cell by cell (task: encoders x resolutions x inputs x folds x heads), as sweeps/dinov3-medical.yaml
# writes it. The 671 is what the sweep enumerates (and what `medprobe study --plan` counts per table).
CELLS = {
    "nih14": 6 * 6 * 2,  # S/B/L + BiomedCLIP, RAD-DINO, ResNet-50 x 224..1024 px x linear, logreg
    "rsna-pneumonia": 6 * 6 * 2,  # the same (the grid's heads replace the task file's knn)
    "kvasir-capsule": 3 * 2 * 2,  # S/B/L x 224, 256 x linear, logreg
    "autolaparo": 3 * 1 * 2,
    "ct-rate": 5 * 2,  # S/B/L + CT-CLIP, Swin UNETR x linear, knn
    "camelyon16": 6 * 3,  # S/B/L + ResNet-50, UNI, CONCH x abmil, meanpool, transmil
    "camelyon16-to-17": 6 * 2,  # x abmil, meanpool
    **{f"bcnb-{t}": 5 * 2 * 5 for t in ("aln", "er", "pr", "her2", "ki67")},  # S/B + 3 x 2 heads x 5 folds
    "endovis2018": 3, "edd2020": 3,  # S/B/L x decoder2d
    **{f"msd-{t}": 3 * 5 for t in ("braintumour", "heart", "liver", "prostate", "lung", "pancreas",
                                   "hepaticvessel", "spleen", "colon")},  # S/B/L x 5 folds
    "msd-hippocampus": 3 * 2 * 5,  # x 64, 128 px
    **{t: 3 for t in ("em-cremi-a", "em-cremi-b", "em-cremi-c", "em-ac3-ac4")},  # S/B/L x affinity
    "autopet-ii": 3 * 3, "hecktor2022": 3 * 3,  # S/B/L x CT, PET, CT+PET
    "reg-camus": 3 * 3, "reg-acdc": 3 * 3,  # S/B/L x identity, affine, convexadam
}
N_CELLS = 671
assert sum(CELLS.values()) == N_CELLS

# where a user keeps the study's datasets (their usual folder names; a few alternative spellings on purpose)
STAND_INS = ("nih-chestxray14", "rsna", "kvasir-capsule/labelled_images", "AutoLaparo_Task1", "ct-rate/dataset",
             "CAMELYON16", "camelyon17", "BCNB", "endovis2018", "EDD2020", "msd-task01-braintumour", "Task02_Heart",
             "msd-task03-liver", "msd-task04-hippocampus", "Task05_Prostate", "msd-task06-lung", "msd-task07-pancreas",
             "msd-task08-hepaticvessel", "Task09_Spleen", "msd-task10-colon", "cremi/sample_A_20160501.hdf",
             "cremi/sample_B_20160501.hdf", "cremi/sample_C.hdf", "snemi3d", "autopet/FDG-PET-CT-Lesions",
             "hecktor2022", "CAMUS/database_nifti", "ACDC/database/training")


def _stand_ins(root: Path) -> Path:
    for name in STAND_INS:
        (root / name).mkdir(parents=True)
    return root


def _weights(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every weights file the sweep names, as empty stand-ins under a temporary home (~ expands to it)."""
    monkeypatch.setenv("HOME", str(home))
    sw = load_sweep(SWEEP)
    for w in sw.grid["weights"].values():
        p = Path(str(w).replace("~", str(home), 1))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.mkdir() if not p.suffix else p.write_bytes(b"")


def test_study_sweep_has_671_cells_task_by_task() -> None:
    from medprobe.pipeline.study_plan import study_plan

    cells = expand(load_sweep(SWEEP))
    by_task: dict[str, int] = {}
    for c in cells:
        by_task[c.axes["task"]] = by_task.get(c.axes["task"], 0) + 1
    assert by_task == CELLS and len(cells) == N_CELLS
    plan = study_plan(load_sweep(SWEEP), count_data=False)  # what `medprobe study --plan` enumerates
    assert sum(plan.cells_by_table.values()) == N_CELLS


def test_data_root_finds_every_dataset_on_stand_in_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the task files' own ~/data paths do not exist
    root = _stand_ins(tmp_path / "data")
    cov = study_coverage(SWEEP, [root])
    missing = {c.task: c.data_missing for c in cov if not c.has_data}
    assert not missing, missing
    by = {c.task: c for c in cov}
    c17 = by["camelyon16-to-17"]  # external: both parts, each found by its kind's folder names
    assert c17.data_paths == {"data.train.dataset": root / "CAMELYON16", "data.test.dataset": root / "camelyon17"}
    assert all(by[f"bcnb-{t}"].data_paths == {"dataset": root / "BCNB"} for t in ("aln", "er", "pr", "her2", "ki67"))
    assert by["nih14"].data_paths == {"data.root": root / "nih-chestxray14"}
    assert by["msd-heart"].data_paths == {"dataset": root / "Task02_Heart"}
    assert by["reg-acdc"].data_paths == {"dataset": root / "ACDC/database/training"}
    # the runnable sweep reads the data where it was found: every part of a composite dataset rewritten
    sw = study_sweep(SWEEP, cov)
    assert sw is not None
    spec = next(s for s in sw.tasks if s.name == "camelyon16-to-17")
    assert spec.data["train"]["dataset"] == f"camelyon16:{root / 'CAMELYON16'}"
    assert spec.data["test"]["dataset"] == f"camelyon17:{root / 'camelyon17'}"
    assert spec.data["test"]["target"] == "tumour"  # the part's other options kept
    assert spec.notes["study"]["table"] == "4" and spec.notes["study"]["table_title"].startswith("Table 4.")
    nih = next(s for s in sw.tasks if s.name == "nih14")
    assert nih.data["root"] == str(root / "nih-chestxray14") and nih.data["image_dir"] == "images"


def test_study_dry_run_covers_all_671_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _weights(tmp_path / "home", monkeypatch)
    root = _stand_ins(tmp_path / "data")
    assert main(["study", "--data-root", str(root), "--dry-run", "--db", str(tmp_path / "db"), "--sweep",
                 str(SWEEP)]) == 0
    out = capsys.readouterr().out
    assert f"cells: {N_CELLS} in the grid: {N_CELLS} reproducible (data + weights)" in out
    assert f"would run {N_CELLS} of {N_CELLS} runnable cell(s):" in out
    listed = [x.strip() for x in out.split("runnable cell(s):")[1].splitlines() if x.strip()]
    assert len(listed) == len(set(listed)) == N_CELLS
    assert {c.key for c in expand(load_sweep(SWEEP))} == set(listed)
    for t in STUDY_TABLES:  # table by table
        assert t.title in out
    assert "MISSING" not in out and "not found" not in out
    # every printed row medprobe cannot produce says why (the reference file's why); the others are reproducible
    assert "not supported: W4 VOIs, W4 VOIm, W4 VOI, W4 ARAND of DINOv3-S, DINOv3-B, DINOv3-L -- no Wafer4 " \
        "loader" in out
    assert "not supported: VoxelMorph -- VoxelMorph (trained on the training pairs) is not in medprobe" in out
    assert "nnU-Net" in out and "SAM 2-Image (box)" in out
    # MIND + ConvexAdam: medprobe produces it (encoder-free), but the 671-cell grid has no features: mind cell
    mind = [x for x in out.splitlines() if x.strip().startswith("MIND + ConvexAdam")]
    assert len(mind) == 2 and all("not in the sweep (medprobe produces it, encoder-free: runs without weights; "
                                  "needs a cell with head_params.convexadam.features: mind" in x for x in mind)
    summary = next(x for x in out.splitlines() if x.startswith("study rows"))
    assert " 0 untrained-only, 0 missing data, 0 missing weights, 78 not supported, 2 not in the sweep" in summary


def test_row_statuses_untrained_missing_weights_not_supported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no weights at all
    root = _stand_ins(tmp_path / "data")
    cov = {c.task: c for c in study_coverage(SWEEP, [root])}
    t2 = table_of("nih14")
    t15 = table_of("camus")
    assert t2 is not None and t15 is not None
    dino_s = next(r for r in t2.rows if r.method == "DINOv3-S")
    assert row_status(dino_s, t2, cov["nih14"]) == (UNTRAINED, "")
    assert row_status(dino_s, t2, cov["nih14"], trained_only=True) == (MISSING_WEIGHTS, "")
    unreg = next(r for r in t15.rows if r.method == "Unregistered")  # identity: never runs the encoder
    assert row_status(unreg, t15, cov["reg-camus"]) == (REPRODUCIBLE, "")
    vm = next(r for r in t15.rows if r.method == "VoxelMorph")
    assert row_status(vm, t15, cov["reg-camus"])[0] == NOT_SUPPORTED
    mind = next(r for r in t15.rows if r.method == "MIND + ConvexAdam")  # producible, encoder-free, not in the grid
    assert mind.supported and not mind.needs_weights and mind.encoder is None
    assert row_status(mind, t15, cov["reg-camus"], trained_only=True)[0] == NOT_IN_SWEEP
    # with a convexadam cell reading MIND the row is a cell of the grid, reproducible without any weights
    mind_cov = replace(cov["reg-camus"], head_params={"convexadam": {"features": "mind"}})
    assert row_status(mind, t15, mind_cov) == (REPRODUCIBLE, "")
    why = study_why(list(cov.values()), trained_only=True)  # what the report shows in cells without a run
    assert why["camus:MIND + ConvexAdam"].startswith("not in the sweep: medprobe produces it, encoder-free")
    assert why["nih14:dinov3-vits16"].startswith("missing weights (") and "left out (--trained-only)" in \
        why["nih14:dinov3-vits16"]
    assert "camus:VoxelMorph" not in why  # the reference file says why
    assert main(["study", "--data-root", str(root), "--dry-run", "--trained-only", "--sweep", str(SWEEP),
                 "--db", str(tmp_path / "db")]) == 0
    out = capsys.readouterr().out
    assert f"0 untrained-only (UNTRAINED pipeline checks), {N_CELLS} missing weights, 0 missing data" in out
    assert "nothing to run on this machine" in out


def test_study_tables_are_read_from_the_reference_file() -> None:
    """One source: every printed row of Tables 2-16, whether medprobe produces it, its encoder and heads, come from
    report/paper_tables.json; study_tables adds only the sweep tasks of each table (= the tasks of its producible
    cells, the MSD average aside) and Fig. 3."""
    from medprobe.report.reference import paper_cells, paper_tables, protocols

    prots = protocols()
    by_key = {t.key: t for t in STUDY_TABLES}
    assert [t.key for t in STUDY_TABLES if t.key != "fig3"] == [pt.id for pt in paper_tables()]
    for pt in paper_tables():
        t, cells = by_key[pt.id], paper_cells(pt.id)
        assert [r.method for r in t.rows] == list(pt.rows)
        ok = [c for c in cells if c.why is None and prots[c.protocol].match is not None]
        assert set(t.tasks) == {c.task for c in ok} - {"msd"}, pt.id
        assert {r.method for r in t.rows if r.supported} == {c.label for c in ok}
        for r in t.rows:
            mine = [c for c in ok if c.label == r.method]
            assert set(r.protocols) == {c.protocol for c in mine}
            if mine:
                free = all((prots[c.protocol].match or {}).get("encoder_free") for c in mine)
                assert r.encoder == (None if free else mine[0].encoder) and r.needs_weights is not free
    assert by_key["fig3"].rows == by_key["3"].rows and not by_key["fig3"].not_supported
    ct_clip = next(r for r in by_key["9"].rows if r.method.startswith("CT-CLIP"))  # quoted: not this protocol
    assert not ct_clip.supported and "quoted from the CT-CLIP paper" in ct_clip.reason


def test_every_study_task_file_states_the_study_protocol() -> None:
    """Each task of the study sweep records its study table and the protocol's heads (notes.study, stored with every
    row in config.notes); every linear probe of a classification table uses the study's recipe (preset: study)."""
    for spec in load_sweep(SWEEP).tasks:
        table = table_of(match_task(spec.name))
        assert table is not None, spec.name
        study = spec.notes.get("study")
        assert study and str(study["table"]) == table.key, spec.name
        assert set(study["heads"]) & set(table.heads), spec.name
        if "linear" in table.heads:
            assert spec.head_params["linear"]["preset"] == "study", spec.name
            assert study["heads"]["linear"] == {"preset": "study"}
    nih = load_task(REPO / "tasks" / "nih14.yaml")
    assert nih.config_hash("linear") != nih.with_overrides(head_params={"linear": {"preset": "improved"}}
                                                           ).config_hash("linear")


def test_locations_of_composite_and_file_free_datasets() -> None:
    from medprobe.pipeline.task import parse_task

    ext = parse_task({"dataset": "external:", "kind": "slides",
                      "data": {"train": {"dataset": "camelyon16:/x/c16"}, "test": {"dataset": "camelyon17:/x/c17"}}})
    assert [(x.key, x.kind, x.given) for x in locations(ext)] == [("data.train.dataset", "camelyon16", "/x/c16"),
                                                                   ("data.test.dataset", "camelyon17", "/x/c17")]
    assert locations(parse_task({"dataset": "phantom:xray2d-binary"})) == []  # needs no files: runnable anywhere
