"""Building blocks of the image-regression task family: ridge / linear heads, metrics, datasets, phantoms."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from medprobe.data import create_dataset
from medprobe.errors import ConfigError, DataError
from medprobe.heads import RidgeHead, create_head
from medprobe.heads.ridge import DEFAULT_ALPHAS
from medprobe.metrics import regression_ci, regression_metrics
from medprobe.metrics.bootstrap import bootstrap_statistic


def _data(n: int, d: int, t: int | None = None, seed: int = 0, noise: float = 1.0) -> tuple[np.ndarray, ...]:
    """Features with uneven scales and offsets; targets linear in them plus noise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, d) + rng.normal(size=d) * 4
    w = rng.normal(size=(d, t or 1))
    y = X @ w + 10.0 + noise * rng.normal(size=(n, t or 1))
    return X, (y[:, 0] if t is None else y)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a) - b).max() / max(np.abs(b).max(), 1e-300))


# ------------------------------------------------------------------------------------------ ridge head
@pytest.mark.parametrize("n,d", [(400, 30), (40, 120)])
def test_ridge_matches_sklearn_per_alpha(n: int, d: int) -> None:
    X, y = _data(n + 100, d, seed=1)
    Xtr, ytr, Xva, yva = X[:n], y[:n], X[n:], y[n:]
    for alpha in (1e-3, 0.3, 10.0, 1e4, 1e6):
        head = RidgeHead(alphas=[alpha]).fit(Xtr, ytr, Xva, yva)
        sk = Ridge(alpha=alpha, fit_intercept=True).fit(Xtr, ytr)
        assert head.alpha_ == alpha
        assert _rel(head.coef_[0], sk.coef_) < 1e-8
        assert abs(head.intercept_[0] - sk.intercept_) <= 1e-8 * max(1.0, abs(sk.intercept_))
        assert _rel(head.predict(Xva), sk.predict(Xva)) < 1e-8


def test_ridge_path_selection_matches_sklearn_loop() -> None:
    X, y = _data(900, 60, seed=2, noise=8.0)
    Xtr, ytr, Xva, yva = X[:600], y[:600], X[600:], y[600:]
    head = create_head("ridge", task="regression").fit(Xtr, ytr, Xva, yva)
    best = (-np.inf, None)
    for alpha in DEFAULT_ALPHAS:
        s = r2_score(yva, Ridge(alpha=alpha).fit(Xtr, ytr).predict(Xva))
        if s >= best[0]:  # ties -> the larger alpha, as RidgeHead
            best = (s, alpha)
    assert head.alpha_ == pytest.approx(best[1], rel=1e-12)
    sel = head.selected_params()
    assert set(sel) == {"alpha", "val_r2"}
    assert abs(sel["val_r2"] - best[0]) <= 0.002
    # the alpha grid and the selection are recorded as JSON-able parameters
    params = head.get_params()
    assert params["head"] == "ridge" and params["selected"]["alpha"] == head.alpha_
    # the chosen model is the path's solution on the training rows
    sk = Ridge(alpha=head.alpha_).fit(Xtr, ytr)
    assert _rel(head.predict(Xva), sk.predict(Xva)) < 1e-8


def test_ridge_internal_holdout_refits_on_all_rows() -> None:
    X, y = _data(500, 20, seed=3, noise=3.0)
    head = RidgeHead(seed=5).fit(X, y)
    assert head.alpha_ in DEFAULT_ALPHAS
    sk = Ridge(alpha=head.alpha_).fit(X, y)
    assert _rel(head.coef_[0], sk.coef_) < 1e-8
    again = RidgeHead(seed=5).fit(X, y)
    assert again.alpha_ == head.alpha_ and np.array_equal(again.coef_, head.coef_)
    both = RidgeHead(refit_on="train+val", alphas=[2.0]).fit(X[:400], y[:400], X[400:], y[400:])
    assert _rel(both.coef_[0], Ridge(alpha=2.0).fit(X, y).coef_) < 1e-8


