"""The study's published numbers (Liu et al., arXiv 2509.06467 v3; see /shared/docs/paper-protocol.md), as data.

Two views of one file, ``paper_tables.json`` (package data):

* :func:`paper_cells`: every printed cell of the study's Tables 2-16 (DINOv3 S/B/L and every comparison method):
  table, row, column, value (as printed), direction, unit, the medprobe task and metric it corresponds to, the
  paper's protocol for the cell (:func:`protocols`: its text and what a medprobe row must have to be that
  protocol), who produced it (the study, or quoted) and notes where the paper is inconsistent. :func:`paper_tables`
  lists the tables with their printed row / column order and notes.
* :func:`reference_table` (``Ref``): one row per (study task, metric) with the DINOv3 S / B / L values (``None``:
  the study printed none, e.g. DINOv3-L on whole slides, BCNB), ``percent=True`` for numbers printed in % (a
  measured 0-1 score is multiplied by 100 before comparing) and ``head`` restricting the match to probes of that
  kind ("linear" = linear/logreg). Every task of ``sweeps/dinov3-medical.yaml`` matches a row
  (:func:`match_task`; a test checks it). The values are read from the cells, so there is one source.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from medprobe.errors import MedprobeError

STUDY = "Liu et al. 2025, 'Does DINOv3 Set a New Medical Vision Standard?' (arXiv 2509.06467)"
ENCODERS = {"S": "dinov3-vits16", "B": "dinov3-vitb16", "L": "dinov3-vitl16"}

# the study's tables (medprobe study reports coverage table by table, in this order)
TABLES = {
    "cls2d": "2D classification (chest X-ray, capsule endoscopy, laparoscopy) + resolution sweep",
    "cls3d": "3D classification (CT-RATE, slice embeddings mean-pooled)",
    "wsi": "Whole-slide classification (ABMIL)",
    "seg2d": "2D segmentation (endoscopy)",
    "seg3d": "3D segmentation (MSD, 5-fold CV)",
    "em": "EM neuron instance segmentation",
    "petct": "PET/CT segmentation (CT, PET, CT+PET)",
    "reg": "Registration (zero-shot DINO-Reg + ConvexAdam)",
}

DEFINITIONS = {
    "auc": "ROC AUC; multi-label: mean of the per-label AUCs (macro)",
    "acc": "accuracy: share of test images whose arg-max class is right",
    "acc%": "frame-wise accuracy in %: share of test frames whose arg-max phase is right",
    "binary_iou": "binary IoU in %: IoU of the union of all instrument pixels vs the rest, per frame, mean over "
                  "test frames (a frame with no instrument in truth and prediction scores 1)",
    "instrument_iou": "EndoVis challenge IoU in %: per frame the mean IoU over the instrument classes present in the "
                      "truth, mean over test frames",
    "dice_multilabel": "mean Dice in % over the 5 classes, each class against its own (overlapping) mask",
    "dice": "Dice in %: mean over foreground classes of the per-case Dice, mean over test cases",
    "dice_msd_mean": "mean over the 10 MSD tasks of their mean Dice in % (as printed; B/L do not match the study's "
                     "own per-task values)",
    "dice_reg": "Dice of the warped moving labels against the fixed labels (0-1), mean over pairs",
    "voi": "variation of information (split + merge) of the agglomerated instances; lower is better",
}

REFERENCE_FILE = "paper_tables.json"  # package data beside this module


@dataclass(frozen=True)
class Cell:
    """One printed cell of a study table (fields: see the file's ``fields``)."""

    table: str
    row: str
    variant: str | None
    column: str
    printed: str
    value: float | None
    sd: float | None
    bold: bool
    direction: str
    unit: str
    scale: float
    task: str
    metric: str
    encoder: str | None
    protocol: str
    source: str
    why: str | None
    notes: tuple[str, ...]

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "higher"

    @property
    def label(self) -> str:
        """The row as a reader names it (Table 14: with its input)."""
        return self.row if self.variant is None else f"{self.row} [{self.variant}]"

    @property
    def key(self) -> tuple[str, str, str | None, str]:
        return self.table, self.row, self.variant, self.column


@dataclass(frozen=True)
class Protocol:
    """The paper's protocol for a cell: ``text``, and ``match`` -- what a medprobe row must have to be run under it
    (``head``; ``head_params`` values; ``resolution``: any of; ``inputs``; ``folds``; ``encoder_free``: any
    encoder's row) -- or None when medprobe cannot run it (quoted numbers, trained methods)."""

    key: str
    text: str
    match: Mapping[str, Any] | None


@dataclass(frozen=True)
class PaperTable:
    id: str
    title: str
    group: str  # a key of TABLES
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    notes: tuple[str, ...]


@functools.lru_cache(maxsize=1)
def _load() -> tuple[dict[str, Any], tuple[Cell, ...], dict[str, Protocol], tuple[PaperTable, ...]]:
    res = resources.files("medprobe.report").joinpath(REFERENCE_FILE)
    try:
        doc = json.loads(res.read_text(encoding="utf-8"))
        cells = tuple(Cell(**{**c, "value": None if c["value"] is None else float(c["value"]),
                              "scale": float(c["scale"]), "notes": tuple(c["notes"])}) for c in doc["cells"])
        prots = {k: Protocol(k, v["text"], v["match"]) for k, v in doc["protocols"].items()}
        tabs = tuple(PaperTable(t["id"], t["title"], t["group"], tuple(t["rows"]), tuple(t["columns"]),
                                tuple(t["notes"])) for t in doc["tables"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MedprobeError(f"{REFERENCE_FILE}: unreadable reference tables ({type(e).__name__}: {e})") from e
    bad = sorted({c.protocol for c in cells} - set(prots)) + sorted({c.table for c in cells} - {t.id for t in tabs})
    if bad:
        raise MedprobeError(f"{REFERENCE_FILE}: cells name unknown protocols / tables: {', '.join(bad)}")
    return doc, cells, prots, tabs


def paper_cells(table: str | None = None, task: str | None = None) -> list[Cell]:
    """Every printed cell of Tables 2-16 in printed order, optionally of one table (``"2"``, ``"10-11"``) or one
    medprobe study task (``match_task`` applied)."""
    key = match_task(task) if task is not None else None
    return [c for c in _load()[1] if (table is None or c.table == table) and (task is None or c.task == key)]


def paper_tables() -> list[PaperTable]:
    """The study's tables in printed order (Tables 10 and 11, MSD, are one: ``"10-11"``)."""
    return list(_load()[3])


def protocols() -> dict[str, Protocol]:
    """The paper's protocols by key (``Cell.protocol``)."""
    return dict(_load()[2])


def cell_counts() -> dict[str, int]:
    """Printed cells per table."""
    out: dict[str, int] = {}
    for c in _load()[1]:
        out[c.table] = out.get(c.table, 0) + 1
    return out


DINO_ROWS = {"dinov3-vits16": ("DINOv3-S", "DINOv3-S/16", "DINO-S"), "dinov3-vitb16": ("DINOv3-B", "DINOv3-B/16",
             "DINO-B"), "dinov3-vitl16": ("DINOv3-L", "DINOv3-L/16", "DINO-L")}


def _dino(table: str, column: str, variant: str | None = None) -> tuple[float | None, float | None, float | None]:
    """DINOv3 S / B / L values of a column (None: no such row printed)."""
    by_enc = {c.encoder: c.value for c in paper_cells(table) if c.column == column and c.variant == variant
              and c.encoder in DINO_ROWS}
    s, b, l_ = (by_enc.get(e) for e in ENCODERS.values())
    return s, b, l_


def best_comparison(table: str, column: str) -> Cell | None:
    """The best printed non-DINOv3 cell of a column (the paper's strongest comparison there), or None."""
    cs = [c for c in paper_cells(table) if c.column == column and c.encoder not in DINO_ROWS and c.value is not None]
    return max(cs, key=lambda c: float(c.value if c.higher_is_better else -c.value)) if cs else None  # type: ignore


def _comparison(table: str, column: str) -> str:
    """``"UNI 0.965"``: :func:`best_comparison` as text."""
    best = best_comparison(table, column)
    return "-" if best is None else f"{best.row} {best.printed.split(' ±')[0]}"


@dataclass(frozen=True)
class Ref:
    """One reference row: a study task and one metric."""

    task: str
    table: str
    aliases: tuple[str, ...]
    metric: str
    definition: str
    head: str | None
    percent: bool
    higher_is_better: bool
    values: tuple[float | None, float | None, float | None]
    comparison: str
    setting: str


_NONE: tuple[None, None, None] = (None, None, None)
_D = DEFINITIONS
_MSD = ("braintumour", "heart", "liver", "hippocampus", "prostate", "lung", "pancreas", "hepaticvessel", "spleen",
        "colon")

_MSD_COLUMNS = {"braintumour": "Brain", "heart": "Heart", "liver": "Liver", "hippocampus": "Hippo",
                "prostate": "Prostate", "lung": "Lung", "pancreas": "Pancreas", "hepaticvessel": "Hepatic",
                "spleen": "Spleen", "colon": "Colon"}
_EM = {"cremi-a": ("12", "A VOI", ("cremia",)), "cremi-b": ("12", "B VOI", ("cremib",)),
       "cremi-c": ("12", "C VOI", ("cremic",)), "ac3-ac4": ("13", "AC VOI", ("ac3ac4", "ac4"))}

_TABLE: list[Ref] = [
    Ref("nih14", "cls2d", ("nih", "chestxray14", "nihchestxray14"), "auc", _D["auc"], "linear", False, True,
        _dino("2", "NIH AUC"), _comparison("2", "NIH AUC"), "256 px, linear"),
    Ref("rsna-pneumonia", "cls2d", ("rsna",), "auc", _D["auc"], "linear", False, True, _dino("2", "RSNA AUC"),
        _comparison("2", "RSNA AUC"), "256 px, linear"),
    Ref("kvasir-capsule", "cls2d", ("kvasir",), "acc", _D["acc"], "linear", False, True, _dino("5", "Accuracy"),
        _comparison("5", "Accuracy") + " (supervised)", "11 classes, linear"),
    Ref("autolaparo", "cls2d", (), "acc", _D["acc%"], "linear", True, True, _dino("6", "Accuracy"),
        _comparison("6", "Accuracy"), "250 px, frame-wise"),
    Ref("ct-rate", "cls3d", ("ctrate",), "auc", _D["auc"], "linear", False, True, _dino("9", "LP AUC"),
        "CT-CLIP 0.731, CT-Net 0.629", "slice mean-pooled, linear"),
    Ref("ct-rate", "cls3d", ("ctrate",), "auc", _D["auc"], "knn", False, True, _dino("9", "k-NN AUC"),
        "CT-CLIP 0.731", "k-NN"),
    # whole slides (ABMIL): Camelyon16, Camelyon17 as its unseen-centre test, BCNB's five biomarkers (radar chart
    # only: no printed numbers)
    Ref("camelyon16", "wsi", (), "auc", _D["auc"], "abmil", False, True, _dino("3", "AUC"), _comparison("3", "AUC"),
        "ABMIL (no DINOv3-L row)"),
    Ref("camelyon16-to-17", "wsi", ("camelyon17",), "auc", _D["auc"], "abmil", False, True, _dino("4", "AUC"),
        _comparison("4", "AUC"),
        "trained on CAMELYON16, tested on CAMELYON17's unseen centres, ABMIL (no DINOv3-L row)"),
    *[Ref(f"bcnb-{t}", "wsi", (f"bcnb{t}",), "auc", _D["auc"], "abmil", False, True, _NONE, "-",
          f"BCNB {t.upper()} status, patient-level 5-fold CV, ABMIL (radar chart only: no printed value)")
      for t in ("aln", "er", "pr", "her2", "ki67")],
    Ref("endovis2018", "seg2d", ("endovis", "endovis18"), "binary_iou", _D["binary_iou"], None, True, True,
        _dino("7", "Binary IoU"), _comparison("7", "Binary IoU"), "binary IoU"),
    Ref("endovis2018", "seg2d", ("endovis", "endovis18"), "instrument_iou", _D["instrument_iou"], None, True, True,
        _dino("7", "Instrument IoU"), _comparison("7", "Instrument IoU"), "instrument IoU"),
    Ref("edd2020", "seg2d", ("edd",), "dice_multilabel", _D["dice_multilabel"], None, True, True,
        _dino("8", "Dice Avg"), _comparison("8", "Dice Avg"), "mean Dice"),
    Ref("msd", "seg3d", ("msdmean",), "dice", _D["dice_msd_mean"], None, True, True, _dino("10-11", "Avg (printed)"),
        _comparison("10-11", "Avg (printed)"), "mean of 10 tasks, as printed"),
    *[Ref(f"msd-{t}", "seg3d", (f"msdtask{i:02d}", f"task{i:02d}{t}", f"msdtask{i:02d}{t}",
                                 *(("hippocampus",) if t == "hippocampus" else ())), "dice", _D["dice"],
          None, True, True, _dino("10-11", _MSD_COLUMNS[t]), _comparison("10-11", _MSD_COLUMNS[t]), "5-fold CV")
      for i, t in enumerate(_MSD, 1)],
    *[Ref(t, "em", aliases, "voi", _D["voi"], None, False, False, _dino(tab, col), _comparison(tab, col),
          "lower is better") for t, (tab, col, aliases) in _EM.items()],
    Ref("autopet-ii", "petct", ("autopet", "autopet2", "autopetii"), "dice", _D["dice"], None, True, True,
        _dino("14", "AP Dice", "CT+PET"), _comparison("14", "AP Dice"), "CT+PET"),
    Ref("hecktor2022", "petct", ("hecktor",), "dice", _D["dice"], None, True, True,
        _dino("14", "HK Dice", "CT+PET"), _comparison("14", "HK Dice"), "CT+PET, GTVp/GTVn"),
    Ref("camus", "reg", (), "dice", _D["dice_reg"], None, False, True, _dino("15", "Dice ↑"),
        _comparison("15", "Dice ↑"), "registration"),
    Ref("acdc", "reg", (), "dice", _D["dice_reg"], None, False, True, _dino("16", "Dice ↑"),
        _comparison("16", "Dice ↑"), "registration"),
]


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def reference_table() -> list[Ref]:
    """Every reference row, with or without a transcribed value."""
    return list(_TABLE)


def reference_rows() -> list[dict[str, Any]]:
    """One dict per (task, metric, head, encoder) with a printed value: task, table, aliases, metric,
    definition, head, encoder, value, percent, higher_is_better, comparison, setting."""
    out = []
    for r in _TABLE:
        for size, v in zip("SBL", r.values):
            if v is None:
                continue
            out.append({"task": r.task, "table": r.table, "aliases": r.aliases, "metric": r.metric,
                        "definition": r.definition, "head": r.head, "encoder": ENCODERS[size], "value": v,
                        "percent": r.percent, "higher_is_better": r.higher_is_better, "comparison": r.comparison,
                        "setting": r.setting})
    return out


# what task file names add around a study task's name: seg-msd-task02-heart, em-cremi-a, seg-autopet-petct, ...
_AFFIXES = (r"^(seg|reg|em|cls|wsi)", r"(petct|ct|pet|fold\d+|cv)$")


def match_task(name: str) -> str | None:
    """The study task a measured task name refers to (``tasks/nih14.yaml`` -> ``nih14``,
    ``seg-msd-task02-heart`` -> ``msd-heart``), or None."""
    n = _norm(name.rsplit("/", 1)[-1].removesuffix(".yaml"))
    cands = [n]
    for _ in range(3):
        for pat in _AFFIXES:
            for c in list(cands):
                s = re.sub(pat, "", c)
                if s and s not in cands:
                    cands.append(s)
    for c in cands:
        for r in _TABLE:
            if c == _norm(r.task) or c in {_norm(a) for a in r.aliases}:
                return r.task
    return None


def references_for(task: str) -> list[Ref]:
    """The reference rows of a study task (``match_task`` applied first)."""
    key = match_task(task)
    return [r for r in _TABLE if r.task == key]


METRIC_ALIASES = {"auc": ("auc", "auc_macro"), "acc": ("acc", "accuracy"),
                  "iou": ("iou", "iou_binary", "binary_iou", "miou"), "binary_iou": ("binary_iou", "iou_binary"),
                  "instrument_iou": ("instrument_iou",), "dice_multilabel": ("dice_multilabel",),
                  "dice": ("dice", "dice_mean", "mean_dice"), "voi": ("voi",)}

__all__ = ["DEFINITIONS", "DINO_ROWS", "ENCODERS", "METRIC_ALIASES", "REFERENCE_FILE", "STUDY", "TABLES", "Cell",
           "PaperTable", "Protocol", "Ref", "best_comparison", "cell_counts", "match_task", "paper_cells",
           "paper_tables", "protocols", "reference_rows", "reference_table", "references_for"]
