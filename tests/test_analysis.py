"""Tests for medprobe.analysis: statistics, scaling verdicts, Pareto fronts and figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from medprobe.analysis import (
    best_per_budget,
    friedman_test,
    holm,
    kendall,
    mean_ranks,
    nemenyi_cd,
    nemenyi_q,
    paired_bootstrap,
    pareto_front,
    spearman,
    trend_verdict,
    wilcoxon_signed_rank,
)
from medprobe.errors import ConfigError


def _accuracy(y: np.ndarray, s: np.ndarray) -> float:
    return float(np.mean((s > 0.5) == y))


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        raise ValueError("one class only")
    return float(sps.mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


# ------------------------------------------------------------------ scipy equivalence
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_wilcoxon_spearman_kendall_match_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for n in (5, 9, 30):
        a = rng.normal(size=n)
        b = a + rng.normal(0.3, 1.0, size=n)
        if seed % 2:  # ties and zero differences
            a, b = np.round(a, 1), np.round(b, 1)
            b[0] = a[0]
        w = wilcoxon_signed_rank(a, b)
        ref = sps.wilcoxon(a, b)
        assert w["statistic"] == pytest.approx(float(ref.statistic), abs=0)
        assert w["p_value"] == pytest.approx(float(ref.pvalue), rel=1e-12)
        r, p = spearman(a, b)
        ref_s = sps.spearmanr(a, b)
        assert (r, p) == (float(ref_s.statistic), float(ref_s.pvalue))
        t, p = kendall(a, b)
        ref_k = sps.kendalltau(a, b)
        assert (t, p) == (float(ref_k.statistic), float(ref_k.pvalue))


def test_wilcoxon_all_zero_and_bad_shapes() -> None:
    assert wilcoxon_signed_rank([0.7, 0.8, 0.9], [0.7, 0.8, 0.9]) == {"statistic": 0.0, "p_value": 1.0}
    with pytest.raises(ConfigError):
        wilcoxon_signed_rank([1, 2, 3], [1, 2])


# ------------------------------------------------------------------ bootstrap
def _two_methods(rng: np.random.Generator, n: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, n)
    good = np.clip(y + rng.normal(0, 0.35, n), 0, 1)  # ~92 % accuracy
    bad = np.clip(y + rng.normal(0, 0.9, n), 0, 1)  # ~70 % accuracy
    return y, good, bad


def test_paired_bootstrap_detects_difference_and_is_reproducible() -> None:
    y, good, bad = _two_methods(np.random.default_rng(0))
    r1 = paired_bootstrap(y, good, bad, _accuracy, n_resamples=500, seed=7)
    r2 = paired_bootstrap(y, good, bad, _accuracy, n_resamples=500, seed=7)
    assert r1 == r2
    assert r1["delta"] == pytest.approx(_accuracy(y, good) - _accuracy(y, bad))
    assert r1["delta"] > 0.1 and 0 < r1["low"] < r1["delta"] < r1["high"]
    assert r1["p_value"] < 0.01 and r1["n_valid"] == 500
    r3 = paired_bootstrap(y, good, bad, _accuracy, n_resamples=500, seed=8)
    assert r3["low"] != r1["low"] or r3["high"] != r1["high"]
    # reversed order: same magnitude, mirrored interval
    rev = paired_bootstrap(y, bad, good, _accuracy, n_resamples=500, seed=7)
    assert rev["delta"] == pytest.approx(-r1["delta"]) and rev["high"] == pytest.approx(-r1["low"])
    assert rev["p_value"] == r1["p_value"]


def test_paired_bootstrap_identical_and_noise_methods_not_significant() -> None:
    rng = np.random.default_rng(1)
    y, good, _ = _two_methods(rng)
    same = paired_bootstrap(y, good, good.copy(), _accuracy, n_resamples=200)
    assert same["delta"] == 0 and same["p_value"] == 1.0 and same["low"] == same["high"] == 0
    # exchangeable methods of equal quality (independent noise): false-positive rate near alpha
    pvals = []
    for rep in range(40):
        r = np.random.default_rng(100 + rep)
        y = r.integers(0, 2, 200)
        a, b = y + r.normal(0, 0.5, 200), y + r.normal(0, 0.5, 200)
        pvals.append(paired_bootstrap(y, a, b, _accuracy, n_resamples=200, seed=rep)["p_value"])
    assert np.mean(np.array(pvals) < 0.05) <= 0.15 and np.median(pvals) > 0.2


def test_paired_bootstrap_drops_undefined_resamples() -> None:
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0])  # most resamples of AUC miss the single positive
    s = np.linspace(1, 0, 8)
    r = paired_bootstrap(y, s, s[::-1], _auc, n_resamples=200, seed=0)
    assert 0 < r["n_valid"] < 200 and r["delta"] == 1.0
    with pytest.raises(ConfigError):
        paired_bootstrap(y, s, s[:3], _auc)


# ------------------------------------------------------------------ Holm
def test_holm_against_hand_values() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = holm([0.02, math.nan, 0.01])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert holm([]) == []


def test_holm_matches_statsmodels() -> None:
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(0)
    for _ in range(5):
        p = rng.uniform(0, 0.2, 12) ** 2
        assert holm(p) == pytest.approx(multitest.multipletests(p, method="holm")[1].tolist(), rel=1e-12)


# ------------------------------------------------------------------ ranks, Friedman, Nemenyi
def test_mean_ranks_with_ties_and_direction() -> None:
    scores = {"t1": {"A": 0.9, "B": 0.8, "C": 0.8}, "t2": {"A": 0.7, "B": 0.9, "C": 0.6}}
    # t1: A=1, B=C=2.5 ; t2: B=1, A=2, C=3
    assert mean_ranks(scores) == pytest.approx({"A": 1.5, "B": 1.75, "C": 2.75})
    assert mean_ranks(scores, higher_is_better=False) == pytest.approx({"A": 2.5, "B": 2.25, "C": 1.25})
    with pytest.raises(ConfigError):
        mean_ranks({"t1": {"A": 1.0, "B": 2.0}, "t2": {"A": 1.0}})


def test_friedman_matches_scipy_and_iman_davenport() -> None:
    rng = np.random.default_rng(2)
    mat = rng.normal(size=(10, 4)) + np.array([0.0, 1.0, 2.0, 3.0])
    scores = {f"t{i}": {m: mat[i, j] for j, m in enumerate("ABCD")} for i in range(10)}
    res = friedman_test(scores)
    ref = sps.friedmanchisquare(*mat.T)
    assert res["statistic"] == pytest.approx(ref.statistic) and res["p_value"] == pytest.approx(ref.pvalue)
    n, k, chi2 = 10, 4, ref.statistic
    f = (n - 1) * chi2 / (n * (k - 1) - chi2)
    assert res["f_statistic"] == pytest.approx(f)
    assert res["f_p_value"] == pytest.approx(sps.f.sf(f, k - 1, (k - 1) * (n - 1)))
    assert res["p_value"] < 0.01
    tied = {f"t{i}": {"A": 1.0, "B": 1.0, "C": 1.0} for i in range(3)}
    assert friedman_test(tied)["p_value"] == 1.0
    with pytest.raises(ConfigError):
        friedman_test({"t": {"A": 1.0, "B": 2.0}})


@pytest.mark.parametrize("k,q", [(2, 1.960), (3, 2.343), (4, 2.569), (5, 2.728), (6, 2.850), (10, 3.164)])
def test_nemenyi_q_matches_demsar_table(k: int, q: float) -> None:
    assert nemenyi_q(k) == pytest.approx(q, abs=1e-3)


def test_nemenyi_cd_value() -> None:
    k, n = 4, 14
    assert nemenyi_cd(k, n) == pytest.approx(2.569 * math.sqrt(k * (k + 1) / (6 * n)), rel=1e-3)
    assert nemenyi_cd(4, 14, alpha=0.10) < nemenyi_cd(4, 14)  # Demšar: q_0.10 = 2.291 for k=4
    assert nemenyi_q(4, alpha=0.10) == pytest.approx(2.291, abs=1e-3)


# ------------------------------------------------------------------ trend verdicts
def test_trend_monotone_up_and_down() -> None:
    v = trend_verdict([21.6, 85.7, 300.0, 840.0, 6716.0], [0.70, 0.72, 0.75, 0.78, 0.80])
    assert v["verdict"] == "improves" and v["method"] == "kendall" and v["p_value"] < 0.05
    assert v["statistic"] == pytest.approx(1.0) and v["best_x"] == 6716.0
    d = trend_verdict(list(range(10)), [0.9 - 0.01 * i for i in range(10)])
    assert d["verdict"] == "worsens" and d["method"] == "spearman" and d["statistic"] == pytest.approx(-1)
    # lower-is-better metric going down = improving
    voi = trend_verdict([21.6, 85.7, 300.0, 840.0, 6716.0], [3.9, 3.5, 2.8, 2.0, 1.8], higher_is_better=False)
    assert voi["verdict"] == "improves" and voi["best_x"] == 6716.0


def test_trend_flat() -> None:
    assert trend_verdict([224, 256, 384, 512, 768], [0.800, 0.801, 0.799, 0.802, 0.800])["verdict"] == "flat"
    # non-significant wiggle larger than the tolerance, best at an edge
    assert trend_verdict([1, 2, 3, 4, 5, 6], [0.80, 0.85, 0.79, 0.84, 0.78, 0.86])["verdict"] == "flat"
    one = trend_verdict([224], [0.8])
    assert one["verdict"] == "flat" and math.isnan(one["statistic"]) and one["best_x"] == 224
    assert trend_verdict([], [])["verdict"] == "flat"


def test_trend_interior_peak_like_nih14() -> None:
    res = [224, 256, 384, 512, 768, 1024]
    auc = [0.770, 0.779, 0.786, 0.791, 0.784, 0.776]
    v = trend_verdict(res, auc)
    assert v["verdict"] == "peaks at 512" and v["best_x"] == 512
    # overlapping CIs around the peak: not a peak, and not a significant trend -> flat
    wide = trend_verdict(res, auc, [a - 0.02 for a in auc], [a + 0.02 for a in auc])
    assert wide["verdict"] == "flat"
    narrow = trend_verdict(res, auc, [a - 0.002 for a in auc], [a + 0.002 for a in auc])
    assert narrow["verdict"] == "peaks at 512"
    # fall after the best point below the tolerance: no peak; a saturating rise
    sat_x, sat_y = [1, 2, 3, 4, 5], [0.70, 0.75, 0.80, 0.83, 0.828]
    assert trend_verdict(sat_x, sat_y)["verdict"] == "flat"  # one inversion: Kendall p = 0.083
    sat = trend_verdict(sat_x, sat_y, [v - 0.003 for v in sat_y], [v + 0.003 for v in sat_y])
    assert sat["verdict"] == "improves" and sat["method"] == "kendall+ci" and sat["best_x"] == 4
    assert trend_verdict(sat_x + [6, 7, 8], sat_y + [0.84, 0.85, 0.86])["verdict"] == "improves"


def test_trend_three_points_uses_ci_rule_and_seed_repeats() -> None:
    x, y = [21.6, 85.7, 300.0], [0.7788, 0.7833, 0.7865]
    assert trend_verdict(x, y, flat_tol=0.001)["verdict"] == "flat"  # 3 points: Kendall p = 0.33
    ci = trend_verdict(x, y, [0.776, 0.781, 0.7845], [0.7805, 0.7855, 0.7885], flat_tol=0.001)
    assert ci["verdict"] == "improves" and ci["method"] == "kendall+ci"
    # repeated seeds per x are averaged for the curve and all enter the correlation
    xs = [256] * 3 + [512] * 3 + [1024] * 3
    ys = [0.78, 0.781, 0.779, 0.80, 0.801, 0.799, 0.785, 0.786, 0.784]
    assert trend_verdict(xs, ys)["verdict"] == "peaks at 512"


# ------------------------------------------------------------------ Pareto
def _points() -> list[dict]:
    return [
        {"encoder": "S", "gflops": 4.6, "score": 0.778},
        {"encoder": "B", "gflops": 17.6, "score": 0.783},
        {"encoder": "B-dup", "gflops": 17.6, "score": 0.783},
        {"encoder": "L", "gflops": 61.6, "score": 0.786},
        {"encoder": "S-512", "gflops": 20.0, "score": 0.781},  # dominated by B
        {"encoder": "H", "gflops": 200.0, "score": 0.786},  # dominated by L (same score, dearer)
        {"encoder": "nan", "gflops": float("nan"), "score": 0.9},
        {"encoder": "tiny", "gflops": 1.0, "score": 0.70},
    ]


def test_pareto_front() -> None:
    front = pareto_front(_points())
    assert [p["encoder"] for p in front] == ["tiny", "S", "B", "B-dup", "L"]
    assert all(a["gflops"] <= b["gflops"] for a, b in zip(front, front[1:]))
    losses = [{"gflops": 1, "score": 3.0}, {"gflops": 2, "score": 2.0}, {"gflops": 3, "score": 2.5}]
    loss = pareto_front(losses, higher_is_better=False)
    assert [p["gflops"] for p in loss] == [1, 2]
    assert pareto_front([]) == []
    with pytest.raises(ConfigError):
        pareto_front([{"score": 1.0}])


def test_best_per_budget() -> None:
    best = best_per_budget(_points(), [0.5, 5, 18, 100, 1000])
    assert best[0.5] is None
    assert best[5]["encoder"] == "S" and best[18]["encoder"] in ("B", "B-dup")
    assert best[100]["encoder"] == "L" and best[1000]["encoder"] == "L"


# ------------------------------------------------------------------ figures
def _is_png(b: bytes) -> bool:
    return isinstance(b, bytes) and b.startswith(b"\x89PNG\r\n\x1a\n") and len(b) > 2000


def _rows() -> list[dict]:
    rows = []
    for t, base in (("nih14", 0.77), ("rsna", 0.86)):
        for enc, params, gfl in (("dinov3-vits16", 21.6, 4.6), ("dinov3-vitb16", 85.7, 17.6),
                                 ("dinov3-vitl16", 300.0, 61.6)):
            for res, bump in ((256, 0.0), (512, 0.01), (768, 0.004)):
                for layer in range(0, 12, 3):
                    for budget in (10, 100, 1000):
                        s = base + bump + 0.002 * layer + 0.01 * math.log10(budget) + 0.001 * params / 100
                        rows.append({"task": t, "encoder": enc, "params_m": params, "resolution": res,
                                     "layer": layer, "budget": budget, "score": s, "low": s - 0.01,
                                     "high": s + 0.01, "gflops": gfl * (res / 224) ** 2})
    return rows


def test_plots_return_png() -> None:
    from medprobe.analysis import plots

    rows = _rows()
    final = [r for r in rows if r["layer"] == 9 and r["budget"] == 1000]
    assert _is_png(plots.scaling_plot([r for r in final if r["resolution"] == 512], x="params_m",
                                      group="task"))
    assert _is_png(plots.scaling_plot(final, x="resolution", group=("task", "encoder"), logx=False))
    assert _is_png(plots.layer_curve([r for r in rows if r["resolution"] == 512 and r["budget"] == 1000]))
    budgets = [r for r in rows if r["resolution"] == 512 and r["layer"] == 9]
    assert _is_png(plots.label_efficiency_plot(budgets))
    pts = [r for r in final if r["task"] == "nih14"]
    assert _is_png(plots.pareto_plot(pts, pareto_front(pts)))
    ranks = {"dinov3-vits16": 2.6, "dinov3-vitb16": 1.9, "dinov3-vitl16": 1.7, "biomedclip": 3.1,
             "resnet50": 4.2, "rad-dino": 2.9, "ct-clip": 5.6}
    assert _is_png(plots.critical_difference_plot(ranks, nemenyi_cd(7, 14)))


def test_plots_degenerate_inputs() -> None:
    from medprobe.analysis import plots

    nan = float("nan")
    one = [{"task": "nih14", "encoder": "S", "params_m": 21.6, "resolution": 224, "layer": 11, "budget": 100,
            "score": 0.8, "low": nan, "high": nan, "gflops": 4.6}]
    assert _is_png(plots.scaling_plot(one))
    assert _is_png(plots.layer_curve(one))
    assert _is_png(plots.label_efficiency_plot([{**one[0], "low": None}]))
    assert _is_png(plots.pareto_plot(one, one))
    assert plots.scaling_plot([]).startswith(b"\x89PNG")
    assert plots.pareto_plot([], []).startswith(b"\x89PNG")
    assert _is_png(plots.critical_difference_plot({"only": 1.0}, nan))
    assert plots.critical_difference_plot({}, 1.0).startswith(b"\x89PNG")
    assert _is_png(plots.critical_difference_plot({"A": 1.0, "B": 2.0}, 0.5))
