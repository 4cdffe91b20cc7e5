"""The study's reference tables as data (medprobe/report/paper_tables.json): the shipped file's own counts and a
sample of values; every cell against ../shared/docs/paper-tables.md (parsed here, independently of the file) when
that transcription is present; the report's study section comparing like with like on a small results database."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medprobe.report.analyze import collect
from medprobe.report.reference import (
    ENCODERS,
    cell_counts,
    match_task,
    paper_cells,
    paper_tables,
    protocols,
    reference_table,
    references_for,
)
from medprobe.report.study import protocol_gaps, study_table, study_tables
from medprobe.results import ResultsDB

PAPER_TABLES = Path(__file__).resolve().parents[2] / "shared" / "docs" / "paper-tables.md"
# printed cells per table (numbers, and the two 'NaN' of Table 14); empty '/' cells are not cells
COUNTS = {"2": 32, "3": 20, "4": 20, "5": 77, "6": 32, "7": 24, "8": 135, "9": 32, "10-11": 165, "12": 108,
          "13": 72, "14": 152, "15": 21, "16": 21}
TOTAL = 911


def _cell(table: str, row: str, column: str, variant: str | None = None) -> Any:
    hits = [c for c in paper_cells(table) if c.row == row and c.column == column and c.variant == variant]
    assert len(hits) == 1, (table, row, column, variant)
    return hits[0]


# ------------------------------------------------------------------------------------- the shipped file alone
def test_shipped_file_counts_and_fields() -> None:
    assert cell_counts() == COUNTS and sum(COUNTS.values()) == TOTAL == len(paper_cells())
    tabs = paper_tables()
    assert [t.id for t in tabs] == list(COUNTS)
    prots = protocols()
    keys = set()
    for c in paper_cells():
        assert c.key not in keys, c.key
        keys.add(c.key)
        assert c.direction in ("higher", "lower") and c.source in ("study", "literature", "unstated")
        assert c.protocol in prots and c.scale in (1.0, 100.0)
        assert (c.value is None) == (c.printed == "NaN")
        t = next(t for t in tabs if t.id == c.table)
        assert c.label in t.rows and c.column in t.columns
        # a cell medprobe can produce has a protocol it can match; one it cannot says why
        assert (c.why is None) == (prots[c.protocol].match is not None), c.key
        if c.why is None:
            assert match_task(c.task) == c.task or c.task == "msd", c.task
    # every DINOv3 S/B/L cell is producible except Wafer4 (no dataset described)
    dino = [c for c in paper_cells() if c.encoder in ENCODERS.values() and c.source == "study"]
    assert {c.table for c in dino if c.why} == {"13"} and all(c.column.startswith("W4") for c in dino if c.why)
    assert sum(c.row.startswith(("DINOv3", "DINO-")) for c in paper_cells()) == len(dino)


def test_shipped_file_sample_values() -> None:
    c = _cell("2", "DINOv3-L", "NIH AUC")
    assert c.value == 0.7865 and c.bold and c.encoder == "dinov3-vitl16" and c.task == "nih14" and c.metric == "auc"
    assert protocols()[c.protocol].match == {"head": "linear", "head_params": {"preset": "study"}, "resolution": [256]}
    assert _cell("2", "BiomedCLIP", "RSNA AUC").value == 0.8831 and _cell("2", "BiomedCLIP", "RSNA AUC").bold
    assert _cell("4", "DINOv3-B", "AUC").value == 0.792 and _cell("4", "UNI", "AUC").encoder == "uni"
    c = _cell("14", "DINOv3-B/16", "AP Dice", "CT+PET")
    assert (c.value, c.scale, c.task, c.encoder) == (14.53, 100.0, "autopet-ii", "dinov3-vitb16")
    assert protocols()[c.protocol].match["inputs"] == "CT+PET"
    c = _cell("14", "DINOv3-S/16", "HK HD95", "CT")
    assert c.value is None and c.printed == "NaN" and c.direction == "lower"
    c = _cell("15", "VoxelMorph", "ASD ↓")
    assert (c.value, c.sd, c.unit, c.metric) == (1.8961, 0.7095, "px", "asd_px") and c.why and c.notes
    c = _cell("16", "DINO-B + MIND + ConvexAdam", "Dice ↑")
    assert (c.value, c.sd, c.encoder) == (0.7593, 0.1124, "dinov3-vitb16")
    assert protocols()[c.protocol].match["head_params"] == {"features": "dino+mind"}
    assert _cell("16", "Unregistered", "Dice ↑").value == 0.5889
    assert protocols()[_cell("16", "Unregistered", "Dice ↑").protocol].match["head"] == "identity"
    c = _cell("12", "CAD", "A VOI")
    assert (c.value, c.direction, c.task, c.metric, c.source) == (0.565, "lower", "cremi-a", "voi", "unstated")
    c = _cell("7", "SAM (box)", "Instrument IoU")
    assert c.value == 81.09 and any("prompt" in n for n in c.notes) and c.why
    # the paper's inconsistencies are noted on the cells
    b_avg = _cell("10-11", "DINOv3-B", "Avg (printed)")
    assert b_avg.value == 71.3 and any("73.65" in n for n in b_avg.notes)
    assert not _cell("10-11", "DINOv3-S", "Avg (printed)").notes
    assert any("77.34" in n for n in _cell("8", "FCBFormer", "Dice Avg").notes)
    assert _cell("8", "DINOv3-S", "polyp").metric == "dice_multilabel/polyp"
    assert any("0.575" in n for n in _cell("9", "DINOv3-L", "k-NN Rec").notes)


def test_metric_names_are_medprobes() -> None:
    from medprobe.data.surgical import EDD2020_CLASSES
    from medprobe.metrics.classification import SUMMARY_KEYS
    from medprobe.metrics.segmentation import METRICS

    known = {*SUMMARY_KEYS, *METRICS, "binary_iou", "instrument_iou", "dice_multilabel", "voi_split", "voi_merge",
             "voi", "arand", "hd95_px", "asd_px", *(f"dice_multilabel/{c}" for c in EDD2020_CLASSES)}
    assert {c.metric for c in paper_cells()} <= known


def test_reference_rows_read_the_cells() -> None:
    """The per-task Ref rows (``medprobe study`` and the sweep use them) take their values from the cells."""
    by = {(r.task, r.metric, r.head): r for r in reference_table()}
    assert by[("hecktor2022", "dice", None)].values == (40.13, 39.50, 30.86)
    assert by[("camelyon16-to-17", "auc", "abmil")].values == (0.854, 0.792, None)
    assert by[("endovis2018", "instrument_iou", None)].values == (39.86, 46.37, 63.97)
    assert by[("cremi-c", "voi", None)].values == (9.147, 7.546, 4.393)
    assert by[("msd-heart", "dice", None)].values == (77.1, 78.2, 77.6)
    assert by[("ac3-ac4", "voi", None)].comparison == "CAD 0.884"
    assert by[("bcnb-er", "auc", "abmil")].values == (None, None, None)  # radar chart only
    assert by[("nih14", "auc", "linear")].comparison == "BiomedCLIP 0.7771"
    assert references_for("seg-msd-task02-heart")[0].task == "msd-heart"
    assert {c.task for c in paper_cells(task="em-cremi-b")} == {"cremi-b"}


# ------------------------------------------------------------------------------------- against the transcription
def _parse_md(text: str) -> dict[str, list[tuple[str, str | None, str, str]]]:
    """(row, input, column, printed) of every numeric / NaN cell of each '### Table' section."""
    out: dict[str, list[tuple[str, str | None, str, str]]] = {}
    tid = None
    block: list[list[str]] = []

    def flush() -> None:
        if tid is None or len(block) < 3:
            return
        head, rows = block[0], block[2:]
        name_i = next((head.index(n) for n in ("Method", "Patch encoder", "Baseline", "Model") if n in head), 0)
        in_i = head.index("Input") if "Input" in head else None
        for r in rows:
            for i, (h, v) in enumerate(zip(head, r)):
                if i in (name_i, in_i):
                    continue
                v = v.replace("**", "").strip().rstrip("*").strip()
                if re.fullmatch(r"-?\d+(\.\d+)?( ± \d+(\.\d+)?)?|NaN", v):
                    out[tid].append((r[name_i].replace("**", "").strip(), r[in_i] if in_i is not None else None, h,
                                     v))

    for line in text.splitlines() + [""]:
        m = re.match(r"^### Tables? (\d+(?:–\d+)?)\.", line)
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        flush()
        block = []
        if m:
            tid = m.group(1).replace("–", "-")
            out[tid] = []
        elif line.startswith(("## ", "---")):
            tid = None
    return out


@pytest.mark.skipif(not PAPER_TABLES.is_file(),
                    reason=f"{PAPER_TABLES} absent (../shared not checked out): the shipped file's own counts and "
                           "sample values are checked by the tests above")
def test_every_cell_matches_the_transcription() -> None:
    parsed = _parse_md(PAPER_TABLES.read_text(encoding="utf-8"))
    assert {k: len(v) for k, v in parsed.items()} == COUNTS
    shipped = {(c.table, c.row, c.variant, c.column): c for c in paper_cells()}
    seen = set()
    for tid, cells in parsed.items():
        for row, variant, col, printed in cells:
            c = shipped[(tid, row, variant, col)]
            seen.add(c.key)
            assert c.printed == printed, (tid, row, col)
            if printed == "NaN":
                assert c.value is None
            else:
                v, _, sd = printed.partition(" ± ")
                assert c.value == float(v) and (c.sd == float(sd) if sd else c.sd is None), (tid, row, col)
    assert seen == set(shipped)
    # a sample read straight from the text
    text = PAPER_TABLES.read_text(encoding="utf-8")
    assert "| DINOv3-B | 66.8 | 78.2 | 84.1 | 75.3 | 79.8 | 73.1 | 78.9 | 64.8 | 86.4 | 49.1 | 71.3 |" in text
    assert [c.value for c in paper_cells("10-11") if c.row == "DINOv3-B"] == [66.8, 78.2, 84.1, 75.3, 79.8, 73.1,
                                                                                78.9, 64.8, 86.4, 49.1, 71.3]


# ------------------------------------------------------------------------------------- the report's study section
def _add(db: ResultsDB, task: str, enc: str, head: str, metrics: dict[str, float], *, res: int = 256,
         head_params: dict[str, Any] | None = None, inputs: str | None = None, fold: int | None = None,
         seed: int = 0, pretrained: bool = True, task_type: str = "multilabel") -> None:
    cfg: dict[str, Any] = {"task": task, "encoder": enc, "res": res, "head": head, "seed": seed,
                           "hp": head_params, "inputs": inputs, "fold": fold}
    if fold is not None:
        cfg["split"] = {"kind": "folds", "folds": 5, "fold": fold}
    record = {"task": task, "task_type": task_type, "config": cfg, "config_hash": f"{abs(hash(str(cfg))):x}",
              "encoder": enc, "weights": "w.pth" if pretrained else "random", "pretrained": pretrained,
              "dataset": task, "split": {"n_test": 50, "test_ids_hash": "x"}, "seed": seed, "head": head,
              "head_params": head_params or {}, "layer": [11], "resolution": [res, res],
              "notes": {"inputs": inputs} if inputs else {}}
    db.add_run(record, {k: (v, v - 0.01, v + 0.01) for k, v in metrics.items()})


def test_study_section_compares_like_with_like(tmp_path: Path) -> None:
    db = ResultsDB(tmp_path / "db")
    study = {"preset": "study"}
    # NIH-14, DINOv3-S: the study's recipe at 256 px, and a better logreg at 512 (medprobe's best, not the paper's)
    _add(db, "nih14", "dinov3-vits16", "linear", {"auc": 0.77, "acc": 0.9, "precision_macro": 0.5,
                                                  "recall_macro": 0.6}, head_params=study)
    _add(db, "nih14", "dinov3-vits16", "linear", {"auc": 0.79, "acc": 0.9, "precision_macro": 0.5,
                                                  "recall_macro": 0.6}, head_params=study, seed=1)
    _add(db, "nih14", "dinov3-vits16", "logreg", {"auc": 0.81, "acc": 0.9}, res=512)
    # DINOv3-B: linear, but medprobe's improved recipe; DINOv3-L: the study's recipe at 224 px
    _add(db, "nih14", "dinov3-vitb16", "linear", {"auc": 0.80}, head_params={"preset": "improved"})
    _add(db, "nih14", "dinov3-vitl16", "linear", {"auc": 0.80}, head_params=study, res=224)
    # AutoPET: CT only and CT+PET rows; each paper cell gets its own input
    for inputs, dice in (("CT", 0.02), ("CT+PET", 0.20)):
        _add(db, "seg-autopet-petct", "dinov3-vits16", "decoder3d", {"dice": dice, "hd95": 50.0, "precision": 0.1,
                                                                     "recall": 0.5}, inputs=inputs,
             task_type="segmentation")
    # MSD, DINOv3-S: five folds of every task (the 'Avg' cell needs all ten), one task with fold 0 only for B
    for t in ("braintumour", "heart", "liver", "hippocampus", "prostate", "lung", "pancreas", "hepaticvessel",
              "spleen", "colon"):
        for f in range(5):
            _add(db, f"msd-{t}", "dinov3-vits16", "decoder3d", {"dice": 0.60 + 0.01 * f}, fold=f,
                 task_type="segmentation")
    _add(db, "msd-heart", "dinov3-vitb16", "decoder3d", {"dice": 0.7}, task_type="segmentation")
    # registration: the encoder-free MIND baseline, and an untrained DINO row under the paper's protocol
    _add(db, "reg-acdc", "dinov3-vits16", "convexadam", {"dice": 0.75}, head_params={"features": "mind"},
         task_type="registration")
    _add(db, "reg-acdc", "dinov3-vits16", "convexadam", {"dice": 0.70}, head_params={"features": "dino+mind"},
         pretrained=False, task_type="registration")
    pts = collect(db.runs())
    tabs, notes = study_tables(pts, why={"rsna-pneumonia": "data not found under /data"})
    by = {t.slug: t for t in tabs}
    assert set(by) == {"study-table-2", "study-table-10-11", "study-table-14", "study-table-16"}
    assert "not shown" in notes[-1] and "15" in notes[-1]

    def line(slug: str, row: str, col: str) -> dict[str, Any]:
        t = by[slug]
        hits = [dict(zip(t.raw_columns or [], r)) for r in t.raw if r[1] == row and r[3] == col]
        assert len(hits) == 1, (slug, row, col)
        return hits[0]

    s = line("study-table-2", "DINOv3-S", "NIH AUC")
    assert s["medprobe"] == pytest.approx(0.78) and s["delta"] == pytest.approx(0.78 - 0.7788)
    assert s["n"] == "2 seeds" and "preset study" in s["setting"] and s["low"] == pytest.approx(0.77)
    assert s["best"] == pytest.approx(0.81) and "512px" in s["best_setting"] and "logreg" in s["best_setting"]
    assert s["comparison"] == "BiomedCLIP 0.7771"
    b = line("study-table-2", "DINOv3-B", "NIH AUC")
    assert math.isnan(b["medprobe"]) and "preset improved (paper: study)" in b["status"]
    assert b["best"] == pytest.approx(0.80)
    lg = line("study-table-2", "DINOv3-L", "NIH AUC")
    assert math.isnan(lg["medprobe"]) and "resolution 224 (paper: 256)" in lg["status"]
    assert "data not found under /data" in line("study-table-2", "DINOv3-S", "RSNA AUC")["status"]
    assert "not run here with biomedclip" in line("study-table-2", "BiomedCLIP", "NIH AUC")["status"]

    # inputs: CT+PET against CT+PET only, in % like the paper
    t14 = by["study-table-14"]
    rows14 = [dict(zip(t14.raw_columns or [], r)) for r in t14.raw if r[1] == "DINOv3-S/16" and r[3] == "AP Dice"]
    got = {r["variant"]: r["medprobe"] for r in rows14}
    assert got["CT+PET"] == pytest.approx(20.0) and got["CT"] == pytest.approx(2.0) and math.isnan(got["PET"])
    hd = [r for r in (dict(zip(t14.raw_columns or [], r)) for r in t14.raw)
          if r["row"] == "DINOv3-S/16" and r["column"] == "AP HD95" and r["variant"] == "CT+PET"][0]
    assert hd["medprobe"] == pytest.approx(50.0) and hd["delta"] == pytest.approx(50.0 - 13456.42)

    # MSD: the mean over five folds with a t-interval; 'Avg' = mean of the ten tasks; a non-CV row is not the paper's
    h = line("study-table-10-11", "DINOv3-S", "Heart")
    assert h["medprobe"] == pytest.approx(62.0) and h["n"] == "5 of 5 folds"
    half = 2.776445 * np.std([60, 61, 62, 63, 64], ddof=1) / math.sqrt(5)
    assert h["low"] == pytest.approx(62.0 - half, abs=1e-3) and h["high"] == pytest.approx(62.0 + half, abs=1e-3)
    avg = line("study-table-10-11", "DINOv3-S", "Avg (printed)")
    assert avg["medprobe"] == pytest.approx(62.0) and avg["delta"] == pytest.approx(62.0 - 69.0)
    hb = line("study-table-10-11", "DINOv3-B", "Heart")
    assert math.isnan(hb["medprobe"]) and "no k-fold split" in hb["status"] and hb["best"] == pytest.approx(70.0)
    assert "needs all 10" in line("study-table-10-11", "DINOv3-B", "Avg (printed)")["status"]

    # registration: MIND + ConvexAdam is encoder-free; an untrained DINO row is flagged and gets no delta
    mind = line("study-table-16", "MIND + ConvexAdam", "Dice ↑")
    assert mind["medprobe"] == pytest.approx(0.75) and mind["delta"] == pytest.approx(0.75 - 0.7499)
    dino = line("study-table-16", "DINO-S + MIND + ConvexAdam (zero-shot)", "Dice ↑")
    assert dino["untrained"] and dino["medprobe"] == pytest.approx(0.70) and math.isnan(dino["delta"])
    assert "UNTRAINED" in dino["status"]
    assert dino["comparison"] == "Anatomix + ConvexAdam 0.7566"  # the paper's best comparison in that column
    assert "VoxelMorph, Anatomix + ConvexAdam." in by["study-table-16"].note  # rows medprobe cannot run: named

    combined = study_table(None, pts, tables=tabs)
    assert combined is not None and len(combined.rows) == sum(len(t.rows) for t in tabs)
    assert len(study_tables(pts, all_tables=True)[0]) == len(COUNTS)


def test_protocol_gaps() -> None:
    m = {"head": "linear", "head_params": {"preset": "study"}, "resolution": [256]}
    p = {"encoder": "dinov3-vits16", "head": "linear", "head_name": "linear", "head_params": {"preset": "study"},
         "resolution": 256, "config": {}}
    assert protocol_gaps(m, p, "dinov3-vits16") == []
    assert protocol_gaps(m, {**p, "encoder": "dinov3-vitb16"}, "dinov3-vits16") == [
        "encoder dinov3-vitb16 (paper: dinov3-vits16)"]
    # a row recorded without its parameters: the task file's head_params are read
    q = {**p, "head_params": {}, "config": {"head_params": {"linear": {"preset": "study"}}}}
    assert protocol_gaps(m, q, "dinov3-vits16") == []
    assert protocol_gaps({"head": "decoder3d", "inputs": "CT+PET"}, {**p, "head_name": "decoder3d",
                                                                     "inputs": "ct + pet"}, None) == []


def test_report_shows_the_reasons_medprobe_study_wrote(tmp_path: Path) -> None:
    """``medprobe study`` writes its reasons beside the database (study-why.json); the report reads them: a printed
    row no cell of the sweep ran (``task:row``) and an encoder whose weights were not found (``task:encoder``)."""
    from medprobe.report import build_report
    from medprobe.report.study import load_study_why, save_study_why

    db = ResultsDB(tmp_path / "db")
    _add(db, "reg-camus", "dinov3-vits16", "convexadam", {"dice": 0.7}, head_params={"features": "dino"},
         task_type="registration")
    why = {"camus:MIND + ConvexAdam": "not in the sweep: needs head_params.convexadam.features: mind",
           "camus:dinov3-vitb16": "missing weights (/w/b.pth) -> left out (--trained-only)"}
    save_study_why(db.root, why, sweep="dinov3-medical")
    assert load_study_why(db.root) == why and load_study_why(tmp_path) == {}
    tabs, _ = study_tables(collect(db.runs()), why=why)
    t15 = dict(zip(tabs[0].raw_columns or [], next(r for r in tabs[0].raw if r[1] == "MIND + ConvexAdam")))
    assert t15["status"] == why["camus:MIND + ConvexAdam"]  # replaces "ran, not under the paper's protocol"
    b = dict(zip(tabs[0].raw_columns or [], next(r for r in tabs[0].raw if r[1] == "DINO-B + ConvexAdam")))
    assert b["status"] == why["camus:dinov3-vitb16"]
    out = build_report(db, tmp_path / "r.html", pca=False)  # study_why not given: read from the database folder
    md = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "needs head_params.convexadam.features: mind" in md and "missing weights (/w/b.pth)" in md
