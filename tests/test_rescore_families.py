"""Stored predictions give back every stored headline number (issue 23): one small phantom run per family, each
row re-scored from its prediction file alone (medprobe.results.rescore) equals the stored metric. Also: slide rows
store each seed's predictions (the headline is the mean of per-seed metrics, not the metric of the seed-averaged
y_score), and registration rows record the encoder input the head used (input_size), not the native size."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medprobe.metrics.classification import classification_metrics
from medprobe.pipeline.run import run_task
from medprobe.pipeline.task import parse_task
from medprobe.results import ResultsDB
from medprobe.results.rescore import rescore, rescore_kind, rescore_run


def _run(raw: dict[str, Any], tmp: Path) -> tuple[ResultsDB, list[dict[str, Any]]]:
    db = ResultsDB(tmp / "res")
    raw = {"cache_dir": str(tmp / "cache"), "device": "cpu", "seed": 0, "metrics": {"bootstrap": 20}, **raw}
    raw["features"] = {"progress": False, **raw.get("features", {})}
    return db, run_task(parse_task(raw, source="test"), db=db, verbose=False)


def _check(db: ResultsDB, rows: list[dict[str, Any]], kind: str, headline: tuple[str, ...]) -> None:
    """Every row declares ``kind``; each metric its predictions give back equals the stored one (and the
    family's headline metrics are among them)."""
    for r in rows:
        assert rescore_kind(db.get(r["run_id"])) == kind
        pairs = rescore_run(db, r["run_id"])
        assert set(headline) <= set(pairs), (r["head"], sorted(pairs))
        for k, (stored, again) in pairs.items():
            assert (math.isnan(stored) and math.isnan(again)) or again == pytest.approx(stored, rel=1e-9, abs=1e-12), \
                (r["head"], k, stored, again)


def test_classification_rescores(tmp_path: Path) -> None:
    db, rows = _run({"name": "c", "dataset": "phantom:xray2d-binary", "data": {"n": 40, "size": 32},
                     "encoder": "none", "preprocess": {"resolution": 16}, "heads": ["logreg", "knn"],
                     "split": {"fractions": [0.5, 0.2, 0.3]}}, tmp_path)
    _check(db, rows, "proba", ("auc", "acc", "balanced_acc", "f1_macro"))


def test_classification_kshot_rescores_mean_over_draws(tmp_path: Path) -> None:
    db, rows = _run({"name": "k", "dataset": "phantom:xray2d-binary", "data": {"n": 40, "size": 32},
                     "encoder": "none", "preprocess": {"resolution": 16}, "heads": ["prototype"],
                     "budget": "kshot:4x3", "split": {"fractions": [0.5, 0.2, 0.3]}}, tmp_path)
    assert db.load_predictions(rows[0]["run_id"])["y_score_draws"].shape[0] == 3
    _check(db, rows, "proba", ("auc", "acc"))


def test_regression_rescores(tmp_path: Path) -> None:
    db, rows = _run({"name": "r", "kind": "regression", "dataset": "phantom:xray2d-regression",
                     "data": {"n": 30, "size": 32}, "encoder": "none", "preprocess": {"resolution": 16},
                     "heads": ["ridge"], "split": {"fractions": [0.6, 0.2, 0.2]}}, tmp_path)
    _check(db, rows, "regression", ("mae", "rmse", "r2", "pearson_r"))


def test_slides_rescore_per_seed_predictions(tmp_path: Path) -> None:
    from medprobe.pipeline.demo_families import _slides

    data = tmp_path / "data"
    data.mkdir()
    raw = _slides(data, tmp_path / "cache", 6)
    raw.update(encoder="none", preprocess={"resolution": 112}, heads=["meanpool"],
               head_params={"meanpool": {"seeds": 3}})
    raw.pop("notes", None)
    db, rows = _run(raw, tmp_path)
    _check(db, rows, "proba_seeds", ("auc", "acc", "balanced_acc"))
    r = rows[0]
    pr = db.load_predictions(r["run_id"])
    assert pr["y_score_seeds"].shape[:2] == (3, len(pr["ids"]))
    assert np.allclose(pr["y_score_seeds"].mean(axis=0), pr["y_score"])  # y_score: the seed ensemble
    notes = db.get(r["run_id"])["labels"]
    assert "mean over seeds" in notes["headline"]
    ens = classification_metrics(pr["y_true"], pr["y_score"], "binary")  # what y_score scores is recorded too
    assert notes["ensemble"]["acc"] == pytest.approx(ens["acc"], abs=1e-6)
    per_seed = [classification_metrics(pr["y_true"], s, "binary")["acc"] for s in pr["y_score_seeds"]]
    assert r["metrics"]["acc"][0] == pytest.approx(float(np.nanmean(per_seed)))


def test_registration_rescores_and_records_input_size(tmp_path: Path) -> None:
    from medprobe.pipeline.demo_families import _registration

    data = tmp_path / "data"
    data.mkdir()
    raw = _registration(data, tmp_path / "cache", 2)
    raw["head_params"]["convexadam"].update(input_size=32, niter=2)
    raw.pop("notes", None)
    db, rows = _run(raw, tmp_path)
    _check(db, rows, "columns", ("dice", "dice_before", "hd95", "folding_pct"))
    by = {r["head"]: db.get(r["run_id"]) for r in rows}
    native = by["convexadam"]["feature_contract"]["native_resolution"] if "feature_contract" in by["convexadam"] \
        else by["convexadam"]["extra"]["feature_contract"]["native_resolution"]
    assert by["convexadam"]["resolution"] == [32, 32] != [native, native]
    assert by["convexadam"]["preprocess"]["resolution"] == [32, 32]
    assert by["identity"]["resolution"] is None  # no encoder input at all
    assert "own grid" in by["identity"]["labels"]["input"]


def test_instances_rescore(tmp_path: Path) -> None:
    from medprobe.pipeline.demo_families import _instances

    data = tmp_path / "data"
    data.mkdir()
    raw = _instances(data, tmp_path / "cache", 6)
    raw.update(encoder="none", preprocess={"resolution": 64})
    raw["head_params"]["affinity"].update(epochs=1, iters_per_epoch=2)
    raw.pop("notes", None)
    db, rows = _run(raw, tmp_path)
    _check(db, rows, "cases", ("voi_split", "voi_merge", "voi", "arand"))


def test_rescore_needs_a_definition() -> None:
    from medprobe.errors import ConfigError

    with pytest.raises(ConfigError, match="no re-score definition"):
        rescore({"run_id": "x", "task_type": "binary"}, {"ids": np.asarray(["a"])})
