"""Zero-shot (issue 27): CLIP text towers load from the same checkpoint as the image tower and equal open_clip
(open_clip / OpenAI layout) and transformers (``CLIPModel`` layout) on seeded random weights; the zero-shot head's
class embeddings equal open_clip's ``build_zero_shot_classifier`` and its logits open_clip's
``logit_scale * image @ classifier``; end to end through ``run_task`` on real PneumoniaMNIST beside a linear probe."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from reference_libs import import_reference

from medprobe.encoders import EncoderSpec, create_encoder, register
from medprobe.encoders.registry import unregister
from medprobe.errors import ConfigError

TOL = 1e-5
TINY = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, patch_size=16,
            image_size=32, hidden_act="quick_gelu", text_heads=2)
CLASSES = ["normal lungs", "pneumonia"]
TEMPLATES = ["a chest x-ray showing {}.", "a radiograph of {}", "{}"]


@pytest.fixture(scope="module", autouse=True)
def _single_thread(single_thread: None) -> None:
    """Module-wide: see conftest.single_thread."""


@pytest.fixture(scope="module")
def tiny() -> Iterator[EncoderSpec]:
    spec = EncoderSpec(name="t-zs-clip", family="clip", patch_size=16, width=64, depth=2, params_m=0.0,
                       default_layers=(0, 1, 1, 1), native_resolution=32, hf_config=dict(TINY))
    register(spec)
    yield spec
    unregister(spec.name)


def perturb(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def open_clip_model() -> Any:
    """A tiny open_clip CLIP (OpenAI's model) with CLIP's full BPE vocabulary, seeded random weights."""
    open_clip = import_reference("open_clip")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.model.CLIP(
            embed_dim=24, quick_gelu=True,
            vision_cfg=open_clip.model.CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=16, image_size=32),
            text_cfg=open_clip.model.CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=2))
    model = perturb(model, 1)
    with torch.no_grad():
        model.logit_scale.fill_(float(np.log(50.0)))
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    model = open_clip_model()
    path = tmp_path_factory.mktemp("zs") / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), path)
    return model, path


def reference_classifier(model: Any) -> torch.Tensor:
    open_clip = import_reference("open_clip")
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=16)
    with torch.no_grad():
        return open_clip.zero_shot_classifier.build_zero_shot_classifier(model, tok, CLASSES, TEMPLATES)


def test_open_clip_layout_equals_open_clip(tiny: EncoderSpec, checkpoint: tuple[Any, Path]) -> None:
    from medprobe.encoders.text import load_text_tower, zero_shot_classifier
    from medprobe.heads.zeroshot import ZeroShotHead

    model, path = checkpoint
    open_clip = import_reference("open_clip")
    tower = load_text_tower("t-zs-clip", str(path))
    texts = ["a chest x-ray showing pneumonia.", "normal", "a radiograph of normal lungs"]
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=16)
    with torch.no_grad():
        ref_text = model.encode_text(tok(texts))
    ours = tower.encode_text(texts)
    assert float((ours - ref_text).abs().max()) <= TOL
    assert tower.logit_scale == pytest.approx(50.0, rel=1e-6)
    ref_cls = reference_classifier(model)
    cls = zero_shot_classifier(tower, CLASSES, TEMPLATES)
    assert cls.shape == ref_cls.shape == (24, 2)
    assert float((cls - ref_cls).abs().max()) <= TOL
    # logits from the image side: our cached-feature path (cls of the last block, projected) vs open_clip
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 3, 32, 32, generator=g)
    enc = create_encoder("t-zs-clip", str(path))
    with torch.no_grad():
        feats = enc.forward_features(x, [1]).cls[1].numpy()
        ref_logits = (model.logit_scale.exp() * model.encode_image(x, normalize=True) @ ref_cls).numpy()
    head = ZeroShotHead(task="binary", n_classes=2, templates=TEMPLATES, classnames=CLASSES, tower=tower).fit(feats)
    np.testing.assert_allclose(head.logits(feats), ref_logits, atol=1e-3, rtol=1e-5)  # scale 50 x 1e-5
    p = head.predict_proba(feats)
    np.testing.assert_allclose(p, torch.softmax(torch.as_tensor(ref_logits), 1).numpy(), atol=1e-5)
    assert head.get_params()["selected"]["logit_scale"] == pytest.approx(50.0)
    assert float(np.abs(ref_logits[:, 0] - ref_logits[:, 1]).max()) > 1e-2  # the two classes differ


def test_transformers_layout_equals_clipmodel(tiny: EncoderSpec, tmp_path: Path) -> None:
    """A transformers CLIPModel folder: our tower + projection equal CLIPModel's logits_per_image."""
    from medprobe.encoders import clip as clip_mod
    from medprobe.encoders.text import load_text_tower

    tr = clip_mod.transformers_module()
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=49408,
                max_position_embeddings=16)
    vis = {k: v for k, v in TINY.items() if k != "text_heads"}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = tr.CLIPModel(tr.CLIPConfig(vision_config=vis, text_config=text, projection_dim=16))
    model = perturb(model, 4)
    model.save_pretrained(tmp_path / "m")
    tower = load_text_tower("t-zs-clip", str(tmp_path / "m"))  # no tokenizer files: open_clip's CLIP BPE
    ids = tower.tokenize(["a photo of pneumonia", "normal"])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 32, 32, generator=g)
    enc = create_encoder("t-zs-clip", str(tmp_path / "m"))
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=x).logits_per_image
        img = torch.nn.functional.normalize(tower.project(enc.forward_features(x, [1]).cls[1].numpy()), dim=-1)
        txt = torch.nn.functional.normalize(tower.encode_text(["a photo of pneumonia", "normal"]), dim=-1)
    assert float((tower.logit_scale * img @ txt.T - ref).abs().max()) <= 1e-3


