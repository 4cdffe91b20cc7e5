"""Tests of the classification heads (logreg, knn, linear, abmil) and the head registry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from medprobe.errors import ConfigError
from medprobe.heads import create_head, head_names, pool_slices, register_head
from medprobe.heads.base import Head, score

CS = 10.0 ** np.linspace(-4, 4, 17)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny problems on a shared 2-core machine: multi-threaded BLAS/OpenMP only oversubscribes."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(n)


def gaussian_mixture(n: int, d: int, k: int, sep: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d) + 0.5 * np.eye(d)  # correlated, anisotropic features
    mu = rng.normal(size=(k, d)) * sep / np.sqrt(d)
    y = rng.integers(0, k, n)
    return rng.normal(size=(n, d)) @ mix + mu[y], y


def sklearn_loop(task, Xtr, ytr, Xva, yva, metric):
    scores, models = [], []
    for C in CS:
        m = LogisticRegression(C=C, solver="lbfgs", max_iter=5000, tol=1e-10).fit(Xtr, ytr)
        models.append(m)
        scores.append(score(task, yva, m.predict_proba(Xva), metric))
    best = int(np.argmax(scores))
    return CS[best], models[best], np.array(scores)


@pytest.mark.parametrize("task,k,metric,sep", [("binary", 2, "auc", 0.2), ("multiclass", 4, "accuracy", 0.3)])
def test_logreg_matches_sklearn_loop(task, k, metric, sep):
    X, y = gaussian_mixture(3000, 64, k, sep=sep, seed=1)
    Xtr, ytr, Xva, yva, Xte, yte = X[:2000], y[:2000], X[2000:2500], y[2000:2500], X[2500:], y[2500:]
    head = create_head("logreg", task=task, Cs=list(CS), selection_metric=metric, refit_on="train")
    head.fit(Xtr, ytr, Xva, yva)
    C_ref, ref, ref_scores = sklearn_loop(task, Xtr, ytr, Xva, yva, metric)
    assert 0.6 < ref_scores.max() < 0.99  # a non-trivial problem
    assert head.C_ == C_ref
    np.testing.assert_allclose(head.val_scores_, ref_scores, atol=2e-3)
    auc, auc_ref = score(task, yte, head.predict_proba(Xte), "auc"), score(task, yte, ref.predict_proba(Xte), "auc")
    assert abs(auc - auc_ref) <= 2e-3
    np.testing.assert_allclose(head.predict_proba(Xte), ref.predict_proba(Xte), atol=1e-3)
    assert head.get_params()["selected"]["C"] == C_ref


def test_logreg_refit_default_and_holdout_deterministic():
    X, y = gaussian_mixture(600, 16, 2, sep=2.0, seed=2)
    a = create_head("logreg", task="binary", Cs=list(CS), seed=3).fit(X, y)
    b = create_head("logreg", task="binary", Cs=list(CS), seed=3).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert a.refit_on == "train+val" and a.predict_proba(X).shape == (600, 2)
    # the train+val refit equals sklearn at the chosen C on all rows
    ref = LogisticRegression(C=a.C_, max_iter=5000, tol=1e-10).fit(X, y)
    np.testing.assert_allclose(a.predict_proba(X), ref.predict_proba(X), atol=1e-4)


def test_logreg_low_rank_offset_features_solve_at_every_C():
    """Untrained-encoder-like features (rank 12 of 384, offset 50, n < d): the float32 Hessian alone turns
    indefinite at large C; the solver must fall back and still reach sklearn's optimum."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    Z = rng.normal(size=(240, 12))
    X = (Z @ rng.normal(size=(12, 384)) * 3 + 50 + rng.normal(size=(240, 384)) * 1e-3).astype(np.float32)
    y = (Z[:, 0] + rng.normal(size=240) > 0).astype(int)
    for C in (1e-2, 1e2, 1e5):  # selected C forced via a one-value sweep
        head = create_head("logreg", task="binary", Cs=[C], refit_on="train").fit(X[:160], y[:160], X[160:200],
                                                                             y[160:200])
        X64 = X[:160].astype(np.float64)

        def objective(w: np.ndarray, b: float, C: float = C, X64: np.ndarray = X64) -> float:
            z = X64 @ w + b
            return float(C * (np.logaddexp(0, z) - y[:160] * z).sum() + 0.5 * w @ w)

        ref = LogisticRegression(C=C, max_iter=50000, tol=1e-12).fit(X64, y[:160])
        ours = objective(head.coef_.ravel().astype(np.float64), float(head.intercept_[0]))
        theirs = objective(ref.coef_.ravel(), float(ref.intercept_[0]))
        assert np.isfinite(ours) and ours <= theirs * (1 + 1e-6) + 1e-9, (C, ours, theirs)


