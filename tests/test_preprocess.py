"""Preprocessing: intensity options, channel handling, geometry, mean/std, slicing of volumes, bad values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medprobe.data.base import Item
from medprobe.errors import ConfigError, DataError
from medprobe.preprocess import CT_WINDOWS, PreprocessConfig, Preprocessor, apply_intensity, resolve_intensity

IMNET_MEAN = (0.485, 0.456, 0.406)
IMNET_STD = (0.229, 0.224, 0.225)


def make_pre(res: int | tuple[int, int] = 32, mean: tuple[float, ...] = (0.0, 0.0, 0.0),
             std: tuple[float, ...] = (1.0, 1.0, 1.0), patch_size: int = 1, **kw: Any) -> Preprocessor:
    r = (res, res) if isinstance(res, int) else res
    cfg = PreprocessConfig(resolution=r, **kw).resolved(mean=mean, std=std, native_resolution=r[0])
    return Preprocessor(cfg, patch_size=patch_size)


def item2d(img: np.ndarray, **kw: Any) -> Item:
    return Item(id="x", image=img, spatial_dims=2, source="mem.png", **kw)


def item3d(vol: np.ndarray, slice_axis: int = 2) -> Item:
    return Item(id="v", image=vol, spatial_dims=3, slice_axis=slice_axis, source="mem.nii.gz")


def denorm(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return x * s + m


# ------------------------------------------------------------------------------------------ intensity
@pytest.mark.parametrize("preset", ["soft_tissue", "lung", "bone", "brain"])
def test_ct_window_edges_map_to_0_and_1(preset: str) -> None:
    level, width = CT_WINDOWS[preset]
    hu = np.array([level - width / 2, level, level + width / 2, level - width, level + width], np.int16
                  if preset != "lung" else np.float32)
    out = apply_intensity(hu, f"ct:{preset}")
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0, 0.0, 1.0], atol=1e-6)
    assert out.dtype == np.float32
    # explicit level,width gives the same numbers
    np.testing.assert_array_equal(out, apply_intensity(hu, f"ct:{level},{width}"))


def test_ct_multi_gives_three_different_channels() -> None:
    hu = np.linspace(-1200, 1500, 64 * 64, dtype=np.float32).reshape(64, 64)
    out = apply_intensity(hu, "ct-multi:lung,soft_tissue,bone")
    assert out.shape == (64, 64, 3)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert np.abs(out[..., a] - out[..., b]).max() > 0.2
    for c, name in enumerate(("lung", "soft_tissue", "bone")):  # channel order = the order given
        np.testing.assert_allclose(out[..., c], apply_intensity(hu, f"ct:{name}"), atol=1e-6)
    # through the preprocessor the three windows become the three RGB channels (not replicated)
    x = make_pre(64, intensity="ct-multi:lung,soft_tissue,bone")(item2d(hu))
    assert x.shape == (1, 1, 3, 64, 64)
    np.testing.assert_allclose(x[0, 0].permute(1, 2, 0).numpy(), out, atol=1e-6)
    with pytest.raises(ConfigError):
        apply_intensity(np.zeros((4, 4, 3), np.float32), "ct-multi:lung,soft_tissue,bone", has_channels=True)


def test_mri_percentile_is_per_volume() -> None:
    rng = np.random.default_rng(0)
    vol = rng.uniform(0, 1000, size=(16, 16, 8)).astype(np.float32)
    vol[..., 0] *= 0.1  # a dark slice must stay dark: statistics are over the whole volume
    vol[0, 0, 5] = 1e6  # outlier clipped by the upper percentile
    out = apply_intensity(vol, "mri:percentile:1,99")
    lo, hi = np.percentile(vol, [1, 99])
    np.testing.assert_allclose(out, np.clip((vol - lo) / (hi - lo), 0, 1), atol=1e-5)
    assert out[0, 0, 5] == 1.0
    assert out[..., 0].max() < 0.2  # per-slice normalisation would stretch it to 1
    x = make_pre(16, intensity="mri:percentile:1,99")(item3d(vol))
    assert x.shape == (8, 1, 3, 16, 16)
    np.testing.assert_allclose(x[0, 0, 0].numpy(), out[..., 0], atol=1e-5)
    # default range
    d = apply_intensity(vol, "mri:percentile")
    lo, hi = np.percentile(vol, [0.5, 99.5])
    np.testing.assert_allclose(d, np.clip((vol - lo) / (hi - lo), 0, 1), atol=1e-5)


def test_mri_zscore_over_foreground() -> None:
    rng = np.random.default_rng(1)
    vol = np.zeros((20, 20, 10), np.float32)
    vol[5:15, 5:15] = rng.normal(300, 50, size=(10, 10, 10))
    out = apply_intensity(vol, "mri:zscore")
    fg = vol[vol != 0]
    mu, sd = fg.mean(), fg.std()
    np.testing.assert_allclose(out, np.clip(((vol - mu) / sd + 3) / 6, 0, 1), atol=1e-5)
    assert abs(float(out[vol != 0].mean()) - 0.5) < 1e-3
    assert out.min() >= 0 and out.max() <= 1


def test_pet_suv_clip() -> None:
    suv = np.array([-1.0, 0.0, 5.0, 10.0, 25.0], np.float32)
    np.testing.assert_allclose(apply_intensity(suv, "pet:suv"), [0, 0, 0.5, 1, 1], atol=1e-6)
    np.testing.assert_allclose(apply_intensity(suv, "pet:suv:0,20"), [0, 0, 0.25, 0.5, 1], atol=1e-6)


def test_uint8_uint16_minmax_none() -> None:
    np.testing.assert_allclose(apply_intensity(np.array([0, 51, 255], np.uint8), "uint8"), [0, 0.2, 1], atol=1e-6)
    np.testing.assert_allclose(apply_intensity(np.array([0, 13107, 65535], np.uint16), "uint16"), [0, 0.2, 1],
                               atol=1e-6)
    np.testing.assert_allclose(apply_intensity(np.array([10, 20, 30], np.int16), "minmax"), [0, 0.5, 1])
    np.testing.assert_array_equal(apply_intensity(np.full(5, 7.0), "minmax"), np.zeros(5))
    np.testing.assert_allclose(apply_intensity(np.array([0.25, 0.5]), "none"), [0.25, 0.5])


def test_auto_intensity_resolution() -> None:
    assert resolve_intensity("auto", "ct", np.int16) == "ct:soft_tissue"
    assert resolve_intensity("auto", "ct", np.uint8) == "uint8"
    assert resolve_intensity("auto", "mri", np.float32).startswith("mri:percentile")
    assert resolve_intensity("auto", "pet", np.float32).startswith("pet:suv")
    assert resolve_intensity("auto", "xray", np.uint8) == "uint8"
    assert resolve_intensity("auto", "generic", np.uint16) == "minmax"
    assert resolve_intensity("ct:lung", "mri", np.float32) == "ct:lung"


@pytest.mark.parametrize("bad", ["ct:nowhere", "ct:40", "ct:40,-5", "ct-multi:lung,bone", "mri:percentile:90,10",
                                 "pet:suv:5,1", "gamma", "uint8:3"])
def test_bad_intensity_spec_is_config_error(bad: str) -> None:
    with pytest.raises(ConfigError):
        PreprocessConfig(intensity=bad)


# ------------------------------------------------------------------------------------------- channels
def test_grey_replicated_to_three_identical_channels() -> None:
    img = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    x = make_pre(32, mean=IMNET_MEAN, std=IMNET_STD, intensity="uint8")(item2d(img))
    assert x.shape == (1, 1, 3, 32, 32)
    d = denorm(x[0, 0], IMNET_MEAN, IMNET_STD)
    for c in range(3):
        np.testing.assert_allclose(d[c].numpy(), img / 255.0, atol=1e-5)


def test_rgb_keeps_channel_order_pure_red_stays_red() -> None:
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 255
    x = make_pre(32, mean=IMNET_MEAN, std=IMNET_STD, intensity="uint8")(item2d(red))
    d = denorm(x[0, 0], IMNET_MEAN, IMNET_STD)
    np.testing.assert_allclose(d[0].numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(d[1:].numpy(), 0.0, atol=1e-5)
    # normalised values differ per channel with ImageNet statistics: (1 - .485) / .229 vs -.456 / .224
    assert x[0, 0, 0, 0, 0] == pytest.approx((1 - 0.485) / 0.229, abs=1e-4)
    assert x[0, 0, 1, 0, 0] == pytest.approx(-0.456 / 0.224, abs=1e-4)
    # an arbitrary RGB image is kept channel for channel
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    d = denorm(make_pre(32, mean=IMNET_MEAN, std=IMNET_STD, intensity="uint8")(item2d(rgb))[0, 0],
               IMNET_MEAN, IMNET_STD)
    np.testing.assert_allclose(d.permute(1, 2, 0).numpy(), rgb / 255.0, atol=1e-5)


def test_rgba_alpha_dropped() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((32, 32, 1), 128, np.uint8)], axis=-1)
    pre = make_pre(32, intensity="uint8")
    torch.testing.assert_close(pre(item2d(rgba)), pre(item2d(rgb)))


def test_per_channel_gives_one_view_per_channel() -> None:
    rng = np.random.default_rng(2)
    img = rng.uniform(0, 1, (32, 32, 5)).astype(np.float32)
    x = make_pre(32, intensity="none", channels="per_channel")(item2d(img))
    assert x.shape == (1, 5, 3, 32, 32)
    for v in range(5):
        for c in range(3):
            np.testing.assert_allclose(x[0, v, c].numpy(), img[..., v], atol=1e-6)
    vol = rng.uniform(0, 1, (16, 16, 4, 2)).astype(np.float32)  # multi-modal volume: 4 slices, 2 channels
    x = make_pre(16, intensity="none", channels="per_channel")(item3d(vol))
    assert x.shape == (4, 2, 3, 16, 16)
    np.testing.assert_allclose(x[3, 1, 0].numpy(), vol[:, :, 3, 1], atol=1e-6)


def test_channel_mode_errors_and_first3() -> None:
    img5 = np.random.default_rng(3).uniform(0, 1, (32, 32, 5)).astype(np.float32)
    with pytest.raises(DataError, match="5-channel"):
        make_pre(32, intensity="none")(item2d(img5))
    with pytest.raises(DataError, match="keep"):
        make_pre(32, intensity="none", channels="keep")(item2d(img5[..., 0]))
    x = make_pre(32, intensity="none", channels="first3")(item2d(img5))
    np.testing.assert_allclose(x[0, 0].permute(1, 2, 0).numpy(), img5[..., :3], atol=1e-6)
    x = make_pre(32, intensity="none", channels="replicate")(item2d(img5))
    for c in range(3):
        np.testing.assert_allclose(x[0, 0, c].numpy(), img5[..., 0], atol=1e-6)


# ------------------------------------------------------------------------------------------- geometry
def test_pad_centres_with_zeros_before_normalisation() -> None:
    img = np.full((28, 28), 255, np.uint8)
    x = make_pre(64, mean=IMNET_MEAN, std=IMNET_STD, intensity="uint8", resize="pad")(item2d(img))
    assert x.shape == (1, 1, 3, 64, 64)
    d = denorm(x[0, 0], IMNET_MEAN, IMNET_STD).numpy()
    inside = np.zeros((64, 64), bool)
    inside[18:46, 18:46] = True
    np.testing.assert_allclose(d[:, inside], 1.0, atol=1e-5)
    np.testing.assert_allclose(d[:, ~inside], 0.0, atol=1e-5)  # zero in [0, 1] space, i.e. -mean/std after
    with pytest.raises(DataError, match="pad"):
        make_pre(16, intensity="uint8", resize="pad")(item2d(img))


def test_stretch_and_aspect_pad() -> None:
    img = np.full((16, 32), 200, np.uint8)  # 1:2 aspect
    s = make_pre(64, intensity="uint8", resize="stretch")(item2d(img))
    assert s.shape == (1, 1, 3, 64, 64)
    np.testing.assert_allclose(s.numpy(), 200 / 255, atol=1e-5)  # the whole frame is image
    a = make_pre(64, intensity="uint8", resize="aspect_pad")(item2d(img))[0, 0, 0].numpy()
    rows = np.where(a.max(1) > 0.5)[0]
    cols = np.where(a.max(0) > 0.5)[0]
    assert (rows.min(), rows.max() + 1) == (16, 48)  # scaled x2 to 32x64, centred vertically
    assert (cols.min(), cols.max() + 1) == (0, 64)
    assert (cols.max() + 1 - cols.min()) / (rows.max() + 1 - rows.min()) == pytest.approx(2.0)
    np.testing.assert_allclose(a[:16], 0.0)
    np.testing.assert_allclose(a[48:], 0.0)
    # non-square target
    b = make_pre((32, 96), intensity="uint8", resize="aspect_pad")(item2d(img))
    assert b.shape[-2:] == (32, 96)


def test_interpolation_options_differ() -> None:
    img = (np.indices((16, 16)).sum(0) % 2 * 255).astype(np.uint8)  # checkerboard
    outs = {m: make_pre(40, intensity="uint8", interpolation=m)(item2d(img)) for m in
            ("bilinear", "bicubic", "nearest", "area")}
    assert set(np.unique(outs["nearest"].numpy())) <= {0.0, 1.0}
    assert not torch.allclose(outs["bilinear"], outs["nearest"])
    assert not torch.allclose(outs["bilinear"], outs["bicubic"])
    assert float(outs["bicubic"].min()) >= 0 and float(outs["bicubic"].max()) <= 1  # clamped overshoot


def test_mean_std_applied() -> None:
    img = np.array([[0, 255], [255, 0]], np.uint8).repeat(8, 0).repeat(8, 1)
    x = make_pre(16, mean=(0.5, 0.25, 0.0), std=(0.25, 0.5, 2.0), intensity="uint8")(item2d(img))
    np.testing.assert_allclose(np.unique(x[0, 0, 0].numpy()), [-2.0, 2.0], atol=1e-5)
    np.testing.assert_allclose(np.unique(x[0, 0, 1].numpy()), [-0.5, 1.5], atol=1e-5)
    np.testing.assert_allclose(np.unique(x[0, 0, 2].numpy()), [0.0, 0.5], atol=1e-5)
    # an explicit mean/std in the config wins over the encoder's
    cfg = PreprocessConfig(resolution=(16, 16), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)).resolved(
        mean=IMNET_MEAN, std=IMNET_STD, native_resolution=16)
    assert cfg.mean == (0.0, 0.0, 0.0) and cfg.std == (1.0, 1.0, 1.0)


# ------------------------------------------------------------------------------------------ 3D slicing
def test_slice_axis_moves_for_volumes() -> None:
    vol = np.random.default_rng(4).uniform(0, 1, (6, 7, 5)).astype(np.float32)
    x = make_pre((8, 8), intensity="none", resize="pad")(item3d(vol, slice_axis=2))
    assert x.shape == (5, 1, 3, 8, 8)
    np.testing.assert_allclose(x[3, 0, 0, 1:7, 0:7].numpy(), vol[:, :, 3], atol=1e-6)
    x0 = make_pre((8, 8), intensity="none", resize="pad", slice_axis=0)(item3d(vol, slice_axis=2))
    assert x0.shape == (6, 1, 3, 8, 8)
    np.testing.assert_allclose(x0[2, 0, 0, 0:7, 1:6].numpy(), vol[2], atol=1e-6)
    # the item's own axis is the default
    x1 = make_pre((8, 8), intensity="none", resize="pad")(item3d(vol, slice_axis=1))
    assert x1.shape[0] == 7
    with pytest.raises(ConfigError):
        make_pre((8, 8), intensity="none", slice_axis=3)(item3d(vol))


def test_real_ct_volume_hu_window(shared_data: Path) -> None:
    from medprobe.data.io import read_volume

    vol = read_volume(shared_data / "format-samples" / "totalsegmentator-ct-mr" / "example_ct_sm.nii.gz")
    hu = vol.array
    assert np.issubdtype(hu.dtype, np.signedinteger) or np.issubdtype(hu.dtype, np.floating)
    assert hu.min() < -500 and hu.max() > 300  # real Hounsfield units: air and bone
    spec = resolve_intensity("auto", "ct", hu.dtype)
    assert spec == "ct:soft_tissue"
    h, w = (hu.shape[i] for i in range(3) if i != vol.slice_axis)
    pre = make_pre((h, w), intensity=spec)  # target = slice size: no resampling, exact comparison
    x = pre(Item(id="ct", image=hu, spatial_dims=3, slice_axis=vol.slice_axis, source="example_ct_sm.nii.gz"))
    n_slices = hu.shape[vol.slice_axis]
    assert x.shape == (n_slices, 1, 3, h, w)
    k = n_slices // 2
    mid = np.take(hu, k, axis=vol.slice_axis).astype(np.float32)
    np.testing.assert_allclose(x[k, 0, 0].numpy(), np.clip((mid - (40 - 200)) / 400, 0, 1), atol=1e-5)
    assert float((x[k, 0, 0] == 0).float().mean()) > 0.05  # air/lung below the window
    assert 0 < float(((x > 0) & (x < 1)).float().mean()) < 1
    # through the encoder's geometry: a 64x64 network input
    x64 = make_pre(64, mean=IMNET_MEAN, std=IMNET_STD, intensity=spec)(
        Item(id="ct", image=hu, spatial_dims=3, slice_axis=vol.slice_axis))
    assert x64.shape == (n_slices, 1, 3, 64, 64) and torch.isfinite(x64).all()


# ------------------------------------------------------------------------------------------ bad values
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_raise_data_error(bad: float) -> None:
    img = np.ones((32, 32), np.float32)
    img[3, 4] = bad
    with pytest.raises(DataError, match="mem.png") as e:
        make_pre(32, intensity="minmax")(item2d(img))
    assert "NaN" in str(e.value) and "\n" not in str(e.value)
    vol = np.ones((16, 16, 4), np.float32)
    vol[0, 0, 2] = bad
    with pytest.raises(DataError):
        make_pre(16, intensity="ct:lung")(item3d(vol))


def test_bad_shapes_and_tiny_images() -> None:
    # a source smaller than a patch is fine when resized up; the encoder's input may not be smaller
    assert make_pre(32, intensity="uint8", patch_size=16)(item2d(np.zeros((8, 8), np.uint8))).shape[-2:] == (32, 32)
    with pytest.raises(DataError, match="8x8 after resizing, smaller than one 16-px patch"):
        make_pre(8, intensity="uint8", patch_size=16)(item2d(np.zeros((8, 8), np.uint8)))
    with pytest.raises(DataError):
        make_pre(32, intensity="uint8")(item2d(np.zeros((0, 8), np.uint8)))
    with pytest.raises(DataError):
        make_pre(32, intensity="uint8")(item2d(np.zeros((2, 8, 8, 3), np.uint8)))
    with pytest.raises(ConfigError):
        Preprocessor(PreprocessConfig())  # unresolved


def test_config_validation_and_roundtrip() -> None:
    for bad in ({"channels": "rgb"}, {"resize": "crop"}, {"interpolation": "lanczos"}, {"resolution": (0, 8)}):
        with pytest.raises(ConfigError):
            PreprocessConfig(**bad)
    cfg = PreprocessConfig(intensity="ct:lung", resolution=48).resolved(mean=IMNET_MEAN, std=IMNET_STD,
                                                                         native_resolution=224)
    assert cfg.resolution == (48, 48)
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    assert PreprocessConfig().resolved(mean=IMNET_MEAN, std=IMNET_STD, native_resolution=224,
                                       modality="ct", dtype=np.int16).intensity == "ct:soft_tissue"
