"""Retrieval (issue 27): the ``cosine`` head reuses the k-NN head's exact search, the leakage audit's duplicates
are removed from every query's candidates first, and mAP@k / top-k accuracy / majority vote equal a brute-force
reference (full similarity matrix, sort, loops) on real PneumoniaMNIST (random-weight ViT-S/16 features, block 1, so
no two cases tie) and on synthetic features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medprobe.errors import ConfigError
from medprobe.heads.base import find_head
from medprobe.metrics.retrieval import average_precision_at_k, majority_vote


def brute_force(X: np.ndarray, y: np.ndarray, queries: list[int], db: list[int], exclude: dict[int, set[int]],
                ks: list[int]) -> dict[str, float]:
    """The metrics by definition: every similarity, a full sort per query, loops over ranks."""
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    out: dict[str, list[float]] = {}
    for q in queries:
        cand = [j for j in db if j != q and j not in exclude.get(q, set())]
        sims = np.array([float(Xn[q] @ Xn[j]) for j in cand])
        ranked = [cand[i] for i in np.argsort(-sims, kind="stable")]
        rel = [1.0 if y[j] == y[q] else 0.0 for j in ranked]
        n_rel = sum(rel)
        for k in ks:
            hits, ap = 0.0, 0.0
            for i in range(min(k, len(ranked))):
                if rel[i]:
                    hits += 1
                    ap += hits / (i + 1)
            out.setdefault(f"acc@{k}", []).append(float(any(rel[:k])))
            out.setdefault(f"map@{k}", []).append(ap / min(k, n_rel) if n_rel else np.nan)
            labels = [y[j] for j in ranked[:k]]
            counts = {c: labels.count(c) for c in labels}
            best = max(counts.values())
            vote = next(c for c in labels if counts[c] == best)  # tie: the class ranked first
            out.setdefault(f"mv@{k}", []).append(float(vote == y[q]))
    return {k: float(np.nanmean(v)) for k, v in out.items()}


def test_ap_and_majority_vote_by_hand() -> None:
    rel = np.array([[1, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    # query 0: P@1 = 1, P@3 = 2/3 -> AP@4 = (1 + 2/3) / min(4, 3 relevant); query 1: P@4 = 1/4 over 1 relevant
    np.testing.assert_allclose(average_precision_at_k(rel, np.array([3, 1]), 4), [(1 + 2 / 3) / 3, 0.25])
    assert np.isnan(average_precision_at_k(rel, np.array([0, 1]), 2)[0])
    assert majority_vote(np.array([[2, 1, 1, 2, 0]]), 4).tolist() == [2]  # 2:2 tie, class 2 ranked first
    assert majority_vote(np.array([[2, 1, 1, 0]]), 4).tolist() == [1]


def test_cosine_head_excludes_and_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 16)).astype(np.float32)
    y = rng.integers(0, 3, 120)
    X[5] = X[100] * 2.0  # a duplicate of query 100 (same direction): must never be retrieved for it
    head = find_head("cosine", ("vector",), "multiclass")(task="multiclass", ks=[1, 5]).fit(X[:100], y[:100])
    s, idx = head.kneighbors(X[100:], 5, exclude=[{5}] + [set()] * 19)
    assert 5 not in idx[0] and s.shape == (20, 5)
    plain_s, plain_idx = head.kneighbors(X[100:], 5)
    assert plain_idx[0, 0] == 5 and plain_s[0, 0] == pytest.approx(1.0, abs=1e-6)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    ref = np.argsort(-(Xn[100:] @ Xn[:100].T), axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(plain_idx, ref)
    with pytest.raises(ConfigError, match="ks"):
        find_head("cosine", ("vector",))(ks=[0]).fit(X, y)


@pytest.mark.shared_data
def test_retrieval_family_on_pneumoniamnist_equals_brute_force(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "medmnist"
    if not (root / "pneumoniamnist.npz").is_file():
        pytest.skip(f"{root / 'pneumoniamnist.npz'} is absent")
    from medprobe.audit import audit
    from medprobe.features import FeatureStore
    from medprobe.pipeline.run import run_task
    from medprobe.pipeline.task import parse_task
    from medprobe.results import ResultsDB

    ks = [1, 5, 10]
    raw = {"name": "pneu-retrieval", "kind": "retrieval", "dataset": "medmnist:pneumoniamnist",
           "data": {"root": str(root), "limit": "200,40,100"}, "encoder": "dinov3-vits16",
           "features": {"layers": "1", "amp": "off"}, "preprocess": {"resolution": 32},
           "heads": ["cosine"], "head_params": {"cosine": {"ks": ks}}, "metrics": {"bootstrap": 100},
           "cache_dir": str(tmp_path / "cache"), "audit": {"near_threshold": 16, "near_correlation": 0.9}}
    row = run_task(parse_task(raw), db=ResultsDB(tmp_path / "db" / "r.db"), verbose=False)[0]
    rec = row["record"]
    assert rec["config"]["family"] == "retrieval" and rec["task_type"] == "binary"
    store = FeatureStore(tmp_path / "cache" / rec["notes"]["cache_key"])
    X = store.pooled("cls", store.layers[-1]).astype(np.float64)
    from medprobe.data import create_dataset

    ds = create_dataset("medmnist:pneumoniamnist", root=str(root), limit="200,40,100")
    y = np.asarray([int(v) for v in ds.labels()])
    splits = ds.splits()
    found = audit(ds, splits, near_threshold=16, near_correlation=0.9, cache_dir=tmp_path / "cache")
    excl: dict[int, set[int]] = {}
    for p in found.pairs:
        excl.setdefault(p.i, set()).add(p.j)
        excl.setdefault(p.j, set()).add(p.i)
    assert rec["notes"]["dedup"]["pairs"] == len(found.pairs) > 0  # the limit subset holds look-alikes
    test = list(splits["test"])
    across = brute_force(X, y, test, sorted(list(splits["train"]) + list(splits["val"])), excl, ks)
    within = brute_force(X, y, test, test, excl, ks)
    for k in ks:
        for m in ("acc", "map", "mv"):
            assert row["metrics"][f"{m}@{k}"][0] == pytest.approx(across[f"{m}@{k}"], abs=1e-9), (m, k)
            assert row["metrics"][f"within_{m}@{k}"][0] == pytest.approx(within[f"{m}@{k}"], abs=1e-9), (m, k)
        v, lo, hi = row["metrics"][f"map@{k}"]
        assert lo <= v <= hi
    removed = rec["notes"]["across"]["duplicates_removed"] + rec["notes"]["within"]["duplicates_removed"]
    assert removed > 0
    ids = np.asarray(ds.ids())
    nb = row["result"].predictions["across_neighbours"]
    for r, q in enumerate(test):  # no look-alike of a query is among its neighbours
        assert not {ids[j] for j in excl.get(q, set())} & set(nb[r].tolist())
    with pytest.raises(ConfigError, match="rank neighbours"):
        run_task(parse_task({**raw, "heads": ["logreg"], "head_params": {}}), db=ResultsDB(tmp_path / "x" / "r.db"),
                 verbose=False)
