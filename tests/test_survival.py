"""Survival (issue 27): the ``cox`` head equals lifelines' ``CoxPHFitter`` (Efron ties, ridge penalizer, the same
internal standardisation) and scikit-survival's ``CoxPHSurvivalAnalysis`` (Breslow ties); Harrell's and Uno's
c-index equal lifelines / scikit-survival; the bootstrap CIs recompute the statistic per resample; the survival
family runs end to end on a CSV manifest of real PneumoniaMNIST images with patient-level folds."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from medprobe.heads.base import find_head
from medprobe.metrics.survival import concordance_index, concordance_index_uno, survival_ci

lifelines = pytest.importorskip("lifelines", reason="lifelines is in the test extra")
sksurv_linear = pytest.importorskip("sksurv.linear_model", reason="scikit-survival is in the test extra")


def synthetic(n: int, d: int, seed: int, ties: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, d) + rng.normal(size=d)
    beta = rng.normal(size=d) * 0.5
    t_event = rng.exponential(1.0 / np.exp((X - X.mean(0)) / X.std(0) @ beta))
    t_cens = rng.exponential(1.5, n)
    t = np.minimum(t_event, t_cens)
    e = (t_event <= t_cens).astype(float)
    if ties:
        t = np.ceil(t * 4) / 4  # quarter steps: many tied times
    return X, t, e


def lifelines_fit(X: np.ndarray, t: np.ndarray, e: np.ndarray, penalizer: float) -> np.ndarray:
    import pandas as pd

    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])]).assign(T=t, E=e)
    cph = lifelines.CoxPHFitter(penalizer=penalizer)
    cph.fit(df, "T", "E", fit_options={"precision": 1e-12, "r_precision": 1e-14, "max_steps": 200})
    return np.asarray(cph.params_.values)


@pytest.mark.parametrize("ties,penalizer", [(False, 0.0), (False, 0.1), (True, 0.0), (True, 0.05)])
def test_cox_equals_lifelines_efron(ties: bool, penalizer: float) -> None:
    X, t, e = synthetic(200, 5, seed=int(ties) * 10 + int(penalizer * 100), ties=ties)
    y = np.stack([t, e], axis=1)
    head = find_head("cox", ("vector",), "survival")(penalizer=penalizer, ties="efron").fit(X, y)
    ref = lifelines_fit(X, t, e, penalizer)
    np.testing.assert_allclose(head.coef_, ref, rtol=1e-5, atol=1e-7)
    risk = head.predict_risk(X)
    from lifelines.utils import concordance_index as lifelines_c

    if not ties:  # lifelines and scikit-survival agree when no two times tie
        assert concordance_index(t, e, risk) == pytest.approx(lifelines_c(t, -risk, e), abs=1e-12)


def test_cox_breslow_equals_scikit_survival() -> None:
    from sksurv.util import Surv

    X, t, e = synthetic(150, 4, seed=3, ties=True)
    pen = 0.05
    head = find_head("cox", ("vector",), "survival")(penalizer=pen, ties="breslow").fit(X, np.stack([t, e], 1))
    Z = (X - X.mean(0)) / X.std(0, ddof=1)
    ref = sksurv_linear.CoxPHSurvivalAnalysis(alpha=len(X) * pen, ties="breslow", tol=1e-12, n_iter=200)
    ref.fit(Z, Surv.from_arrays(e.astype(bool), t))
    np.testing.assert_allclose(head.coef_std_, ref.coef_, rtol=1e-5, atol=1e-7)
    efron = find_head("cox", ("vector",), "survival")(penalizer=pen, ties="efron").fit(X, np.stack([t, e], 1))
    assert np.abs(efron.coef_std_ - head.coef_std_).max() > 1e-4  # the tie methods differ on tied data


def test_c_indices_equal_scikit_survival() -> None:
    from sksurv.metrics import concordance_index_censored, concordance_index_ipcw
    from sksurv.util import Surv

    X, t, e = synthetic(300, 3, seed=7, ties=True)
    rng = np.random.default_rng(0)
    risk = X @ rng.normal(size=3) + rng.normal(size=300)
    risk[:20] = np.round(risk[:20])  # some tied risks
    tr, te = np.arange(0, 200), np.arange(200, 300)
    te = te[t[te] <= t[tr].max()]
    harrell = concordance_index_censored(e[te].astype(bool), t[te], risk[te])[0]
    assert concordance_index(t[te], e[te], risk[te]) == pytest.approx(harrell, abs=1e-12)
    from medprobe.numerics import harrell_c_index  # the heads' selection copy

    assert harrell_c_index(t[te], e[te], risk[te]) == pytest.approx(harrell, abs=1e-12)
    s_tr, s_te = Surv.from_arrays(e[tr].astype(bool), t[tr]), Surv.from_arrays(e[te].astype(bool), t[te])
    uno = concordance_index_ipcw(s_tr, s_te, risk[te])[0]
    assert concordance_index_uno(t[tr], e[tr], t[te], e[te], risk[te]) == pytest.approx(uno, abs=1e-12)
    tau = float(np.quantile(t[te], 0.8))
    uno_tau = concordance_index_ipcw(s_tr, s_te, risk[te], tau=tau)[0]
    assert concordance_index_uno(t[tr], e[tr], t[te], e[te], risk[te], tau=tau) == pytest.approx(uno_tau, abs=1e-12)


def test_bootstrap_recomputes_per_resample() -> None:
    from medprobe.metrics.bootstrap import resample_indices

    X, t, e = synthetic(120, 3, seed=2, ties=True)
    risk = X[:, 0]
    y = np.stack([t, e], 1)
    ci = survival_ci(y[:60], y[60:], risk[60:], n_resamples=30, seed=5, alpha=0.1)
    vals = [concordance_index(t[60:][i], e[60:][i], risk[60:][i]) for block in resample_indices(60, 30, 5)
            for i in block]
    assert ci["c_index"][1] == pytest.approx(np.quantile(vals, 0.05), abs=1e-12)
    assert ci["c_index"][2] == pytest.approx(np.quantile(vals, 0.95), abs=1e-12)
    assert ci["c_index"][0] == pytest.approx(concordance_index(t[60:], e[60:], risk[60:]), abs=1e-12)


def test_penalizer_selection_on_validation() -> None:
    X, t, e = synthetic(160, 30, seed=4)
    head = find_head("cox", ("vector",), "survival")(penalizers=[0.001, 0.1, 10.0]).fit(X, np.stack([t, e], 1))
    sel = head.get_params()["selected"]
    assert sel["penalizer"] in (0.001, 0.1, 10.0) and set(sel["val_c_index"]) == {"0.001", "0.1", "10.0"}


def test_cox_loss_is_the_breslow_partial_likelihood() -> None:
    import torch

    from medprobe.heads.cox import cox_loss, partial_likelihood

    _, t, e = synthetic(80, 2, seed=9, ties=True)
    r = np.random.default_rng(1).normal(size=80)
    ll, _, _ = partial_likelihood(r[:, None], t, e.astype(bool), np.ones(1), ties="breslow")
    got = float(cox_loss(torch.as_tensor(r), torch.as_tensor(t), torch.as_tensor(e)))
    assert got == pytest.approx(-ll / e.sum(), rel=1e-9)


def test_abmil_cox_learns_bag_risk() -> None:
    """Bags of 5-12 instances; a bag's hazard grows with how strongly one 'hot' instance points along a fixed
    direction: the attention head finds it (test c-index well above 0.5), reproducibly for a seed."""
    rng = np.random.default_rng(0)
    d, n = 16, 240
    direction = rng.normal(size=d)
    bags, hot = [], []
    for _ in range(n):
        b = rng.normal(size=(int(rng.integers(5, 13)), d))
        h = rng.normal()
        b[0] += h * direction
        bags.append(b.astype(np.float32))
        hot.append(h)
    t_ev = rng.exponential(1.0 / np.exp(1.5 * np.asarray(hot)))
    t_c = rng.exponential(2.0, n)
    y = np.stack([np.minimum(t_ev, t_c), (t_ev <= t_c).astype(float)], 1)
    cls = find_head("abmil_cox", ("bag",), "survival")
    head = cls(epochs=15, hidden=32, attn_dim=16, batch_size=32, seed=3).fit(bags[:160], y[:160])
    risk = head.predict_risk(bags[160:])
    c = concordance_index(y[160:, 0], y[160:, 1], risk)
    assert c > 0.7, c
    again = cls(epochs=15, hidden=32, attn_dim=16, batch_size=32, seed=3).fit(bags[:160], y[:160])
    np.testing.assert_array_equal(again.predict_risk(bags[160:]), risk)
    att = head.attention(bags[160:170])
    assert all(abs(a.sum() - 1) < 1e-5 for a in att)


@pytest.mark.shared_data
def test_survival_family_csv_patient_folds(shared_data: Path, tmp_path: Path) -> None:
    """A CSV manifest (time, event, patient) over 90 real PneumoniaMNIST images, 2 images per patient; the
    family fits cox on pixel-grid features in patient-level 3-fold CV and its stored c-indices equal
    scikit-survival on the stored risks."""
    npz = shared_data / "medmnist" / "pneumoniamnist.npz"
    if not npz.is_file():
        pytest.skip(f"{npz} is absent")
    from PIL import Image
    from sksurv.metrics import concordance_index_censored

    from medprobe.pipeline.run import run_task
    from medprobe.pipeline.task import parse_task
    from medprobe.results import ResultsDB

    data = np.load(npz)
    imgs, labels = data["train_images"][:90], data["train_labels"][:90, 0]
    rng = np.random.default_rng(0)
    t = rng.exponential(np.where(labels == 1, 1.0, 3.0))  # pneumonia: earlier events
    e = (rng.random(90) < 0.7).astype(int)
    rows = []
    for i in range(90):
        Image.fromarray(imgs[i]).save(tmp_path / f"img{i}.png")
        rows.append({"path": f"img{i}.png", "time": f"{t[i]:.6f}", "event": e[i], "patient": f"p{i // 2}"})
    with open(tmp_path / "surv.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    raw = {"name": "surv", "dataset": f"csv:{tmp_path / 'surv.csv'}",
           "data": {"task": "survival", "label_columns": "time,event", "patient_column": "patient"},
           "encoder": "none", "preprocess": {"resolution": 16}, "heads": ["cox", "abmil_cox"],
           "head_params": {"cox": {"penalizer": 1.0}, "abmil_cox": {"epochs": 3, "hidden": 16, "attn_dim": 8}},
           "split": "folds:3:0", "metrics": {"bootstrap": 100},
           "cache_dir": str(tmp_path / "cache"), "audit": {"mode": "off"}}
    rows = {r["head"]: r for r in run_task(parse_task(raw), db=ResultsDB(tmp_path / "db" / "r.db"), verbose=False)}
    assert np.isfinite(rows["abmil_cox"]["metrics"]["c_index"][0])  # the bag head runs through the same family
    row = rows["cox"]
    rec = row["record"]
    assert rec["config"]["family"] == "survival" and rec["task_type"] == "survival"
    assert rec["split"]["kind"] == "folds" and rec["split"]["level"] == "patient"
    pr = row["result"].predictions
    test_patients = {f"p{int(str(i).split('img')[-1].split('.')[0]) // 2}" for i in pr["ids"]}
    assert len(pr["ids"]) == 2 * len(test_patients)  # both images of a test patient are in test
    ref = concordance_index_censored(pr["event"].astype(bool), pr["time"], pr["risk"])[0]
    v, lo, hi = row["metrics"]["c_index"]
    assert v == pytest.approx(ref, abs=1e-12) and lo <= v <= hi
    assert np.isfinite(row["metrics"]["c_index_uno"][0])
