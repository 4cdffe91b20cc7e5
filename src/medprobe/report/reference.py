"""The study's published numbers (Liu et al., arXiv 2509.06467; see /shared/docs/paper-protocol.md), as data.

One row per (study task, metric): the study table it belongs to, the metric's definition, the values for
DINOv3 S / B / L as printed (``None``: the study ran the task but the number is not transcribed here),
``percent=True`` for numbers printed in % (a measured 0-1 score is multiplied by 100 before comparing) and
``head`` restricting the match to probes of that kind ("linear" = linear/logreg). Every task of
``sweeps/dinov3-medical.yaml`` matches a row (:func:`match_task`; a test checks it), so the report can place
the study's number, or say that none is printed, beside every measured row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

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

_TABLE: list[Ref] = [
    Ref("nih14", "cls2d", ("nih", "chestxray14", "nihchestxray14"), "auc", _D["auc"], "linear", False, True,
        (0.7788, 0.7833, 0.7865), "BiomedCLIP 0.7771", "256 px, linear"),
    Ref("rsna-pneumonia", "cls2d", ("rsna",), "auc", _D["auc"], "linear", False, True, (0.8667, 0.8666, 0.8708),
        "BiomedCLIP 0.8831", "256 px, linear"),
    Ref("kvasir-capsule", "cls2d", ("kvasir",), "acc", _D["acc"], "linear", False, True, (0.7640, 0.7766, 0.7675),
        "VAPCaps 0.9926 (supervised)", "11 classes, linear"),
    Ref("autolaparo", "cls2d", (), "acc", _D["acc%"], "linear", True, True, (76.17, 73.33, 77.29), "STSANet 79.48",
        "250 px, frame-wise"),
    Ref("ct-rate", "cls3d", ("ctrate",), "auc", _D["auc"], "linear", False, True, (0.778, 0.798, 0.791),
        "CT-CLIP 0.731, CT-Net 0.629", "slice mean-pooled, linear"),
    Ref("ct-rate", "cls3d", ("ctrate",), "auc", _D["auc"], "knn", False, True, (0.716, 0.737, 0.709),
        "CT-CLIP 0.731", "k-NN"),
    # whole slides (ABMIL): Camelyon16, Camelyon17 as its unseen-centre test, BCNB's five biomarkers
    Ref("camelyon16", "wsi", (), "auc", _D["auc"], "abmil", False, True, (0.840, 0.805, None),
        "UNI 0.965, ResNet-50 0.842", "ABMIL"),
    Ref("camelyon16-to-17", "wsi", ("camelyon17",), "auc", _D["auc"], "abmil", False, True, _NONE, "-",
        "trained on CAMELYON16, tested on CAMELYON17's unseen centres, ABMIL (value not transcribed)"),
    *[Ref(f"bcnb-{t}", "wsi", (f"bcnb{t}",), "auc", _D["auc"], "abmil", False, True, _NONE, "-",
          f"BCNB {t.upper()} status, patient-level 5-fold CV, ABMIL (value not transcribed)")
      for t in ("aln", "er", "pr", "her2", "ki67")],
    Ref("endovis2018", "seg2d", ("endovis", "endovis18"), "binary_iou", _D["binary_iou"], None, True, True,
        (86.05, 89.04, 92.19), "SAM 2 box 90.18", "binary IoU"),
    Ref("endovis2018", "seg2d", ("endovis", "endovis18"), "instrument_iou", _D["instrument_iou"], None, True, True,
        _NONE, "-", "instrument IoU (not transcribed)"),
    Ref("edd2020", "seg2d", ("edd",), "dice_multilabel", _D["dice_multilabel"], None, True, True,
        (71.50, 73.56, 72.90), "EAT 88.02", "mean Dice"),
    Ref("msd", "seg3d", ("msdmean",), "dice", _D["dice_msd_mean"], None, True, True, (69.0, 71.3, 71.0),
        "nnU-Net 81.4", "mean of 10 tasks, as printed"),
    *[Ref(f"msd-{t}", "seg3d", (f"msdtask{i:02d}", f"task{i:02d}{t}", f"msdtask{i:02d}{t}",
                                 *(("hippocampus",) if t == "hippocampus" else ())), "dice", _D["dice"],
          None, True, True, (72.6, 75.3, 73.8) if t == "hippocampus" else _NONE,
          "nnU-Net 84.1" if t == "hippocampus" else "-",
          "5-fold CV" if t == "hippocampus" else "5-fold CV (per-task value not transcribed)")
      for i, t in enumerate(_MSD, 1)],
    Ref("cremi-a", "em", ("cremia",), "voi", _D["voi"], None, False, False, (3.942, 3.542, 1.784), "CAD 0.565",
        "lower is better"),
    Ref("cremi-b", "em", ("cremib",), "voi", _D["voi"], None, False, False, _NONE, "-", "not transcribed"),
    Ref("cremi-c", "em", ("cremic",), "voi", _D["voi"], None, False, False, _NONE, "-", "not transcribed"),
    Ref("ac3-ac4", "em", ("ac3ac4", "ac4"), "voi", _D["voi"], None, False, False, _NONE, "-", "not transcribed"),
    Ref("autopet-ii", "petct", ("autopet", "autopet2", "autopetii"), "dice", _D["dice"], None, True, True,
        (9.06, 14.53, 12.17), "VSmTrans 62.46", "CT+PET"),
    Ref("hecktor2022", "petct", ("hecktor",), "dice", _D["dice"], None, True, True, _NONE, "-",
        "GTVp/GTVn (not transcribed)"),
    Ref("camus", "reg", (), "dice", _D["dice_reg"], None, False, True, (0.8401, 0.8315, 0.8431), "VoxelMorph 0.8592",
        "registration"),
    Ref("acdc", "reg", (), "dice", _D["dice_reg"], None, False, True, (0.7480, 0.7593, 0.7481),
        "Anatomix+ConvexAdam 0.7566", "registration"),
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

__all__ = ["DEFINITIONS", "ENCODERS", "METRIC_ALIASES", "STUDY", "TABLES", "Ref", "match_task", "reference_rows",
           "reference_table", "references_for"]
