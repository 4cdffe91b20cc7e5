"""Few-shot protocol (issue 27): ``budget: kshot:<k>x<draws>``, seeded draws of k training cases per class,
the prototype and SimpleShot heads, mean and CI over draws; temperature scaling on validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medprobe.errors import ConfigError
from medprobe.heads.base import find_head
from medprobe.pipeline.fewshot import kshot_draws, parse_kshot
from medprobe.pipeline.task import parse_task


def test_budget_parsing() -> None:
    assert parse_task({"budget": "kshot:8x20"}).budget == "kshot:8x20"
    assert parse_task({"budget": " KSHOT:4x5 "}).budget == "kshot:4x5"
    assert parse_kshot("kshot:8x20") == (8, 20) and parse_kshot(0.5) is None
    for bad in ("kshot:0x5", "kshot:8", "kshot:8x0", "kshot:axb"):
        with pytest.raises(ConfigError, match="kshot"):
            parse_task({"budget": bad})
    a = parse_task({"budget": "kshot:8x20"}).config_hash("logreg")
    assert a != parse_task({"budget": "kshot:8x10"}).config_hash("logreg")


def test_draws_reproducible_per_class_and_from_train_only() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    train, test = list(range(0, 300)), set(range(300, 400))
    a, facts = kshot_draws(train, y, 5, 10, seed=7)
    b, _ = kshot_draws(train, y, 5, 10, seed=7)
    c, _ = kshot_draws(train, y, 5, 10, seed=8)
    assert a == b and a != c
    assert len({tuple(d) for d in a}) == 10  # the draws differ from each other
    for d in a:
        assert not set(d) & test and set(d) <= set(train)
        assert np.bincount(y[d], minlength=3).tolist() == [5, 5, 5]
    assert facts["n_train_per_draw"] == [15] * 10 and facts["short_classes"] == {}
    few = [i for i in train if y[i] != 2] + [i for i in train if y[i] == 2][:3]
    _, facts = kshot_draws(few, y, 5, 2, seed=0)
    assert facts["short_classes"] == {"2": 3}


def test_prototype_and_simpleshot_heads() -> None:
    proto, simple = find_head("prototype", ("vector",)), find_head("simpleshot", ("vector",))
    X = np.array([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0]])
    y = np.array([0, 0, 1, 1])
    h = proto(task="binary", n_classes=2).fit(X, y)
    np.testing.assert_allclose(h.prototypes_, [[0, 1], [10, 1]])
    assert h.temperature_ == pytest.approx(1.0)  # mean squared distance to the own prototype
    p = h.predict_proba(np.array([[1.0, 1.0], [9.0, 1.0]]))
    np.testing.assert_allclose(p[0], np.exp([-1.0, -81.0]) / np.exp([-1.0, -81.0]).sum())
    assert p.argmax(1).tolist() == [0, 1]
    s = simple(task="binary", n_classes=2).fit(X, y)
    Z = (X - X.mean(0)) / np.linalg.norm(X - X.mean(0), axis=1, keepdims=True)
    np.testing.assert_allclose(s.prototypes_, [Z[:2].mean(0), Z[2:].mean(0)])
    assert s.get_params()["selected"]["transform"] == "cl2n"
    with pytest.raises(ConfigError, match="transform"):
        proto(task="binary", transform="zca").fit(X, y)


@pytest.mark.shared_data
def test_kshot_pipeline_on_pneumoniamnist(shared_data: Path, tmp_path: Path) -> None:
    """kshot:4x5 through the run path on real PneumoniaMNIST (pixel-grid `none` encoder at 16 px): every head is
    fitted on 5 seeded draws of 4 cases per class, the row's metrics are the mean over draws, the draws are
    training cases only (never test), and a rerun gives the same numbers."""
    root = shared_data / "medmnist"
    if not (root / "pneumoniamnist.npz").is_file():
        pytest.skip(f"{root / 'pneumoniamnist.npz'} is absent")
    from medprobe.pipeline.run import run_task
    from medprobe.results import ResultsDB

    raw = {"name": "pneu-kshot", "dataset": "medmnist:pneumoniamnist",
           "data": {"root": str(root), "limit": "300,60,200"}, "encoder": "none",
           "preprocess": {"resolution": 16}, "heads": ["prototype", "simpleshot", "logreg", "knn"],
           "head_params": {"logreg": {"Cs": [0.1, 1.0]}}, "budget": "kshot:4x5", "metrics": {"bootstrap": 200},
           "cache_dir": str(tmp_path / "cache"), "audit": {"mode": "off"}}
    rows = run_task(parse_task(raw), db=ResultsDB(tmp_path / "db" / "r.db"), verbose=False)
    assert sorted(r["head"] for r in rows) == ["knn", "logreg", "prototype", "simpleshot"]
    ds_ids = None
    for r in rows:
        notes = r["record"]["notes"]["kshot"]
        assert notes["k"] == 4 and notes["draws"] == 5 and notes["n_train_per_draw"] == [8] * 5
        for m in ("auc", "acc"):
            v, lo, hi = r["metrics"][m]
            assert v == pytest.approx(np.mean(notes["per_draw"][m]), abs=1e-6)
            assert lo <= v <= hi
        preds = r["result"].predictions
        assert preds["y_score_draws"].shape == (5, 200, 2)
        test_ids = set(preds["ids"].tolist())
        assert not set(notes["train_ids_draw0"]) & test_ids
        ds_ids = ds_ids or notes["train_ids_draw0"]
        assert notes["train_ids_draw0"] == ds_ids  # every head sees the same draws
    again = run_task(parse_task(raw), db=ResultsDB(tmp_path / "db2" / "r.db"), verbose=False)
    by = {r["head"]: r["metrics"] for r in rows}
    for r in again:
        assert r["metrics"]["auc"] == pytest.approx(by[r["head"]]["auc"], abs=1e-12)
    with pytest.raises(ConfigError, match="validation labels"):
        bad = {**raw, "heads": ["prototype"], "head_params": {"prototype": {"calibrate": "temperature"}}}
        run_task(parse_task(bad), db=ResultsDB(tmp_path / "db3" / "r.db"), verbose=False)


@pytest.mark.shared_data
def test_temperature_scaling_in_the_run(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "medmnist"
    if not (root / "pneumoniamnist.npz").is_file():
        pytest.skip(f"{root / 'pneumoniamnist.npz'} is absent")
    from medprobe.pipeline.run import run_task
    from medprobe.results import ResultsDB

    raw = {"name": "pneu-ts", "dataset": "medmnist:pneumoniamnist",
           "data": {"root": str(root), "limit": "300,100,200"}, "encoder": "none", "preprocess": {"resolution": 16},
           "heads": ["knn"], "metrics": {"bootstrap": 50}, "cache_dir": str(tmp_path / "cache"),
           "audit": {"mode": "off"}}
    plain = run_task(parse_task(raw), db=ResultsDB(tmp_path / "a" / "r.db"), verbose=False)[0]
    ts = run_task(parse_task({**raw, "head_params": {"knn": {"calibrate": "temperature"}}}),
                  db=ResultsDB(tmp_path / "b" / "r.db"), verbose=False)[0]
    t = ts["record"]["head_params"]["selected"]["temperature"]
    assert ts["record"]["head_params"]["calibrate"] == "temperature" and t > 0 and t != 1.0
    assert ts["metrics"]["acc"][0] == plain["metrics"]["acc"][0]  # the argmax is unchanged
    from medprobe.metrics.calibration import apply_temperature

    np.testing.assert_allclose(ts["result"].predictions["y_score"],  # T fitted on val, applied to test
                               apply_temperature(plain["result"].predictions["y_score"], t, "binary"), atol=1e-5)
    assert ts["metrics"]["nll"][0] != plain["metrics"]["nll"][0]
    assert plain["record"]["config_hash"] != ts["record"]["config_hash"]
