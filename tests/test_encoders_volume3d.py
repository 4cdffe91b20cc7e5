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
from medprobe.errors import ConfigError, WeightsError
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


# ---------------------------------------------------------------- CT-CLIP's CTViT
# CT-CLIP's own code does not install (it pins torch/transformers versions and imports torchvision's VGG at
# construction), so the reference below is its published forward written out with einops, following
# transformer_maskgit/attention.py (LayerNorm without bias, PEG with causal frame padding, cosine-sim attention
# with q/k scales and scale 8, GEGLU feed-forward, ContinuousPositionBias) and transformer_maskgit/ctvit.py
# (CTViT.forward(video, return_encoded_tokens=True): to_patch_emb -> encode (spatial, then temporal) -> vq), with
# the quantiser from the package CT-CLIP pins (vector-quantize-pytorch 1.1.2), and CTCLIP.forward's image pooling
# (mean over the slice axis, flatten, to_visual_latent). Module names are the published ones, so the checkpoint is
# the published state-dict layout: visual_transformer.* (encoder, decoder, first-frame layers), to_visual_latent,
# and CT-CLIP's text-side keys.
CT_CFG = dict(dim=32, codebook_size=16, image_size=16, patch_size=4, temporal_patch_size=2, spatial_depth=2,
              temporal_depth=2, dim_head=8, heads=4, latent_dim=12)
CTT = "ct-clip-test-tiny"


