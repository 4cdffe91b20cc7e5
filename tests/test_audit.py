"""Leakage audit: planted copies are all found (exact, resized, re-encoded), the natural duplicates of the
MedMNIST files are counted and listed, blocked searches equal brute force, and a run warns / stops / drops."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from medprobe.audit import audit, cosine_pairs, fingerprint, hamming_pairs
from medprobe.data import create_dataset
from medprobe.errors import DataError


def _smooth(rng: np.random.Generator, size: int = 64, ctrl: int = 8) -> np.ndarray:
    from scipy.ndimage import zoom

    a = zoom(rng.normal(size=(ctrl, ctrl)), size / ctrl, order=3)[:size, :size]
    a = (a - a.min()) / max(float(np.ptp(a)), 1e-6)
    return (a * 255).astype(np.uint8)


def planted_set(root: Path, n_base: int = 40, seed: int = 0) -> set[frozenset[str]]:
    """A train/test folder set of distinct smooth images; into test go, under new names and the other class,
    exact copies, resized copies (64 -> 48 and -> 96 px) and JPEG re-encodings of train images.
    Returns the planted pairs as sets of case ids."""
    rng = np.random.default_rng(seed)
    planted: set[frozenset[str]] = set()
    base: dict[str, np.ndarray] = {}
    for k in range(n_base):
        split, cls = ("train" if k < n_base * 3 // 4 else "test"), "ab"[k % 2]
        d = root / split / cls
        d.mkdir(parents=True, exist_ok=True)
        img = _smooth(rng)
        Image.fromarray(img).save(d / f"img{k:03d}.png")
        base[f"{split}/{cls}/img{k:03d}"] = img
    train_ids = [c for c in base if c.startswith("train/")]
    for j, src in enumerate(train_ids[:12]):
        img = base[src]
        other = "b" if src.split("/")[1] == "a" else "a"
        d = root / "test" / other
        d.mkdir(parents=True, exist_ok=True)
        kind = ("exact", "resized", "jpeg")[j % 3]
        if kind == "exact":
            Image.fromarray(img).save(d / f"copy{j:02d}.png")
            cid = f"test/{other}/copy{j:02d}"
        elif kind == "resized":
            size = 48 if j % 2 else 96
            Image.fromarray(img).resize((size, size), Image.BILINEAR).save(d / f"small{j:02d}.png")
            cid = f"test/{other}/small{j:02d}"
        else:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=70)
            (d / f"jpeg{j:02d}.jpg").write_bytes(buf.getvalue())
            cid = f"test/{other}/jpeg{j:02d}"
        planted.add(frozenset((src, cid)))
    return planted


def _found(rep: Any) -> set[frozenset[str]]:
    return {frozenset((rep.ids[p.i], rep.ids[p.j])) for p in rep.pairs}


def test_planted_copies_are_all_found(tmp_path: Path) -> None:
    planted = planted_set(tmp_path / "set")
    ds = create_dataset(f"folder:{tmp_path / 'set'}")
    rep = audit(ds, ds.splits())
    found = _found(rep)
    recall = len(planted & found) / len(planted)
    precision = len(planted & found) / max(len(found), 1)
    print(f"planted {len(planted)} pairs; found {len(found)}; recall {recall:.3f}; precision on unplanted "
          f"{precision:.3f}; {rep.summary()}")
    assert recall == 1.0
    assert precision == 1.0  # independent smooth images never look alike
    kinds = {frozenset((rep.ids[p.i], rep.ids[p.j])): p.kinds for p in rep.pairs}
    for pair, k in kinds.items():
        if any("copy" in c for c in pair):
            assert "exact" in k
        else:
            assert k == ["hash"]
    assert len(rep.test_duplicates()) == 12 and rep.counts()["any"]["test_leaks"] == 12


def test_medmnist_natural_duplicates(shared_data: Path) -> None:
    """Counts and ids of the duplicates in the MedMNIST files; every exact pair is pixel-identical and every
    near pair's thumbnails correlate at the threshold."""
    for name in ("pneumoniamnist", "breastmnist"):
        npz = shared_data / "medmnist" / f"{name}.npz"
        if not npz.is_file():
            pytest.skip(f"{npz} is absent")
        ds = create_dataset(f"medmnist:{name}", root=shared_data / "medmnist")
        rep = audit(ds, ds.splits())
        c = rep.counts()
        exact = [p for p in rep.pairs if "exact" in p.kinds]
        print(f"\n{name}: {rep.summary()}; counts {c}")
        print(f"{name} exact pairs: " + "; ".join(f"{rep.ids[p.i]} = {rep.ids[p.j]}" for p in exact))
        labels = ds.labels()
        for p in rep.pairs:
            a, b = ds.load(p.i).image, ds.load(p.j).image
            if "exact" in p.kinds:
                assert np.array_equal(a, b)
            else:
                th = rep.fingerprints.thumbs.astype(np.float32)
                assert p.hamming is not None and p.hamming <= 10 and float(th[p.i] @ th[p.j]) >= 0.97 - 1e-3
        if name == "breastmnist":  # the ultrasound pair with different names (and splits) in train and test
            pair = next(p for p in exact)
            assert {rep.ids[pair.i], rep.ids[pair.j]} == {"breastmnist-test-000076", "breastmnist-train-000115"}
            print(f"breastmnist exact leak labels: {labels[pair.i]} vs {labels[pair.j]}")
            assert c["exact"]["test_leaks"] == 1 and c["any"]["across"] > 50
        else:
            assert c["exact"]["within"] + c["exact"]["across"] == 31 and c["exact"]["test_leaks"] == 0


