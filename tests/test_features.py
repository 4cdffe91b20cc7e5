"""Feature cache and extraction engine: keys, hits, resume after SIGKILL, torchrun / --shard, bad items."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medprobe.data.base import ArrayDataset, Dataset, Subset
from medprobe.encoders import Encoder, create_encoder
from medprobe.errors import ConfigError, DataError
from medprobe.features import ExtractConfig, FeatureStore, extract, list_entries
from medprobe.features.engine import resolve_preprocess
from medprobe.preprocess import PreprocessConfig, Preprocessor

sys.path.insert(0, str(Path(__file__).parent))
from _dist_extract import make_dataset  # noqa: E402

HELPER = Path(__file__).parent / "_dist_extract.py"
PRE = PreprocessConfig(resolution=(32, 32))
CFG = ExtractConfig(shard_items=2, batch_size=4, progress=False)


@contextmanager
def one_thread() -> Iterator[None]:
    """Match the subprocesses (OMP_NUM_THREADS=1) so results can be compared bit for bit."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def file_stats(entry: Path) -> dict[str, tuple[int, int]]:
    return {str(f.relative_to(entry)): (f.stat().st_ino, f.stat().st_mtime_ns) for f in entry.rglob("*") if f.is_file()}


def arrays(store: FeatureStore) -> dict[str, np.ndarray]:
    return {f"{t}_L{layer}": store.rows(t, layer) for t in store.tokens for layer in store.layers}


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    """One intra-op thread: the machine is shared, and subprocess results are compared bit for bit."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def enc() -> Encoder:
    return create_encoder("dinov3-vits16")


@pytest.fixture(scope="module")
def toy() -> ArrayDataset:
    return make_dataset(8, 32)


@pytest.fixture(scope="module")
def baseline(enc: Encoder, toy: ArrayDataset, tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    root = tmp_path_factory.mktemp("cache")
    with one_thread():
        store = extract(toy, enc, PRE, CFG, cache_dir=root, device="cpu")
    assert store is not None
    return store


# ------------------------------------------------------------------------------------------ contents
def test_store_matches_direct_forward(enc: Encoder, toy: ArrayDataset, baseline: FeatureStore) -> None:
    assert baseline.n_items == 8 and baseline.ids == toy.ids()
    assert baseline.dim == 384 and baseline.grid == (2, 2) and baseline.layers == [11]
    assert len(baseline.manifest["shards"]) == 4
    prep = Preprocessor(resolve_preprocess(PRE, toy, enc), patch_size=16)
    x = torch.cat([prep(toy.load(i))[:, 0] for i in range(8)])
    with torch.inference_mode():
        out = enc.forward_features(x, (11,))
    np.testing.assert_allclose(baseline.rows("cls"), out.cls[11].numpy(), atol=1e-5)
    np.testing.assert_allclose(baseline.rows("patch"), out.patch[11].numpy(), atol=1e-5)
    np.testing.assert_allclose(baseline.rows("mean"), out.patch[11].mean((2, 3)).numpy(), atol=1e-5)
    np.testing.assert_array_equal(baseline.item(5, "cls"), baseline.rows("cls")[5:6])
    assert baseline.pooled("cls").shape == (8, 384)
    with pytest.raises(ConfigError):
        baseline.pooled("patch")
    with pytest.raises(ConfigError):
        baseline.item(0, "cls", layer=3)


# ------------------------------------------------------------------------------------------ cache hits
def test_same_inputs_hit_without_recomputing(enc: Encoder, baseline: FeatureStore,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    before = file_stats(baseline.path)
    calls = {"n": 0}
    orig = enc.forward_features

    def counting(*a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        return orig(*a, **kw)

    monkeypatch.setattr(enc, "forward_features", counting)
    root = baseline.path.parent
    again = make_dataset(8, 32)  # a new object with the same content
    t0 = time.perf_counter()
    # batch size, workers, progress and shard size do not change a number: same key
    for cfg in (CFG, replace(CFG, batch_size=3), replace(CFG, shard_items=5, workers=0), ExtractConfig(amp="auto")):
        store = extract(again, enc, PreprocessConfig(resolution=32), cfg, cache_dir=root, device="cpu")
        assert store is not None and store.path == baseline.path
    assert time.perf_counter() - t0 < 10
    assert calls["n"] == 0
    assert file_stats(baseline.path) == before
    assert len(list_entries(root)) >= 1


# ------------------------------------------------------------------------------------------ cache misses
def _bump_pixel(ds: ArrayDataset) -> ArrayDataset:
    images = [ds.load(i).image.copy() for i in range(len(ds))]
    images[3][7, 9] ^= 1
    return ArrayDataset(images, labels=ds.labels(), name=ds.name)


VARIANTS: dict[str, dict[str, Any]] = {
    "encoder": {"encoder": "none"},
    "weights": {"encoder": "random:seed=1"},
    "intensity": {"pre": {"intensity": "uint16"}},
    "channels": {"pre": {"channels": "replicate"}},
    "resize": {"pre": {"resize": "pad"}},
    "resolution": {"pre": {"resolution": (48, 48)}},
    "interpolation": {"pre": {"interpolation": "bicubic"}},
    "antialias": {"pre": {"antialias": False}},
    "mean": {"pre": {"mean": (0.5, 0.5, 0.5)}},
    "std": {"pre": {"std": (0.5, 0.5, 0.5)}},
    "layers": {"cfg": {"layers": "four"}},
    "tokens": {"cfg": {"tokens": ("cls",)}},
    "storage": {"cfg": {"storage": "float16"}},
    "amp": {"cfg": {"amp": "bf16"}},
    "content": {"data": "pixel"},
    "subset": {"data": "subset"},
}
_seen_keys: dict[str, str] = {}


@pytest.fixture(scope="module")
def enc_seed1() -> Encoder:
    return create_encoder("dinov3-vits16", weights="random:seed=1")


@pytest.mark.parametrize("what", list(VARIANTS))
def test_each_keyed_input_misses(what: str, enc: Encoder, toy: ArrayDataset, baseline: FeatureStore,
                                 request: pytest.FixtureRequest) -> None:
    v = VARIANTS[what]
    e = enc
    if v.get("encoder") == "none":
        e = create_encoder("none")
    elif v.get("encoder"):
        e = request.getfixturevalue("enc_seed1")
    ds: Dataset = toy
    if v.get("data") == "pixel":
        ds = _bump_pixel(toy)
        assert ds.fingerprint() != toy.fingerprint()
    elif v.get("data") == "subset":
        ds = Subset(toy, [0, 1, 2, 3, 4, 5, 6])
    pre = replace(PRE, **v.get("pre", {}))
    cfg = replace(CFG, **v.get("cfg", {}))
    store = extract(ds, e, pre, cfg, cache_dir=baseline.path.parent, device="cpu")
    assert store is not None
    key = store.path.name
    assert key != baseline.path.name, f"changing {what} must change the cache key"
    assert key not in _seen_keys.values(), f"{what} collides with {_seen_keys}"
    _seen_keys[what] = key
    assert (store.path / "manifest.json").is_file()
    if what in ("weights", "intensity", "resolution", "mean", "content", "amp"):  # the numbers really differ
        a, b = store.rows("cls", 11), baseline.rows("cls", 11)
        n = min(len(a), len(b))
        assert a.shape[1:] == b.shape[1:] and not np.allclose(a[:n], b[:n], atol=1e-6)
    if what == "storage":
        assert store.item(0, "cls").dtype == np.float16


def test_volume_slices_pooling_and_slice_axis(enc: Encoder, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    vols = [rng.uniform(-1000, 1000, (16, 16, n)).astype(np.float32) for n in (3, 5)]
    vols = [np.pad(v, ((0, 0), (0, 0), (0, 16 - v.shape[2])), constant_values=-1000) for v in vols]  # 16^3
    ds = ArrayDataset(vols, labels=[0, 1], spatial_dims=3, name="vols", modality="ct")
    cfg = replace(CFG, shard_items=1)
    s2 = extract(ds, enc, PRE, cfg, cache_dir=tmp_path, device="cpu")
    assert s2 is not None and s2.spec["preprocess"]["intensity"] == "ct:soft_tissue"
    assert list(s2.slices) == [16, 16] and s2.rows("cls").shape == (32, 384)
    bags = s2.bags("cls")
    np.testing.assert_allclose(s2.pooled("cls"), np.stack([b.mean(0) for b in bags]), atol=1e-5)
    np.testing.assert_allclose(s2.pooled("cls", method="max"), np.stack([b.max(0) for b in bags]))
    s0 = extract(ds, enc, replace(PRE, slice_axis=0), cfg, cache_dir=tmp_path, device="cpu")
    assert s0 is not None and s0.path != s2.path
    assert not np.allclose(s0.rows("cls"), s2.rows("cls"))
    assert len(list_entries(tmp_path)) == 2


# ------------------------------------------------------------------------------------------ bad items
def test_bad_item_mid_extraction_leaves_no_entry(enc: Encoder, tmp_path: Path) -> None:
    images = [np.random.default_rng(i).uniform(0, 1, (32, 32)).astype(np.float32) for i in range(6)]
    images[4][1, 1] = np.nan
    ds = ArrayDataset(images, name="nan")
    with pytest.raises(DataError, match="NaN"):
        extract(ds, enc, PRE, replace(CFG, shard_items=1), cache_dir=tmp_path, device="cpu")
    assert list(tmp_path.iterdir()) == []  # complete shards 0-3 were removed with the entry


# ------------------------------------------------------------------------------------------ manual shards
def test_manual_shards_complete_only_when_all_ran(enc: Encoder, toy: ArrayDataset, baseline: FeatureStore,
                                                  tmp_path: Path) -> None:
    with one_thread():
        assert extract(toy, enc, PRE, CFG, cache_dir=tmp_path, device="cpu", shard=(0, 2)) is None
        (entry,) = [p for p in tmp_path.iterdir()]
        assert entry.name == baseline.path.name
        assert not (entry / "manifest.json").exists()
        assert sorted(p.parent.name for p in entry.glob("shard-*/done.json")) == ["shard-00000", "shard-00002"]
        (info,) = list_entries(tmp_path)
        assert info["complete"] is False and info["shards_done"] == 2
        with pytest.raises(DataError, match="incomplete"):
            FeatureStore(entry)
        assert extract(toy, enc, PRE, CFG, cache_dir=tmp_path, device="cpu", shard=(0, 2)) is None  # idempotent
        store = extract(toy, enc, PRE, CFG, cache_dir=tmp_path, device="cpu", shard=(1, 2))
    assert store is not None and (entry / "manifest.json").is_file()
    for k, a in arrays(store).items():
        np.testing.assert_array_equal(a, arrays(baseline)[k])
    with pytest.raises(ConfigError):
        extract(toy, enc, PRE, CFG, cache_dir=tmp_path / "x", device="cpu", shard=(2, 2))


def test_manual_shard_started_by_shard_1(enc: Encoder, toy: ArrayDataset, baseline: FeatureStore,
                                          tmp_path: Path) -> None:
    """A job array's task 1 may run before task 0: the entry must still record what it is."""
    assert extract(toy, enc, PRE, CFG, cache_dir=tmp_path, device="cpu", shard=(1, 2)) is None
    (info,) = list_entries(tmp_path)
    assert info["complete"] is False and info["shards_done"] == 2
    assert info["encoder"] == "dinov3-vits16" and info["resolution"] == [32, 32]
    store = extract(toy, enc, PRE, CFG, cache_dir=tmp_path, device="cpu", shard=(0, 2))
    assert store is not None and store.path.name == baseline.path.name
    for k, a in arrays(store).items():
        np.testing.assert_array_equal(a, arrays(baseline)[k])


