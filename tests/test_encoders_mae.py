"""MAE ViT-B/16 and ViT-L/16 encoders equal timm's VisionTransformer and transformers' own ViTMAEModel forward.

Checkpoints are built in the layout of facebook's ``mae_pretrain_vit_{base,large}.pth`` (``{"model": state
dict}`` with timm ``VisionTransformer`` keys: the encoder of ``models_mae.MaskedAutoencoderViT``, whose blocks are
timm ``Block(qkv_bias=True, norm_layer=LayerNorm(eps=1e-6))``) and of ``mae_visualize_*.pth`` (the same plus the
pre-training decoder), with seeded random weights of tiny depth/width. The reference is timm's
``vit_base_patch16_224`` (the model timm loads ``vit_base_patch16_224.mae`` into) with ``dynamic_img_size=True``,
run in the test; features must agree to <= 1e-4 max abs at 224-equivalent and other input sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from medprobe.encoders import EncoderSpec, create_encoder, encoder_info, get_family, get_spec, register
from medprobe.encoders import flops as flops_mod
from medprobe.encoders._timm_layout import TimmViT, timm_keys, timm_params
from medprobe.encoders.flops import spec_gflops
from medprobe.encoders.registry import unregister
from medprobe.errors import WeightsError
from tests.reference_libs import import_reference

timm = import_reference("timm")

TOL = 1e-4
TINY = dict(embed_dim=64, depth=2, num_heads=4, img_size=64)


@pytest.fixture(scope="module", autouse=True)
def _single_thread(single_thread: None) -> None:
    """Module-wide: see conftest.single_thread."""


@pytest.fixture(scope="module")
def tiny() -> Any:
    spec = EncoderSpec(name="mae-tiny", family="mae", patch_size=16, width=64, depth=2, params_m=0.0,
                       default_layers=(0, 1, 1, 1), native_resolution=64,
                       hf_config=dict(heads=4, img_size=64, mlp_hidden=256, target="vit_mae"))
    register(spec)
    yield spec
    unregister(spec.name)
    for key in [k for k in flops_mod._SPEC_GFLOPS if k[0] == spec.name]:
        del flops_mod._SPEC_GFLOPS[key]


def reference(seed: int = 0) -> nn.Module:
    """timm's ViT-B/16 with tiny dims, seeded weights of real magnitude (including the stored pos_embed)."""
    m = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, dynamic_img_size=True, **TINY)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.5))
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
                p.add_(1.0)
    return m.eval()