def test_logreg_multilabel_one_vs_rest():
    rng = np.random.default_rng(4)
    X, _ = gaussian_mixture(800, 12, 2, sep=0.0, seed=4)
    w = rng.normal(size=(12, 3))
    Y = ((X @ w + rng.normal(size=(800, 3))) > 0).astype(int)
    head = create_head("logreg", task="multilabel", Cs=list(CS[::2])).fit(X[:600], Y[:600], X[600:], Y[600:])
    P = head.predict_proba(X)
    assert P.shape == (800, 3) and head.coef_.shape == (3, 12)
    assert np.all((P > 0) & (P < 1)) and not np.allclose(P.sum(1), 1)
    for j in range(3):  # one-vs-rest: each label is the binary logistic regression at the chosen C
        ref = LogisticRegression(C=head.C_, max_iter=5000, tol=1e-10).fit(X, Y[:, j])
        np.testing.assert_allclose(P[:, j], ref.predict_proba(X)[:, 1], atol=1e-4)
    assert score("multilabel", Y[600:], P[600:], "auc") > 0.8
    assert head.predict(X).shape == (800, 3)


def knn_reference(Xtr, ytr, Xte, k, T, n_classes):
    a = Xtr / np.linalg.norm(Xtr, axis=1, keepdims=True)
    b = Xte / np.linalg.norm(Xte, axis=1, keepdims=True)
    out = np.zeros((len(Xte), n_classes))
    for i, q in enumerate(b):
        s = a @ q
        nn = np.argsort(-s, kind="stable")[:k]
        w = np.exp((s[nn] - s[nn].max()) / T)
        w /= w.sum()
        for j, c in zip(nn, ytr[nn]):
            out[i, c] += w[np.flatnonzero(nn == j)[0]]
    return out


def test_knn_matches_bruteforce_reference():
    X, y = gaussian_mixture(700, 32, 3, sep=3.0, seed=5)
    Xtr, ytr, Xte, yte = X[:500], y[:500], X[500:], y[500:]
    head = create_head("knn", task="multiclass", k=20, chunk_size=64).fit(Xtr, ytr)
    P = head.predict_proba(Xte)
    np.testing.assert_allclose(P, knn_reference(Xtr, ytr, Xte, 20, 0.07, 3), atol=1e-6)
    np.testing.assert_allclose(P.sum(1), 1, atol=1e-5)
    assert (P.argmax(1) == yte).mean() > 0.6 and score("multiclass", yte, P, "auc") > 0.8


