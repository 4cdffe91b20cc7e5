"""The 3D volume encoder family (``swin_unetr``) equals MONAI's Swin UNETR encoder loaded the published way.

A checkpoint is written in the layout of MONAI research-contributions' self-supervised ``model_swinvit.pt`` (a dict
with ``state_dict``; keys ``module.patch_embed.*``, ``module.layers{1-4}.0.blocks.N.*`` with ``mlp.fc1/fc2``,
``module.layers{1-4}.0.downsample.*``) from seeded random tensors; the reference is MONAI's own
``SwinUNETR.load_from`` of that file (the loader the authors' BTCV / BRATS scripts call) and ``swinViT(x,
normalize=True)``. medprobe's encoder must give the same stage grids and their global averages at the native 96^3
and at a non-cubic size. A small ``feature_size`` (12) keeps it fast; every key and shape rule is the real one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from medprobe.encoders import create_encoder, encoder_info, get_spec
from medprobe.encoders.flops import count_flops, spec_gflops
from medprobe.encoders.registry import EncoderSpec, register, unregister
from medprobe.errors import WeightsError
from tests.reference_libs import import_reference

TINY = "swin-unetr-test-f12"


@pytest.fixture(scope="module", autouse=True)
def tiny_spec() -> Iterator[EncoderSpec]:
    base = get_spec("swin-unetr")
    spec = EncoderSpec(name=TINY, family="swin_unetr", patch_size=2, width=192, depth=5, params_m=0.0,
                       default_layers=(1, 2, 3, 4), mean=base.mean, std=base.std, native_resolution=96,
                       hf_config={**base.hf_config, "feature_size": 12})
    register(spec)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield spec
    torch.set_num_threads(n)
    unregister(TINY)


def _reference_net(feature_size: int = 12) -> Any:
    monai = import_reference("monai")
    import_reference("einops")  # MONAI's swinViT forward rearranges with einops
    return monai.networks.nets.SwinUNETR(in_channels=1, out_channels=2, feature_size=feature_size).eval()


def published_checkpoint(path: Path, seed: int = 0, feature_size: int = 12) -> dict[str, torch.Tensor]:
    """Seeded random swinViT tensors in the published key layout, saved as ``{"state_dict": ...}``."""
    net = _reference_net(feature_size)
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for k, v in net.swinViT.state_dict().items():
        if v.is_floating_point():
            v = torch.randn(v.shape, generator=g) * (0.1 if "norm" in k else 0.05) + (1.0 if k.endswith(
                "norm1.weight") or k.endswith("norm2.weight") or k.endswith("norm.weight") else 0.0)
        k = k.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")
        sd[f"module.{k}"] = v.clone()
    torch.save({"state_dict": sd}, path)
    return sd


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("w") / "model_swinvit.pt"
    published_checkpoint(p)
    return p


def _reference_outputs(path: Path, x: torch.Tensor) -> list[torch.Tensor]:
    """MONAI: load_from(the published dict) then swinViT on (B, 1, X, Y, Z) = the contract's (D, H, W) permuted."""
    net = _reference_net()
    net.load_from(weights=torch.load(path, map_location="cpu", weights_only=True))
    with torch.inference_mode():
        outs = net.swinViT(x.permute(0, 1, 3, 4, 2).contiguous(), True)
    return [o.permute(0, 1, 4, 2, 3) for o in outs]  # (B, C, X, Y, Z) -> (B, C, Z, X, Y)


