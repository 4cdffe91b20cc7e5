"""Cox head and retrieval search against their reference implementations, side by side in one run.

* Cox: medprobe's ``cox`` head (ridge, Efron ties, Newton-Raphson on standardised features) vs lifelines'
  ``CoxPHFitter(penalizer)`` on the same synthetic pooled features (n patients x d, ~35 % censored, tied times);
  coefficients compared. Also Harrell's + Uno's c-index with 1000 bootstrap resamples (one weighted pass) vs
  lifelines' ``concordance_index`` recomputed on each resample (Harrell only).
* Retrieval: the ``cosine`` head's exact search (the k-NN head's float32 top-k) vs scikit-learn
  ``NearestNeighbors(metric="cosine", algorithm="brute")`` for the top-k neighbours of every query; neighbour
  lists compared.

    python bench/survival_retrieval.py                 # defaults below, ~1-2 min on 2 cores
    python bench/survival_retrieval.py --n 2000 --dim 256

Targets: Cox fit <= 1.0 x lifelines; c-index bootstrap <= 0.1 x lifelines loop; retrieval <= 1.0 x scikit-learn.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "src"))


def features(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled-feature-like vectors (power-law spectrum, offsets) and survival times from a sparse true model."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * (np.arange(1, d + 1) ** -0.5) * 3 + rng.normal(size=d)
    beta = np.zeros(d)
    beta[: min(8, d)] = rng.normal(size=min(8, d))
    z = (X - X.mean(0)) / X.std(0)
    t_ev = rng.exponential(1.0 / np.exp(z @ beta * 0.5))
    t_c = rng.exponential(2.0, n)
    t = np.ceil(np.minimum(t_ev, t_c) * 50) / 50  # tied times, as follow-up in days / weeks
    return X, t, (t_ev <= t_c).astype(float)


def main() -> int:
    from _common import best_of, table, threads

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="patients (Cox)")
    p.add_argument("--dim", type=int, default=128, help="feature width (Cox)")
    p.add_argument("--penalizer", type=float, default=0.1)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--database", type=int, default=20000)
    p.add_argument("--rdim", type=int, default=768, help="feature width (retrieval)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    import pandas as pd
    from lifelines import CoxPHFitter
    from lifelines.utils import concordance_index as ll_cindex
    from sklearn.neighbors import NearestNeighbors

    from medprobe.heads.cox import CoxPHHead
    from medprobe.heads.retrieval import CosineRetrievalHead
    from medprobe.metrics.bootstrap import resample_indices
    from medprobe.metrics.survival import survival_ci

    rows = []
    with threads(a.threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        X, t, e = features(a.n, a.dim, 0)
        y = np.stack([t, e], 1)
        df = pd.DataFrame(X, columns=[f"x{i}" for i in range(a.dim)]).assign(T=t, E=e)

        def ours() -> CoxPHHead:
            return CoxPHHead(penalizer=a.penalizer, ties="efron", tol=1e-7).fit(X, y)

        def ref() -> CoxPHFitter:
            return CoxPHFitter(penalizer=a.penalizer).fit(df, "T", "E")

        t_ours, head = best_of(ours, repeat=3)
        t_ref, cph = best_of(ref, repeat=3)
        diff = float(np.abs(head.coef_ - cph.params_.values).max() / np.abs(cph.params_.values).max())
        rows.append([f"Cox fit, {a.n} x {a.dim}, Efron, penalizer {a.penalizer}", t_ref, t_ours, t_ours / t_ref,
                     1.0, f"coef max rel. diff {diff:.1e}; {head.n_iter_} Newton steps"])

        risk = head.predict_risk(X)
        n_te = a.n // 2
        tr, te = slice(0, a.n - n_te), slice(a.n - n_te, a.n)
        t_ci, ci = best_of(lambda: survival_ci(y[tr], y[te], risk[te], n_resamples=1000, seed=0), repeat=1)

        def loop() -> list[float]:
            tt, ee, rr = t[te], e[te], risk[te]
            return [ll_cindex(tt[i], -rr[i], ee[i]) for blk in resample_indices(n_te, 1000, 0) for i in blk]

        t_loop, vals = best_of(loop, repeat=1)
        rows.append([f"c-index + 1000 bootstrap resamples, {n_te} test cases", t_loop, t_ci, t_ci / t_loop, 0.1,
                     f"Harrell {ci['c_index'][0]:.4f} (lifelines {ll_cindex(t[te], -risk[te], e[te]):.4f}); "
                     f"CI [{ci['c_index'][1]:.3f}, {ci['c_index'][2]:.3f}] vs lifelines loop "
                     f"[{np.quantile(vals, .025):.3f}, {np.quantile(vals, .975):.3f}]; Uno's too"])

        rng = np.random.default_rng(1)
        centres = rng.normal(size=(50, a.rdim))
        db = (centres[rng.integers(0, 50, a.database)] + rng.normal(size=(a.database, a.rdim)) * 2).astype(np.float32)
        q = (centres[rng.integers(0, 50, a.queries)] + rng.normal(size=(a.queries, a.rdim)) * 2).astype(np.float32)

        def ours_r() -> np.ndarray:
            return CosineRetrievalHead(device="cpu").fit(db).kneighbors(q, a.k)[1]

        def ref_r() -> np.ndarray:
            return NearestNeighbors(n_neighbors=a.k, metric="cosine", algorithm="brute").fit(db).kneighbors(
                q, return_distance=False)

        t_o, idx_o = best_of(ours_r, repeat=2)
        t_s, idx_s = best_of(ref_r, repeat=2)
        same = float(np.mean([set(x) == set(y) for x, y in zip(idx_o, idx_s)]))
        rows.append([f"retrieval top-{a.k}, {a.queries} queries x {a.database} x {a.rdim}", t_s, t_o, t_o / t_s, 1.0,
                     f"same neighbour sets for {same:.2%} of queries"])
    print(table([[r[0], f"{r[1]:.3f} s", f"{r[2]:.3f} s", r[3], f"<= {r[4]}", r[5]] for r in rows],
                ["case", "reference", "medprobe", "ratio", "target", "agreement"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