def _grid(tokens: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    p = tokens[:, 1:]
    return p.reshape(p.shape[0], gh, gw, p.shape[-1]).permute(0, 3, 1, 2)


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def test_mae_checkpoint_equals_timm_and_vitmae(tiny: EncoderSpec, tmp_path: Path) -> None:
    ref = reference()
    sd = ref.state_dict()
    assert list(sd) == list(timm_keys(TimmViT.from_spec(tiny)))
    path = tmp_path / "mae_pretrain_vit_base.pth"
    torch.save({"model": sd}, path)
    enc = create_encoder("mae-tiny", weights=str(path))
    assert type(enc.model).__name__ == "ViTMAEModel" and enc.pretrained and enc.weights_id.startswith("sha256:")
    torch.manual_seed(0)
    for h, w in ((64, 64), (48, 80), (96, 96), (32, 32)):
        x = torch.randn(2, 3, h, w)
        with torch.inference_mode():
            ours = enc.forward_features(x, (0, 1))
            last = ref.forward_features(x)
            (mid,) = ref.forward_intermediates(x, indices=[0], norm=True, return_prefix_tokens=True,
                                               intermediates_only=True)
        assert _maxdiff(ours.cls[1], last[:, 0]) <= TOL
        assert _maxdiff(ours.patch[1], _grid(last, h // 16, w // 16)) <= TOL
        assert _maxdiff(ours.patch[0], mid[0]) <= TOL and _maxdiff(ours.cls[0], mid[1][:, 0]) <= TOL
    # transformers' ViTMAEModel forward, mask ratio 0 and noise in image order (no shuffle), at the native size
    x = torch.randn(2, 3, 64, 64)
    noise = torch.arange(16, dtype=torch.float32).expand(2, 16)
    with torch.inference_mode():
        own = enc.model(pixel_values=x, noise=noise).last_hidden_state
        assert own.shape == (2, 17, 64) and _maxdiff(own, ref.forward_features(x)) <= TOL


def test_visualize_checkpoint_decoder_is_read_past(tiny: EncoderSpec, tmp_path: Path) -> None:
    sd = reference(seed=1).state_dict()
    plain = tmp_path / "mae_pretrain_vit_base.pth"
    torch.save({"model": sd}, plain)
    full = {**sd, "mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.randn(32, 64),
            "decoder_pos_embed": torch.zeros(1, 17, 32), "decoder_blocks.0.norm1.weight": torch.ones(32),
            "decoder_norm.weight": torch.ones(32), "decoder_pred.weight": torch.randn(768, 32)}
    vis = tmp_path / "mae_visualize_vit_base.pth"
    torch.save({"model": full}, vis)
    a, b = create_encoder("mae-tiny", weights=str(plain)), create_encoder("mae-tiny", weights=str(vis))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(a.forward_features(x, (1,)).patch[1], b.forward_features(x, (1,)).patch[1])
    assert a.weights_id != b.weights_id  # each file's own hash is recorded
    info = encoder_info("mae-tiny", str(vis))
    assert info is not None and info.weights_id == b.weights_id

    bad = tmp_path / "bad.pth"
    torch.save({"model": {k: v for k, v in sd.items() if not k.startswith("norm.")}}, bad)
    with pytest.raises(WeightsError) as e:
        create_encoder("mae-tiny", weights=str(bad))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(bad)) and "missing tensor 'norm.weight'" in msg
    torch.save({"model": {**sd, "blocks.0.ls1.gamma": torch.ones(64)}}, bad)
    with pytest.raises(WeightsError, match="unexpected tensor 'blocks.0.ls1.gamma'"):
        create_encoder("mae-tiny", weights=str(bad))


def test_full_size_layout_params_and_gflops(tiny: EncoderSpec) -> None:
    for name, timm_name in (("mae-vitb16", "vit_base_patch16_224"), ("mae-vitl16", "vit_large_patch16_224")):
        spec = get_spec(name)
        with torch.device("meta"):
            ref = timm.create_model(timm_name, pretrained=False, num_classes=0, dynamic_img_size=True)
        sd = ref.state_dict()
        a = TimmViT.from_spec(spec)
        assert {k: tuple(v.shape) for k, v in sd.items()} == timm_keys(a), name
        n = sum(p.numel() for p in ref.parameters())
        assert timm_params(a) == n and spec.params_m == round(n / 1e6, 1)
    assert (get_spec("mae-vitb16").params_m, get_spec("mae-vitl16").params_m) == (85.8, 303.3)
    # cost: 2 x MACs of the patch conv, qkv, attention (QK^T and AV), projection and MLP
    a = TimmViT.from_spec(tiny)
    t, c = 1 + 3 * 5, 64
    block = 2 * t * c * 3 * c + 4 * t * t * c + 2 * t * c * c + 4 * t * c * 256
    assert spec_gflops("mae-tiny", (48, 80)) == pytest.approx((2 * 15 * c * 3 * 256 + 2 * block) / 1e9, rel=1e-9)
    assert spec_gflops("mae-tiny", (48, 80), [0]) == pytest.approx((2 * 15 * c * 3 * 256 + block) / 1e9, rel=1e-9)
    assert spec_gflops("mae-vitb16", 224) == pytest.approx(35.1, abs=0.05)  # timm lists ViT-B/16 at 17.6 GMACs
    fam = get_family("mae")
    assert fam.extra == "" and fam.options == () and "linear-probe" in fam.cls_feature
    assert a.kind == "vit_mae"


def test_random_init_is_seeded(tiny: EncoderSpec) -> None:
    a, b, c = (create_encoder("mae-tiny", seed=s) for s in (3, 3, 4))
    assert (a.weights_id, a.pretrained) == ("random:seed=3", False)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        fa, fb, fc = (e.forward_features(x, (1,)).cls[1] for e in (a, b, c))
    assert torch.equal(fa, fb) and not torch.allclose(fa, fc)


def test_release_files_are_found_locally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medprobe.encoders import weights_available

    monkeypatch.setenv("MEDPROBE_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights_available(get_spec("mae-vitb16")) == []
    torch.save({"model": {}}, tmp_path / "mae_pretrain_vit_base.pth")
    torch.save({"model": {}}, tmp_path / "mae_pretrain_vit_large.pth")
    assert weights_available(get_spec("mae-vitb16")) == [tmp_path / "mae_pretrain_vit_base.pth"]
    assert weights_available(get_spec("mae-vitl16")) == [tmp_path / "mae_pretrain_vit_large.pth"]
    with pytest.raises(WeightsError, match="missing tensor 'cls_token'"):  # an empty file is refused, not loaded
        create_encoder("mae-vitb16", weights=str(tmp_path / "mae_pretrain_vit_base.pth"))