def test_random_weights_refused(tiny: EncoderSpec) -> None:
    from medprobe.encoders.text import load_text_tower

    with pytest.raises(ConfigError, match="text tower"):
        load_text_tower("t-zs-clip", None)
    with pytest.raises(ConfigError, match="prompt template|'\\{\\}'"):
        from medprobe.pipeline.task import parse_task

        parse_task({"prompts": {"templates": ["no placeholder"]}})


@pytest.mark.shared_data
def test_zeroshot_pipeline_on_pneumoniamnist(shared_data: Path, tmp_path: Path, tiny: EncoderSpec,
                                             checkpoint: tuple[Any, Path]) -> None:
    """zeroshot and logreg in one run on real PneumoniaMNIST: the zero-shot scores equal open_clip's classifier
    applied to open_clip's image embeddings of the same preprocessed test images."""
    root = shared_data / "medmnist"
    if not (root / "pneumoniamnist.npz").is_file():
        pytest.skip(f"{root / 'pneumoniamnist.npz'} is absent")
    from medprobe.pipeline.run import run_task
    from medprobe.pipeline.task import parse_task
    from medprobe.preprocess.transform import Preprocessor
    from medprobe.results import ResultsDB

    model, path = checkpoint
    raw = {"name": "pneu-zs", "dataset": "medmnist:pneumoniamnist", "data": {"root": str(root), "limit": "100,20,60"},
           "encoder": "t-zs-clip", "weights": str(path), "preprocess": {"resolution": 32},
           "heads": ["zeroshot", "logreg"], "head_params": {"logreg": {"Cs": [1.0]}},
           "prompts": {"templates": TEMPLATES, "classnames": CLASSES}, "metrics": {"bootstrap": 100},
           "cache_dir": str(tmp_path / "cache"), "audit": {"mode": "off"}}
    rows = {r["head"]: r for r in run_task(parse_task(raw), db=ResultsDB(tmp_path / "db" / "r.db"), verbose=False)}
    assert sorted(rows) == ["logreg", "zeroshot"]
    zs = rows["zeroshot"]
    for m in ("auc", "acc", "ece", "brier"):
        v, lo, hi = zs["metrics"][m]
        assert np.isfinite(v) and lo <= v <= hi, m
    assert zs["record"]["head_params"]["classnames"] == CLASSES
    assert zs["record"]["split"]["test_ids_hash"] == rows["logreg"]["record"]["split"]["test_ids_hash"]
    assert zs["record"]["config_hash"] != parse_task({**raw, "prompts": {}}).config_hash("zeroshot")
    import dataclasses

    from medprobe.preprocess.config import PreprocessConfig

    done = zs["record"]["preprocessing"]  # the resolved preprocessing the cached features were made with
    pre = Preprocessor(PreprocessConfig(**{f.name: done[f.name] for f in dataclasses.fields(PreprocessConfig)
                                           if f.name in done}), 16)
    from medprobe.data import create_dataset

    ds = create_dataset("medmnist:pneumoniamnist", root=str(root), limit="100,20,60")
    test = list(ds.splits()["test"])
    x = torch.cat([pre(ds.load(i))[:, 0] for i in test])
    with torch.no_grad():
        ref = model.logit_scale.exp() * model.encode_image(x, normalize=True) @ reference_classifier(model)
    np.testing.assert_allclose(zs["result"].predictions["y_score"], torch.softmax(ref, 1).numpy(), atol=1e-4)
    with pytest.raises(ConfigError, match="pooled output"):
        run_task(parse_task({**raw, "heads": ["zeroshot"], "features": {"token": "mean"}}),
                 db=ResultsDB(tmp_path / "db2" / "r.db"), verbose=False)
    # "zero-shot vs a probe at k labels" in one run: zeroshot learns nothing from labels, so it is fitted once
    few = run_task(parse_task({**raw, "heads": ["zeroshot", "prototype"], "budget": "kshot:2x3"}),
                   db=ResultsDB(tmp_path / "db3" / "r.db"), verbose=False)
    by = {r["head"]: r for r in few}
    assert by["zeroshot"]["record"]["notes"]["kshot"]["applied"] is False
    assert by["zeroshot"]["metrics"]["auc"] == zs["metrics"]["auc"]
    assert by["prototype"]["record"]["notes"]["kshot"]["n_train_per_draw"] == [4, 4, 4]


