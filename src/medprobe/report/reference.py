"""The study's published numbers (Liu et al., arXiv 2509.06467; see docs in /shared paper-protocol), as data.

Values are as printed; ``percent=True`` marks numbers printed in % (a measured 0-1 score is multiplied by
100 before comparing). ``head`` restricts the match to probes of that kind ("linear" = linear/logreg).
"""

from __future__ import annotations

import re
from typing import Any

STUDY = "Liu et al. 2025, 'Does DINOv3 Set a New Medical Vision Standard?' (arXiv 2509.06467)"
ENCODERS = {"S": "dinov3-vits16", "B": "dinov3-vitb16", "L": "dinov3-vitl16"}

# task, aliases, metric, head, percent, higher_is_better, (S, B, L), best comparison, setting note
_TABLE: list[tuple[str, tuple[str, ...], str, str | None, bool, bool, tuple[float | None, ...], str, str]] = [
    ("nih14", ("nih", "chestxray14", "nihchestxray14"), "auc", "linear", False, True, (0.7788, 0.7833, 0.7865),
     "BiomedCLIP 0.7771", "256 px, linear"),
    ("rsna-pneumonia", ("rsna",), "auc", "linear", False, True, (0.8667, 0.8666, 0.8708),
     "BiomedCLIP 0.8831", "256 px, linear"),
    ("ct-rate", ("ctrate",), "auc", "linear", False, True, (0.778, 0.798, 0.791), "CT-CLIP 0.731, CT-Net 0.629",
     "slice mean-pooled, linear"),
    ("ct-rate", ("ctrate",), "auc", "knn", False, True, (0.716, 0.737, 0.709), "CT-CLIP 0.731", "k-NN"),
    ("camelyon16", (), "auc", "abmil", False, True, (0.840, 0.805, None), "UNI 0.965, ResNet-50 0.842", "ABMIL"),
    ("kvasir-capsule", ("kvasir",), "acc", "linear", False, True, (0.7640, 0.7766, 0.7675),
     "VAPCaps 0.9926 (supervised)", "linear"),
    ("autolaparo", (), "acc", "linear", True, True, (76.17, 73.33, 77.29), "STSANet 79.48", "250 px, frame-wise"),
    ("endovis2018", ("endovis", "endovis18"), "iou", None, True, True, (86.05, 89.04, 92.19),
     "SAM 2 box 90.18", "binary IoU"),
    ("edd2020", ("edd",), "dice", None, True, True, (71.50, 73.56, 72.90), "EAT 88.02", "mean Dice"),
    ("msd", ("msdmean",), "dice", None, True, True, (69.0, 71.3, 71.0), "nnU-Net 81.4", "mean of 10 tasks, as printed"),
    ("msd-hippocampus", ("msdtask04", "task04hippocampus", "hippocampus"), "dice", None, True, True,
     (72.6, 75.3, 73.8), "nnU-Net 84.1", "5-fold CV"),
    ("cremi-a", ("cremia",), "voi", None, False, False, (3.942, 3.542, 1.784), "CAD 0.565", "lower is better"),
    ("autopet-ii", ("autopet", "autopet2"), "dice", None, True, True, (9.06, 14.53, 12.17), "VSmTrans 62.46",
     "CT+PET"),
    ("camus", (), "dice", None, False, True, (0.8401, 0.8315, 0.8431), "VoxelMorph 0.8592", "registration"),
    ("acdc", (), "dice", None, False, True, (0.7480, 0.7593, 0.7481), "Anatomix+ConvexAdam 0.7566", "registration"),
]


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def reference_rows() -> list[dict[str, Any]]:
    """One dict per (task, metric, head, encoder): task, aliases, metric, head, encoder, value, percent,
    higher_is_better, comparison, setting."""
    out = []
    for task, aliases, metric, head, pct, hib, values, comp, note in _TABLE:
        for size, v in zip("SBL", values):
            if v is None:
                continue
            out.append({"task": task, "aliases": aliases, "metric": metric, "head": head, "encoder": ENCODERS[size],
                        "value": v, "percent": pct, "higher_is_better": hib, "comparison": comp, "setting": note})
    return out


def match_task(name: str) -> str | None:
    """The study task a measured task name refers to (``tasks/nih14.yaml`` -> ``nih14``), or None."""
    n = _norm(name)
    for task, aliases, *_ in _TABLE:
        if n == _norm(task) or n in {_norm(a) for a in aliases}:
            return task
    return None


METRIC_ALIASES = {"auc": ("auc", "auc_macro"), "acc": ("acc", "accuracy"),
                  "iou": ("iou", "iou_binary", "binary_iou", "miou"), "dice": ("dice", "dice_mean", "mean_dice"),
                  "voi": ("voi",)}
