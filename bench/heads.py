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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_of, table, threads  # noqa: E402

from medprobe.heads import create_head  # noqa: E402
from medprobe.heads.base import score  # noqa: E402
from medprobe.heads.logreg import DEFAULT_CS  # noqa: E402


def make_data(n: int, dim: int, n_eval: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    mix = (rng.normal(size=(dim, dim)) / np.sqrt(dim) + 0.5 * np.eye(dim)).astype(np.float32)
    mu = (rng.normal(size=(2, dim)) * 2.5 / np.sqrt(dim)).astype(np.float32)
    y = rng.integers(0, 2, n + 2 * n_eval)
    X = rng.normal(size=(len(y), dim)).astype(np.float32) @ mix + mu[y]
    a, b = n, n + n_eval
    return X[:a], y[:a], X[a:b], y[a:b], X[b:], y[b:]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--n-eval", type=int, default=5000, help="validation and test rows (each)")
    ap.add_argument("--quick", action="store_true", help="4000 x 256, 1000 eval rows")
    ap.add_argument("--max-iter", type=int, default=1000, help="sklearn max_iter")
    ap.add_argument("--threads", type=int, default=1, help="torch + BLAS threads for both sides (0: as is)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.dim, a.n_eval = 4000, 256, 1000
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    Xtr, ytr, Xva, yva, Xte, yte = make_data(a.n, a.dim, a.n_eval, a.seed)
    print(f"data: binary Gaussian mixture, train {a.n} x {a.dim}, val {a.n_eval}, test {a.n_eval}, "
          f"threads {a.threads or 'default'}")
    rows = []
    with threads(a.threads):
        # -- logistic regression: 45 Cs, selected by validation AUC, no refit on either side ---------
        Xtr64, Xva64, Xte64 = (x.astype(np.float64) for x in (Xtr, Xva, Xte))

        def sk_loop():
            best = (-1.0, None, None)
            for C in DEFAULT_CS:
                m = LogisticRegression(C=C, solver="lbfgs", max_iter=a.max_iter).fit(Xtr64, ytr)
                s = score("binary", yva, m.predict_proba(Xva64), "auc")
                if s > best[0]:
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
                     f"({'agree' if ok else 'DIFFER'}); +refit train+val {t_refit:.2f}s"])

        # -- k-NN: k=20, fit + predict_proba on the test set -----------------------------------------
        def sk_knn():
            return KNeighborsClassifier(n_neighbors=20, metric="cosine").fit(Xtr, ytr).predict_proba(Xte)

        def mp_knn():
            return create_head("knn", task="binary", k=20).fit(Xtr, ytr).predict_proba(Xte)

        t_skk, p_sk = best_of(sk_knn, repeat=1)
        t_mpk, p_mp = best_of(mp_knn, repeat=2)
        rows.append(["k-NN k=20 fit+proba", t_skk, t_mpk, t_mpk / t_skk, "<= 0.1",
                     f"test AUC uniform {score('binary', yte, p_sk, 'auc'):.4f} vs "
                     f"softmax(sim/0.07) {score('binary', yte, p_mp, 'auc'):.4f}"])
    print(table(rows, ["case", "sklearn s", "medprobe s", "ratio", "target", "agreement"]))


if __name__ == "__main__":
    main()