def test_ridge_multi_output() -> None:
    X, Y = _data(300, 25, t=3, seed=4)
    head = RidgeHead(alphas=[0.5, 5.0, 50.0]).fit(X[:200], Y[:200], X[200:], Y[200:])
    sk = Ridge(alpha=head.alpha_).fit(X[:200], Y[:200])
    assert head.coef_.shape == (3, 25) and head.predict(X[200:]).shape == (100, 3)
    assert _rel(head.coef_, sk.coef_) < 1e-8 and _rel(head.predict(X[200:]), sk.predict(X[200:])) < 1e-8
    scores = [r2_score(Y[200:], Ridge(alpha=a).fit(X[:200], Y[:200]).predict(X[200:])) for a in (0.5, 5.0, 50.0)]
    assert head.selected_params()["val_r2"] == pytest.approx(max(scores), abs=1e-9)
    col = RidgeHead(alphas=[1.0]).fit(X, Y[:, :1])  # (N, 1) targets keep their layout
    assert col.predict(X[:5]).shape == (5, 1)


def test_ridge_bad_targets_and_options() -> None:
    X, y = _data(50, 5)
    bad_targets = [np.where(np.arange(50) == 3, np.nan, y), np.where(np.arange(50) == 7, np.inf, y), y[:40],
                   y.reshape(50, 1, 1), np.array(["a"] * 50), np.array([object()] * 50), np.empty((50, 0))]
    for bad in bad_targets:
        with pytest.raises(ConfigError):
            RidgeHead().fit(X, bad)
    with pytest.raises(ConfigError, match="NaN or inf"):
        RidgeHead().fit(X, np.where(np.arange(50) == 3, np.nan, y))
    with pytest.raises(ConfigError, match="y_val"):
        RidgeHead().fit(X, y, X[:10], np.full(10, np.nan))
    for hp in ({"alphas": []}, {"alphas": [-1.0]}, {"selection_metric": "auc"}, {"refit_on": "all"},
               {"val_fraction": 1.5}):
        with pytest.raises(ConfigError):
            RidgeHead(**hp).fit(X, y)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not supported"):
        create_head("ridge", task="binary").fit(X, y)
    with pytest.raises(ConfigError, match="not fitted"):
        RidgeHead().predict(X)
    head = RidgeHead(selection_metric="mse").fit(X, y)
    assert "val_mse" in head.selected_params()
    with pytest.raises(ConfigError, match="probabilities"):
        head.predict_proba(X)
    with pytest.raises(ConfigError, match="features"):
        head.predict(X[:, :3])
    assert RidgeHead.tasks == ("regression",) and RidgeHead.input_kind == "vector"


# ----------------------------------------------------------------------------------------- linear head
def test_linear_head_regression() -> None:
    X, y = _data(3000, 40, seed=6, noise=2.0)
    y = 100.0 + 25.0 * y  # far from standardised
    X = X.astype(np.float32)
    head = create_head("linear", task="regression", seed=0).fit(X[:2000], y[:2000], X[2000:2500], y[2000:2500])
    pred = head.predict(X[2500:])
    assert pred.shape == (500,) and r2_score(y[2500:], pred) > 0.9
    assert head.selected_params()["val_score"] > 0.9
    Xm, Y = _data(2000, 20, t=2, seed=7)
    multi = create_head("linear", task="regression", epochs=200).fit(Xm[:1500], Y[:1500])  # 2 steps per epoch
    assert multi.predict(Xm[1500:]).shape == (500, 2) and r2_score(Y[1500:], multi.predict(Xm[1500:])) > 0.9
    with pytest.raises(ConfigError, match="probabilities"):
        head.predict_proba(X[:3])
    with pytest.raises(ConfigError):
        create_head("linear", task="regression").fit(X[:100], np.full(100, np.nan))
    # classification is unchanged: integer labels, probabilities
    yc = (y > np.median(y)).astype(int)
    clf = create_head("linear", task="binary").fit(X[:2000], yc[:2000])
    assert clf.predict_proba(X[:4]).shape == (4, 2) and set(np.unique(clf.predict(X))) <= {0, 1}