def test_knn_all_protocol_ks_from_one_search_equal_separate_heads():
    X, y = gaussian_mixture(900, 24, 3, sep=2.5, seed=9)
    head = create_head("knn", task="multiclass", chunk_size=128).fit(X[:600], y[:600])
    by_k = head.predict_proba_ks(X[600:])
    assert sorted(by_k) == [10, 20, 100, 200] and head.k_ == 20
    for k, P in by_k.items():
        np.testing.assert_allclose(P, knn_reference(X[:600], y[:600], X[600:], k, 0.07, 3), atol=1e-6)
        np.testing.assert_allclose(P, create_head("knn", task="multiclass", k=k).fit(X[:600], y[:600])
                                   .predict_proba(X[600:]), atol=1e-6)
    np.testing.assert_array_equal(by_k[20], head.predict_proba(X[600:]))
    assert not np.allclose(by_k[10], by_k[200])  # a larger k smooths the votes: the ks really differ
    assert sorted(head.predict_proba_ks(X[600:], ks=[3, 700])) == [3, 20, 700]  # 700 > n_train: all 600 vote
    np.testing.assert_allclose(head.predict_proba_ks(X[600:], ks=[700])[700],
                               knn_reference(X[:600], y[:600], X[600:], 600, 0.07, 3), atol=1e-6)
    with pytest.raises(ConfigError, match="ks"):
        head.predict_proba_ks(X[600:], ks=[0, 5])
    with pytest.raises(ConfigError, match="chunk_size"):
        create_head("knn", task="multiclass", chunk_size=0).fit(X[:600], y[:600])


def test_knn_bf16_candidate_search_is_exact():
    from medprobe.heads.knn import _normalise, topk_cosine

    X, y = gaussian_mixture(1500, 48, 3, sep=2.0, seed=12)
    db, q = _normalise(X[:1200]), _normalise(X[1200:])
    ref_s, ref_i = (q @ db.T).topk(20, dim=1)
    for margin in (0, 4, 16):  # margin 0 forces many rows through the exact float32 fallback
        s, i = topk_cosine(q, db, 20, db.to(torch.bfloat16), margin=margin)
        np.testing.assert_array_equal(i.numpy(), ref_i.numpy())
        np.testing.assert_allclose(s.numpy(), ref_s.numpy(), atol=1e-6)
    P = create_head("knn", task="multiclass", k=20, search="bf16").fit(X[:1200], y[:1200]).predict_proba(X[1200:])
    np.testing.assert_allclose(P, knn_reference(X[:1200], y[:1200], X[1200:], 20, 0.07, 3), atol=1e-6)
    E = create_head("knn", task="multiclass", k=20, search="exact").fit(X[:1200], y[:1200]).predict_proba(X[1200:])
    np.testing.assert_allclose(P, E, atol=1e-6)
    with pytest.raises(ConfigError):
        create_head("knn", task="binary", search="fast").fit(X, (y > 0).astype(int))


def test_knn_select_k_and_multilabel():
    X, y = gaussian_mixture(900, 16, 2, sep=3.0, seed=6)
    head = create_head("knn", task="binary", select_k=True, ks=[5, 20, 100]).fit(X[:600], y[:600], X[600:750],
                                                                                   y[600:750])
    assert head.k_ in (5, 20, 100) and set(head.get_params()["selected"]["val_scores"]) == {"5", "20", "100"}
    assert score("binary", y[750:], head.predict_proba(X[750:]), "auc") > 0.75
    Y = np.stack([y, 1 - y, (X[:, 0] > 0).astype(int)], 1)
    ml = create_head("knn", task="multilabel", k=10).fit(X[:600], Y[:600])
    P = ml.predict_proba(X[600:])
    assert P.shape == (300, 3)
    np.testing.assert_allclose(P[:, 0] + P[:, 1], 1, atol=1e-5)
    np.testing.assert_allclose(P[:, 1], knn_reference(X[:600], Y[:600, 1], X[600:], 10, 0.07, 2)[:, 1], atol=1e-6)


def test_linear_learns_and_is_deterministic():
    X, y = gaussian_mixture(1200, 24, 3, sep=4.0, seed=7)
    kw = dict(task="multiclass", epochs=15, batch_size=128, seed=11)
    a = create_head("linear", **kw).fit(X[:900], y[:900], X[900:1050], y[900:1050])
    b = create_head("linear", **kw).fit(X[:900], y[:900], X[900:1050], y[900:1050])
    Pa = a.predict_proba(X[1050:])
    np.testing.assert_array_equal(Pa, b.predict_proba(X[1050:]))
    assert Pa.shape == (150, 3) and (Pa.argmax(1) == y[1050:]).mean() > 0.85
    assert 1 <= a.get_params()["selected"]["epoch"] <= 15
    c = create_head("linear", **{**kw, "seed": 12}).fit(X[:900], y[:900])
    assert not np.array_equal(Pa, c.predict_proba(X[1050:]))
    Y = np.stack([y == 0, y == 2], 1).astype(int)
    ml = create_head("linear", task="multilabel", epochs=10, batch_size=128, optimizer="sgd", lr=0.05)
    assert score("multilabel", Y[900:], ml.fit(X[:900], Y[:900]).predict_proba(X[900:]), "auc") > 0.9