@pytest.mark.parametrize("size", [(96, 96, 96), (32, 64, 96)])
def test_equals_monai_swinvit_loaded_from_published_layout(ckpt: Path, size: tuple[int, int, int]) -> None:
    enc = create_encoder(TINY, weights=ckpt)
    assert enc.pretrained and enc.weights_id.startswith("sha256:")
    x = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = enc.forward_features(x, (0, 1, 2, 3, 4))
    ref = _reference_outputs(ckpt, x)
    for i, r in enumerate(ref):
        s = 2 ** (i + 1)
        assert out.patch[i].shape == (1, 12 * 2**i, size[0] // s, size[1] // s, size[2] // s)
        assert (out.patch[i] - r).abs().max().item() <= 1e-4, i
        assert (out.cls[i] - r.mean((2, 3, 4))).abs().max().item() <= 1e-4, i
    # a different checkpoint gives different features (the comparison is not vacuous)
    assert (out.cls[4] - create_encoder(TINY).forward_features(x, (4,)).cls[4]).abs().max() > 1e-3


def test_identity_without_building_matches_and_taps(ckpt: Path) -> None:
    enc = create_encoder(TINY, weights=ckpt)
    info = encoder_info(TINY, str(ckpt))
    assert info is not None and info.weights_id == enc.weights_id and info.pretrained
    assert info.resolve_layers("four") == enc.resolve_layers("four") == (1, 2, 3, 4)
    assert enc.resolve_layers("last") == (4,)
    rnd = create_encoder(TINY, weights="random:seed=3")
    assert rnd.weights_id == "random:seed=3" and not rnd.pretrained
    again = create_encoder(TINY, weights="random:seed=3")
    x = torch.rand(1, 1, 32, 32, 32)
    assert torch.equal(rnd.forward_features(x, (2,)).cls[2], again.forward_features(x, (2,)).cls[2])


def _one_line(e: pytest.ExceptionInfo[WeightsError], path: Path, key: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg and path.name in msg and key in msg, msg


def test_wrong_layout_missing_unexpected_one_line(tmp_path: Path, ckpt: Path) -> None:
    sd = torch.load(ckpt, weights_only=True)["state_dict"]
    missing = dict(sd)
    del missing["module.layers2.0.blocks.1.attn.qkv.weight"]
    p = tmp_path / "missing.pt"
    torch.save({"state_dict": missing}, p)
    with pytest.raises(WeightsError) as e:
        create_encoder(TINY, weights=p)
    _one_line(e, p, "layers2.0.blocks.1.attn.qkv.weight")

    extra = {**sd, "module.norm.weight": torch.ones(192)}
    p = tmp_path / "unexpected.pt"
    torch.save({"state_dict": extra}, p)
    with pytest.raises(WeightsError) as e:
        create_encoder(TINY, weights=p)
    _one_line(e, p, "norm.weight")

    # another layout: timm-style Swin names ("layers.0." instead of "layers1.0.")
    renamed = {k.replace("layers1.", "layers.0."): v for k, v in sd.items()}
    p = tmp_path / "timm_layout.pt"
    torch.save({"state_dict": renamed}, p)
    with pytest.raises(WeightsError) as e:
        create_encoder(TINY, weights=p)
    _one_line(e, p, "layers.0.0.blocks.0")

    # the file of another feature size: shapes differ
    p = tmp_path / "f24.pt"
    published_checkpoint(p, feature_size=24)
    with pytest.raises(WeightsError) as e:
        create_encoder(TINY, weights=p)
    _one_line(e, p, "patch_embed.proj.weight")


def test_safetensors_and_prefixed_states_load(tmp_path: Path, ckpt: Path) -> None:
    from safetensors.torch import save_file

    sd = torch.load(ckpt, weights_only=True)["state_dict"]
    p = tmp_path / "swin.safetensors"
    save_file({k.removeprefix("module."): v.contiguous() for k, v in sd.items()}, str(p))
    q = tmp_path / "ssl_state.pt"  # the SSL training script's SSLHead keeps the encoder under swin_vit.
    torch.save({"state_dict": {"module.swin_vit." + k.removeprefix("module."): v for k, v in sd.items()}}, q)
    x = torch.rand(1, 1, 32, 32, 32)
    want = create_encoder(TINY, weights=ckpt).forward_features(x, (3,)).cls[3]
    for f in (p, q):
        got = create_encoder(TINY, weights=f).forward_features(x, (3,)).cls[3]
        assert torch.equal(got, want)


def test_params_and_gflops_match_the_counter() -> None:
    full = create_encoder("swin-unetr")
    n = sum(p.numel() for p in full.parameters()) / 1e6
    assert get_spec("swin-unetr").params_m == pytest.approx(n, abs=0.01)
    # the family's count (meta device, stops at the deepest tap) vs torch's counter on MONAI's own forward
    ref = _reference_net().swinViT
    counted = count_flops(ref, torch.zeros(1, 1, 32, 32, 32)) / 1e9
    assert spec_gflops(TINY, 32, (0, 1, 2, 3, 4)) == pytest.approx(counted, rel=1e-9)
    assert spec_gflops(TINY, 32, (1,)) < spec_gflops(TINY, 32, (4,))
    # analytic: the patch embedding alone is a 2x2x2 conv, 1 -> 12 channels, on a 16^3 grid
    assert spec_gflops(TINY, 32, (0,)) == pytest.approx(2 * 8 * 12 * 16**3 / 1e9)
