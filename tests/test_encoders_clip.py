"""CLIP-family image towers equal their reference implementations (open_clip, transformers, timm) on checkpoints
written in the authors' layouts with seeded random weights (tiny configs, real key names), at the native
resolution and at another one; bad checkpoints fail with one line naming the file and the first offending key;
costs match an analytic count; a CLIP encoder runs end to end on PneumoniaMNIST.

References, per family:
* ``clip``: open_clip's ``CLIP`` (OpenAI's layout, ``quick_gelu``) at the native resolution; transformers'
  ``CLIPModel`` (its own ``save_pretrained`` / forward with ``interpolate_pos_encoding``) at both resolutions;
* ``siglip2``: transformers' ``SiglipModel`` (Google's published layout) at both resolutions;
* ``biomedclip``: timm's ``VisionTransformer`` (open_clip's trunk; ``dynamic_img_size`` resamples the
  positions) with its weights written as open_clip writes BiomedCLIP (``visual.trunk.*``, ``visual.head.proj``,
  ``text.*``);
* ``pe_core``: timm's ``Eva`` PE-core model written as open_clip's ``PE-Core-*`` checkpoints (``visual.trunk.*``)
  and as Meta's ``PE-Core-*.pt`` (``visual.conv1.weight``, ``visual.transformer.resblocks.N.*``,
  ``visual.attn_pool.*``). Meta's own code (perception_models, not on PyPI) is not run: timm / open_clip are the
  reference. Copies of Meta's pe.py published in vLLM / sglang resample the absolute positions bilinearly at other
  sizes where timm uses antialiased bicubic: off-native PE features follow timm / open_clip.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from reference_libs import import_reference

from medprobe.encoders import EncoderSpec, create_encoder, encoder_info, get_family, get_spec, register
from medprobe.encoders import clip as clip_mod
from medprobe.encoders.flops import spec_gflops
from medprobe.encoders.registry import unregister
from medprobe.errors import WeightsError

TOL = 1e-4
TINY = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, patch_size=16,
            image_size=32)
PE_KW = dict(embed_dim=64, depth=2, num_heads=2, img_size=32, ref_feat_shape=(2, 2), num_classes=32,
             attn_pool_num_heads=2)
SIZES = ((32, 32), (48, 64))  # native (2x2 grid) and another (3x4 grid)


@pytest.fixture(scope="module", autouse=True)
def _single_thread(single_thread: None) -> None:
    """Module-wide: see conftest.single_thread."""


@pytest.fixture(scope="module")
def tiny() -> Iterator[dict[str, EncoderSpec]]:
    """One tiny spec per family (real architectures, depth 2, width 64), registered for this module."""
    specs = {
        "clip": EncoderSpec(name="t-clip", family="clip", patch_size=16, width=64, depth=2, params_m=0.0,
                            default_layers=(0, 1, 1, 1), native_resolution=32, hf_config=dict(TINY)),
        "siglip2": EncoderSpec(name="t-siglip2", family="siglip2", patch_size=16, width=64, depth=2, params_m=0.0,
                               default_layers=(0, 1, 1, 1), native_resolution=32, hf_config=dict(TINY)),
        "biomedclip": EncoderSpec(name="t-biomedclip", family="biomedclip", patch_size=16, width=64, depth=2,
                                  params_m=0.0, default_layers=(0, 1, 1, 1), native_resolution=32,
                                  hf_config=dict(TINY)),
        "pe_core": EncoderSpec(name="t-pe", family="pe_core", patch_size=16, width=64, depth=2, params_m=0.0,
                               default_layers=(0, 1, 1, 1), native_resolution=32,
                               hf_config=dict(timm_model="vit_pe_core_base_patch16_224", timm_kwargs=PE_KW)),
    }
    for s in specs.values():
        register(s)
    yield specs
    for s in specs.values():
        unregister(s.name)


def perturb(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded noise on every parameter (norm weights and biases included), so that any mis-mapped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def images(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, h, w, generator=g) for h, w in SIZES]


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.detach().float() - b.detach().float()).abs().max())


def grid(tokens: torch.Tensor, h: int, w: int, patch: int = 16) -> torch.Tensor:
    return tokens.reshape(tokens.shape[0], h // patch, w // patch, -1).permute(0, 3, 1, 2)


def openai_clip() -> Any:
    """A tiny open_clip CLIP (OpenAI's model: QuickGELU, class token, ln_pre/ln_post) with seeded weights."""
    open_clip = import_reference("open_clip")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.model.CLIP(
            embed_dim=32, quick_gelu=True,
            vision_cfg=open_clip.model.CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=16, image_size=32),
            text_cfg=open_clip.model.CLIPTextCfg(context_length=8, vocab_size=100, width=32, heads=2, layers=1))
    return perturb(model, 1)