# ---------------------------------------------------------------------------------------------- metrics
def test_regression_metrics_match_sklearn_and_scipy() -> None:
    rng = np.random.default_rng(8)
    t = 1000.0 + 5.0 * rng.normal(size=700)  # a large offset: sums must stay accurate
    p = t + rng.normal(size=700) * 2.0 + 0.5
    m = regression_metrics(t, p)
    assert set(m) == {"mae", "rmse", "r2", "pearson_r"}
    assert m["mae"] == pytest.approx(mean_absolute_error(t, p), abs=1e-12)
    assert m["rmse"] == pytest.approx(np.sqrt(mean_squared_error(t, p)), abs=1e-12)
    assert m["r2"] == pytest.approx(r2_score(t, p), abs=1e-12)
    assert m["pearson_r"] == pytest.approx(pearsonr(t, p)[0], abs=1e-12)
    T = np.stack([t, rng.normal(size=700)], 1)
    P = T + rng.normal(size=(700, 2))
    mm = regression_metrics(T, P, names=["size", "age"])
    assert mm["r2"] == pytest.approx(r2_score(T, P), abs=1e-12)
    assert mm["mae"] == pytest.approx(mean_absolute_error(T, P), abs=1e-12)
    assert mm["rmse/age"] == pytest.approx(np.sqrt(mean_squared_error(T[:, 1], P[:, 1])), abs=1e-12)
    assert mm["pearson_r/size"] == pytest.approx(pearsonr(T[:, 0], P[:, 0])[0], abs=1e-12)
    assert np.isnan(regression_metrics(np.ones(5), np.arange(5.0))["r2"])  # undefined, not forced to 0
    for bad in ((t, p[:10]), (t, np.where(np.arange(700) == 1, np.nan, p)), (np.array([]), np.array([]))):
        with pytest.raises(ConfigError):
            regression_metrics(*bad)


def test_regression_ci_contains_point_and_is_seeded() -> None:
    rng = np.random.default_rng(9)
    t = rng.normal(size=400)
    p = t + 0.6 * rng.normal(size=400)
    ci = regression_ci(t, p, n_resamples=500, seed=3)
    point = regression_metrics(t, p)
    for key, (value, lo, hi) in ci.items():
        assert value == pytest.approx(point[key], abs=1e-12) and lo <= value <= hi
    assert regression_ci(t, p, n_resamples=500, seed=3) == ci
    assert regression_ci(t, p, n_resamples=500, seed=4) != ci
    # vectorised == one Python call per resample on the same resamples
    slow = bootstrap_statistic(lambda i: {"r2": r2_score(t[i], p[i]), "mae": mean_absolute_error(t[i], p[i]),
                                          "pearson_r": pearsonr(t[i], p[i])[0]}, 400, 200, 11)
    fast = regression_ci(t, p, n_resamples=200, seed=11)
    for key, want in slow.items():
        assert np.allclose(fast[key], want, rtol=0, atol=1e-10)
    multi = regression_ci(np.stack([t, -t], 1), np.stack([p, -p], 1), n_resamples=100, names=["a", "b"])
    assert {"r2", "r2/a", "r2/b"} <= set(multi)


# ---------------------------------------------------------------------------------------------- datasets
def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def test_csv_regression_manifest(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"im{i}.png").write_bytes(b"")
    rows = [["path", "age", "bmi"], ["im0.png", "61.5", "22"], ["im1.png", "47", "30.25"], ["im2.png", "-3e1", "18"]]
    man = _write_csv(tmp_path / "labels.csv", rows)
    ds = create_dataset(f"csv:{man}", label_columns="age", task="regression")
    assert ds.task.type == "regression" and ds.task.classes == ("age",)
    assert ds.labels() == [61.5, 47.0, -30.0] and all(isinstance(v, float) for v in ds.labels())
    both = create_dataset(f"csv:{man}", label_columns="age,bmi", task="regression")
    assert both.task.classes == ("age", "bmi")
    assert np.array_equal(np.stack(both.labels()), [[61.5, 22.0], [47.0, 30.25], [-30.0, 18.0]])
    assert both.labels()[0].dtype == np.float64
    for cell, why in (("abc", "not a finite number"), ("", "empty"), ("nan", "not a finite number")):
        bad = _write_csv(tmp_path / "bad.csv", [rows[0], rows[1], ["im1.png", "47", cell], rows[3]])
        with pytest.raises(DataError, match=why) as err:
            create_dataset(f"csv:{bad}", label_columns=["age", "bmi"], task="regression")
        msg = str(err.value)
        assert "bad.csv" in msg and "row 2" in msg and "'bmi'" in msg
    with pytest.raises(DataError, match="missing column"):
        create_dataset(f"csv:{man}", label_columns="age,height", task="regression")