def test_blocked_searches_equal_brute_force() -> None:
    rng = np.random.default_rng(0)
    bits = rng.random((300, 64)) < 0.5
    bits[50] = bits[7]
    bits[60] = bits[7] ^ (rng.random(64) < 0.05)
    p, d = hamming_pairs(bits, 12, block=64)
    ham = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    ii, jj = np.nonzero(np.triu(ham <= 12, 1))
    assert sorted(map(tuple, p.tolist())) == sorted(zip(ii.tolist(), jj.tolist()))
    assert all(ham[i, j] == k for (i, j), k in zip(p.tolist(), d.tolist()))
    X = rng.normal(size=(300, 16)).astype(np.float32)
    X[200] = X[3] + 0.01
    cp, cs = cosine_pairs(X, 0.9, block=50)
    Y = X - X.mean(0)
    Y /= np.linalg.norm(Y, axis=1, keepdims=True)
    ii, jj = np.nonzero(np.triu(Y @ Y.T >= 0.9, 1))
    assert sorted(map(tuple, cp.tolist())) == sorted(zip(ii.tolist(), jj.tolist())) and (3, 200) in set(
        map(tuple, cp.tolist()))


def test_feature_detector_and_fingerprint_cache(tmp_path: Path) -> None:
    planted_set(tmp_path / "set", n_base=20)
    ds = create_dataset(f"folder:{tmp_path / 'set'}")
    fp = fingerprint(ds, cache_dir=tmp_path / "c")
    again = fingerprint(ds, cache_dir=tmp_path / "c")
    assert again.cached and not fp.cached and again.exact == fp.exact and np.array_equal(again.bits, fp.bits)
    X = np.random.default_rng(0).normal(size=(len(ds), 8))
    X[5] = X[0]
    rep = audit(ds, ds.splits(), features=X, fingerprints=fp)
    assert any(p.kinds == ["feature"] and {p.i, p.j} == {0, 5} for p in rep.pairs)