def test_clip_openai_layout_equals_open_clip(tiny: dict[str, EncoderSpec], tmp_path: Path) -> None:
    model = openai_clip()
    path = tmp_path / "open_clip_pytorch_model.bin"
    sd = model.state_dict()
    assert "visual.transformer.resblocks.1.attn.in_proj_weight" in sd and "token_embedding.weight" in sd
    torch.save(sd, path)
    enc = create_encoder("t-clip", str(path))
    assert enc.pretrained and enc.weights_id.startswith("sha256:") and len(enc.weights_id) == 7 + 64
    info = encoder_info("t-clip", str(path))
    assert info is not None and info.weights_id == enc.weights_id
    x = images(0)[0]
    visual = model.visual
    visual.proj = None  # the features are taken before the projection to the joint space
    with torch.no_grad():
        ours = enc.forward_features(x, (0, 1))
        ref = visual.forward_intermediates(x, indices=[0, 1], normalize_intermediates=True, output_extra_tokens=True)
        visual.output_tokens = True
        pooled, tokens = visual(x)
    assert maxdiff(ours.cls[1], pooled) <= TOL
    assert maxdiff(ours.patch[1], grid(tokens, 32, 32)) <= TOL
    for i in (0, 1):  # every tap goes through ln_post
        assert maxdiff(ours.patch[i], ref["image_intermediates"][i]) <= TOL
        assert maxdiff(ours.cls[i], ref["image_intermediates_prefix"][i][:, 0]) <= TOL
    assert maxdiff(ours.cls[0], ours.cls[1]) > 1e-2  # the two taps differ (the test can tell layers apart)


def _hf_tiny(kind: str, seed: int) -> Any:
    transformers = clip_mod.transformers_module()
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=50,
                max_position_embeddings=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "clip":
            model = transformers.CLIPModel(transformers.CLIPConfig(vision_config=dict(TINY), text_config=text,
                                                                   projection_dim=16))
        else:
            model = transformers.SiglipModel(transformers.SiglipConfig(vision_config=dict(TINY), text_config=text))
    return perturb(model, seed + 1)


@pytest.mark.parametrize("family", ["clip", "siglip2"])
def test_transformers_layout_equals_transformers(tiny: dict[str, EncoderSpec], tmp_path: Path, family: str) -> None:
    model = _hf_tiny("clip" if family == "clip" else "siglip", seed=3)
    model.save_pretrained(tmp_path / "m")  # transformers' own file layout: vision_model.*, text_model.*, logit_scale
    enc = create_encoder(tiny[family].name, str(tmp_path / "m"))
    assert enc.pretrained and enc.weights_id == clip_mod.files_weights_id([tmp_path / "m" / "model.safetensors"])
    vision = model.vision_model
    for x in images(1):
        h, w = x.shape[-2:]
        with torch.no_grad():
            ours = enc.forward_features(x, (0, 1))
            ref = vision(pixel_values=x, interpolate_pos_encoding=True, output_hidden_states=True)
            norm = vision.post_layernorm
            first = norm(ref.hidden_states[1])
        assert maxdiff(ours.cls[1], ref.pooler_output) <= TOL, (family, h, w)
        if family == "clip":  # class token first; ln_post on every token
            assert maxdiff(ours.patch[1], grid(norm(ref.hidden_states[-1])[:, 1:], h, w)) <= TOL
            assert maxdiff(ours.cls[0], first[:, 0]) <= TOL
            assert maxdiff(ours.patch[0], grid(first[:, 1:], h, w)) <= TOL
        else:  # no class token; the MAP head pools the normed tokens of each tap
            assert maxdiff(ours.patch[1], grid(ref.last_hidden_state, h, w)) <= TOL
            with torch.no_grad():
                assert maxdiff(ours.cls[0], vision.head(first)) <= TOL
            assert maxdiff(ours.patch[0], grid(first, h, w)) <= TOL


