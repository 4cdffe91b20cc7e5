"""Encoder families as a table: a family defined outside src/ works end to end; unknown families and
options fail with one clear line; the built-in families declare what other code used to derive from names."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from medprobe.data import create_dataset
from medprobe.encoders import (
    Encoder,
    EncoderFamily,
    EncoderInfo,
    EncoderOutput,
    EncoderSpec,
    create_encoder,
    encoder_families,
    encoder_info,
    get_family,
    get_spec,
    list_specs,
    register,
    register_family,
)
from medprobe.encoders import flops as flops_mod
from medprobe.encoders.families import unregister_family
from medprobe.encoders.flops import gflops_per_image, spec_gflops
from medprobe.encoders.registry import unregister
from medprobe.encoders.weights import WeightsRef
from medprobe.errors import ConfigError, WeightsError
from medprobe.features import ExtractConfig, extract, lookup
from medprobe.preprocess import PreprocessConfig

TOY_FAMILY = "toyconv"
TOY = "toyconv-tiny"
WIDTH, PATCH, DEPTH = 16, 8, 3


@pytest.fixture(scope="module", autouse=True)
def _single_thread(single_thread: None) -> None:
    """Module-wide: see conftest.single_thread."""


class ToyConvEncoder(Encoder):
    """Patchify with a stride-8 conv, then ``DEPTH`` 1x1-conv blocks; CLS = mean of the grid."""

    def __init__(self, spec: EncoderSpec, scale: float = 1.0) -> None:
        super().__init__()
        self.spec = spec
        self.scale = scale
        self.stem = torch.nn.Conv2d(3, spec.width, PATCH, stride=PATCH)
        self.blocks = torch.nn.ModuleList(torch.nn.Conv2d(spec.width, spec.width, 1) for _ in range(spec.depth))

    def forward_features(self, x: torch.Tensor, layers: Sequence[int]) -> EncoderOutput:
        self.check_input_size(x.shape[2], x.shape[3])
        want = set(layers)
        h = self.stem(x.to(self.stem.weight.dtype))
        cls: dict[int, torch.Tensor] = {}
        patch: dict[int, torch.Tensor] = {}
        for i in range(max(want) + 1):
            h = torch.relu(self.blocks[i](h)) + h
            if i in want:
                patch[i] = h * self.scale
                cls[i] = patch[i].mean((2, 3))
        return EncoderOutput(cls=cls, patch=patch)


gflops_calls: list[tuple[int, int]] = []


def _toy_build(spec: EncoderSpec, ref: WeightsRef, options: Mapping[str, Any]) -> Encoder:
    if ref.kind != "random":
        raise WeightsError(f"{spec.name} has only random weights", ref.location)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ref.seed)
        enc = ToyConvEncoder(spec, scale=float(options.get("toy_scale", 1.0)))
    enc.weights_id, enc.pretrained = f"random:seed={ref.seed}", False
    return enc


def _toy_identity(spec: EncoderSpec, ref: WeightsRef) -> EncoderInfo | None:
    return EncoderInfo(spec, f"random:seed={ref.seed}", False) if ref.kind == "random" else None


def _toy_gflops(spec: EncoderSpec, resolution: tuple[int, int], layers: tuple[int, ...] | None) -> float | None:
    gflops_calls.append(resolution)
    return gflops_per_image(ToyConvEncoder(spec), resolution, layers=layers)


def toy_flops(h: int, w: int, blocks: int) -> float:
    """Analytic GFLOPs (2 x MACs, biases not counted) of the toy net up to ``blocks`` blocks."""
    positions = (h // PATCH) * (w // PATCH)
    return (2 * 3 * PATCH * PATCH * WIDTH + blocks * 2 * WIDTH * WIDTH) * positions / 1e9


@pytest.fixture
def toy() -> Iterator[EncoderSpec]:
    """The toy family and one spec of it, registered for one test and removed afterwards."""
    register_family(EncoderFamily(name=TOY_FAMILY, build=_toy_build, identity=_toy_identity, gflops=_toy_gflops,
                                  options=("toy_scale",), description="test-only conv net"))
    spec = register(EncoderSpec(name=TOY, family=TOY_FAMILY, patch_size=PATCH, width=WIDTH, depth=DEPTH,
                                params_m=0.001, default_layers=(0, 1, 2, 2), native_resolution=32))
    gflops_calls.clear()
    try:
        yield spec
    finally:
        unregister(TOY)
        unregister_family(TOY_FAMILY)
        for key in [k for k in flops_mod._SPEC_GFLOPS if k[0] == TOY]:
            del flops_mod._SPEC_GFLOPS[key]


def test_toy_family_end_to_end(toy: EncoderSpec, tmp_path) -> None:
    assert TOY_FAMILY in encoder_families() and get_family(TOY_FAMILY).needs_weights
    assert get_spec(TOY) is toy

    enc = create_encoder(TOY, seed=3)
    assert isinstance(enc, ToyConvEncoder) and not enc.training
    assert enc.weights_id == "random:seed=3" and enc.pretrained is False
    assert not any(p.requires_grad for p in enc.parameters())
    assert enc.resolve_layers("all") == (0, 1, 2) and enc.resolve_layers("last") == (2,)
    scaled = create_encoder(TOY, seed=3, toy_scale=2.0)  # the family's own option reaches build
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        doubled, plain = scaled.forward_features(x, (1,)), enc.forward_features(x, (1,))
    torch.testing.assert_close(doubled.patch[1], 2 * plain.patch[1])

    info = encoder_info(TOY, seed=3)
    assert info is not None and (info.weights_id, info.pretrained) == (enc.weights_id, False)
    assert info.resolve_layers("all") == enc.resolve_layers("all")  # not blockless: layers resolve as built

    assert spec_gflops(TOY, 32) == pytest.approx(toy_flops(32, 32, DEPTH))
    assert spec_gflops(TOY, (32, 48), [0]) == pytest.approx(toy_flops(32, 48, 1))
    assert spec_gflops(TOY, 32) == pytest.approx(toy_flops(32, 32, DEPTH))  # memoised: counted once
    assert gflops_calls == [(32, 32), (32, 48)]

    ds = create_dataset("phantom:xray2d-binary", n=8, size=32)
    pre, cfg = PreprocessConfig(resolution=(32, 32)), ExtractConfig(layers="all", batch_size=4, progress=False)
    store = extract(ds, enc, pre, cfg, cache_dir=tmp_path)
    assert store is not None and store.n_items == 8 and store.layers == [0, 1, 2]
    assert store.dim == WIDTH and store.grid == (32 // PATCH, 32 // PATCH)
    for layer in store.layers:
        assert store.rows("cls", layer).shape == (8, WIDTH)
        assert store.rows("mean", layer).shape == (8, WIDTH)
        assert store.rows("patch", layer).shape == (8, WIDTH, 4, 4)
        assert np.isfinite(store.rows("patch", layer)).all()
    np.testing.assert_allclose(store.rows("mean", 2), store.rows("patch", 2).mean((2, 3)), rtol=1e-5, atol=1e-6)
    # the family's identity finds the entry without building the network
    again = lookup(ds, info, pre, cfg, cache_dir=tmp_path)
    assert again is not None and again.path == store.path


def test_toy_family_is_gone_after_the_fixture() -> None:
    assert TOY_FAMILY not in encoder_families()
    with pytest.raises(ConfigError, match="unknown encoder 'toyconv-tiny'"):
        get_spec(TOY)


def test_unknown_family_fails_with_one_line() -> None:
    spec = EncoderSpec(name="nope-enc", family="nope", patch_size=16, width=8, depth=1, params_m=0.0,
                       default_layers=(0,))
    with pytest.raises(ConfigError, match="unknown encoder family 'nope'") as e:
        register(spec)
    assert "\n" not in str(e.value) and "dinov3" in str(e.value)  # lists the known families
    with pytest.raises(ConfigError, match="unknown encoder 'nope-enc'"):  # nothing was registered
        create_encoder("nope-enc")
    with pytest.raises(ConfigError, match=r"^unknown encoder family 'nope' \(did you mean 'none'\?; "
                                          r"known: .*onnx.*\)$"):
        get_family("nope")


def test_spec_whose_family_goes_away_fails_at_get_spec(toy: EncoderSpec) -> None:
    unregister_family(TOY_FAMILY)
    for call in (lambda: get_spec(TOY), lambda: create_encoder(TOY), lambda: encoder_info(TOY)):
        with pytest.raises(ConfigError, match=f"encoder '{TOY}': unknown encoder family '{TOY_FAMILY}'"):
            call()


def test_unknown_build_option_names_it(toy: EncoderSpec) -> None:
    with pytest.raises(ConfigError, match="does not take option 'onnx_output'.*it takes: toy_scale"):
        create_encoder(TOY, onnx_output="x")
    with pytest.raises(ConfigError, match="dinov3-vits16 .*does not take option 'bogus'.*it takes: none"):
        create_encoder("dinov3-vits16", bogus=1)
    with pytest.raises(ConfigError, match="does not take option 'onnx_input'"):
        create_encoder("none", onnx_input="pixels")
    # None means "not given": the CLI passes onnx_output=None whatever the encoder
    enc = create_encoder("none", onnx_output=None)
    assert enc.weights_id == "none:pixel-grid"


def test_builtin_families_declare_their_facts() -> None:
    assert {"dinov3", "dinov2", "dinov2_reg", "onnx", "none"} <= set(encoder_families())
    for name in ("dinov3", "dinov2", "dinov2_reg"):
        fam = get_family(name)
        assert fam.needs_weights and not fam.blockless and fam.options == ()
    onnx = get_family("onnx")
    assert onnx.needs_weights and onnx.blockless
    assert onnx.options == ("onnx_output", "onnx_input", "onnx_prefix_tokens", "onnx_patch")
    none = get_family("none")
    assert not none.needs_weights and none.blockless and none.options == ()
    assert none.gflops(get_spec("none"), (32, 32), None) is None
    for spec in list_specs():  # every built-in spec names a registered family
        assert get_family(spec.family).name == spec.family


def test_blockless_info_resolves_to_the_one_layer() -> None:
    info = encoder_info("none")
    assert info is not None and (info.weights_id, info.pretrained, info.depth) == ("none:pixel-grid", False, 1)
    assert info.resolve_layers("four") == info.resolve_layers("all") == (0,)
    vit = encoder_info("dinov3-vits16")
    assert vit is not None and vit.resolve_layers("four") == (2, 5, 8, 11) and vit.fixed_resolution is None
    assert encoder_info("dinov3-vits16", "hub") is None  # the revision is known only once loaded
    assert spec_gflops("none", 32) is None