# ------------------------------------------------------------------------------------------ resume after kill
def test_killed_run_resumes_only_missing_shards(enc: Encoder, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cmd = [sys.executable, str(HELPER), "--cache-dir", str(cache), "--items", "12", "--shard-items", "2",
           "--slow", "0.5"]
    proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            if list(cache.glob("*/shard-00000/done.json")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"helper ended early: {proc.communicate()[1].decode()[-2000:]}"
        assert list(cache.glob("*/shard-00000/done.json")), "first shard never completed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    (entry,) = [p for p in cache.iterdir()]
    done_before = sorted(p.parent.name for p in entry.glob("shard-*/done.json"))
    assert "shard-00000" in done_before and len(done_before) < 6
    assert not (entry / "manifest.json").exists()
    first = file_stats(entry / "shard-00000")

    ds = make_dataset(12, 32)
    with one_thread():
        store = extract(ds, enc, PRE, CFG, cache_dir=cache, device="cpu")  # the rerun
        assert store is not None and store.path == entry
        ref = extract(ds, enc, PRE, CFG, cache_dir=tmp_path / "ref", device="cpu")  # uninterrupted
    assert ref is not None
    assert file_stats(entry / "shard-00000") == first  # untouched: same inode and mtime
    pids = {k: json.loads((entry / f"shard-{k:05d}" / "done.json").read_text(encoding="utf-8"))["pid"]
            for k in range(6)}
    assert pids[0] == proc.pid
    recomputed = [k for k in range(6) if pids[k] == os.getpid()]
    assert recomputed == [k for k in range(6) if f"shard-{k:05d}" not in done_before]
    ours, theirs = arrays(store), arrays(ref)
    for k in ours:
        assert np.abs(ours[k] - theirs[k]).max() <= 1e-6, k


# ------------------------------------------------------------------------------------------ torchrun
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _json_objects(text: str) -> list[dict]:
    dec, out, i = json.JSONDecoder(), [], 0
    while (i := text.find("{", i)) >= 0:
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        out.append(obj)
        i = end
    return out


def test_torchrun_two_processes_equal_one(baseline: FeatureStore, tmp_path: Path) -> None:
    cache, writers = tmp_path / "cache", tmp_path / "writers.txt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "--master_addr=127.0.0.1", str(HELPER), "--cache-dir", str(cache), "--items", "8", "--shard-items", "2",
           "--writers", str(writers)]
    r = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = _json_objects(r.stdout)  # the two ranks share stdout: their lines may interleave
    assert sorted(d["rank"] for d in lines) == [0, 1] and all(d["world"] == 2 for d in lines)
    assert all(d["complete"] for d in lines)
    assert {d["key"] for d in lines} == {baseline.path.name}  # the key does not depend on the world size
    assert writers.read_text(encoding="utf-8").split() == ["0"]  # only rank 0 wrote the manifest, once
    entry = cache / baseline.path.name
    manifest = json.loads((entry / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["world"] == 2
    pid_of = {d["rank"]: d["pid"] for d in lines}
    for k in range(4):  # shard k computed by rank k % 2
        assert json.loads((entry / f"shard-{k:05d}" / "done.json").read_text(encoding="utf-8"))["pid"] == pid_of[k % 2]
    dist_arrays, one = arrays(FeatureStore(entry)), arrays(baseline)
    for k in one:
        assert np.abs(dist_arrays[k] - one[k]).max() <= 1e-5, k


def test_multistage_entry_records_each_layer(toy: ArrayDataset, tmp_path: Path) -> None:
    """A CNN's stages differ in channels and stride: the manifest records each, and verify accepts them."""
    from medprobe.features.cache import verify_entry

    cnn = create_encoder("resnet50")
    store = extract(toy, cnn, replace(PRE, resolution=(64, 64)), replace(CFG, layers=(0, 3)), cache_dir=tmp_path,
                    device="cpu")
    assert store is not None
    assert (store.dim_of(0), store.dim_of(3)) == (256, 2048)
    assert (store.grid_of(0), store.grid_of(3)) == ((16, 16), (2, 2))
    assert store.rows("patch", 0).shape == (8, 256, 16, 16) and store.rows("cls", 3).shape == (8, 2048)
    assert store.manifest["token_dims"]["cls_L0"] == 256 and store.manifest["token_dims"]["patch_L3"] == 2048
    assert verify_entry(store.path) == []


def test_runner_keeps_no_view_of_the_whole_batch_output() -> None:
    """cls as token 0 of all tokens is a view: the collected rows must not keep every token of every batch alive
    (a whole slide's tiles would then sit in memory: bench/wsi.py's peak grew with the slide)."""
    from medprobe.encoders.base import EncoderOutput
    from medprobe.features.common import Runner

    class TokenView(Encoder):
        def __init__(self) -> None:
            super().__init__()
            self.spec = create_encoder("none").spec

        def forward_features(self, x: torch.Tensor, layers: Any) -> EncoderOutput:
            tokens = torch.randn(x.shape[0], 1 + 4, 64)  # class token + a 2 x 2 grid, as a ViT graph returns them
            grid = tokens[:, 1:].reshape(x.shape[0], 2, 2, 64).permute(0, 3, 1, 2)
            return EncoderOutput(cls={0: tokens[:, 0]}, patch={0: grid})

    runner = Runner(TokenView(), (0,), ("cls", "mean"), torch.device("cpu"), None, np.dtype(np.float32))
    for _ in range(3):
        runner.run(torch.zeros(2, 3, 32, 32))
    for parts in runner.chunks.values():
        for a in parts:  # each stored chunk owns exactly its own rows, not the batch's token tensor
            owner = a.base
            held = owner.untyped_storage().nbytes() if isinstance(owner, torch.Tensor) else a.nbytes
            assert held == a.nbytes
    rows = runner.take(1)
    assert rows[("cls", 0)].shape == (6, 64) and rows[("mean", 0)].shape == (6, 64)