def _timm_vit(seed: int) -> Any:
    timm = import_reference("timm")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.models.vision_transformer.VisionTransformer(
            img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=2, num_classes=0, global_pool="token",
            dynamic_img_size=True)
    return perturb(model, seed + 1)


def _biomedclip_file(tmp_path: Path, trunk: torch.nn.Module) -> Path:
    """An open_clip BiomedCLIP checkpoint: timm trunk, linear projection head, a (tiny) PubMedBERT text tower."""
    g = torch.Generator().manual_seed(5)
    sd = {f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()}
    sd["visual.head.proj.weight"] = torch.randn(32, 64, generator=g)
    sd["text.transformer.embeddings.word_embeddings.weight"] = torch.randn(20, 32, generator=g)
    sd["text.proj.0.weight"] = torch.randn(32, 32, generator=g)
    sd["logit_scale"] = torch.tensor(4.6)
    d = tmp_path / "biomedclip"
    d.mkdir()
    torch.save(sd, d / "open_clip_pytorch_model.bin")
    return d


def test_biomedclip_open_clip_layout_equals_timm(tiny: dict[str, EncoderSpec], tmp_path: Path) -> None:
    trunk = _timm_vit(7)
    d = _biomedclip_file(tmp_path, trunk)
    enc = create_encoder("t-biomedclip", str(d))  # a model folder as Hugging Face holds it
    assert enc.weights_id == clip_mod.files_weights_id([d / "open_clip_pytorch_model.bin"])
    assert not any("timm" in type(m).__module__ for m in enc.modules())  # runs without timm
    for x in images(2):
        h, w = x.shape[-2:]
        with torch.no_grad():
            ours = enc.forward_features(x, (0, 1))
            feats = trunk.forward_features(x)
            pooled = trunk.forward_head(feats, pre_logits=True)
            inter = trunk.forward_intermediates(x, indices=[0], norm=True, return_prefix_tokens=True,
                                                intermediates_only=True)
        assert maxdiff(ours.cls[1], pooled) <= TOL, (h, w)
        assert maxdiff(ours.patch[1], grid(feats[:, 1:], h, w)) <= TOL
        assert maxdiff(ours.patch[0], inter[0][0]) <= TOL
        assert maxdiff(ours.cls[0], inter[0][1][:, 0]) <= TOL
    # the positions are resampled as timm does (antialiased bicubic), not as transformers' ViT (no antialias)
    pos = enc.net.pos_embed
    plain = torch.nn.functional.interpolate(pos[:, 1:].reshape(1, 2, 2, 64).permute(0, 3, 1, 2), size=(3, 4),
                                            mode="bicubic", align_corners=False)
    ours_pos = clip_mod.resample_pos_embed(pos, (2, 2), (3, 4), 1)[:, 1:]
    assert maxdiff(ours_pos, plain.permute(0, 2, 3, 1).reshape(1, 12, 64)) > 1e-3


def _pe_model(seed: int) -> Any:
    timm = import_reference("timm")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model("vit_pe_core_base_patch16_224", pretrained=False, dynamic_img_size=True, **PE_KW)
    return perturb(model, seed + 1)