# ------------------------------------------------------------------------------------------ in a run
def _task(tmp: Path, data: Path, mode: str) -> Any:
    from medprobe.pipeline.task import parse_task

    return parse_task({"name": f"leak-{mode}", "dataset": f"folder:{data}", "encoder": "dinov3-vits16",
                       "weights": "random", "device": "cpu", "preprocess": {"resolution": 32},
                       "features": {"progress": False}, "metrics": {"bootstrap": 20}, "audit": {"mode": mode},
                       "cache_dir": str(tmp / "cache")})


def test_run_warns_stops_or_drops(tmp_path: Path, capsys: Any) -> None:
    from medprobe.pipeline.run import run_task
    from medprobe.results import ResultsDB

    planted_set(tmp_path / "set", n_base=40)
    db = ResultsDB(tmp_path / "res")
    with pytest.raises(DataError, match=r"leak-error: leakage audit: 12 test case\(s\) alike a train/val case"):
        run_task(_task(tmp_path, tmp_path / "set", "error"), db=db, verbose=False)
    assert not (tmp_path / "cache").exists() or not any(p.name != "audit" for p in (tmp_path / "cache").iterdir())
    rows = run_task(_task(tmp_path, tmp_path / "set", "warn"), db=db, verbose=False)
    err = capsys.readouterr().err
    assert err.count("medprobe: warning: audit:") == 1 and "12 test case(s) alike" in err
    warn = rows[0]["record"]
    assert warn["notes"]["audit"]["counts"]["any"]["test_leaks"] == 12 and warn["split"]["n_test"] == 22
    assert warn["notes"]["audit"]["features_skipped"].startswith("random weights")
    rows = run_task(_task(tmp_path, tmp_path / "set", "drop"), db=db, verbose=False)
    drop = rows[0]["record"]
    assert drop["split"]["n_test"] == 10 and len(drop["notes"]["audit"]["dropped_from_test"]) == 12
    assert drop["config_hash"] != warn["config_hash"]  # drop changes numbers; warn does not
    stored = {r["run_id"]: r for r in db.runs()}
    assert stored[rows[0]["run_id"]]["labels"]["audit"]["mode"] == "drop"
    from medprobe.report import build_report

    html = build_report(db, tmp_path / "report.html", pca=False, n_boot=20).read_text(encoding="utf-8")
    assert "Leakage audit" in html and "test/b/copy00" in html and "dropped from test: 12 case(s)" in html
    assert html.count("data:image/png;base64") >= 6  # side-by-side thumbnails of the first pairs


def test_audit_section_in_config_keys_and_hash() -> None:
    from medprobe.pipeline.task import config_keys, parse_task

    keys = {k[0]: k for k in config_keys()}
    assert {"audit.mode", "audit.near_threshold", "audit.near_correlation", "audit.feature_threshold"} <= set(keys)
    base = parse_task({}).config_hash("logreg")
    assert parse_task({"audit": {"mode": "error", "near_threshold": 3}}).config_hash("logreg") == base
    assert parse_task({"audit": {"mode": "off"}}).config_hash("logreg") == base
    assert parse_task({"audit": {"mode": "drop"}}).config_hash("logreg") != base


def test_cli_audit_runs_without_torch(tmp_path: Path) -> None:
    planted_set(tmp_path / "set", n_base=20)
    code = ("import sys; from medprobe.cli.main import main; "
            f"rc = main(['audit', 'folder:{tmp_path / 'set'}', '--cache-dir', '{tmp_path / 'c'}', "
            f"'--json', '{tmp_path / 'a.json'}', '--fail-on-leak']); "
            "print('TORCH', 'torch' in sys.modules); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr  # leaks found: --fail-on-leak
    assert "TORCH False" in out.stdout and "test/b/copy00" in out.stdout and "exact" in out.stdout
    assert (tmp_path / "a.json").is_file()


def test_cli_audit_options_have_help() -> None:
    import argparse

    from medprobe.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.choices["audit"]
    for a in p._actions:
        assert a.help, a.dest
    assert "examples:" in (p.epilog or "")