def test_siglip_transformers_layout_equals_siglipmodel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transformers SiglipModel folder: text tower (last token + head), the MAP-pooled image feature as the image
    embedding, logit scale and bias equal SiglipModel's logits_per_image (tokenizer files stubbed: ids given)."""
    from medprobe.encoders import clip as clip_mod
    from medprobe.encoders import text as text_mod

    spec = EncoderSpec(name="t-zs-siglip", family="siglip2", patch_size=16, width=64, depth=2, params_m=0.0,
                       default_layers=(0, 1, 1, 1), native_resolution=32,
                       hf_config={k: v for k, v in TINY.items() if k not in ("text_heads", "hidden_act")})
    register(spec)
    try:
        tr = clip_mod.transformers_module()
        text = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=300,
                    max_position_embeddings=8)
        vis = {k: v for k, v in spec.hf_config.items()}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)
            model = tr.SiglipModel(tr.SiglipConfig(vision_config=vis, text_config=text))
        model = perturb(model, 6)
        model.save_pretrained(tmp_path / "s")
        ids = torch.tensor([[5, 17, 33, 2, 1, 1, 1, 1], [9, 2, 1, 1, 1, 1, 1, 1]])
        monkeypatch.setattr(text_mod, "_folder_tokenizer", lambda folder, context: (lambda texts: ids[:len(texts)]))
        tower = text_mod.load_text_tower("t-zs-siglip", str(tmp_path / "s"))
        g = torch.Generator().manual_seed(2)
        x = torch.randn(3, 3, 32, 32, generator=g)
        enc = create_encoder("t-zs-siglip", str(tmp_path / "s"))
        with torch.no_grad():
            ref = model(input_ids=ids, pixel_values=x).logits_per_image
            img = torch.nn.functional.normalize(tower.project(enc.forward_features(x, [1]).cls[1].numpy()), dim=-1)
            txt = torch.nn.functional.normalize(tower.encode_text(["a", "b"]), dim=-1)
        assert tower.logit_bias != 0.0
        assert float((tower.logit_scale * img @ txt.T + tower.logit_bias - ref).abs().max()) <= 1e-3
    finally:
        unregister(spec.name)


def test_demo_zeroshot_part(tmp_path: Path) -> None:
    """The demo's zero-shot part: a tiny random CLIP checkpoint written once, zeroshot (temperature-scaled on
    validation) beside logreg on the X-ray phantom, rows tagged with the demo sweep so its report shows them."""
    import_reference("open_clip")
    from medprobe.pipeline.demo import demo_zeroshot
    from medprobe.results import ResultsDB

    db = ResultsDB(tmp_path / "r.db")
    rows = {r["head"]: r for r in demo_zeroshot(db, tmp_path / "cache", sweep="demo") or []}
    assert sorted(rows) == ["logreg", "zeroshot"]
    assert rows["zeroshot"]["record"]["head_params"]["selected"]["temperature"] > 0
    assert all(np.isfinite(r["metrics"]["ece"][0]) for r in rows.values())
    assert {r["run_id"] for r in db.runs(sweep="demo")} == {r["run_id"] for r in rows.values()}