def test_pe_core_open_clip_layout_equals_timm(tiny: dict[str, EncoderSpec], tmp_path: Path) -> None:
    model = _pe_model(9)
    sd = {f"visual.trunk.{k}": v for k, v in model.state_dict().items()}  # open_clip PE-Core-*: timm trunk
    sd["text.token_embedding.weight"] = torch.zeros(10, 32)
    sd["logit_scale"] = torch.tensor(4.6)
    path = tmp_path / "open_clip_model.safetensors"
    import safetensors.torch

    safetensors.torch.save_file(sd, str(path))
    enc = create_encoder("t-pe", str(path))
    for x in images(3):
        h, w = x.shape[-2:]
        with torch.no_grad():
            ours = enc.forward_features(x, (0, 1))
            feats = model.forward_features(x)
            pooled = model.forward_head(feats, pre_logits=True)
            (g0, p0), = model.forward_intermediates(x, indices=[0], norm=True, return_prefix_tokens=True,
                                                    intermediates_only=True)
            pooled0 = model.forward_head(torch.cat([p0, g0.flatten(2).transpose(1, 2)], dim=1), pre_logits=True)
        assert maxdiff(ours.cls[1], pooled) <= TOL, (h, w)
        assert maxdiff(ours.patch[1], grid(feats[:, 1:], h, w)) <= TOL
        assert maxdiff(ours.patch[0], g0) <= TOL and maxdiff(ours.cls[0], pooled0) <= TOL


