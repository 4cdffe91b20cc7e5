"""FLOP counter against an analytic ViT count (FLOPs = 2 x MACs, matmul-like ops only)."""

from __future__ import annotations

import pytest
import torch
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from medprobe.encoders.base import Encoder, EncoderOutput
from medprobe.encoders.flops import attention_flops, count_flops, gflops_per_image
from medprobe.encoders.registry import get_spec
from medprobe.errors import ConfigError

VIT_S = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536)
VIT_B = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)


def _vit(arch: dict, device: str = "meta", attn: str | None = None) -> DINOv3ViTModel:
    cfg = DINOv3ViTConfig(**arch, num_register_tokens=4, patch_size=16)
    with torch.device(device):
        model = DINOv3ViTModel(cfg).eval()
    if attn:
        model.config._attn_implementation = attn
    return model


def analytic_vit_flops(d: int, depth: int, h: int, w: int, patch: int = 16, registers: int = 4,
                       channels: int = 3) -> int:
    """Textbook ViT count: patch embedding + per block qkv, QK^T, AV, out-proj, 2-layer 4x MLP."""
    p = (h // patch) * (w // patch)
    n = 1 + registers + p
    embed = 2 * (channels * patch * patch) * d * p
    block = (2 * n * d * 3 * d  # qkv projections
             + 2 * n * n * d  # attention scores Q K^T
             + 2 * n * n * d  # attention x V
             + 2 * n * d * d  # output projection
             + 2 * n * d * 4 * d * 2)  # MLP up + down
    return embed + depth * block


@pytest.mark.parametrize("arch", [VIT_S, VIT_B], ids=["vits16", "vitb16"])
@pytest.mark.parametrize("res", [224, 512])
def test_vit_flops_match_analytic(arch: dict, res: int) -> None:
    model = _vit(arch)  # meta device: shapes only, nothing computed
    got = gflops_per_image(model, res) * 1e9
    want = analytic_vit_flops(arch["hidden_size"], arch["num_hidden_layers"], res, res)
    assert abs(got - want) / want < 0.05
    assert got == pytest.approx(want, rel=1e-9)  # norms/softmax/GELU/RoPE are not counted at all


def test_non_square_and_channels() -> None:
    model = _vit(VIT_S)
    got = gflops_per_image(model, (224, 320)) * 1e9
    assert got == pytest.approx(analytic_vit_flops(384, 12, 224, 320), rel=1e-9)


def test_cpu_sdpa_attention_is_counted() -> None:
    """On CPU, F.scaled_dot_product_attention runs a fused kernel torch's counter has no formula for;
    the count with the default (sdpa) attention must equal eager attention's and the analytic one."""
    tiny = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)
    x = torch.randn(1, 3, 64, 48)
    torch.manual_seed(0)
    sdpa = count_flops(_vit(tiny, "cpu", "sdpa"), x)
    eager = count_flops(_vit(tiny, "cpu", "eager"), x)
    want = analytic_vit_flops(64, 2, 64, 48)
    assert sdpa == eager == want
    q = torch.randn(2, 3, 10, 8)
    k = torch.randn(2, 3, 7, 8)
    v = torch.randn(2, 3, 7, 5)
    assert count_flops(_Attn(), torch.stack([q, q])) == attention_flops(q.shape, q.shape, q.shape)
    assert attention_flops(q.shape, k.shape, v.shape) == 2 * 6 * 10 * 7 * 8 + 2 * 6 * 10 * 7 * 5


class _Attn(torch.nn.Module):
    def forward(self, qq: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(qq[0], qq[1], qq[1])


class _MetaEncoder(Encoder):
    def __init__(self) -> None:
        super().__init__()
        self.spec = get_spec("dinov3-vits16")
        self.model = _vit(VIT_S)

    def forward_features(self, x: torch.Tensor, layers: tuple[int, ...]) -> EncoderOutput:
        out = self.model(x)
        return EncoderOutput(cls={layers[0]: out.pooler_output}, patch={})


def test_gflops_per_image_with_medprobe_encoder() -> None:
    enc = _MetaEncoder()
    assert gflops_per_image(enc, 256) == pytest.approx(analytic_vit_flops(384, 12, 256, 256) / 1e9)
    with pytest.raises(ConfigError):
        gflops_per_image(enc, 250)  # not a multiple of the patch size
    assert enc.training and not enc.model.training  # each module's own mode restored after counting


def test_spec_gflops_costs_only_the_blocks_extraction_runs() -> None:
    from medprobe.encoders.flops import spec_gflops

    full = spec_gflops("dinov3-vits16", 224)
    assert full == pytest.approx(analytic_vit_flops(384, 12, 224, 224) / 1e9)
    assert spec_gflops("dinov3-vits16", 224, [11]) == pytest.approx(full)
    # layers 2 and 5 tapped: extraction stops after block 5, i.e. 6 of the 12 blocks run
    assert spec_gflops("dinov3-vits16", 224, [2, 5]) == pytest.approx(analytic_vit_flops(384, 6, 224, 224) / 1e9)
    assert spec_gflops("dinov3-vits16", (224, 320), [0]) == pytest.approx(
        analytic_vit_flops(384, 1, 224, 320) / 1e9)
