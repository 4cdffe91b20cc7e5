"""Segmentation rows and empty predictions (issue 23): a class the truth holds and the prediction misses is scored
by the stated policy (``metrics.empty_prediction``: ``worst`` = the image diagonal, the default; ``exclude`` = left
out), never silently dropped; the row records the policy and the count; the stored per-case values and the stored
masks both re-score to the stored headline; cases without an empty prediction score the same under every policy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import medprobe.pipeline.families.segmentation as segfam
from medprobe.data import create_dataset
from medprobe.data.io import read_image
from medprobe.metrics.segmentation import empty_predictions, max_distance, segmentation_metrics
from medprobe.pipeline.run import run_task
from medprobe.pipeline.task import parse_task
from medprobe.results import ResultsDB
from medprobe.results.rescore import rescore_run

TINY = {"epochs": 1, "iters_per_epoch": 2, "batch_size": 2, "width": 16, "lr": 1e-3}
DATA = {"n": 12, "size": 48}


def _raw(tmp: Path, **metrics: Any) -> dict[str, Any]:
    return {"name": "seg", "kind": "segmentation", "dataset": "phantom:mri2d-segmentation", "data": DATA,
            "encoder": "none", "cache_dir": str(tmp / "cache"), "device": "cpu", "seed": 0,
            "features": {"progress": False}, "preprocess": {"resolution": 48}, "split": {"fractions": [0.5, 0.2, 0.3]},
            "heads": ["decoder2d"], "head_params": {"decoder2d": TINY},
            "metrics": {"bootstrap": 20, "overlays": 0, **metrics}}


@pytest.fixture
def miss_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first test case's prediction is all background (an empty prediction), the others as the head says."""
    real = segfam.predict_proba
    seen: list[int] = []

    def predict(head: Any, data: Any, i: int, cfg: Any, device: Any) -> torch.Tensor:
        p = real(head, data, i, cfg, device)
        seen.append(i)
        if i == seen[0]:  # the same case in every run of the test
            p = torch.zeros_like(p)
            p[0] = 1.0
        return p

    monkeypatch.setattr(segfam, "predict_proba", predict)


def _run(tmp: Path, name: str, **metrics: Any) -> tuple[ResultsDB, dict[str, Any]]:
    db = ResultsDB(tmp / name)
    (row,) = run_task(parse_task(_raw(tmp, **metrics), source="test"), db=db, verbose=False)
    return db, row


def _masks_rescored(db: ResultsDB, row: dict[str, Any]) -> tuple[dict[str, float], list[str]]:
    """The stored masks (PNG files) scored again against the dataset's truth with the recorded policy: class-mean
    Dice / HD95 / ASD means over cases, and the ids of cases with an empty prediction."""
    stored = db.get(row["run_id"])
    pr = db.load_predictions(row["run_id"])
    cfg = stored["config"]["metrics"]
    ds = create_dataset("phantom:mri2d-segmentation", **DATA)
    by_id = {cid: i for i, cid in enumerate(ds.ids())}
    labels = {c: n for c, n in enumerate(ds.task.classes) if c > 0}
    per, missed = [], []
    for cid, f in zip(pr["ids"], pr["files"]):
        item = ds.load(by_id[str(cid)])
        pred = np.asarray(read_image(f))
        per.append(segmentation_metrics(pred, np.asarray(item.mask), labels, None, cfg["nsd_tolerance_mm"],
                                        cfg["empty_policy"], ("dice", "hd95", "asd"),
                                        stored["labels"]["empty_predictions"]["policy"]))
        if empty_predictions(pred, np.asarray(item.mask), labels):
            missed.append(str(cid))
    out = {}
    for k in ("dice", "hd95", "asd"):
        v = np.asarray([c[k] for c in per], np.float64)
        out[k] = float(v[np.isfinite(v)].mean())
    return out, missed