def _ref_modules() -> Any:
    import torch.nn.functional as F
    from einops import rearrange, repeat
    from einops.layers.torch import Rearrange
    from torch import einsum, nn

    import_reference("einops")
    vqp = import_reference("vector_quantize_pytorch")

    class LayerNorm(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.gamma = nn.Parameter(torch.ones(dim))
            self.register_buffer("beta", torch.zeros(dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta)

    class GEGLU(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x, gate = x.chunk(2, dim=-1)
            return F.gelu(gate) * x

    def feed_forward(dim: int, mult: int = 4) -> nn.Module:
        inner = int(mult * (2 / 3) * dim)
        return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner * 2, bias=False), GEGLU(), nn.Dropout(0.0),
                             nn.Linear(inner, dim, bias=False))

    class PEG(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.dsconv = nn.Conv3d(dim, dim, 3, groups=dim)

        def forward(self, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
            orig = x.shape
            x = x.reshape(*shape, -1)
            x = rearrange(x, "b ... d -> b d ...")
            x = F.pad(x, (1, 1, 1, 1, 2, 0), value=0.0)  # causal along frames
            x = self.dsconv(x)
            x = rearrange(x, "b d ... -> b ... d")
            x = rearrange(x, "b ... d -> b (...) d")
            return x.reshape(orig)

    class Attention(nn.Module):
        def __init__(self, dim: int, dim_head: int, heads: int) -> None:
            super().__init__()
            self.heads, self.scale = heads, 8
            self.norm, self.context_norm = LayerNorm(dim), LayerNorm(dim)
            self.num_null_kv = 0
            self.null_kv = nn.Parameter(torch.randn(heads, 0, dim_head))
            self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
            self.to_kv = nn.Linear(dim, dim_head * heads * 2, bias=False)
            self.q_scale = nn.Parameter(torch.ones(dim_head))
            self.k_scale = nn.Parameter(torch.ones(dim_head))
            self.to_out = nn.Linear(dim_head * heads, dim, bias=False)

        def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
            batch = x.shape[0]
            x = self.norm(x)
            q, k, v = self.to_q(x), *self.to_kv(x).chunk(2, dim=-1)
            q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
            nk, nv = repeat(self.null_kv, "h (n r) d -> b h n r d", b=batch, r=2).unbind(dim=-2)
            k, v = torch.cat((nk, k), dim=-2), torch.cat((nv, v), dim=-2)
            q, k = F.normalize(q, dim=-1) * self.q_scale, F.normalize(k, dim=-1) * self.k_scale
            sim = einsum("b h i d, b h j d -> b h i j", q, k) * self.scale
            if attn_bias is not None:
                sim = sim + F.pad(attn_bias, (self.num_null_kv, 0), value=0.0)
            out = einsum("b h i j, b h j d -> b h i d", sim.softmax(dim=-1), v)
            return self.to_out(rearrange(out, "b h n d -> b n (h d)"))

    class Transformer(nn.Module):
        def __init__(self, dim: int, depth: int, dim_head: int, heads: int) -> None:
            super().__init__()
            self.layers = nn.ModuleList([nn.ModuleList([PEG(dim), Attention(dim, dim_head, heads), None,
                                                        feed_forward(dim)]) for _ in range(depth)])
            self.norm_out = LayerNorm(dim)

        def forward(self, x: torch.Tensor, video_shape: tuple[int, ...], attn_bias: Any = None) -> torch.Tensor:
            for peg, attn, _, ff in self.layers:
                x = peg(x, video_shape) + x
                x = attn(x, attn_bias=attn_bias) + x
                x = ff(x) + x
            return self.norm_out(x)

    class ContinuousPositionBias(nn.Module):
        def __init__(self, dim: int, heads: int) -> None:
            super().__init__()
            self.net = nn.ModuleList([nn.Sequential(nn.Linear(2, dim), nn.LeakyReLU(0.1)),
                                      nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(0.1)), nn.Linear(dim, heads)])

        def forward(self, *dims: int) -> torch.Tensor:
            grid = torch.stack(torch.meshgrid(*[torch.arange(d) for d in dims], indexing="ij"))
            grid = rearrange(grid, "c ... -> (...) c")
            rel = rearrange(grid, "i c -> i 1 c") - rearrange(grid, "j c -> 1 j c")
            rel = torch.sign(rel) * torch.log(rel.abs() + 1)
            rel = rel.to(torch.float32)
            for layer in self.net:
                rel = layer(rel.float())
            return rearrange(rel, "i j h -> h i j")

    class CTViT(nn.Module):
        def __init__(self, *, dim: int, codebook_size: int, image_size: int, patch_size: int,
                     temporal_patch_size: int, spatial_depth: int, temporal_depth: int, dim_head: int,
                     heads: int) -> None:
            super().__init__()
            p, pt = patch_size, temporal_patch_size
            self.image_size, self.patch_size = image_size, p
            self.spatial_rel_pos_bias = ContinuousPositionBias(dim, heads)
            self.to_patch_emb_first_frame = nn.Sequential(
                Rearrange("b c 1 (h p1) (w p2) -> b 1 h w (c p1 p2)", p1=p, p2=p), nn.LayerNorm(p * p),
                nn.Linear(p * p, dim), nn.LayerNorm(dim))
            self.to_patch_emb = nn.Sequential(
                Rearrange("b c (t pt) (h p1) (w p2) -> b t h w (c pt p1 p2)", p1=p, p2=p, pt=pt),
                nn.LayerNorm(p * p * pt), nn.Linear(p * p * pt, dim), nn.LayerNorm(dim))
            args = (dim, spatial_depth, dim_head, heads)
            self.enc_spatial_transformer = Transformer(*args)
            self.enc_temporal_transformer = Transformer(dim, temporal_depth, dim_head, heads)
            self.vq = vqp.VectorQuantize(dim=dim, codebook_size=codebook_size, use_cosine_sim=True)
            self.dec_spatial_transformer = Transformer(*args)
            self.dec_temporal_transformer = Transformer(dim, temporal_depth, dim_head, heads)
            self.to_pixels_first_frame = nn.Sequential(nn.Linear(dim, p * p))
            self.to_pixels = nn.Sequential(nn.Linear(dim, p * p * pt))

        def encode(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            b = tokens.shape[0]
            h = w = self.image_size // self.patch_size
            video_shape = tuple(tokens.shape[:-1])
            tokens = rearrange(tokens, "b t h w d -> (b t) (h w) d")
            tokens = self.enc_spatial_transformer(tokens, attn_bias=self.spatial_rel_pos_bias(h, w),
                                                  video_shape=video_shape)
            spatial = rearrange(tokens, "(b t) (h w) d -> b t h w d", b=b, h=h, w=w)
            tokens = rearrange(spatial, "b t h w d -> (b h w) t d")
            tokens = self.enc_temporal_transformer(tokens, video_shape=video_shape)
            return spatial, rearrange(tokens, "(b h w) t d -> b t h w d", b=b, h=h, w=w)

        def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            assert tuple(video.shape[-2:]) == (self.image_size, self.image_size)
            tokens = self.to_patch_emb(video)
            *_, h, w, _ = tokens.shape
            spatial, tokens = self.encode(tokens)
            tokens = rearrange(tokens, "b t h w d -> b (t h w) d")
            tokens, _, _ = self.vq(tokens, mask=None)
            return spatial, rearrange(tokens, "b (t h w) d -> b t h w d", h=h, w=w)

    return CTViT


def ctclip_checkpoint(path: Path, seed: int = 0) -> Any:
    """Seeded random tensors in CT-CLIP's state-dict layout; returns the reference (CTViT, to_visual_latent)."""
    ctvit = _ref_modules()(**{k: v for k, v in CT_CFG.items() if k != "latent_dim"}).eval()
    grid = CT_CFG["image_size"] // CT_CFG["patch_size"]
    latent = torch.nn.Linear(grid * grid * CT_CFG["dim"], CT_CFG["latent_dim"], bias=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*ctvit.named_parameters(), *ctvit.named_buffers(), *latent.named_parameters()]:
            if t.is_floating_point() and t.numel() and not name.endswith("beta"):
                base = 1.0 if name.endswith(("gamma", "q_scale", "k_scale")) else 0.0
                t.copy_(base + torch.randn(t.shape, generator=g) * (0.3 if "embed" in name else 0.1))
    sd = {f"visual_transformer.{k}": v for k, v in ctvit.state_dict().items()}
    sd["to_visual_latent.weight"] = latent.weight.detach().clone()
    # CT-CLIP's other parts (text tower, text projection, temperature): present in the published file
    sd["text_transformer.embeddings.word_embeddings.weight"] = torch.randn(10, 8, generator=g)
    sd["to_text_latent.weight"] = torch.randn(CT_CFG["latent_dim"], 8, generator=g)
    sd["temperature"] = torch.tensor(1.0)
    torch.save(sd, path)
    return ctvit, latent


@pytest.fixture(scope="module")
def ct_spec() -> Iterator[EncoderSpec]:
    base = get_spec("ct-clip")
    spec = EncoderSpec(name=CTT, family="ctvit", patch_size=4, width=32, depth=4, params_m=0.0,
                       default_layers=(0, 1, 2, 3), mean=base.mean, std=base.std, native_resolution=16,
                       hf_config={**base.hf_config, **CT_CFG, "size": (8, 16, 16)})
    register(spec)
    yield spec
    unregister(CTT)


@pytest.mark.parametrize("slices", [8, 12])
def test_ctvit_equals_published_forward(ct_spec: EncoderSpec, tmp_path: Path, slices: int) -> None:
    path = tmp_path / "CT-CLIP_v2.pt"
    ref, latent = ctclip_checkpoint(path)
    enc = create_encoder(CTT, weights=path)
    assert enc.pretrained and enc.depth == 4
    x = torch.randn(2, 1, slices, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        out = enc.forward_features(x, (0, 1, 2, 3))
        spatial, tokens = ref(x)
        pooled = latent(tokens.mean(dim=1).reshape(2, -1))  # CTCLIP.forward: mean over slices, flatten, project
    want_tokens = tokens.permute(0, 4, 1, 2, 3)
    assert out.patch[3].shape == (2, 32, slices // 2, 4, 4)
    assert (out.patch[3] - want_tokens).abs().max().item() <= 1e-4  # quantised: equal codebook vectors
    assert (out.cls[3] - pooled).abs().max().item() <= 1e-4
    assert (out.patch[1] - spatial.permute(0, 4, 1, 2, 3)).abs().max().item() <= 1e-4
    assert (out.cls[1] - spatial.mean(dim=(1, 2, 3))).abs().max().item() <= 1e-4
    # the codebook really quantises (tokens are stored codebook rows, not normalised ones)
    book = ref.vq._codebook.embed[0]
    rows = out.patch[3].permute(0, 2, 3, 4, 1).reshape(-1, 32)
    assert (rows[:, None] - book[None]).abs().amax(-1).min(dim=1).values.max() < 1e-5


def test_ctvit_keys_sizes_and_cost(ct_spec: EncoderSpec, tmp_path: Path) -> None:
    path = tmp_path / "ctclip.pt"
    ctclip_checkpoint(path)
    sd = torch.load(path, weights_only=True)
    bad = dict(sd)
    del bad["visual_transformer.enc_temporal_transformer.layers.1.1.q_scale"]
    p = tmp_path / "missing.pt"
    torch.save(bad, p)
    with pytest.raises(WeightsError) as e:
        create_encoder(CTT, weights=p)
    _one_line(e, p, "enc_temporal_transformer.layers.1.1.q_scale")
    p = tmp_path / "unexpected.pt"
    torch.save({**sd, "visual_transformer.enc_spatial_transformer.layers.0.2.to_q.weight": torch.zeros(1)}, p)
    with pytest.raises(WeightsError) as e:
        create_encoder(CTT, weights=p)
    _one_line(e, p, "layers.0.2.to_q.weight")
    enc = create_encoder(CTT)
    with pytest.raises(ConfigError, match="16x16 in-plane"):
        enc.forward_features(torch.zeros(1, 1, 8, 32, 32), (3,))
    with pytest.raises(ConfigError, match="multiple of 2 slices"):
        enc.forward_features(torch.zeros(1, 1, 7, 16, 16), (3,))
    full = create_encoder("ct-clip")
    assert get_spec("ct-clip").params_m == pytest.approx(sum(q.numel() for q in full.parameters()) / 1e6, abs=0.01)
    # the family's count (meta device) vs torch's counter on the published forward, spatial + temporal + latent
    ref, latent = ctclip_checkpoint(tmp_path / "again.pt")

    class Published(torch.nn.Module):
        def forward(self, v: torch.Tensor) -> torch.Tensor:
            _, tokens = ref(v)
            return latent(tokens.mean(dim=1).reshape(1, -1))

    counted = count_flops(Published(), torch.zeros(1, 1, 8, 16, 16)) / 1e9
    assert spec_gflops(CTT, 16, (3,)) == pytest.approx(counted, rel=1e-9)
