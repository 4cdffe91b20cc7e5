"""The linear probe's two recipes: ``study`` (the paper's exactly) and ``improved`` (the default)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medprobe.errors import ConfigError
from medprobe.heads.base import create_head


def _blobs(n: int, k: int, d: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centres = rng.normal(0, 1.5, (k, d))
    X = centres[y] + rng.normal(0, 1, (n, d)) + 5.0  # offset: raw and standardised inputs differ
    return X.astype(np.float32), y


def _study_reference(X: np.ndarray, y: np.ndarray, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The study's recipe written out: raw features, BCE-with-logits on one-hot targets (one-vs-rest), AdamW
    lr 0.005 without weight decay at a constant rate, batch 1024, 50 epochs, the last epoch's weights."""
    g = torch.Generator().manual_seed(seed)
    Xt = torch.as_tensor(X)
    T = F.one_hot(torch.as_tensor(y), k).float()
    W = ((torch.rand(k, X.shape[1], generator=g) * 2 - 1) / math.sqrt(X.shape[1])).requires_grad_(True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.AdamW([W, b], lr=0.005, weight_decay=0.0)
    for _ in range(50):
        perm = torch.randperm(len(X), generator=g)
        for a in range(0, len(X), 1024):
            i = perm[a:a + 1024]
            loss = F.binary_cross_entropy_with_logits(Xt[i] @ W.T + b, T[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return W.detach(), b.detach()


def test_study_preset_is_the_papers_recipe() -> None:
    X, y = _blobs(2800, 4)
    X, y, Xv, yv = X[:2500], y[:2500], X[2500:], y[2500:]
    head = create_head("linear", task="multiclass", n_classes=4, preset="study", seed=3)
    head.fit(X, y, Xv, yv)  # validation given, yet the study keeps the last epoch
    r = head.recipe_
    assert r["loss"] == "BCE-with-logits (one-vs-rest)" and r["inputs"] == "raw features"
    assert (r["optimizer"], r["lr"], r["lr_schedule"], r["weight_decay"]) == ("adamw", 0.005, "constant", 0.0)
    assert (r["batch_size"], r["epochs"], r["epoch_selection"]) == (1024, 50, "last epoch")
    assert head.steps_ == r["steps"] == 50 * math.ceil(2500 / 1024)
    assert head.best_epoch_ == 49 and head.history_ == [] and len(head.train_loss_) == 50
    # inputs: no standardisation
    assert torch.equal(head.mean_, torch.zeros(12)) and torch.equal(head.std_, torch.ones(12))
    # the same weights as the recipe written out independently
    W, b = _study_reference(X, y, 4, seed=3)
    assert torch.allclose(head.coef_, W, atol=1e-5) and torch.allclose(head.intercept_, b, atol=1e-5)
    # loss: BCE on one-hot targets, not cross-entropy; probabilities are the sigmoid scores
    z = torch.as_tensor(X) @ W.T + b
    bce = float(F.binary_cross_entropy_with_logits(z, F.one_hot(torch.as_tensor(y), 4).float()))
    assert head.final_loss_ == pytest.approx(bce, rel=1e-4)
    assert abs(bce - float(F.cross_entropy(z, torch.as_tensor(y)))) > 0.01 * bce  # the recorded loss is BCE, not CE
    p = head.predict_proba(Xv)
    assert np.allclose(p, torch.sigmoid(torch.as_tensor(Xv) @ W.T + b).numpy(), atol=1e-5)
    assert not np.allclose(p.sum(1), 1.0)  # one-vs-rest scores, not a softmax
    assert (head.predict(Xv) == yv).mean() > 0.8
    params = head.get_params()
    assert params["preset"] == "study" and params["selected"]["recipe"]["loss"].startswith("BCE")
    assert params["selected"]["epoch"] == 50


def test_improved_default_standardises_uses_ce_and_selects_the_epoch() -> None:
    X, y = _blobs(1500, 3)
    X, y, Xv, yv = X[:1200], y[:1200], X[1200:], y[1200:]
    head = create_head("linear", task="multiclass", n_classes=3, epochs=8).fit(X, y, Xv, yv)
    r = head.recipe_
    assert r["preset"] == "improved" and r["loss"] == "cross-entropy (softmax)"
    assert r["inputs"] == "standardised (training mean/std)" and r["epoch_selection"] == "best validation epoch"
    assert float(head.mean_.mean()) > 4 and len(head.history_) == 8
    assert head.best_epoch_ == int(np.argmax(head.history_))
    assert np.allclose(head.predict_proba(Xv).sum(1), 1.0, atol=1e-5)
    Xs = (torch.as_tensor(X) - head.mean_) / head.std_
    ce = float(F.cross_entropy(Xs @ head.coef_.T + head.intercept_, torch.as_tensor(y)))
    assert head.final_loss_ == pytest.approx(ce, rel=1e-4)
    # one choice of the recipe overridden at a time; the record says what ran
    mixed = create_head("linear", task="multiclass", preset="study", standardize=True, epochs=2).fit(X, y)
    assert mixed.recipe_["inputs"].startswith("standardised") and mixed.recipe_["loss"].endswith("(one-vs-rest)")


def test_binary_study_probe_has_one_logit() -> None:
    X, y = _blobs(600, 2)
    head = create_head("linear", task="binary", preset="study", epochs=5).fit(X, y)
    assert head.coef_.shape == (1, 12) and head.recipe_["loss"] == "BCE-with-logits (one logit)"
    p = head.predict_proba(X)
    assert p.shape == (600, 2) and np.allclose(p.sum(1), 1.0)
    z = torch.as_tensor(X) @ head.coef_.T + head.intercept_
    assert np.allclose(p[:, 1], torch.sigmoid(z[:, 0]).numpy(), atol=1e-6)


def test_bad_recipe_choices_are_one_line() -> None:
    X, y = _blobs(100, 3)
    with pytest.raises(ConfigError, match="preset must be one of improved, study"):
        create_head("linear", task="multiclass", preset="paper").fit(X, y)
    with pytest.raises(ConfigError, match="loss must be one of ce, bce"):
        create_head("linear", task="multiclass", loss="hinge").fit(X, y)
    with pytest.raises(ConfigError, match="multi-label targets need loss 'bce'"):
        create_head("linear", task="multilabel", loss="ce").fit(X, np.eye(3, dtype=int)[y])


def test_preset_through_a_task_is_recorded(tmp_path: Path) -> None:
    from medprobe.pipeline.run import run_task
    from medprobe.pipeline.task import parse_task
    from medprobe.results import ResultsDB

    spec = parse_task({"name": "lp", "dataset": "phantom:xray2d-binary", "data": {"n": 40, "size": 32},
                       "encoder": "none", "preprocess": {"resolution": 32}, "heads": ["linear"],
                       "head_params": {"linear": {"preset": "study", "epochs": 3}}, "cache_dir": str(tmp_path / "c"),
                       "device": "cpu", "features": {"progress": False}, "metrics": {"bootstrap": 20}})
    rec = run_task(spec, db=ResultsDB(tmp_path / "r"), verbose=False)[0]["record"]
    hp = rec["head_params"]
    assert hp["preset"] == "study" and hp["selected"]["recipe"]["inputs"] == "raw features"
    assert hp["selected"]["recipe"]["epoch_selection"] == "last epoch" and hp["selected"]["epoch"] == 3
