"""Slide-level MIL heads (heads/mil.py) and the slides family's seed aggregation, on synthetic bags."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medprobe.errors import ConfigError
from medprobe.heads import create_head, get_head_class
from medprobe.heads.base import score
from medprobe.heads.mil import GatedAttentionMIL, check_bags
from medprobe.pipeline.families.slides import evaluate_bags, seed_interval, tile_auc


@pytest.fixture(scope="module", autouse=True)
def _single_thread(single_thread: None) -> None:
    """Module-wide: see conftest.single_thread."""


def _bags(n: int = 120, dim: int = 16, seed: int = 0, key: int = 2) -> tuple[list[np.ndarray], np.ndarray,
                                                                                   list[np.ndarray]]:
    """Bags of 6-20 Gaussian instances; a positive bag holds ``key`` instances shifted along one direction."""
    rng = np.random.default_rng(seed)
    bags, y, lab = [], [], []
    for i in range(n):
        b = rng.normal(size=(int(rng.integers(6, 20)), dim))
        t = np.zeros(len(b), np.int64)
        if i % 2:
            where = rng.choice(len(b), key, replace=False)
            b[where] += 2.5 * np.eye(dim)[0] + 1.0
            t[where] = 1
        bags.append(b.astype(np.float32))
        y.append(i % 2)
        lab.append(t)
    return bags, np.asarray(y), lab


def test_gated_attention_is_the_study_formula() -> None:
    torch.manual_seed(0)
    m = GatedAttentionMIL(dim=5, hidden=4, attn_dim=3, n_out=2)
    assert m.U.weight.shape == (3, 4) and m.V.weight.shape == (3, 4) and m.w.weight.shape == (1, 3)
    assert m.U.bias is None and m.V.bias is None and m.w.bias is None  # U, V in R^{HxD}, w in R^H
    x = torch.randn(1, 7, 5)
    z, a = m(x, torch.ones(1, 7, dtype=torch.bool))
    h = x[0] @ m.proj.weight.T + m.proj.bias  # linear projection to D (no activation by default)
    s = (torch.tanh(h @ m.V.weight.T) * torch.sigmoid(h @ m.U.weight.T)) @ m.w.weight[0]
    a_ref = torch.softmax(s, 0)
    torch.testing.assert_close(a[0], a_ref)
    torch.testing.assert_close(z[0], (a_ref @ h) @ m.head.weight.T + m.head.bias)
    # padding is masked: an extra padded instance changes nothing
    xp = torch.cat([x, torch.randn(1, 1, 5)], 1)
    zp, ap = m(xp, torch.tensor([[True] * 7 + [False]]))
    torch.testing.assert_close(zp, z)
    assert float(ap[0, 7].detach()) == 0.0


@pytest.mark.parametrize("name,hp", [("abmil", {"epochs": 15, "hidden": 32, "attn_dim": 16}),
                                     ("transmil", {"epochs": 6, "hidden": 32, "heads": 4, "batch_size": 4,
                                                   "dropout": 0.0, "lr": 1e-3}),
                                     ("meanpool", {})])
def test_heads_learn_and_attention_finds_key_instances(name: str, hp: dict) -> None:
    bags, y, lab = _bags()
    head = create_head(name, task="binary", input_kind="bag", seed=0, **hp).fit(bags[:80], y[:80])
    p = head.predict_proba(bags[80:])
    assert p.shape == (40, 2) and np.allclose(p.sum(1), 1)
    assert score("binary", y[80:], p, "auc") > 0.8, name
    att = head.attention(bags[80:])
    assert all(len(a) == len(b) and abs(a.sum() - 1) < 1e-5 and (a >= 0).all() for a, b in zip(att, bags[80:]))
    t_auc = tile_auc(att, lab[80:])
    if name == "meanpool":
        assert np.isnan(t_auc) or abs(t_auc - 0.5) < 1e-9  # uniform weights rank nothing
    elif name == "abmil":
        assert t_auc > 0.9, t_auc
    again = create_head(name, task="binary", input_kind="bag", seed=0, **hp).fit(bags[:80], y[:80])
    np.testing.assert_array_equal(p, again.predict_proba(bags[80:]))  # seeded


def test_abmil_options_and_selection() -> None:
    bags, y, _ = _bags(60)
    h = create_head("abmil", task="binary", epochs=5, hidden=8, attn_dim=4, select="val", max_tiles=5,
                    projection="relu").fit(bags[:40], y[:40], bags[40:], y[40:])
    sel = h.get_params()["selected"]
    assert 1 <= sel["epoch"] <= 5 and 0 <= sel["val_score"] <= 1 and len(h.val_scores_) == 5
    multi = create_head("abmil", task="multiclass", epochs=3, hidden=8, attn_dim=4)
    y3 = np.arange(60) % 3
    assert multi.fit(bags, y3).predict_proba(bags[:5]).shape == (5, 3)
    with pytest.raises(ConfigError, match="projection"):
        create_head("abmil", projection="gelu")
    with pytest.raises(ConfigError, match="select"):
        create_head("abmil", select="best")
    with pytest.raises(ConfigError, match="non-empty"):
        h.predict_proba([np.zeros((0, 16))])
    with pytest.raises(ConfigError, match="fitted on 16"):
        h.predict_proba([np.zeros((3, 4))])
    with pytest.raises(ConfigError, match="NaN"):
        check_bags([np.full((2, 3), np.nan)], "t")
    with pytest.raises(ConfigError, match="not fitted"):
        create_head("transmil").predict_proba(bags[:2])


def test_evaluate_bags_aggregates_seeds() -> None:
    bags, y, lab = _bags(80)
    train, val, test = list(range(40)), [], list(range(40, 80))
    cls = get_head_class("abmil", "bag")
    out = evaluate_bags(cls, {"epochs": 8, "hidden": 16, "attn_dim": 8}, bags, y, train, val, test, "binary", 2,
                        seeds=3, seed=4, n_boot=200, tile_labels=[lab[i] for i in test])
    m = out["metrics"]
    per = [d["auc"] for d in out["per_seed"]]
    assert len(per) == 3 and m["n_seeds"] == 3
    assert m["auc"][0] == pytest.approx(np.mean(per))  # mean over seeds
    assert m["auc"][1] <= m["auc"][0] <= m["auc"][2]  # CI over slides
    assert m["auc_seeds"] == pytest.approx(seed_interval(per))  # CI over seeds
    assert 0.5 < m["tile_auc"][0] <= 1.0
    assert out["proba"].shape == (40, 2) and len(out["attention"]) == 40
    # seeds 4, 5, 6: the second seed of a run at seed 4 is a run at seed 5
    one = evaluate_bags(cls, {"epochs": 8, "hidden": 16, "attn_dim": 8}, bags, y, train, val, test, "binary", 2,
                        seeds=1, seed=5, n_boot=10)
    assert one["per_seed"][0]["auc"] == pytest.approx(per[1])
    lo, hi = seed_interval([0.8])[1:]
    assert np.isnan(lo) and np.isnan(hi)