def test_empty_prediction_worst_by_default_recorded_and_rescored(tmp_path: Path, miss_first: None) -> None:
    db, row = _run(tmp_path, "worst")
    rec = db.get(row["run_id"])
    assert rec["config"]["metrics"]["empty_prediction"] == "worst"
    ep = rec["labels"]["empty_predictions"]
    from_masks, missed = _masks_rescored(db, row)
    assert ep["policy"] == "worst" and "diagonal" in ep["distance"] and ep["unit"] == "px"
    assert ep["cases"] == len(missed) >= 1 and ep["of"] == rec["split"]["n_test"]
    assert ep["ids"] == sorted(missed)
    assert any("empty prediction" in line for line in row["result"].table)
    for k, (stored, again) in rescore_run(db, row["run_id"]).items():  # per-case values -> headline
        assert (math.isnan(stored) and math.isnan(again)) or again == pytest.approx(stored, rel=1e-9), k
    for k, v in from_masks.items():  # stored masks -> headline
        assert v == pytest.approx(rec["metrics"][k][0], rel=1e-9), k
    # the all-background case misses every class its truth holds: HD95 is the image diagonal (48 x 48 px)
    pr = db.load_predictions(row["run_id"])
    names = [str(n) for n in pr["metric_names"]]
    first = [str(i) for i in pr["ids"]].index(missed[0])
    assert pr["values"][first, names.index("hd95")] == pytest.approx(max_distance((48, 48), None))


def test_exclude_policy_changes_only_distances_of_the_missed_case(tmp_path: Path, miss_first: None) -> None:
    db_w, w = _run(tmp_path, "worst")
    db_x, x = _run(tmp_path, "exclude", empty_prediction="exclude")
    assert x["record"]["config_hash"] != w["record"]["config_hash"]
    assert db_x.get(x["run_id"])["labels"]["empty_predictions"]["policy"] == "exclude"
    pw, px = db_w.load_predictions(w["run_id"]), db_x.load_predictions(x["run_id"])
    names = [str(n) for n in pw["metric_names"]]
    assert names == [str(n) for n in px["metric_names"]]
    missed = set(db_w.get(w["run_id"])["labels"]["empty_predictions"]["ids"])
    dist = [j for j, n in enumerate(names) if n.split("/")[0] in ("hd95", "asd")]
    for r, cid in enumerate(str(i) for i in pw["ids"]):
        a, b = pw["values"][r], px["values"][r]
        same = [j for j in range(len(names)) if j not in dist or cid not in missed]
        np.testing.assert_array_equal(a[same], b[same])  # overlap metrics, and every case without a miss
        if cid in missed:
            assert np.isnan(b[dist]).any() and np.isfinite(a[dist]).all()
    assert w["metrics"]["dice"][0] == x["metrics"]["dice"][0]
    assert w["metrics"]["hd95"][0] > x["metrics"]["hd95"][0]  # the miss counts as the worst distance
    for k, (stored, again) in rescore_run(db_x, x["run_id"]).items():
        assert (math.isnan(stored) and math.isnan(again)) or again == pytest.approx(stored, rel=1e-9), k


def test_policy_values_on_masks() -> None:
    gt = np.zeros((20, 30), np.uint8)
    gt[5:10, 5:10] = 1
    gt[12:16, 20:25] = 2
    hit = gt.copy()
    hit[6, 6] = 0
    missed = np.where(gt == 2, 0, gt)
    d = max_distance(gt.shape, (1.0, 2.0))
    for pol in (None, "worst", "exclude"):  # no empty prediction: every choice scores the same
        a = segmentation_metrics(hit, gt, [1, 2], (1.0, 2.0), empty_prediction=pol)
        assert a == segmentation_metrics(hit, gt, [1, 2], (1.0, 2.0))
    w = segmentation_metrics(missed, gt, [1, 2], (1.0, 2.0), empty_prediction="worst")
    x = segmentation_metrics(missed, gt, [1, 2], (1.0, 2.0), empty_prediction="exclude")
    old = segmentation_metrics(missed, gt, [1, 2], (1.0, 2.0))  # the policy's own value: NaN under "nan"
    assert w["hd95/2"] == w["asd/2"] == pytest.approx(d) and math.isnan(x["hd95/2"]) and math.isnan(old["hd95/2"])
    assert w["dice/2"] == x["dice/2"] == 0.0 and w["hd95/1"] == x["hd95/1"]
    assert math.isnan(segmentation_metrics(missed, gt, [1, 2], None, empty_policy="worst",
                                           empty_prediction="exclude")["hd95/2"])
    assert empty_predictions(missed, gt, {1: "a", 2: "b"}) == ["b"] and empty_predictions(hit, gt, [1, 2]) == []
