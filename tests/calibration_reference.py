"""Reference calibration numbers for tests: scikit-learn's ``brier_score_loss`` / ``log_loss`` and a plain
per-bin loop for the ECE (written from the definition, independently of ``medprobe.metrics.calibration``)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import brier_score_loss, log_loss


def ece_loop(conf: np.ndarray, hit: np.ndarray, strategy: str, n_bins: int = 15) -> float:
    """ECE by a loop over bins: equal-width edges k/B, or the sorted cases cut into B runs of ~N/B."""
    n = len(conf)
    total = 0.0
    if strategy == "width":
        for b in range(n_bins):
            lo, hi = b / n_bins, (b + 1) / n_bins
            members = [i for i in range(n) if (lo <= conf[i] < hi) or (b == n_bins - 1 and conf[i] == 1.0)]
            if members:
                total += abs(sum(hit[i] - conf[i] for i in members))
    else:
        order = sorted(range(n), key=lambda i: (conf[i], i))
        for b in range(n_bins):
            members = [order[r] for r in range(n) if r * n_bins // n == b]
            if members:
                total += abs(sum(hit[i] - conf[i] for i in members))
    return total / n


def calibration_reference(y: np.ndarray, s: np.ndarray, task: str, threshold: float = 0.5) -> dict[str, float]:
    """``ece``, ``ece_mass`` (loops), ``brier`` and ``nll`` (scikit-learn) of one prediction set."""
    y = np.asarray(y)
    s = np.asarray(s, dtype=np.float64)
    if task == "multilabel":
        per = {"ece": [], "ece_mass": [], "brier": [], "nll": []}
        for j in range(y.shape[1]):
            per["ece"].append(ece_loop(s[:, j], y[:, j].astype(float), "width"))
            per["ece_mass"].append(ece_loop(s[:, j], y[:, j].astype(float), "mass"))
            per["brier"].append(brier_score_loss(y[:, j], s[:, j], labels=[0, 1]))
            per["nll"].append(log_loss(y[:, j], s[:, j], labels=[0, 1]))
        return {k: float(np.mean(v)) for k, v in per.items()}
    if y.ndim == 2:
        y = y[:, 0]
    if task == "binary":
        p1 = s if s.ndim == 1 else s[:, 1]
        pred = (p1 > threshold).astype(int)
        conf = np.where(pred == 1, p1, 1 - p1)
        brier = brier_score_loss(y, p1, labels=[0, 1])
        nll = log_loss(y, p1, labels=[0, 1])
    else:
        pred = np.argmax(s, axis=1)
        conf = s[np.arange(len(s)), pred]
        brier = brier_score_loss(y, s, labels=list(range(s.shape[1])))
        nll = log_loss(y, s, labels=list(range(s.shape[1])))
    hit = (pred == y).astype(float)
    return {"ece": ece_loop(conf, hit, "width"), "ece_mass": ece_loop(conf, hit, "mass"), "brier": float(brier),
            "nll": float(nll)}
