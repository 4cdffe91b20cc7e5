"""Slide feature bags (features/slides.py) on the two real SVS slides: tiles and coordinates as planned, features
equal to encoding the tiles by hand, one entry per slide shared between datasets, resume at the slide a failed run
was on with identical features, reader processes, --shard and torchrun ranks giving the same bags as one run."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _dist_slides import TCGA_MPP, make_slides  # noqa: E402

from medprobe.data.slides import open_slide  # noqa: E402
from medprobe.data.tiling import TilingConfig, plan_tiles, read_tile  # noqa: E402
from medprobe.encoders import create_encoder  # noqa: E402
from medprobe.errors import ConfigError  # noqa: E402
from medprobe.features import ExtractConfig, FeatureStore, extract, lookup  # noqa: E402
from medprobe.features import common as common_mod  # noqa: E402
from medprobe.features.slides import export_h5, slide_coords, slide_files  # noqa: E402
from medprobe.preprocess import PreprocessConfig, Preprocessor  # noqa: E402
from medprobe.preprocess.tissue import TissueConfig, detect_tissue  # noqa: E402

HELPER = Path(__file__).parent / "_dist_slides.py"
CFG = ExtractConfig(batch_size=16, progress=False)
PRE = PreprocessConfig()

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module", autouse=True)
def _single_thread(single_thread: None) -> None:
    """Module-wide: see conftest.single_thread."""


@pytest.fixture(scope="module")
def enc():  # type: ignore[no-untyped-def]
    return create_encoder("none")


@pytest.fixture(scope="module")
def baseline(enc, tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:  # type: ignore[no-untyped-def]
    from conftest import shared_data_path

    shared_data_path()
    store = extract(make_slides(), enc, PRE, CFG, cache_dir=tmp_path_factory.mktemp("base"), device="cpu")
    assert store is not None
    return store


def _same(a: FeatureStore, b: FeatureStore) -> None:
    assert a.ids == b.ids and np.array_equal(a.slices, b.slices)
    for t in ("cls", "mean"):
        np.testing.assert_array_equal(a.rows(t), b.rows(t))
    for i in range(a.n_items):
        np.testing.assert_array_equal(slide_coords(a, i), slide_coords(b, i))


def test_tiles_coords_and_features_match_an_independent_run(baseline: FeatureStore, enc) -> None:  # type: ignore[no-untyped-def]
    ds = make_slides()
    assert baseline.n_items == 2 and baseline.manifest["unit"] == "tile"
    pre = Preprocessor(common_mod.resolve_preprocess(PRE, ds, enc), enc.patch_size)
    for i, mpp in enumerate((None, TCGA_MPP)):
        slide = open_slide(ds.rows[i][1], mpp=mpp)
        mask = detect_tissue(slide, TissueConfig())
        plan = plan_tiles(slide, TilingConfig(), mask)
        coords = slide_coords(baseline, i)
        assert len(plan) > 10 and baseline.slices[i] == len(plan)
        np.testing.assert_array_equal(coords, plan.coords)
        # the grid at 0.5 µm/px: level-0 steps of 224 px (CMU, 0.499 µm/px) and 448 px (TCGA at 0.25 µm/px)
        step = round(224 * 0.5 / slide.mpp)
        assert np.all(coords % step == 0) and step == (224 if i == 0 else 448)
        files = slide_files(baseline, i)
        from PIL import Image

        png = np.asarray(Image.open(files["tissue_png"])) > 0
        np.testing.assert_array_equal(png, mask.mask)
        assert files["thumbnail"].is_file() and files["plan"]["n_tiles"] == len(plan)
        assert files["plan"]["size0"] == step  # the tile side the slides family labels tiles with
        # rows are the encoder's output on the tiles read by hand, in plan order
        for j in (0, len(plan) // 2, len(plan) - 1):
            from medprobe.data.base import Item

            x = pre(Item("t", read_tile(slide, plan, j), 2))[:, 0]
            with torch.inference_mode():
                out = enc.forward_features(x, enc.resolve_layers("last"))
            layer = baseline.layers[-1]
            np.testing.assert_allclose(baseline.item(i, "cls")[j], out.cls[layer][0].numpy(), rtol=1e-5, atol=1e-6)
    # the index opens as one store; lookup finds it without extracting; the slide entries are ordinary entries
    again = lookup(ds, enc, PRE, CFG, cache_dir=baseline.path.parent)
    assert again is not None and again.path == baseline.path and again.reused
    for s in baseline.manifest["slides"]:
        one = FeatureStore(baseline.path.parent / s["key"])
        assert one.n_items == 1 and int(one.slices[0]) == s["n_tiles"]


def test_slide_entries_are_shared_and_options_change_keys(baseline: FeatureStore, enc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cache = tmp_path / "c"
    shutil.copytree(baseline.path.parent, cache)
    index = cache / baseline.path.name
    shutil.rmtree(index)
    calls = []
    orig = common_mod.Runner.run

    def counting(self, x):  # type: ignore[no-untyped-def]
        calls.append(len(x))
        return orig(self, x)

    common_mod.Runner.run = counting  # type: ignore[method-assign]
    try:
        twice = make_slides(copies=2)  # another dataset listing the same two slides twice
        store = extract(twice, enc, PRE, CFG, cache_dir=cache, device="cpu")
        assert store is not None and store.n_items == 4 and calls == []  # every slide entry reused
        np.testing.assert_array_equal(store.item(2, "cls"), baseline.item(0, "cls"))
        fewer = extract(make_slides(), enc, PRE, CFG, cache_dir=cache, device="cpu",
                        unit_options={"tiling": TilingConfig(min_tissue=0.9)})
        assert fewer is not None and fewer.path != baseline.path and sum(calls) == int(fewer.slices.sum())
        assert np.all(fewer.slices <= baseline.slices) and fewer.slices.sum() < baseline.slices.sum()
    finally:
        common_mod.Runner.run = orig  # type: ignore[method-assign]
    with pytest.raises(ConfigError, match="one vector per tile"):
        extract(make_slides(), enc, PRE, replace(CFG, tokens=("patch",)), cache_dir=cache, device="cpu")
    pytest.importorskip("h5py")
    import h5py

    files = export_h5(baseline, tmp_path / "h5", token="cls")
    with h5py.File(files[1], "r") as f:
        np.testing.assert_array_equal(f["coords"][:], slide_coords(baseline, 1))
        assert f["features"].shape == (int(baseline.slices[1]), baseline.dim)
        assert f["coords"].attrs["patch_size"] == 224 and f["coords"].attrs["patch_size_level0"] == 448


def test_failed_run_resumes_at_its_slide_with_identical_features(baseline: FeatureStore, enc,  # type: ignore[no-untyped-def]
                                                                 tmp_path: Path) -> None:
    n0 = int(baseline.slices[0])
    k = n0 + 5  # fail 5 tiles into the second slide (batches of 16 tiles: mid-slide)
    seen: list[int] = []
    orig = common_mod.Runner.run

    def failing(self, x):  # type: ignore[no-untyped-def]
        if sum(seen) + len(x) > k:
            raise RuntimeError("killed")
        seen.append(len(x))
        return orig(self, x)

    common_mod.Runner.run = failing  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError, match="killed"):
            extract(make_slides(), enc, PRE, CFG, cache_dir=tmp_path, device="cpu")
    finally:
        common_mod.Runner.run = orig  # type: ignore[method-assign]
    done = [d for d in tmp_path.iterdir() if (d / "manifest.json").is_file()]
    assert len(done) == 1 and json.loads((done[0] / "manifest.json").read_text(encoding="utf-8"))["ids"] == \
        [baseline.ids[0]]  # the first slide is kept, nothing of the second, no index
    stamp = [(f.name, f.stat().st_mtime_ns) for f in sorted((done[0] / "shard-00000").iterdir())]
    counted: list[int] = []

    def counting(self, x):  # type: ignore[no-untyped-def]
        counted.append(len(x))
        return orig(self, x)

    common_mod.Runner.run = counting  # type: ignore[method-assign]
    try:
        store = extract(make_slides(), enc, PRE, CFG, cache_dir=tmp_path, device="cpu")
    finally:
        common_mod.Runner.run = orig  # type: ignore[method-assign]
    assert store is not None and sum(counted) == int(baseline.slices[1])  # only the interrupted slide, from tile 0
    assert [(f.name, f.stat().st_mtime_ns) for f in sorted((done[0] / "shard-00000").iterdir())] == stamp
    assert store.path.name == baseline.path.name
    _same(store, baseline)


def test_reader_processes_and_manual_shards_give_the_same_bags(baseline: FeatureStore, enc,  # type: ignore[no-untyped-def]
                                                               tmp_path: Path) -> None:
    store = extract(make_slides(), enc, PRE, replace(CFG, workers=2, batch_size=7), cache_dir=tmp_path / "w",
                    device="cpu")
    assert store is not None and store.path.name == baseline.path.name  # workers/batch size change no number
    _same(store, baseline)
    cache = tmp_path / "s"
    assert extract(make_slides(), enc, PRE, CFG, cache_dir=cache, device="cpu", shard=(1, 2)) is None
    assert len([d for d in cache.iterdir() if (d / "manifest.json").is_file()]) == 1
    store = extract(make_slides(), enc, PRE, CFG, cache_dir=cache, device="cpu", shard=(0, 2))
    assert store is not None and store.path.name == baseline.path.name
    _same(store, baseline)


def test_two_torchrun_ranks_give_the_same_bags(baseline: FeatureStore, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "--master_addr=127.0.0.1", str(HELPER), "--cache-dir", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    dec, lines, i = json.JSONDecoder(), [], 0
    while (i := r.stdout.find("{", i)) >= 0:  # the two ranks share stdout: their lines may interleave
        obj, i = dec.raw_decode(r.stdout, i)
        lines.append(obj)
    assert sorted(x["rank"] for x in lines) == [0, 1] and all(x["world"] == 2 and x["complete"] for x in lines)
    assert {x["key"] for x in lines} == {baseline.path.name}
    _same(FeatureStore(tmp_path / baseline.path.name), baseline)
