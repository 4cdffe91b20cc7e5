"""Pathology encoders (UNI, UNI2-h, Virchow2, CONCH, Phikon-v2) equal their authors' reference code.

Each checkpoint is built in the authors' exact file layout and key names, with seeded random weights the test
regenerates (tiny depth/width; the real network types and key names): the timm ``VisionTransformer`` the
authors load with ``timm.create_model(..., dynamic_img_size=True)`` (UNI: ``init_values=1e-5``; UNI2-h:
``mlp_layer=SwiGLUPacked, act_layer=SiLU, reg_tokens=8, no_embed_class=True``; Virchow2: ``SwiGLUPacked``,
SiLU, ``reg_tokens=4``, ``mlp_ratio=5.3375``) saved with ``torch.save`` / safetensors; CONCH's whole CoCa
``pytorch_model.bin`` (``visual.*``, ``text.*``, ``text_decoder.*``, ``logit_scale``); Phikon-v2's transformers
``Dinov2Model`` folder. medprobe's features must equal the reference's to <= 1e-4 (max abs) at the native
resolution and at other sizes (timm's ``dynamic_img_size`` resampling).

CONCH's own package does not install (it pins old timm / open_clip code). The reference for CONCH is its
published forward pass, written out below from ``conch/open_clip_custom`` (``coca_model._build_vision_tower``:
a timm ``VisionTransformer(embed_dim, depth, num_heads, mlp_ratio=4, img_size, patch_size, num_classes=0,
dynamic_img_size=True)`` whose ``forward`` is ``forward_features``; ``vision_tower.VisualModel`` with
``transformer.AttentionalPooler``; ``encode_image(proj_contrast=False, normalize=False)`` =
``VisualModel.forward_no_head``, ``encode_image()`` = ``normalize(VisualModel.forward(x)[0])``), on timm.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from medprobe.encoders import EncoderSpec, create_encoder, encoder_info, get_family, get_spec, register
from medprobe.encoders import flops as flops_mod
from medprobe.encoders._timm_layout import TimmViT, build_model, import_transformers, timm_keys, timm_params
from medprobe.encoders.flops import spec_gflops
from medprobe.encoders.pathology import ConchEncoder, conch_params
from medprobe.encoders.registry import unregister
from medprobe.errors import WeightsError
from tests.reference_libs import import_reference

timm = import_reference("timm")
from timm.layers import SwiGLUPacked  # noqa: E402  (after import_reference, which makes torchvision importable)

TOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _single_thread(single_thread: None) -> None:
    """Module-wide: see conftest.single_thread."""


# ---------------------------------------------------------------- the authors' networks (references)

# name -> (timm model name, the authors' create kwargs with tiny dims, our spec's arch facts)
TINY: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "uni": ("vit_large_patch16_224",
            dict(embed_dim=64, depth=2, num_heads=4, img_size=64, init_values=1e-5),
            dict(width=64, depth=2, patch=16, heads=4, img_size=64, mlp_hidden=256, layerscale=True)),
    "uni2-h": ("vit_huge_patch14_224",
               dict(embed_dim=48, depth=2, num_heads=4, img_size=56, patch_size=14, init_values=1e-5,
                    mlp_ratio=2.66667 * 2, mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, reg_tokens=8,
                    no_embed_class=True),
               dict(width=48, depth=2, patch=14, heads=4, img_size=56, mlp_hidden=256, layerscale=True, swiglu=True,
                    reg_tokens=8, no_embed_class=True)),
    "virchow2": ("vit_huge_patch14_224",
                 dict(embed_dim=48, depth=2, num_heads=4, img_size=56, init_values=1e-5, mlp_ratio=5.3375,
                      mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, reg_tokens=4),
                 dict(width=48, depth=2, patch=14, heads=4, img_size=56, mlp_hidden=256, layerscale=True,
                      swiglu=True, reg_tokens=4)),
}
# the authors' full-size create kwargs (model cards / config.json), for the layout and parameter checks
FULL: dict[str, tuple[str, dict[str, Any]]] = {
    "uni": ("vit_large_patch16_224", dict(img_size=224, init_values=1e-5)),
    "uni2-h": ("vit_huge_patch14_224", dict(img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5,
                                            embed_dim=1536, mlp_ratio=2.66667 * 2, no_embed_class=True,
                                            mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, reg_tokens=8)),
    "virchow2": ("vit_huge_patch14_224", dict(img_size=224, init_values=1e-5, reg_tokens=4, mlp_ratio=5.3375,
                                              mlp_layer=SwiGLUPacked, act_layer=nn.SiLU)),
}


def timm_model(name: str, **kw: Any) -> nn.Module:
    m: nn.Module = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True, **kw)
    return m.eval()


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Seeded weights of real magnitude everywhere (timm's init leaves biases 0 and layer scale 1e-5)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.3 if p.ndim > 1 else 0.5
            p.copy_(torch.randn(p.shape, generator=g) * scale)
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "ln_q.weight", "ln_k.weight",
                              "ln_contrast.weight", "ln_caption.weight")):
                p.add_(1.0)
    return model.eval()


class PublishedAttentionalPooler(nn.Module):
    """conch/open_clip_custom/transformer.py ``AttentionalPooler`` (sequence-first MultiheadAttention)."""

    def __init__(self, d_model: int, context_dim: int, n_head: int, n_queries: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_k(x).permute(1, 0, 2)  # NLD -> LND
        n = x.shape[1]
        q = self.ln_q(self.query)
        out = self.attn(q.unsqueeze(1).repeat(1, n, 1), x, x, need_weights=False)[0]
        return out.permute(1, 0, 2)


class PublishedVisual(nn.Module):
    """conch/open_clip_custom/vision_tower.py ``VisualModel`` with both attentional pools (CONCH's config)."""

    def __init__(self, width: int, depth: int, heads: int, img_size: int, embed_dim: int, caption_dim: int,
                 n_caption: int, pool_heads: int = 8) -> None:
        super().__init__()
        self.trunk = timm.models.vision_transformer.VisionTransformer(
            embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=4, img_size=img_size, patch_size=16,
            num_classes=0, dynamic_img_size=True)
        self.trunk.forward = self.trunk.forward_features  # as coca_model._build_vision_tower
        self.attn_pool_contrast = PublishedAttentionalPooler(embed_dim, width, pool_heads, 1)
        self.ln_contrast = nn.LayerNorm(embed_dim)
        self.proj_contrast = nn.Parameter(width ** -0.5 * torch.randn(embed_dim, embed_dim))
        self.attn_pool_caption = PublishedAttentionalPooler(caption_dim, width, pool_heads, n_caption)
        self.ln_caption = nn.LayerNorm(caption_dim)

    def forward_no_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trunk(x)
        return self.ln_contrast(self.attn_pool_contrast(x)[:, 0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.trunk(x)
        pooled = self.ln_contrast(self.attn_pool_contrast(x)[:, 0]) @ self.proj_contrast
        tokens = self.ln_caption(self.attn_pool_caption(x))
        return pooled, tokens


CONCH_TINY = dict(width=64, depth=2, heads=4, img_size=64, embed_dim=32, caption_dim=48, n_caption=6)


def _spec_of(name: str, family: str, arch: dict[str, Any], **kw: Any) -> EncoderSpec:
    a = dict(arch)
    width, depth, patch = a.pop("width"), a.pop("depth"), a.pop("patch")
    return EncoderSpec(name=name, family=family, patch_size=patch, width=width, depth=depth, params_m=0.0,
                       default_layers=(0, 1, 1, 1), native_resolution=a["img_size"], hf_config=a, **kw)


@pytest.fixture(scope="module")
def tiny_specs() -> Iterator[dict[str, EncoderSpec]]:
    """Test-only specs of the real families with tiny dims, registered for this module."""
    specs = {n: _spec_of(f"{n}-tiny", "pathology_vit", arch) for n, (_, _, arch) in TINY.items()}
    specs["conch"] = _spec_of("conch-tiny", "conch", dict(
        width=64, depth=2, patch=16, heads=4, img_size=64, mlp_hidden=256, pool_dim=32, pool_heads=8,
        pool_queries=1))
    for s in specs.values():
        register(s)
    try:
        yield specs
    finally:
        for s in specs.values():
            unregister(s.name)
            for key in [k for k in flops_mod._SPEC_GFLOPS if k[0] == s.name]:
                del flops_mod._SPEC_GFLOPS[key]


def _grid(tokens: torch.Tensor, n_prefix: int, gh: int, gw: int) -> torch.Tensor:
    p = tokens[:, n_prefix:]
    return p.reshape(p.shape[0], gh, gw, p.shape[-1]).permute(0, 3, 1, 2)


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


# ---------------------------------------------------------------- UNI, UNI2-h, Virchow2 vs timm


@pytest.mark.parametrize("name", list(TINY))
def test_timm_checkpoint_equals_timm(name: str, tiny_specs: dict[str, EncoderSpec], tmp_path: Path) -> None:
    timm_name, kw, _ = TINY[name]
    ref = randomize(timm_model(timm_name, **kw), seed=len(name))
    sd = ref.state_dict()
    assert list(sd) == list(timm_keys(TimmViT.from_spec(tiny_specs[name])))  # the layout medprobe expects
    if name == "virchow2":  # paige-ai/Virchow2 ships safetensors; MahmoodLab ships pytorch_model.bin
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        path = tmp_path / "pytorch_model.bin"
        torch.save(sd, path)
    enc = create_encoder(tiny_specs[name].name, weights=str(path))
    assert enc.pretrained and enc.weights_id.startswith("sha256:") and len(enc.weights_id) == 7 + 64
    n_prefix = 1 + kw.get("reg_tokens", 0)
    p = tiny_specs[name].patch_size
    native = kw["img_size"]
    torch.manual_seed(0)
    for h, w in ((native, native), (3 * p, 5 * p), (6 * p, 6 * p), (2 * p, 2 * p)):
        x = torch.randn(2, 3, h, w)
        with torch.inference_mode():
            ours = enc.forward_features(x, (0, 1))
            last = ref.forward_features(x)
            (mid,) = ref.forward_intermediates(x, indices=[0], norm=True, return_prefix_tokens=True,
                                               intermediates_only=True)
        gh, gw = h // p, w // p
        assert _maxdiff(ours.cls[1], last[:, 0]) <= TOL
        assert _maxdiff(ours.patch[1], _grid(last, n_prefix, gh, gw)) <= TOL
        assert _maxdiff(ours.patch[0], mid[0]) <= TOL and _maxdiff(ours.cls[0], mid[1][:, 0]) <= TOL
        assert float(last.abs().max()) > 0.5  # real activations, not a vanishing residual stream
    # the transformers class run by its own forward agrees at the native size (the key map is the network)
    x = torch.randn(1, 3, native, native)
    with torch.inference_mode():
        own = enc.model(pixel_values=x).last_hidden_state
        assert _maxdiff(own, ref.forward_features(x)) <= TOL


def test_full_size_layouts_and_params_match_the_authors_models() -> None:
    """The real UNI / UNI2-h / Virchow2 / CONCH networks (built on the meta device): key names, shapes and the
    parameter counts the registry states."""
    for name, (timm_name, kw) in FULL.items():
        spec = get_spec(name)
        with torch.device("meta"):
            ref = timm.create_model(timm_name, pretrained=False, num_classes=0, dynamic_img_size=True, **kw)
        sd = ref.state_dict()
        expected = timm_keys(TimmViT.from_spec(spec))
        assert list(sd) == list(expected), name
        assert all(tuple(sd[k].shape) == s for k, s in expected.items()), name
        n = sum(p.numel() for p in ref.parameters())
        assert timm_params(TimmViT.from_spec(spec)) == n and spec.params_m == round(n / 1e6, 1), name
    assert (get_spec("uni").params_m, get_spec("uni2-h").params_m, get_spec("virchow2").params_m) == (
        303.4, 681.4, 631.2)

    spec = get_spec("conch")
    with torch.device("meta"):
        pub = PublishedVisual(768, 12, 12, 448, embed_dim=512, caption_dim=768, n_caption=256)
        ours = ConchEncoder(spec, TimmViT.from_spec(spec), build_model(TimmViT.from_spec(spec)))
    pub_sd = {f"visual.{k}": v for k, v in pub.state_dict().items()}
    trunk = {k.removeprefix("visual.trunk."): tuple(v.shape) for k, v in pub_sd.items()
             if k.startswith("visual.trunk.")}
    assert trunk == timm_keys(TimmViT.from_spec(spec))
    head = {k: tuple(v.shape) for k, v in ours.head_tensors().items()}
    assert head == {k: tuple(v.shape) for k, v in pub_sd.items() if k.startswith(("visual.attn_pool_contrast.",
                                                                                   "visual.ln_contrast.",
                                                                                   "visual.proj_contrast"))}
    counted = sum(v.numel() for k, v in pub.named_parameters() if not k.startswith(("attn_pool_caption",
                                                                                      "ln_caption")))
    assert conch_params(spec) == counted and spec.params_m == round(counted / 1e6, 1) == 87.8
    assert (spec.native_resolution, spec.mean) == (448, (0.48145466, 0.4578275, 0.40821073))

    phikon = get_spec("phikon-v2")
    tf = import_transformers()
    with torch.device("meta"):
        m = tf.Dinov2Model(tf.Dinov2Config(**phikon.hf_config))
    n = sum(p.numel() for k, p in m.named_parameters() if "mask_token" not in k)
    assert phikon.family == "dinov2" and phikon.params_m == round(n / 1e6, 1)


# ---------------------------------------------------------------- CONCH vs its published forward


def _conch_checkpoint(visual: PublishedVisual, path: Path) -> dict[str, torch.Tensor]:
    """The whole CoCa state dict as MahmoodLab/CONCH's pytorch_model.bin holds it (text side tiny)."""
    g = torch.Generator().manual_seed(7)
    sd = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    for k, shape in {"text.positional_embedding": (8, 16), "text.cls_emb": (16,),
                     "text.token_embedding.weight": (10, 16), "text.text_projection": (16, 32),
                     "text.transformer.resblocks.0.attn.in_proj_weight": (48, 16), "text.ln_final.weight": (16,),
                     "text_decoder.resblocks.0.ln_1.weight": (16,), "text_decoder.text_projection": (16, 10),
                     "logit_scale": ()}.items():
        sd[k] = torch.randn(shape, generator=g)
    torch.save(sd, path)
    return sd


def test_conch_equals_published_forward(tiny_specs: dict[str, EncoderSpec], tmp_path: Path) -> None:
    visual = randomize(PublishedVisual(**CONCH_TINY), seed=5)  # type: ignore[arg-type]
    path = tmp_path / "pytorch_model.bin"
    _conch_checkpoint(visual, path)
    enc = create_encoder("conch-tiny", weights=str(path))
    assert isinstance(enc, ConchEncoder) and enc.pretrained
    torch.manual_seed(1)
    for h, w in ((64, 64), (48, 80), (112, 112)):  # native (448 for the real CONCH) and other sizes
        x = torch.randn(2, 3, h, w)
        with torch.inference_mode():
            ours = enc.forward_features(x, (0, 1))
            tokens = visual.trunk(x)
            pooled = visual.forward_no_head(x)
            latent = nn.functional.normalize(visual(x)[0], dim=-1)  # CoCa._encode_image(normalize=True)
            mine = enc.encode_image(x)
            mine_latent = enc.encode_image(x, proj_contrast=True, normalize=True)
        assert _maxdiff(ours.cls[1], tokens[:, 0]) <= TOL
        assert _maxdiff(ours.patch[1], _grid(tokens, 1, h // 16, w // 16)) <= TOL
        assert mine.shape == (2, 32) and _maxdiff(mine, pooled) <= TOL
        assert _maxdiff(mine_latent, latent) <= TOL
        assert not torch.allclose(ours.cls[0], ours.cls[1])


# ---------------------------------------------------------------- Phikon-v2: a transformers Dinov2 folder


def test_phikon_v2_folder_equals_transformers(tmp_path: Path) -> None:
    tf = import_transformers()
    cfg = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=4, use_swiglu_ffn=False,
               patch_size=16, image_size=64, layer_norm_eps=1e-6, layerscale_value=1e-5)
    torch.manual_seed(3)
    ref = randomize(tf.Dinov2Model(tf.Dinov2Config(**cfg)), seed=3)
    folder = tmp_path / "phikon-v2"
    ref.save_pretrained(folder, safe_serialization=True)  # owkin/phikon-v2: config.json + model.safetensors
    spec = replace(get_spec("phikon-v2"), name="phikon-v2-tiny", width=64, depth=2, hf_config=cfg)
    register(spec)
    try:
        enc = create_encoder("phikon-v2-tiny", weights=str(folder))
        assert enc.pretrained and enc.weights_id.startswith("sha256:")
        for h, w in ((64, 64), (48, 96)):
            x = torch.randn(2, 3, h, w)
            with torch.inference_mode():
                ours = enc.forward_features(x, (1,))
                last = ref(pixel_values=x).last_hidden_state  # the model card: last_hidden_state[:, 0, :]
            assert _maxdiff(ours.cls[1], last[:, 0]) <= TOL
            assert _maxdiff(ours.patch[1], _grid(last, 1, h // 16, w // 16)) <= TOL
    finally:
        unregister("phikon-v2-tiny")


# ---------------------------------------------------------------- bad files, weight sources, identity


def test_wrong_layout_is_one_line_naming_file_and_key(tiny_specs: dict[str, EncoderSpec], tmp_path: Path) -> None:
    timm_name, kw, _ = TINY["uni"]
    sd = randomize(timm_model(timm_name, **kw), seed=1).state_dict()
    cases = {
        "missing": ({k: v for k, v in sd.items() if k != "blocks.1.ls2.gamma"}, "missing tensor 'blocks.1.ls2.gamma'"),
        "unexpected": ({**sd, "head.weight": torch.zeros(2, 64)}, "unexpected tensor 'head.weight'"),
        "shape": ({**sd, "pos_embed": torch.zeros(1, 50, 64)}, "tensor 'pos_embed' has shape (1, 50, 64)"),
    }
    for case, (bad, needle) in cases.items():
        path = tmp_path / f"{case}.bin"
        torch.save(bad, path)
        with pytest.raises(WeightsError) as e:
            create_encoder("uni-tiny", weights=str(path))
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(str(path)) and needle in msg, msg
    # a UNI file given to CONCH: named by the CONCH key it lacks first
    path = tmp_path / "uni_as_conch.bin"
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"missing tensor 'visual\.trunk\.cls_token' \(and \d+ more problems\)"):
        create_encoder("conch-tiny", weights=str(path))
    # an unknown tensor inside CONCH's vision tower is refused (only the text side and caption pooler are skipped)
    visual = randomize(PublishedVisual(**CONCH_TINY), seed=2)  # type: ignore[arg-type]
    cpath = tmp_path / "conch_extra.bin"
    sd_c = _conch_checkpoint(visual, cpath)
    torch.save({**sd_c, "visual.head.proj.weight": torch.zeros(2, 2)}, cpath)
    with pytest.raises(WeightsError, match="unexpected tensor 'visual.head.proj.weight'"):
        create_encoder("conch-tiny", weights=str(cpath))


def test_weights_sources_and_identity(tiny_specs: dict[str, EncoderSpec], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    timm_name, kw, _ = TINY["uni"]
    sd = randomize(timm_model(timm_name, **kw), seed=4).state_dict()
    folder = tmp_path / "uni-folder"
    folder.mkdir()
    torch.save(sd, folder / "pytorch_model.bin")
    x = torch.randn(1, 3, 64, 64)
    from_file = create_encoder("uni-tiny", weights=str(folder / "pytorch_model.bin"))
    from_dir = create_encoder("uni-tiny", weights=str(folder))
    # the local Hugging Face cache (never the network): models--org--name/snapshots/<rev>/pytorch_model.bin
    cache = tmp_path / "hub"
    snap = cache / "models--MahmoodLab--uni-tiny" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "pytorch_model.bin").write_bytes((folder / "pytorch_model.bin").read_bytes())
    (cache / "models--MahmoodLab--uni-tiny" / "refs").mkdir()
    (cache / "models--MahmoodLab--uni-tiny" / "refs" / "main").write_text("a" * 40, encoding="utf-8")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    from_hub = create_encoder("uni-tiny", weights="MahmoodLab/uni-tiny")
    with torch.inference_mode():
        outs = [e.forward_features(x, (1,)).cls[1] for e in (from_file, from_dir, from_hub)]
    assert from_file.weights_id == from_dir.weights_id == from_hub.weights_id
    assert _maxdiff(outs[0], outs[1]) == 0.0 and _maxdiff(outs[0], outs[2]) == 0.0
    info = encoder_info("uni-tiny", str(folder))
    assert info is not None and (info.weights_id, info.pretrained) == (from_dir.weights_id, True)
    with pytest.raises(WeightsError, match="not in the local Hugging Face cache") as e:
        create_encoder("uni-tiny", weights="MahmoodLab/not-here")
    assert "\n" not in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match="holds none of model.safetensors, pytorch_model.bin"):
        create_encoder("uni-tiny", weights=str(empty))

    a, b, c = (create_encoder("virchow2-tiny", seed=s) for s in (0, 0, 1))
    assert (a.weights_id, a.pretrained) == ("random:seed=0", False)
    xs = torch.randn(1, 3, 56, 56)
    with torch.inference_mode():
        fa, fb, fc = (e.forward_features(xs, (1,)).patch[1] for e in (a, b, c))
    assert torch.equal(fa, fb) and not torch.allclose(fa, fc)
    assert fa.shape == (1, 48, 4, 4)  # 4 registers dropped
    info = encoder_info("virchow2-tiny", seed=1)
    assert info is not None and info.weights_id == "random:seed=1"


# ---------------------------------------------------------------- compute cost


def vit_gflops(a: TimmViT, h: int, w: int, blocks: int, n_prefix: int) -> float:
    """Analytic GFLOPs (2 x MACs of matmuls/convs) of a timm ViT up to ``blocks`` blocks."""
    c, n = a.width, (h // a.patch) * (w // a.patch)
    t = n + n_prefix
    per_block = 2 * t * c * 3 * c + 4 * t * t * c + 2 * t * c * c + 2 * t * c * a.mlp_hidden + 2 * t * a.fc2_in * c
    return (2 * n * c * 3 * a.patch ** 2 + blocks * per_block) / 1e9


def test_gflops_match_the_analytic_count(tiny_specs: dict[str, EncoderSpec]) -> None:
    for name in ("uni", "uni2-h", "virchow2", "conch"):
        spec = tiny_specs[name]
        a = TimmViT.from_spec(spec)
        p = spec.patch_size
        assert spec_gflops(spec.name, (4 * p, 6 * p)) == pytest.approx(vit_gflops(a, 4 * p, 6 * p, 2,
                                                                                     1 + a.reg_tokens), rel=1e-9)
        assert spec_gflops(spec.name, 4 * p, [0]) == pytest.approx(vit_gflops(a, 4 * p, 4 * p, 1, 1 + a.reg_tokens))
    for name, res in (("uni", 224), ("virchow2", 224), ("conch", 448)):
        spec = get_spec(name)
        a = TimmViT.from_spec(spec)
        got = spec_gflops(name, res)
        assert got == pytest.approx(vit_gflops(a, res, res, spec.depth, 1 + a.reg_tokens), rel=1e-9)
    assert math.isclose(spec_gflops("uni", 224) or 0, 123.1, abs_tol=0.05)  # timm lists ViT-L/16 at 61.6 GMACs
    for fam in ("pathology_vit", "conch"):
        f = get_family(fam)
        assert f.extra == "" and f.needs_weights and not f.blockless and f.options == ()


# ---------------------------------------------------------------- through medprobe.run on real data


@pytest.mark.shared_data
def test_run_records_family_and_weights(shared_data: Path, tmp_path: Path) -> None:
    import medprobe
    from medprobe.results import ResultsDB

    root = shared_data / "medmnist"
    if not (root / "pneumoniamnist.npz").is_file():
        pytest.skip(f"{root / 'pneumoniamnist.npz'} is absent")
    db = tmp_path / "results.db"
    task = {"name": "patho-conch", "dataset": "medmnist:pneumoniamnist",
            "data": {"root": str(root), "size": 28, "limit": "60,20,40"}, "split": "official",
            "encoder": "conch", "weights": "random:seed=0", "preprocess": {"resolution": 32},
            "features": {"layers": "last", "token": "cls", "progress": False}, "metrics": {"bootstrap": 20},
            "heads": ["logreg", "knn"], "head_params": {"logreg": {"Cs": [1.0]}}, "cache_dir": str(tmp_path / "c")}
    rows = medprobe.run(task, db=db, verbose=False)
    assert [r["head"] for r in rows] == ["logreg", "knn"]
    stored = {r["head"]: r for r in ResultsDB(db).runs(task="patho-conch")}
    for head in ("logreg", "knn"):
        r = stored[head]
        assert r["status"] == "complete" and r["encoder"] == "conch" and r["weights"] == "random:seed=0"
        assert get_spec(r["encoder"]).family == "conch" and r["pretrained"] is False
        assert r["split"]["n_test"] == 40 and r["layers"] == [11] and r["resolution"] == [32, 32]
        v, lo, hi = r["metrics"]["auc"]
        assert 0.0 <= lo <= v <= hi <= 1.0