def test_pe_core_open_clip_layout_equals_open_clip(tmp_path: Path) -> None:
    """open_clip's PE-Core layout (CustomTextCLIP): a timm PE trunk under visual.trunk.* (its head = the image
    projection) and open_clip's TextTransformer (GELU) under text.*: text embeddings, image embeddings and the
    zero-shot classifier equal open_clip / timm on seeded random weights."""
    from medprobe.encoders.text import load_text_tower, zero_shot_classifier

    open_clip = import_reference("open_clip")
    timm = import_reference("timm")
    pe_kw = dict(embed_dim=64, depth=2, num_heads=2, img_size=32, ref_feat_shape=(2, 2), num_classes=32,
                 attn_pool_num_heads=2)
    spec = EncoderSpec(name="t-zs-pe", family="pe_core", patch_size=16, width=64, depth=2, params_m=0.0,
                       default_layers=(0, 1, 1, 1), native_resolution=32,
                       hf_config=dict(timm_model="vit_pe_core_base_patch16_224", timm_kwargs=pe_kw, text_heads=2))
    register(spec)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(11)
            trunk = timm.create_model("vit_pe_core_base_patch16_224", pretrained=False, dynamic_img_size=True,
                                      **pe_kw)
            text = open_clip.transformer.TextTransformer(context_length=16, vocab_size=49408, width=32, heads=2,
                                                         layers=2, output_dim=32)
        trunk, text = perturb(trunk, 12), perturb(text, 13)
        sd = {f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()}
        sd.update({f"text.{k}": v for k, v in text.state_dict().items()})
        sd["logit_scale"] = torch.tensor(float(np.log(30.0)))
        path = tmp_path / "open_clip_model.safetensors"
        import safetensors.torch

        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        tower = load_text_tower("t-zs-pe", str(path))
        tok = open_clip.tokenizer.SimpleTokenizer(context_length=16)
        texts = ["a chest x-ray showing pneumonia.", "normal lungs"]
        with torch.no_grad():
            ref_text = text(tok(texts))
        assert float((tower.encode_text(texts) - ref_text).abs().max()) <= TOL
        x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
        enc = create_encoder("t-zs-pe", str(path))
        with torch.no_grad():
            ours = tower.project(enc.forward_features(x, [1]).cls[1].numpy())
            ref_img = trunk(x)  # timm: attention pool, then the head (open_clip's PE image embedding)
        assert float((ours - ref_img).abs().max()) <= TOL

        class _Model:  # open_clip's classifier builder needs only encode_text
            def encode_text(self, ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
                out = text(ids)
                return torch.nn.functional.normalize(out, dim=-1) if normalize else out

        with torch.no_grad():
            ref_cls = open_clip.zero_shot_classifier.build_zero_shot_classifier(_Model(), tok, CLASSES, TEMPLATES)
        assert float((zero_shot_classifier(tower, CLASSES, TEMPLATES) - ref_cls).abs().max()) <= TOL
    finally:
        unregister(spec.name)


def test_biomedclip_open_clip_layout_equals_open_clip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """open_clip's BiomedCLIP layout: a timm ViT trunk + linear projection (visual.*) and open_clip's HFTextEncoder
    (a BERT, [CLS] pooling of the last hidden state, MLP projection) under text.*: text and image embeddings equal
    open_clip / timm on seeded random weights (PubMedBERT's tokenizer files stubbed: ids given)."""
    from medprobe.encoders import clip as clip_mod
    from medprobe.encoders import text as text_mod

    open_clip = import_reference("open_clip")
    timm = import_reference("timm")
    tr = clip_mod.transformers_module()
    spec = EncoderSpec(name="t-zs-biomedclip", family="biomedclip", patch_size=16, width=64, depth=2, params_m=0.0,
                       default_layers=(0, 1, 1, 1), native_resolution=32,
                       hf_config={**{k: v for k, v in TINY.items() if k != "hidden_act"}, "layer_norm_eps": 1e-6})
    register(spec)
    try:
        bert_cfg = tr.BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=16)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(21)
            text = open_clip.hf_model.HFTextEncoder("bert", output_dim=24, config=bert_cfg,
                                                    pooler_type="cls_last_hidden_state_pooler", proj_type="mlp",
                                                    pretrained=False)
            trunk = timm.models.vision_transformer.VisionTransformer(
                img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=2, num_classes=0, global_pool="token",
                dynamic_img_size=True)
            proj = torch.randn(24, 64) * 0.1
        text, trunk = perturb(text, 22), perturb(trunk, 23)
        sd = {f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()}
        sd["visual.head.proj.weight"] = proj
        sd.update({f"text.{k}": v for k, v in text.state_dict().items()})
        sd["logit_scale"] = torch.tensor(float(np.log(20.0)))
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(sd, path)
        ids = torch.tensor([[2, 17, 33, 40, 3, 0, 0, 0], [2, 9, 3, 0, 0, 0, 0, 0]])  # [CLS] ... [SEP] then padding
        monkeypatch.setattr(text_mod, "_folder_tokenizer", lambda folder, context: (lambda texts: ids[:len(texts)]))
        tower = text_mod.load_text_tower("t-zs-biomedclip", str(path))
        with torch.no_grad():
            ref_text = text(ids)
        assert float((tower.encode_text(["a", "b"]) - ref_text).abs().max()) <= TOL
        x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
        enc = create_encoder("t-zs-biomedclip", str(path))
        with torch.no_grad():
            ours = tower.project(enc.forward_features(x, [1]).cls[1].numpy())
            ref_img = trunk(x) @ proj.T  # open_clip TimmModel: the trunk's pooled token, then the linear head
        assert float((ours - ref_img).abs().max()) <= TOL
        assert tower.logit_scale == pytest.approx(20.0, rel=1e-6)
    finally:
        unregister(spec.name)