def test_abmil_finds_the_key_instance():
    rng = np.random.default_rng(8)
    bags, y = [], []
    for i in range(160):
        b = rng.normal(size=(rng.integers(4, 12), 8))
        lab = i % 2
        if lab:  # one instance carries the signal
            b[rng.integers(len(b)), :] += 4.0 * np.eye(8)[0] + 3.0
        bags.append(b)
        y.append(lab)
    y = np.array(y)
    head = create_head("abmil", task="binary", epochs=20, hidden=32, attn_dim=16, seed=0)
    head.fit(bags[:120], y[:120])
    P = head.predict_proba(bags[120:])
    assert P.shape == (40, 2) and score("binary", y[120:], P, "auc") > 0.9
    att = head.attention(bags[120:])
    assert all(abs(a.sum() - 1) < 1e-5 for a in att)
    again = create_head("abmil", task="binary", epochs=20, hidden=32, attn_dim=16, seed=0).fit(bags[:120], y[:120])
    np.testing.assert_array_equal(P, again.predict_proba(bags[120:]))
    f = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(pool_slices(f, "mean"), f.mean(0))
    np.testing.assert_array_equal(pool_slices(f, "max"), f[2])


def test_registry_params_and_errors():
    assert {"logreg", "knn", "linear", "abmil"} <= set(head_names())

    @register_head("_dummy_test_head")
    class Dummy(Head):
        pass

    assert "_dummy_test_head" in head_names()
    assert isinstance(create_head("_dummy_test_head", task="binary"), Dummy)
    X, y = gaussian_mixture(200, 8, 2, sep=3.0, seed=9)
    for name in ("logreg", "knn", "linear"):
        h = create_head(name, task="binary", **({"epochs": 2} if name == "linear" else {}))
        json.dumps(h.get_params())
        p = h.fit(X, y).get_params()
        assert "selected" in p and json.loads(json.dumps(p)) == p
        with pytest.raises(ConfigError) as e:
            create_head(name, task="binary").fit(X, np.where(y == 1, 2, 0))
        assert "\n" not in str(e.value) and "0..1" in str(e.value)
    with pytest.raises(ConfigError):
        create_head("logreg", task="multiclass", n_classes=3).fit(X, y + 2)
    with pytest.raises(ConfigError):
        create_head("logreg", task="multilabel").fit(X, y)
    with pytest.raises(ConfigError):
        create_head("knn", task="binary").fit(X, y.astype(float) + 0.5)
    with pytest.raises(ConfigError, match="unknown head"):
        create_head("nope")
    with pytest.raises(ConfigError, match="unknown hyper-parameter"):
        create_head("knn", task="binary", kk=3)
    with pytest.raises(ConfigError, match="not fitted"):
        create_head("knn", task="binary").predict_proba(X)


def test_knn_device_is_resolved_recorded_and_checked():
    X, y = gaussian_mixture(300, 8, 2, sep=3.0, seed=4)
    head = create_head("knn", task="binary", k=5).fit(X[:200], y[:200])
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert head.device_ == want and head.get_params()["selected"]["device"] == want
    np.testing.assert_allclose(head.predict_proba(X[200:]),
                               create_head("knn", task="binary", k=5, device="cpu").fit(X[:200], y[:200])
                               .predict_proba(X[200:]), atol=1e-5)
    with pytest.raises(ConfigError, match="not a torch device"):
        create_head("knn", task="binary", device="gpu0").fit(X, y)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            create_head("knn", task="binary", device="cuda").fit(X, y)