def test_volumes_regression_on_real_nifti(shared_data: Path, tmp_path: Path) -> None:
    """MSD hippocampus volumes listed with a continuous target: the labelled hippocampus volume in ml."""
    import nibabel as nib

    root = shared_data / "msd-task04-hippocampus"
    images = sorted((root / "imagesTr").glob("*.nii.gz"))[:6]
    rows, want = [["path", "hippocampus_ml"]], []
    for img in images:
        lab = nib.load(str(root / "labelsTr" / img.name))
        ml = float((np.asarray(lab.dataobj) > 0).sum() * np.prod(lab.header.get_zooms()[:3]) / 1000.0)
        rows.append([str(img), f"{ml:.4f}"])
        want.append(round(ml, 4))
    ds = create_dataset(f"volumes:{_write_csv(tmp_path / 'hippo.csv', rows)}", task="regression")
    assert ds.task.type == "regression" and ds.task.classes == ("hippocampus_ml",) and ds.spatial_dims == 3
    assert ds.labels() == pytest.approx(want)
    item = ds.load(0)
    assert item.image.ndim == 3 and isinstance(item.label, float) and 1.0 < item.label < 10.0
    rows[3][1] = "n/a"
    with pytest.raises(DataError, match=r"bad\.csv.*row 3.*'hippocampus_ml'"):
        create_dataset(f"volumes:{_write_csv(tmp_path / 'bad.csv', rows)}", task="regression")


def test_regression_phantom_spec() -> None:
    ds = create_dataset("phantom:xray2d-regression", n=12, size=48, seed=1)
    assert ds.task.type == "regression" and ds.task.classes == ("lesion_diameter_mm",)
    labels = np.asarray(ds.labels())
    assert labels.dtype == np.float64 and ((labels >= 5.0) & (labels <= 15.0)).all()
    item = ds.load(0)
    assert item.image.dtype == np.uint16 and item.spacing == (40.0 / 48, 40.0 / 48)
    assert item.meta["diameter_mm"] == item.label and (item.mask == 2).any()
    assert sorted(sum(ds.splits().values(), [])) == list(range(12))
    again = create_dataset("phantom:xray2d-regression", n=12, size=48, seed=1)
    assert again.fingerprint() == ds.fingerprint()
    vol = create_dataset("phantom:ct3d-regression", n=2, size=(32, 32, 16))
    assert vol.load(0).image.shape == (32, 32, 16) and vol.load(0).image.dtype == np.int16
    for bad in ("phantom:mri2d-regression", "phantom:us2d-regression"):
        with pytest.raises(ConfigError, match="valid"):
            create_dataset(bad, n=2)


def _none_features(ds, tmp_path: Path) -> np.ndarray:  # type: ignore[no-untyped-def]
    from medprobe.encoders import create_encoder
    from medprobe.features import ExtractConfig, extract
    from medprobe.preprocess import PreprocessConfig

    store = extract(ds, create_encoder("none"), PreprocessConfig(resolution=(64, 64)),
                    ExtractConfig(tokens=("cls", "mean"), progress=False), cache_dir=tmp_path)
    assert store is not None
    return store.pooled("mean") if ds.spatial_dims == 3 else store.rows("mean")


@pytest.mark.parametrize("spec,n", [("phantom:xray2d-regression", 200), ("phantom:ct3d-regression", 100)])
def test_phantom_diameter_is_linearly_readable(spec: str, n: int, tmp_path: Path) -> None:
    """Image-only baseline: mean-pooled intensities of encoder ``none`` + ridge recover the diameter."""
    ds = create_dataset(spec, n=n, seed=0)
    X = _none_features(ds, tmp_path)
    y = np.asarray(ds.labels())
    sp = ds.splits()
    head = create_head("ridge", task="regression").fit(X[sp["train"]], y[sp["train"]], X[sp["val"]], y[sp["val"]])
    r2 = regression_metrics(y[sp["test"]], head.predict(X[sp["test"]]))["r2"]
    print(f"{spec}: held-out R^2 {r2:.4f}")
    assert r2 >= 0.9, f"{spec}: held-out R^2 {r2:.3f}"
