"""Benchmark medprobe's logreg C-sweep and k-NN against plain scikit-learn, side by side.

    python bench/heads.py            # 20k x 768 train (binary Gaussian mixture), 5k val, 5k test
    python bench/heads.py --quick    # 4k x 256, a smoke run

Targets: logreg sweep <= 0.2 x the per-C sklearn loop (same C and test AUC within 0.002);
k-NN fit+predict_proba <= 0.1 x sklearn KNeighborsClassifier(20, metric='cosine').
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_of, table, threads  # noqa: E402

from medprobe.heads import create_head  # noqa: E402
from medprobe.heads.base import score  # noqa: E402
from medprobe.heads.logreg import DEFAULT_CS  # noqa: E402


def make_data(n: int, dim: int, n_eval: int, seed: int) -> tuple[np.ndarray, ...]:
    """Binary task on synthetic 'frozen CLS features' (float32, not standardised), test AUC ~0.9.

    Power-law spectrum (sd_j ~ j^-0.5, the first four directions 2-6x stronger), three shared sub-clusters,
    a class shift of Mahalanobis length 1.9 spread over 24 mid/weak directions (so the classes overlap and
    regularisation matters), a random rotation, a per-channel offset and three large-offset channels.
    """
    rng = np.random.default_rng(seed)
    total = n + 2 * n_eval
    R, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    sd = 4.0 * np.arange(1, dim + 1) ** -0.5
    sd[:4] *= [6, 4, 3, 2]
    y = rng.integers(0, 2, total)
    comp = rng.integers(0, 3, total)
    centres = rng.normal(size=(3, dim)) * sd * 0.35
    delta = np.zeros(dim)
    sel = rng.choice(np.arange(8, max(dim // 2, 40)), min(24, dim - 8), replace=False)
    delta[sel] = rng.normal(size=len(sel)) * sd[sel]
    delta *= 1.9 / np.sqrt(((delta / sd) ** 2).sum())
    lat = rng.normal(size=(total, dim)) * sd + centres[comp] + np.outer(y - 0.5, delta)
    X = lat @ R.T + (rng.normal(size=dim) * 0.5 + 0.3)
    X[:, :3] += np.array([6.0, -4.0, 3.0])
    X = X.astype(np.float32)
    a, b = n, n + n_eval
    return X[:a], y[:a], X[a:b], y[a:b], X[b:], y[b:]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--n-eval", type=int, default=5000, help="validation and test rows (each)")
    ap.add_argument("--quick", action="store_true", help="4000 x 256, 1000 eval rows")
    ap.add_argument("--max-iter", type=int, default=1000, help="sklearn max_iter")
    ap.add_argument("--threads", type=int, default=0, help="torch + BLAS threads for both sides (0: as is)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.dim, a.n_eval = 4000, 256, 1000
    import torch
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    from medprobe.heads.knn import _bf16_fast, _normalise, topk_cosine

    Xtr, ytr, Xva, yva, Xte, yte = make_data(a.n, a.dim, a.n_eval, a.seed)
    rows = []
    with threads(a.threads):
        from threadpoolctl import threadpool_info

        blas = sorted({f"{i['internal_api']}={i['num_threads']}" for i in threadpool_info()})
        print(f"data: binary Gaussian mixture (power-law spectrum, overlapping classes, not standardised), "
              f"train {a.n} x {a.dim}, val {a.n_eval}, test {a.n_eval}; threads: torch "
              f"{torch.get_num_threads()}, {', '.join(blas)}; bf16 GEMM {'yes' if _bf16_fast() else 'no'}")
        # -- logistic regression: 45 Cs, selected by validation AUC, no refit on either side ---------
        Xtr64, Xva64, Xte64 = (x.astype(np.float64) for x in (Xtr, Xva, Xte))
        n_warn = [0]

        def sk_loop():
            best = (-1.0, None, None)
            for C in DEFAULT_CS:
                with warnings.catch_warnings(record=True) as w:
                    warnings.simplefilter("always", ConvergenceWarning)
                    m = LogisticRegression(C=C, solver="lbfgs", max_iter=a.max_iter).fit(Xtr64, ytr)
                n_warn[0] += sum(issubclass(x.category, ConvergenceWarning) for x in w)
                s = score("binary", yva, m.predict_proba(Xva64), "auc")
                if s > best[0]:  # ties -> the smaller C, as medprobe
                    best = (s, C, m)
            return best

        t_sk, (s_sk, C_sk, m_sk) = best_of(sk_loop, repeat=1)
        t_mp, head = best_of(lambda: create_head("logreg", task="binary", refit_on="train")
                             .fit(Xtr, ytr, Xva, yva), repeat=2)
        auc_sk = score("binary", yte, m_sk.predict_proba(Xte64), "auc")
        auc_mp = score("binary", yte, head.predict_proba(Xte), "auc")
        t0 = time.perf_counter()
        create_head("logreg", task="binary").fit(Xtr, ytr, Xva, yva)
        t_refit = time.perf_counter() - t0
        ok = C_sk == head.C_ and abs(auc_sk - auc_mp) <= 0.002
        rows.append(["logreg 45-C sweep", t_sk, t_mp, t_mp / t_sk, "<= 0.2",
                     f"C {C_sk:.3g} vs {head.C_:.3g}, test AUC {auc_sk:.4f} vs {auc_mp:.4f} "
                     f"({'agree' if ok else 'DIFFER'}); sklearn fits not converged: {n_warn[0]}/45; "
                     f"+refit train+val {t_refit:.2f}s"])

        # -- k-NN: k=20, fit + predict_proba on the test set -----------------------------------------
        def sk_knn_euclid():  # cosine ranking == euclidean ranking on unit vectors; sklearn's fast path
            def unit(x):
                return x / np.linalg.norm(x, axis=1, keepdims=True)

            return (KNeighborsClassifier(n_neighbors=20, algorithm="brute", metric="euclidean")
                    .fit(unit(Xtr), ytr).predict_proba(unit(Xte)))

        def sk_knn_cosine():
            return (KNeighborsClassifier(n_neighbors=20, algorithm="brute", metric="cosine")
                    .fit(Xtr, ytr).predict_proba(Xte))

        def mp_knn():
            return create_head("knn", task="binary", k=20).fit(Xtr, ytr).predict_proba(Xte)

        db, q = _normalise(Xtr), _normalise(Xte)

        def gemm_floor():  # the float32 similarity GEMM + top-k alone: what any exact fp32 search pays
            return [(q[i:i + 1024] @ db.T).topk(20, dim=1) for i in range(0, len(q), 1024)]

        t_eu, p_eu = best_of(sk_knn_euclid, repeat=1)
        t_cos, _ = best_of(sk_knn_cosine, repeat=1)
        t_mpk, p_mp = best_of(mp_knn, repeat=2)
        t_floor, _ = best_of(gemm_floor, repeat=2)
        # neighbours of the bf16-candidate search vs exact float32 search
        dbb = db.to(torch.bfloat16)
        same = 0
        for i in range(0, len(q), 1024):
            _, i_fast = topk_cosine(q[i:i + 1024], db, 20, dbb)
            _, i_ref = (q[i:i + 1024] @ db.T).topk(20, dim=1)
            same += int((i_fast.sort(1).values == i_ref.sort(1).values).all(1).sum())
        t_sk_best = min(t_eu, t_cos)
        rows.append(["k-NN k=20 fit+proba", t_sk_best, t_mpk, t_mpk / t_sk_best, "<= 0.1",
                     f"baseline = faster of sklearn brute euclidean-on-unit {t_eu:.2f}s / cosine {t_cos:.2f}s; "
                     f"neighbours == exact fp32 on {same}/{len(q)} rows; test AUC uniform "
                     f"{score('binary', yte, p_eu, 'auc'):.4f} vs softmax(sim/0.07) "
                     f"{score('binary', yte, p_mp, 'auc'):.4f}"])
    print(table(rows, ["case", "sklearn s", "medprobe s", "ratio", "target", "agreement"]))
    print(f"k-NN floor: the fp32 similarity GEMM + topk alone takes {t_floor:.2f}s = {t_floor / t_sk_best:.2f} x "
          f"sklearn (sklearn runs the same GEMM); medprobe's bf16 candidate GEMM (about 2x fp32 on AVX512-BF16) "
          f"with exact fp32 re-scoring is the remaining lever, so <= 0.1 is out of reach on this CPU "
          f"unless sklearn is >= 10x slower than one GEMM.")


if __name__ == "__main__":
    main()