def _meta_pe_layout(model: Any) -> dict[str, torch.Tensor]:
    """A timm PE-core model's weights in Meta's perception_models layout (``PE-Core-*.pt``: OpenAI-style names,
    ``visual.attn_pool.*`` with a fused in-projection, ``visual.proj``) plus a text side."""
    out: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        if k == "cls_token":
            out["visual.class_embedding"] = v.reshape(-1)
        elif k == "pos_embed":
            out["visual.positional_embedding"] = v[0]
        elif k == "head.weight":
            out["visual.proj"] = v.t().contiguous()
        elif k.startswith(("attn_pool.q.", "attn_pool.kv.", "head.bias")):
            continue
        else:
            for a, b in (("patch_embed.proj", "conv1"), ("norm_pre", "ln_pre"), ("blocks.", "transformer.resblocks."),
                         ("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.qkv.", "attn.in_proj_"),
                         ("attn.proj", "attn.out_proj"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
                         ("attn_pool.latent", "attn_pool.probe"), ("attn_pool.proj", "attn_pool.attn.out_proj"),
                         ("attn_pool.norm", "attn_pool.layernorm")):
                k = k.replace(a, b)
            out["visual." + ("ln_post" + k[4:] if k.startswith("norm.") else k)] = v
    sd = model.state_dict()
    for kind in ("weight", "bias"):
        fused = torch.cat([sd[f"attn_pool.q.{kind}"], sd[f"attn_pool.kv.{kind}"]])
        out[f"visual.attn_pool.attn.in_proj_{kind}"] = fused
    out["token_embedding.weight"] = torch.zeros(10, 32)
    out["logit_scale"] = torch.tensor(4.6)
    return out


def test_pe_core_meta_layout_equals_timm(tiny: dict[str, EncoderSpec], tmp_path: Path) -> None:
    model = _pe_model(11)
    with torch.no_grad():
        model.head.bias.zero_()  # Meta's projection has no bias (timm's converter makes a zero one)
    sd = _meta_pe_layout(model)
    assert "visual.transformer.resblocks.1.attn.in_proj_weight" in sd and "visual.attn_pool.probe" in sd
    path = tmp_path / "PE-Core-tiny.pt"
    torch.save(sd, path)
    enc = create_encoder("t-pe", str(path))
    for x in images(6):
        h, w = x.shape[-2:]
        with torch.no_grad():
            ours = enc.forward_features(x, (1,))
            feats = model.forward_features(x)
        assert maxdiff(ours.cls[1], model.forward_head(feats, pre_logits=True)) <= TOL, (h, w)
        assert maxdiff(ours.patch[1], grid(feats[:, 1:], h, w)) <= TOL
    bad = {**sd, "visual.rope_extra": torch.zeros(2)}
    torch.save(bad, path)
    with pytest.raises(WeightsError, match="unexpected tensor") as e:
        create_encoder("t-pe", str(path))
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def _one_line(e: pytest.ExceptionInfo[WeightsError], path: Path, key: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and repr(key) in msg, msg


def test_bad_checkpoints_name_file_and_first_key(tiny: dict[str, EncoderSpec], tmp_path: Path) -> None:
    sd = openai_clip().state_dict()
    cases = {
        "missing": ({k: v for k, v in sd.items() if k != "visual.ln_post.weight"}, "visual.ln_post.weight",
                    "missing tensor"),
        "missing-qkv": ({k: v for k, v in sd.items() if k != "visual.transformer.resblocks.1.attn.in_proj_bias"},
                        "visual.transformer.resblocks.1.attn.in_proj_bias", "missing tensor"),
        "unexpected": ({**sd, "visual.transformer.resblocks.0.attn.rel_pos": torch.zeros(3)},
                       "visual.transformer.resblocks.0.attn.rel_pos", "unexpected tensor"),
        "stray": ({**sd, "extra_head.weight": torch.zeros(3)}, "extra_head.weight", "unexpected tensor"),
        "layout": ({"cls_token": torch.zeros(1, 1, 64), "blocks.0.attn.qkv.weight": torch.zeros(192, 64)},
                   "cls_token", "not a CLIP checkpoint"),
        "shape": ({**sd, "visual.ln_pre.weight": torch.zeros(65)}, "visual.ln_pre.weight", r"has shape \(65,\)"),
    }
    for name, (bad, key, what) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(bad, path)
        with pytest.raises(WeightsError, match=what) as e:
            create_encoder("t-clip", str(path))
        _one_line(e, path, key)
    # BiomedCLIP: a trunk tensor missing is named as the file names it (timm's fused qkv)
    trunk = {f"visual.trunk.{k}": v for k, v in _timm_vit(7).state_dict().items()}
    del trunk["visual.trunk.blocks.1.attn.qkv.weight"]
    path = tmp_path / "bm.pt"
    torch.save(trunk, path)
    with pytest.raises(WeightsError, match="missing tensor") as e:
        create_encoder("t-biomedclip", str(path))
    _one_line(e, path, "visual.trunk.blocks.1.attn.qkv.weight")
    # a CLIP file given to SigLIP is a wrong layout
    torch.save(sd, path)
    with pytest.raises(WeightsError, match="not a SigLIP checkpoint") as e:
        create_encoder("t-siglip2", str(path))
    _one_line(e, path, next(iter(sd)))
    with pytest.raises(WeightsError, match="not in the local Hugging Face cache"):
        create_encoder("t-clip", "hub-owner/not-cached-model")


def vit_flops(n_patch: int, n_prefix: int, d: int, m: int, depth: int, patch: int, map_head: bool) -> float:
    """Analytic GFLOPs (2 x MACs; matmuls only) of a pre-norm ViT, with an attention-pool head if ``map_head``."""
    t = n_patch + n_prefix
    total = 2 * n_patch * 3 * patch * patch * d  # patch embedding
    total += depth * (2 * t * (4 * d * d + 2 * d * m) + 4 * t * t * d)  # qkv + out, MLP; QK^T and AV
    if map_head:  # one latent query: q, kv over all tokens, attention, out projection, MLP
        total += 2 * d * d + 2 * t * d * 2 * d + 4 * t * d + 2 * d * d + 4 * d * m
    return total / 1e9


@pytest.mark.parametrize("name,n_prefix,m,map_head", [
    ("clip-vit-b16", 1, 3072, False), ("siglip2-vitb16", 0, 3072, True), ("biomedclip", 1, 3072, False),
    ("pe-core-b16", 1, 3072, True), ("clip-vit-l14", 1, 4096, False)])
def test_gflops_and_params(name: str, n_prefix: int, m: int, map_head: bool) -> None:
    spec = get_spec(name)
    res = spec.native_resolution
    n = (res // spec.patch_size) ** 2
    want = vit_flops(n, n_prefix, spec.width, m, spec.depth, spec.patch_size, map_head)
    assert spec_gflops(name, res) == pytest.approx(want, rel=1e-6)
    # up to block 0 only (the pooled feature is taken at every tap): patch embedding, one block, the head
    assert spec_gflops(name, res, [0]) == pytest.approx(
        vit_flops(n, n_prefix, spec.width, m, 1, spec.patch_size, map_head), rel=1e-6)
    fam = get_family(spec.family)
    assert abs(clip_mod.count_params(clip_mod.ARCHS[spec.family], spec) / 1e6 - spec.params_m) < 0.05
    assert fam.cls_feature and fam.patch_feature and fam.extra == ("timm" if spec.family == "pe_core" else "")


def test_registered_names_and_contract(tiny: dict[str, EncoderSpec]) -> None:
    names = {"clip-vit-b16", "clip-vit-l14", "clip-vit-l14-336", "siglip2-vitb16", "siglip2-vitb16-384",
             "siglip2-vitl16-256", "siglip2-so400m14-384", "biomedclip", "pe-core-b16", "pe-core-l14"}
    for n in names:
        s = get_spec(n)
        assert s.family in clip_mod.ARCHS and s.hf_repo and s.native_resolution in (224, 256, 336, 384)
        assert s.default_layers[-1] == s.depth - 1
    assert get_spec("biomedclip").mean == clip_mod.OPENAI_MEAN and get_spec("siglip2-vitb16").std == (0.5,) * 3
    assert "pool" in get_family("siglip2").cls_feature and get_family("clip").cls_feature.startswith("class token")
    # random init: seeded, labelled untrained, reproducible
    x = images(4)[1]
    with torch.no_grad():
        a, b, c = (create_encoder(tiny[f].name, seed=s).forward_features(x, (1,)).cls[1]
                   for f, s in (("siglip2", 1), ("siglip2", 1), ("siglip2", 2)))
    assert torch.equal(a, b) and maxdiff(a, c) > 1e-3
    enc = create_encoder(tiny["pe_core"].name, seed=1)
    assert enc.weights_id == "random:seed=1" and not enc.pretrained


def test_pneumoniamnist_run_records_clip_family(shared_data: Path, tmp_path: Path) -> None:
    import medprobe
    from medprobe.results import ResultsDB

    root = shared_data / "medmnist"
    if not (root / "pneumoniamnist.npz").is_file():
        pytest.skip(f"{root / 'pneumoniamnist.npz'} is absent")
    t0 = time.perf_counter()
    db = ResultsDB(tmp_path / "results.db")
    rows = medprobe.run({"name": "pneumonia-clip", "dataset": "medmnist:pneumoniamnist",
                         "data": {"root": str(root), "limit": "120,30,60"}, "encoder": "clip-vit-b16",
                         "weights": "random:seed=0", "heads": ["logreg", "knn"],
                         "preprocess": {"resolution": 32}, "cache_dir": str(tmp_path / "cache")},
                        db=db, verbose=False)
    assert time.perf_counter() - t0 < 60
    assert sorted(r["head"] for r in rows) == ["knn", "logreg"]
    for r in rows:
        rec = r["record"]
        assert rec["encoder"] == "clip-vit-b16" and get_spec(rec["encoder"]).family == "clip"
        assert rec["weights"] == "random:seed=0" and rec["pretrained"] is False
        assert rec["resolution"] == [32, 32] and rec["split"]["n_test"] == 60
        if "encoder_family" in rec:
            assert rec["encoder_family"] == "clip"
        auc = r["metrics"]["auc"][0]
        assert 0.0 <= auc <= 1.0


def test_hub_reads_the_local_cache_only(tiny: dict[str, EncoderSpec], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``weights='hub'``: the spec's repo from the local Hugging Face cache (as huggingface-cli lays it out)."""
    import huggingface_hub.constants

    from medprobe.encoders import weights_available

    repo = "medprobe-test/BiomedCLIP-tiny"
    snap = tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0123abcd", encoding="utf-8")
    trunk = _timm_vit(7)
    d = _biomedclip_file(tmp_path, trunk)
    (snap / "open_clip_pytorch_model.bin").write_bytes((d / "open_clip_pytorch_model.bin").read_bytes())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = register(EncoderSpec(**{**tiny["biomedclip"].to_dict(), "name": "t-biomedclip-hub", "hf_repo": repo}))
    try:
        enc = create_encoder(spec.name, "hub")
        assert enc.pretrained and enc.weights_id == clip_mod.files_weights_id([snap / "open_clip_pytorch_model.bin"])
        info = encoder_info(spec.name, "hub")
        assert info is not None and info.weights_id == enc.weights_id
        assert weights_available(spec) == [snap]
        x = images(5)[0]
        with torch.no_grad():
            assert maxdiff(enc.forward_features(x, (1,)).cls[1], trunk(x)) <= TOL
    finally:
        unregister(spec.name)
