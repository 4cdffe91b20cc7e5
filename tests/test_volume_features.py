"""Volume-in, features-out extraction (``medprobe.features.volume``) and a 3D run end to end.

The volume preprocessor is checked on arrays whose geometry is known (a bright box of known size in mm); the
cache entry against the encoder run directly on the preprocessed volume; resume, cached look-up without building
the network, per-channel views; and ``medprobe run`` with a 3D dataset + the random-init Swin UNETR encoder +
logreg records the encoder family, weights id and feature contract in the results database.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from medprobe.data.base import ArrayDataset, Item, TaskInfo
from medprobe.encoders import create_encoder, encoder_info
from medprobe.errors import ConfigError, DataError
from medprobe.features import ExtractConfig, extract, lookup
from medprobe.features.cache import shard_dir
from medprobe.preprocess import PreprocessConfig
from medprobe.preprocess.volume import VolumePreprocessor, center_crop_pad, volume_geometry

CFG = ExtractConfig(layers="four", shard_items=2, batch_size=2, progress=False)
PRE = PreprocessConfig(resolution=32)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _box_volume(shape: tuple[int, int, int], box: tuple[slice, slice, slice], hu: float = 400.0) -> np.ndarray:
    v = np.full(shape, -1000.0, dtype=np.float32)
    v[box] = hu
    return v


def _item(vol: np.ndarray, spacing: tuple[float, ...]) -> Item:
    return Item(id="v", image=vol, spatial_dims=3, spacing=spacing, slice_axis=2)


def test_preprocessor_axes_intensity_and_stretch() -> None:
    vol = _box_volume((20, 10, 6), (slice(0, 10), slice(None), slice(None)))  # (X, Y, Z): box in the first half of X
    geom = volume_geometry((6, 20, 10), (1.0, 1.0, 1.0), "stretch", "nearest")
    x = VolumePreprocessor("ct:0,2000", "auto", geom, 0.5, 0.5)(_item(vol, (1.0, 1.0, 1.0)))
    assert x.shape == (1, 1, 6, 20, 10)  # D = Z (the slice axis), H = X, W = Y
    # HU -1000 -> 0 -> (0 - 0.5) / 0.5 = -1; 400 HU -> 0.7 -> 0.4
    assert torch.allclose(x[0, 0, :, :10], torch.full((6, 10, 10), 0.4), atol=1e-6)
    assert torch.allclose(x[0, 0, :, 10:], torch.full((6, 10, 10), -1.0))
    y = VolumePreprocessor("ct:0,2000", "auto", volume_geometry((12, 40, 20), (1, 1, 1), "stretch", "bilinear"),
                           0.0, 1.0)(_item(vol, (1.0, 1.0, 1.0)))
    assert y.shape == (1, 1, 12, 40, 20) and float(y.min()) >= 0.0 and float(y.max()) <= 0.7 + 1e-6


def test_preprocessor_pad_keeps_millimetres_and_aspect_pad_fits() -> None:
    # 40 x 40 x 10 voxels at 0.5 x 0.5 x 2 mm = 20 x 20 x 20 mm; a 10 mm cube in the middle
    vol = _box_volume((40, 40, 10), (slice(10, 30), slice(10, 30), slice(3, 8)))
    item = _item(vol, (0.5, 0.5, 2.0))
    pad = VolumePreprocessor("ct:0,2000", "auto", volume_geometry((16, 16, 16), (1.0, 1.0, 1.0), "pad", "nearest"),
                             0.0, 1.0)(item)
    assert pad.shape == (1, 1, 16, 16, 16)
    inside = (pad[0, 0] > 0.5).sum().item()
    assert inside == 10 * 10 * 10  # resampled to 1 mm: the 10 mm cube is 10^3 voxels, zero padding around it
    assert pad[0, 0, 0].abs().max() == 0 and pad[0, 0, :, 0].abs().max() == 0
    # larger than the box: centre crop
    crop = VolumePreprocessor("ct:0,2000", "auto", volume_geometry((8, 8, 8), (1.0, 1.0, 1.0), "pad", "nearest"),
                              0.0, 1.0)(item)
    assert crop.shape == (1, 1, 8, 8, 8) and (crop > 0.5).sum().item() == 8 ** 3
    fit = VolumePreprocessor("ct:0,2000", "auto", volume_geometry((8, 16, 16), (1.0, 1.0, 1.0), "aspect_pad",
                                                                  "nearest"), 0.0, 1.0)(item)
    assert fit.shape == (1, 1, 8, 16, 16)  # 20 mm fits 8 voxels: 0.4 voxel/mm everywhere, in-plane padded
    assert fit[0, 0, :, :4].abs().max() == 0 and (fit[0, 0, :, 4:12, 4:12] > 0.5).sum().item() == 4 * 4 * 4
    assert center_crop_pad(torch.ones(1, 1, 3, 5, 4), (4, 4, 4)).shape == (1, 1, 4, 4, 4)


def test_preprocessor_refusals() -> None:
    geom = volume_geometry((8, 8, 8), (1, 1, 1), "stretch", "bilinear")
    with pytest.raises(ConfigError):
        volume_geometry((8, 8, 8), (1, 1, 1), "stretch", "bicubic")
    with pytest.raises(DataError, match="2-channel volume"):
        VolumePreprocessor("minmax", "auto", geom, 0, 1)(_item(np.zeros((8, 8, 8, 2), np.float32), (1, 1, 1)))
    two = VolumePreprocessor("minmax", "per_channel", geom, 0, 1)(
        _item(np.random.default_rng(0).random((8, 8, 8, 2)).astype(np.float32), (1, 1, 1)))
    assert two.shape == (2, 1, 8, 8, 8)
    bad = np.zeros((8, 8, 8), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        VolumePreprocessor("minmax", "auto", geom, 0, 1)(_item(bad, (1, 1, 1)))


def _ct_dataset(n: int = 5, channels: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(0)
    shape = (20, 24, 16) + ((channels,) if channels else ())
    vols = [(rng.normal(0, 300, shape) + 200 * (i % 2)).astype(np.float32) for i in range(n)]
    return ArrayDataset(vols, [i % 2 for i in range(n)], spatial_dims=3, modality="ct",
                        task=TaskInfo("binary", ("a", "b")), spacing=(1.0, 1.0, 2.0), name="ctvol")


def test_extract_equals_direct_forward_and_caches(tmp_path: Path) -> None:
    ds = _ct_dataset()
    enc = create_encoder("swin-unetr")
    store = extract(ds, enc, PRE, CFG, cache_dir=tmp_path)
    assert store is not None and not store.reused
    assert store.n_items == 5 and list(store.slices) == [1] * 5 and store.layers == [1, 2, 3, 4]
    assert store.manifest["dims"] == {"1": 96, "2": 192, "3": 384, "4": 768}
    assert store.manifest["grids"]["2"] == [4, 4, 4]
    vol = store.manifest["volume"]
    assert vol["size"] == [32, 32, 32] and vol["intensity"] == "ct:0,2000" and vol["encoder_family"] == "swin_unetr"
    # the cached rows are the encoder's output on the preprocessed volume
    geom = volume_geometry((32, 32, 32), (2.0, 1.5, 1.5), "stretch", "bilinear")
    x = VolumePreprocessor("ct:0,2000", "auto", geom, 0.0, 1.0)(ds.load(3))
    with torch.inference_mode():
        out = enc.forward_features(x, (2, 4))
    assert np.abs(store.item(3, "cls", 4)[0] - out.cls[4][0].numpy()).max() <= 1e-5
    assert np.abs(store.item(3, "cls", 2)[0] - out.cls[2][0].numpy()).max() <= 1e-5
    assert np.abs(store.item(3, "mean", 2)[0] - out.patch[2][0].mean((1, 2, 3)).numpy()).max() <= 1e-5
    assert store.item(3, "patch", 2).shape == (1, 192, 4, 4, 4)
    assert store.pooled("cls", 4).shape == (5, 768)
    # cached: found from the identity alone (no network built), same entry
    info = encoder_info("swin-unetr")
    hit = lookup(ds, info, PRE, CFG, cache_dir=tmp_path)
    assert hit is not None and hit.reused and hit.path == store.path and hit.volume["size"] == [32, 32, 32]
    # another size is another entry
    assert lookup(ds, info, PreprocessConfig(resolution=64), CFG, cache_dir=tmp_path) is None


def test_resume_recomputes_only_missing_shards(tmp_path: Path) -> None:
    ds = _ct_dataset()
    enc = create_encoder("swin-unetr")
    store = extract(ds, enc, PRE, CFG, cache_dir=tmp_path)
    assert store is not None
    before = store.rows("cls", 4).copy()
    kept = (shard_dir(store.path, 0) / "done.json").stat().st_mtime_ns
    (store.path / "manifest.json").unlink()
    (shard_dir(store.path, 1) / "done.json").unlink()
    again = extract(ds, enc, PRE, CFG, cache_dir=tmp_path)
    assert again is not None and not again.reused and again.path == store.path
    assert (shard_dir(store.path, 0) / "done.json").stat().st_mtime_ns == kept  # shard 0 was not redone
    assert np.array_equal(again.rows("cls", 4), before)


def test_per_channel_views_and_refusals(tmp_path: Path) -> None:
    enc = create_encoder("swin-unetr")
    two = _ct_dataset(n=2, channels=2)
    store = extract(two, enc, PreprocessConfig(resolution=32, channels="per_channel"),
                    ExtractConfig(layers="last", progress=False), cache_dir=tmp_path)
    assert store is not None and store.rows("cls", 4).shape == (2, 2 * 768)
    flat = ArrayDataset([np.zeros((32, 32), np.float32)], [0], spatial_dims=2, name="flat")
    with pytest.raises(ConfigError, match="encodes whole volumes"):
        extract(flat, enc, PRE, CFG, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="multiple of 32"):
        extract(_ct_dataset(n=1), enc, PreprocessConfig(resolution=40), CFG, cache_dir=tmp_path)


def test_run_3d_end_to_end_records_family_weights_contract(tmp_path: Path) -> None:
    from medprobe.cli.main import main
    from medprobe.results import ResultsDB

    db = tmp_path / "results.db"
    argv = ["run", "--dataset", "phantom:ct3d-binary", "--data-opt", "n=24", "--encoder", "swin-unetr",
            "--resolution", "32", "--head", "logreg", "--device", "cpu", "--db", str(db),
            "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    rows = ResultsDB(db).runs()
    assert len(rows) == 1
    r = rows[0]
    assert r["encoder"] == "swin-unetr" and r["weights"] == "random:seed=0" and r["pretrained"] is False
    assert r["status"] == "complete" and r["layers"] == [4]
    v = r["labels"]["volume_input"]
    assert v["encoder_family"] == "swin_unetr" and v["input"] == [1, 32, 32, 32]
    assert v["intensity"] == "ct:0,2000" and "global average pool" in v["contract"]["cls"]
    assert r["preprocess"]["intensity"] == "ct:0,2000"
    assert r["compute"]["gflops"] and r["compute"]["gflops"] > 0
    auc = r["metrics"]["auc"][0]
    assert 0.0 <= auc <= 1.0


def test_ctvit_volume_path_and_local_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medprobe.encoders import get_spec, weights_available
    from medprobe.encoders.registry import EncoderSpec, register, unregister

    base = get_spec("ct-clip")
    spec = EncoderSpec(name="ct-clip-vol-test", family="ctvit", patch_size=4, width=32, depth=4, params_m=0.0,
                       default_layers=(0, 1, 2, 3), mean=base.mean, std=base.std, native_resolution=16,
                       hf_config={**base.hf_config, "dim": 32, "codebook_size": 16, "image_size": 16,
                                  "patch_size": 4, "temporal_patch_size": 2, "spatial_depth": 2,
                                  "temporal_depth": 2, "dim_head": 8, "heads": 4, "latent_dim": 12,
                                  "size": (8, 16, 16)})
    register(spec)
    try:
        ds = _ct_dataset(n=3)
        enc = create_encoder(spec.name)
        cfg = ExtractConfig(layers="1,3", progress=False)
        store = extract(ds, enc, PreprocessConfig(resize="pad"), cfg, cache_dir=tmp_path)
        assert store is not None and store.manifest["volume"]["size"] == [8, 16, 16]
        assert store.manifest["volume"]["resize"] == "pad" and store.manifest["volume"]["mean"] == 0.5
        assert store.manifest["dims"] == {"1": 32, "3": 12} and store.manifest["grids"]["1"] == [4, 4, 4]
        # CT-CLIP's input: HU / 1000 clipped to [-1, 1], resampled to 1.5 x 0.75 x 0.75 mm, centre crop / pad
        geom = volume_geometry((8, 16, 16), (1.5, 0.75, 0.75), "pad", "bilinear")
        x = VolumePreprocessor("ct:0,2000", "auto", geom, 0.5, 0.5)(ds.load(1))
        raw = np.moveaxis(ds.load(1).image, 2, 0)  # (Z, X, Y) at 2 x 1 x 1 mm: 16 slices -> 32 mm -> 21 slices
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0 and raw.shape == (16, 20, 24)
        with torch.inference_mode():
            want = enc.forward_features(x, (3,)).cls[3][0].numpy()
        assert np.abs(store.item(1, "cls", 3)[0] - want).max() <= 1e-5
        with pytest.raises(ConfigError, match="16x16 in-plane"):
            extract(ds, enc, PreprocessConfig(resolution=32), cfg, cache_dir=tmp_path)
    finally:
        unregister(spec.name)
    # a published weights file in MEDPROBE_WEIGHTS is found by name
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "model_swinvit.pt").write_bytes(b"x")
    monkeypatch.setenv("MEDPROBE_WEIGHTS", str(tmp_path / "w"))
    assert tmp_path / "w" / "model_swinvit.pt" in weights_available(get_spec("swin-unetr"))
