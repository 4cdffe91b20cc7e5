"""CNN encoders equal their authors' reference code on checkpoints in the authors' exact layouts.

* ResNet-50: torchvision's ``resnet50`` and timm's ``resnet50`` (the reference packages, via
  ``reference_libs.import_reference``) build the network and write its ``state_dict()`` (torchvision's
  ``resnet50-<sha256[:8]>.pth`` naming; timm's hub folder with ``model.safetensors``), seeded, with BatchNorm
  statistics calibrated on random images (so that every BN layer matters and activations stay O(1)). medprobe's
  stage maps and pooled vectors are compared with the reference modules' own stage outputs.
* DINOv3 ConvNeXt: Meta's key layout (``downsample_layers.I.J``, ``stages.I.J.{dwconv,norm,pwconv1,pwconv2,gamma}``,
  ``norm``, and ``norms.3`` = ``norm`` registered twice), ConvNeXt-T widths with reduced depths, saved under Meta's
  file name with a true SHA-256 prefix. Meta's code does not install from a registry, so the reference is
  :func:`meta_convnext_forward` below: Meta's published forward (``dinov3/models/convnext.py``:
  ``get_intermediate_layers(x, n=[0, 1, 2, 3], reshape=True, return_class_token=True, norm=True)``) written out
  in plain float64 torch.

Every comparison is at the native resolution (224) and at one other size (multiples of 32), to <= 1e-4 max abs.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_libs import import_reference  # noqa: E402

from medprobe.encoders import EncoderSpec, create_encoder, encoder_info, get_family, get_spec, weights  # noqa: E402
from medprobe.encoders.cnn import build_cnn_model  # noqa: E402
from medprobe.encoders.flops import spec_gflops  # noqa: E402
from medprobe.encoders.registry import register, unregister  # noqa: E402
from medprobe.errors import WeightsError  # noqa: E402

TOL = 1e-4
SIZES = [(224, 224), (96, 160)]  # native, and another multiple of 32
MAX_ERR: dict[str, float] = {}
CONVNEXT_TEST = "dinov3-convnext-tiny-test"  # ConvNeXt-T widths, reduced depths, Meta's names
CONVNEXT_DEPTHS = [1, 1, 3, 1]
CONVNEXT_DIMS = [96, 192, 384, 768]


@pytest.fixture(scope="module", autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> Iterator[None]:
    """A private SHA-256 memo; one torch thread (conftest.single_thread)."""
    with pytest.MonkeyPatch.context() as mp:
        memo = tmp_path_factory.mktemp("memo") / "sha256.json"
        mp.setattr(weights, "_sha_memo", lambda: memo)
        yield


def _images(seed: int, size: tuple[int, int], n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.double() - b.double()).abs().max())


def _save_named(sd: dict[str, torch.Tensor], folder: Path, stem: str) -> Path:
    """torch.save under ``<stem>-<sha256[:8]>.pth`` (torchvision's and Meta's naming)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "ckpt.tmp"
    torch.save(sd, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"{stem}-{digest[:8]}.pth"
    tmp.rename(path)
    return path


# ------------------------------------------------------------------ ResNet-50 (torchvision, timm)
def _calibrated(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random BatchNorm affine terms and running statistics taken from a batch of random images (as a trained
    network's are: activations stay O(1), and a BN parameter mapped to the wrong layer changes the output)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.momentum = None  # cumulative average: the running stats become this batch's
                m.reset_running_stats()
        model.train()
        model(torch.randn(4, 3, 64, 64, generator=g))
    return model.eval()


def _reference_resnet(lib: str, seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if lib == "torchvision":
            model = import_reference("torchvision").models.resnet50(weights=None)
        else:
            model = import_reference("timm").create_model("resnet50", pretrained=False)
    return _calibrated(model, seed)


def _reference_stages(model: Any, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Stage outputs (layer1..layer4) and the pooled vector, by the reference modules themselves."""
    act = model.relu if hasattr(model, "relu") else model.act1
    h = model.maxpool(act(model.bn1(model.conv1(x))))
    outs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        h = layer(h)
        outs.append(h)
    if hasattr(model, "forward_head"):  # timm: its own global pool (pre-logits)
        pooled = model.forward_head(h, pre_logits=True)
        assert torch.equal(model.forward_features(x), h)
    else:
        pooled = torch.flatten(model.avgpool(h), 1)
    return outs, pooled


@pytest.fixture(scope="module")
def resnet_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("resnet")
    tv = _reference_resnet("torchvision", seed=1)
    tm = _reference_resnet("timm", seed=2)
    tv_path = _save_named(tv.state_dict(), root / "tv", "resnet50")
    from safetensors.torch import save_file

    hub = root / "timm-resnet50.a1_in1k"  # timm's hub folder: config.json + model.safetensors
    hub.mkdir()
    save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, str(hub / "model.safetensors"))
    (hub / "config.json").write_text('{"architecture": "resnet50", "num_classes": 1000}', encoding="utf-8")
    return {"torchvision": (tv, tv_path), "timm": (tm, hub)}


@pytest.mark.parametrize("lib", ["torchvision", "timm"])
@pytest.mark.parametrize("size", SIZES)
def test_resnet50_equals_reference(resnet_files: dict[str, Any], lib: str, size: tuple[int, int]) -> None:
    ref, path = resnet_files[lib]
    name = "resnet50" if lib == "torchvision" else "resnet50-timm"
    enc = create_encoder(name, weights=path)
    assert enc.pretrained and enc.weights_id.startswith("sha256:") and enc.depth == 4
    x = _images(3, size)
    with torch.inference_mode():
        out = enc.forward_features(x, enc.resolve_layers("all"))
        stages, pooled = _reference_stages(ref, x)
    h, w = size
    err = 0.0
    for s in range(4):
        assert out.patch[s].shape == (2, 256 * 2**s, h // 2 ** (s + 2), w // 2 ** (s + 2))
        err = max(err, _max_err(out.patch[s], stages[s]), _max_err(out.cls[s], stages[s].mean((2, 3))))
    err = max(err, _max_err(out.cls[3], pooled))
    assert float(stages[3].abs().max()) > 1.0  # a real signal, not vanishing activations
    MAX_ERR[f"resnet50 {lib} {h}x{w}"] = err
    assert err <= TOL, err


def test_resnet_file_and_folder_identities(resnet_files: dict[str, Any], tmp_path: Path) -> None:
    """torchvision's hash prefix is verified; a timm file without num_batches_tracked loads; the cache identity
    (encoder_info) equals the built encoder's without building it."""
    tv, tv_path = resnet_files["torchvision"]
    info = encoder_info("resnet50", tv_path)
    digest = hashlib.sha256(tv_path.read_bytes()).hexdigest()
    assert info is not None and info.weights_id == f"sha256:{digest}" and info.pretrained
    assert info.resolve_layers("four") == (0, 1, 2, 3) and info.resolve_layers("last") == (3,)
    _, hub = resnet_files["timm"]
    assert encoder_info("resnet50-timm", hub).weights_id == create_encoder("resnet50-timm", hub).weights_id
    sd = {k: v for k, v in tv.state_dict().items() if not k.endswith("num_batches_tracked")}
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "no_counter.safetensors"))
    enc = create_encoder("resnet50", tmp_path / "no_counter.safetensors")
    x = _images(4, (64, 96))
    with torch.inference_mode():
        assert _max_err(enc.forward_features(x, (3,)).cls[3], _reference_stages(tv, x)[1]) <= TOL


def test_resnet_transformers_layout(resnet_files: dict[str, Any], tmp_path: Path) -> None:
    """A transformers ResNetForImageClassification state dict (``resnet.`` prefix + classifier) loads as well."""
    enc = create_encoder("resnet50", resnet_files["torchvision"][1])
    sd = {f"resnet.{k}": v.contiguous() for k, v in enc.model.state_dict().items()}
    sd |= {"classifier.1.weight": torch.zeros(1000, 2048), "classifier.1.bias": torch.zeros(1000)}
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "hf.safetensors"))
    enc2 = create_encoder("resnet50", tmp_path / "hf.safetensors")
    x = _images(5, (64, 64))
    with torch.inference_mode():
        assert torch.equal(enc.forward_features(x, (2,)).patch[2], enc2.forward_features(x, (2,)).patch[2])


def _one_line(name: str, path: Path, **kw: Any) -> str:
    with pytest.raises(WeightsError) as ei:
        create_encoder(name, weights=path, **kw)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    return msg


def test_resnet_bad_files_name_the_file_and_key(resnet_files: dict[str, Any], tmp_path: Path) -> None:
    tv, tv_path = resnet_files["torchvision"]
    sd = tv.state_dict()
    torch.save({k: v for k, v in sd.items() if k != "layer3.2.bn2.running_var"}, tmp_path / "missing.pth")
    msg = _one_line("resnet50", tmp_path / "missing.pth")
    assert "missing tensor 'layer3.2.bn2.running_var'" in msg and "(and" not in msg
    torch.save(dict(sd) | {"layer5.0.conv1.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    assert "unexpected tensor 'layer5.0.conv1.weight'" in _one_line("resnet50", tmp_path / "extra.pth")
    torch.save(dict(sd) | {"layer2.1.conv2.weight": torch.zeros(128, 128, 1, 1)}, tmp_path / "shape.pth")
    msg = _one_line("resnet50", tmp_path / "shape.pth")
    assert "tensor 'layer2.1.conv2.weight' has shape (128, 128, 1, 1)" in msg and "(128, 128, 3, 3)" in msg
    torch.save(_meta_convnext_sd(0), tmp_path / "convnext.pth")  # another network's layout
    msg = _one_line("resnet50", tmp_path / "convnext.pth")
    assert "not a torchvision/timm ResNet checkpoint: its first key 'downsample_layers.0.0.weight'" in msg
    # a torchvision name whose hash prefix does not match the content; --no-verify loads it
    renamed = tmp_path / "resnet50-0676ba61.pth"
    renamed.write_bytes(tv_path.read_bytes())
    assert "SHA-256 mismatch: name says 0676ba61" in _one_line("resnet50", renamed)
    assert create_encoder("resnet50", renamed, verify=False).pretrained


# ------------------------------------------------------------------ DINOv3 ConvNeXt (Meta layout)
def _meta_convnext_sd(seed: int, depths: list[int] = CONVNEXT_DEPTHS, dims: list[int] = CONVNEXT_DIMS
                      ) -> dict[str, torch.Tensor]:
    """A random checkpoint in Meta's ConvNeXt layout (``ConvNeXt.state_dict()``, ``norms.3`` included)."""
    g = torch.Generator().manual_seed(seed)

    def rn(*shape: int, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std + mean

    sd: dict[str, torch.Tensor] = {
        "downsample_layers.0.0.weight": rn(dims[0], 3, 4, 4, std=0.2),
        "downsample_layers.0.0.bias": rn(dims[0], std=0.1),
        "downsample_layers.0.1.weight": rn(dims[0], std=0.1, mean=1.0),
        "downsample_layers.0.1.bias": rn(dims[0], std=0.1),
    }
    for i in range(1, 4):
        c_in, c = dims[i - 1], dims[i]
        sd |= {f"downsample_layers.{i}.0.weight": rn(c_in, std=0.1, mean=1.0),
               f"downsample_layers.{i}.0.bias": rn(c_in, std=0.1),
               f"downsample_layers.{i}.1.weight": rn(c, c_in, 2, 2, std=1.0 / math.sqrt(4 * c_in)),
               f"downsample_layers.{i}.1.bias": rn(c, std=0.1)}
    for i, (d, c) in enumerate(zip(depths, dims)):
        for j in range(d):
            p = f"stages.{i}.{j}."
            sd |= {p + "gamma": rn(c, std=0.1, mean=0.3),
                   p + "dwconv.weight": rn(c, 1, 7, 7, std=1.0 / 7), p + "dwconv.bias": rn(c, std=0.1),
                   p + "norm.weight": rn(c, std=0.1, mean=1.0), p + "norm.bias": rn(c, std=0.1),
                   p + "pwconv1.weight": rn(4 * c, c, std=1.0 / math.sqrt(c)), p + "pwconv1.bias": rn(4 * c, std=0.1),
                   p + "pwconv2.weight": rn(c, 4 * c, std=1.0 / math.sqrt(4 * c)), p + "pwconv2.bias": rn(c, std=0.1)}
    sd |= {"norm.weight": rn(dims[-1], std=0.1, mean=1.0), "norm.bias": rn(dims[-1], std=0.1)}
    sd |= {"norms.3.weight": sd["norm.weight"].clone(), "norms.3.bias": sd["norm.bias"].clone()}
    return sd


def meta_convnext_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, eps: float = 1e-6
                          ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Meta's DINOv3 ConvNeXt ``get_intermediate_layers(x, n=[0, 1, 2, 3], reshape=True, return_class_token=True,
    norm=True)``, in float64: per stage ``(class token, patch map)`` = ``(norms[i](GAP), norms[i](tokens))`` with
    ``norms = [Identity] * 3 + [norm]``.

    Stem: 4x4/4 conv then channels-first LayerNorm; downsampling: channels-first LayerNorm then 2x2/2 conv;
    block: 7x7 depthwise conv, channels-last LayerNorm, Linear(C, 4C), exact GELU, Linear(4C, C), ``gamma *``,
    residual; channels-first LayerNorm: ``(x - mean_c) / sqrt(var_c + eps) * w + b`` over the channel axis.
    """
    sd = {k: v.double() for k, v in sd.items()}
    h = x.double()

    def ln_last(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        u = t.mean(-1, keepdim=True)
        s = ((t - u) ** 2).mean(-1, keepdim=True)
        return (t - u) / torch.sqrt(s + eps) * w + b

    def ln_first(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ln_last(t.permute(0, 2, 3, 1), w, b).permute(0, 3, 1, 2)

    def gelu(t: torch.Tensor) -> torch.Tensor:
        return 0.5 * t * (1.0 + torch.erf(t / math.sqrt(2.0)))

    cls: dict[int, torch.Tensor] = {}
    patch: dict[int, torch.Tensor] = {}
    for i in range(4):
        d = f"downsample_layers.{i}."
        if i == 0:
            h = ln_first(F.conv2d(h, sd[d + "0.weight"], sd[d + "0.bias"], stride=4), sd[d + "1.weight"],
                         sd[d + "1.bias"])
        else:
            h = F.conv2d(ln_first(h, sd[d + "0.weight"], sd[d + "0.bias"]), sd[d + "1.weight"], sd[d + "1.bias"],
                         stride=2)
        j = 0
        while f"stages.{i}.{j}.gamma" in sd:
            p = f"stages.{i}.{j}."
            t = F.conv2d(h, sd[p + "dwconv.weight"], sd[p + "dwconv.bias"], padding=3, groups=h.shape[1])
            t = ln_last(t.permute(0, 2, 3, 1), sd[p + "norm.weight"], sd[p + "norm.bias"])
            t = gelu(t @ sd[p + "pwconv1.weight"].T + sd[p + "pwconv1.bias"])
            t = (t @ sd[p + "pwconv2.weight"].T + sd[p + "pwconv2.bias"]) * sd[p + "gamma"]
            h = h + t.permute(0, 3, 1, 2)
            j += 1
        pooled = h.mean((2, 3))
        if i == 3:  # norms[3] is the final norm; norms[0:3] are identities
            cls[i] = ln_last(pooled, sd["norm.weight"], sd["norm.bias"])
            patch[i] = ln_first(h, sd["norm.weight"], sd["norm.bias"])
        else:
            cls[i], patch[i] = pooled, h
    return cls, patch


@pytest.fixture(scope="module")
def convnext(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, torch.Tensor], Path]]:
    """ConvNeXt-T widths with depths (1, 1, 3, 1), registered for this module, and its Meta-named file."""
    register(EncoderSpec(name=CONVNEXT_TEST, family="dinov3_convnext", patch_size=32, width=768, depth=4,
                         params_m=0.0, default_layers=(0, 1, 2, 3), meta_arch="convnext_tiny", meta_dataset="lvd1689m",
                         hf_config=dict(depths=CONVNEXT_DEPTHS, hidden_sizes=CONVNEXT_DIMS)))
    sd = _meta_convnext_sd(seed=7)
    path = _save_named(sd, tmp_path_factory.mktemp("convnext"), "dinov3_convnext_tiny_pretrain_lvd1689m")
    try:
        yield sd, path
    finally:
        unregister(CONVNEXT_TEST)


@pytest.mark.parametrize("size", SIZES)
def test_convnext_equals_meta_forward(convnext: tuple[dict[str, torch.Tensor], Path], size: tuple[int, int]) -> None:
    sd, path = convnext
    enc = create_encoder(CONVNEXT_TEST, weights=path)
    assert enc.weights_id == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    x = _images(8, size)
    with torch.inference_mode():
        out = enc.forward_features(x, (0, 1, 2, 3))
    ref_cls, ref_patch = meta_convnext_forward(sd, x)
    h, w = size
    err = 0.0
    for s in range(4):
        assert out.patch[s].shape == (2, CONVNEXT_DIMS[s], h // 2 ** (s + 2), w // 2 ** (s + 2))
        err = max(err, _max_err(out.patch[s], ref_patch[s]), _max_err(out.cls[s], ref_cls[s]))
    assert float(ref_patch[2].abs().max()) > 1.0
    MAX_ERR[f"convnext meta {h}x{w}"] = err
    assert err <= TOL, err
    # the comparison has teeth: the final norm matters, and the last stage's cls is not the plain GAP
    assert _max_err(out.cls[3], ref_patch[3].mean((2, 3))) > 100 * TOL


def test_convnext_transformers_folder_and_hub_cache(convnext: tuple[dict[str, torch.Tensor], Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The transformers layout (5.x ``model.stages`` or 4.x ``stages``) from a folder or the local HF cache."""
    from safetensors.torch import save_file

    enc = create_encoder(CONVNEXT_TEST, weights=convnext[1])
    x = _images(9, (64, 96))
    with torch.inference_mode():
        want = enc.forward_features(x, (3,))
    for old in (False, True):
        folder = tmp_path / f"hf-{old}"
        folder.mkdir()
        sd = {(k.removeprefix("model.") if old else k): v.contiguous() for k, v in enc.model.state_dict().items()}
        save_file(sd, str(folder / "model.safetensors"))
        got = create_encoder(CONVNEXT_TEST, weights=folder)
        with torch.inference_mode():
            assert torch.equal(got.forward_features(x, (3,)).patch[3], want.patch[3])
    # a hub id resolves to the local cache only: absent -> one line, never a download
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="not in the local Hugging Face cache"):
        create_encoder("dinov3-convnext-tiny", weights="hub")


def test_convnext_bad_files(convnext: tuple[dict[str, torch.Tensor], Path], tmp_path: Path) -> None:
    sd, path = convnext
    bad = dict(sd) | {"norms.3.bias": sd["norm.bias"] + 1.0}
    torch.save(bad, tmp_path / "untied.pth")
    assert "norms.3.bias differs from norm.bias" in _one_line(CONVNEXT_TEST, tmp_path / "untied.pth")
    torch.save({k: v for k, v in sd.items() if k != "stages.2.1.gamma"}, tmp_path / "missing.pth")
    assert "missing tensor 'stages.2.1.gamma'" in _one_line(CONVNEXT_TEST, tmp_path / "missing.pth")
    torch.save(dict(sd) | {"stages.2.3.gamma": torch.ones(384)}, tmp_path / "deeper.pth")
    assert "unexpected tensor 'stages.2.3.gamma'" in _one_line(CONVNEXT_TEST, tmp_path / "deeper.pth")
    small = path.with_name(path.name.replace("convnext_tiny", "convnext_small"))  # Meta's name says another size
    small.write_bytes(path.read_bytes())
    msg = _one_line(CONVNEXT_TEST, small)
    assert "dinov3_convnext_small" in msg and "expects dinov3_convnext_tiny" in msg


# ------------------------------------------------------------------ cost and size
def _resnet50_gflops(h: int, w: int, stages: int = 4) -> float:
    """Analytic ResNet-50 convolution FLOPs (2 x MACs; BN, ReLU, pooling and the classifier not counted)."""
    h, w = h // 2, w // 2
    flops = 2 * 3 * 49 * 64 * h * w  # 7x7/2 stem
    h, w = h // 2, w // 2  # max pool
    c_in = 64
    for s, (n, mid) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        if s >= stages:
            break
        out = 4 * mid
        for b in range(n):
            stride = 2 if (b == 0 and s > 0) else 1
            ho, wo = h // stride, w // stride
            flops += 2 * c_in * mid * h * w  # 1x1 reduce (input resolution)
            flops += 2 * 9 * mid * mid * ho * wo  # 3x3 (carries the stride)
            flops += 2 * mid * out * ho * wo  # 1x1 expand
            if b == 0:
                flops += 2 * c_in * out * ho * wo  # projection shortcut
            h, w, c_in = ho, wo, out
    return flops / 1e9


def _convnext_gflops(h: int, w: int, depths: list[int], dims: list[int]) -> float:
    """Analytic ConvNeXt FLOPs: stem, 2x2 downsampling, depthwise 7x7 and the two pointwise layers per block."""
    h, w = h // 4, w // 4
    flops = 2 * 3 * 16 * dims[0] * h * w
    for i, (d, c) in enumerate(zip(depths, dims)):
        if i:
            h, w = h // 2, w // 2
            flops += 2 * dims[i - 1] * 4 * c * h * w
        flops += d * (2 * 49 * c * h * w + 2 * 2 * c * 4 * c * h * w)
    return flops / 1e9


def test_gflops_match_analytic_counts() -> None:
    assert spec_gflops("resnet50", 224) == pytest.approx(_resnet50_gflops(224, 224), rel=1e-9)
    assert spec_gflops("resnet50", 224) == pytest.approx(8.17, abs=0.01)  # the usual "4.1 GMACs" minus the classifier
    assert spec_gflops("resnet50", (96, 160), (1,)) == pytest.approx(_resnet50_gflops(96, 160, stages=2), rel=1e-9)
    for size, depths, dims in (("tiny", [3, 3, 9, 3], [96, 192, 384, 768]),
                               ("base", [3, 3, 27, 3], [128, 256, 512, 1024])):
        got = spec_gflops(f"dinov3-convnext-{size}", 224)
        assert got == pytest.approx(_convnext_gflops(224, 224, depths, dims), rel=1e-9)
    assert spec_gflops("dinov3-convnext-tiny", 224) == pytest.approx(8.91, abs=0.01)  # ConvNeXt-T: 4.5 GMACs


@pytest.mark.parametrize("name", ["resnet50", "resnet50-timm", "dinov3-convnext-tiny", "dinov3-convnext-small",
                                  "dinov3-convnext-base", "dinov3-convnext-large"])
def test_registered_params_and_contract(name: str) -> None:
    spec = get_spec(name)
    with torch.device("meta"):
        model = build_cnn_model(spec)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert spec.params_m == pytest.approx(n, abs=0.01)
    fam = get_family(spec.family)
    assert spec.patch_size == 32 and spec.depth == 4 and spec.default_layers == (0, 1, 2, 3)
    assert "stage" in fam.taps and "average pool" in fam.cls_feature and fam.extra == ""
    if spec.meta_arch:
        assert spec.meta_arch == f"convnext_{name.rsplit('-', 1)[1]}" and spec.meta_dataset == "lvd1689m"


def test_random_init_is_seeded_and_recorded() -> None:
    a, b = create_encoder("resnet50", seed=3), create_encoder("resnet50", "random:seed=3")
    assert a.weights_id == b.weights_id == "random:seed=3" and not a.pretrained
    x = _images(10, (64, 64))
    with torch.inference_mode():
        assert torch.equal(a.forward_features(x, (1,)).patch[1], b.forward_features(x, (1,)).patch[1])
    with pytest.raises(Exception, match="not a positive multiple of resnet50's patch size 32"):
        a.forward_features(_images(0, (48, 64), n=1), (0,))


# ------------------------------------------------------------------ medprobe.run on real data
@pytest.mark.shared_data
def test_run_pneumoniamnist_resnet50(shared_data: Path, tmp_path: Path) -> None:
    import medprobe
    from medprobe.results import ResultsDB

    root = shared_data / "medmnist"
    if not (root / "pneumoniamnist.npz").is_file():
        pytest.skip(f"{root / 'pneumoniamnist.npz'} is absent")
    db = tmp_path / "db" / "results.db"
    task = {"name": "pneumonia-resnet", "dataset": "medmnist:pneumoniamnist",
            "data": {"root": str(root), "limit": "160,40,100"}, "encoder": "resnet50",
            "preprocess": {"resolution": 64}, "features": {"progress": False, "batch_size": 50},
            "metrics": {"bootstrap": 50}, "heads": ["logreg", "knn"], "head_params": {"logreg": {"Cs": [0.1, 1.0]}},
            "cache_dir": str(tmp_path / "cache")}
    rows = medprobe.run(task, db=db, verbose=False)
    assert sorted(r["head"] for r in rows) == ["knn", "logreg"]
    stored = {r["head"]: r for r in ResultsDB(db).runs(task="pneumonia-resnet")}
    assert sorted(stored) == ["knn", "logreg"]
    for r in stored.values():
        assert r["status"] == "complete" and r["encoder"] == "resnet50"
        assert get_spec(r["encoder"]).family == "resnet"
        assert r["weights"] == "random:seed=0" and r["pretrained"] is False
        assert r["layers"] == [3] and r["resolution"] == [64, 64] and r["split"]["n_test"] == 100
        auc = r["metrics"]["auc"][0]
        assert 0.0 <= auc <= 1.0 and np.isfinite(auc)
    # random-init ResNet features still separate pneumonia from normal far better than chance
    assert stored["logreg"]["metrics"]["auc"][0] > 0.6


def test_report_max_errors() -> None:
    """Print the measured differences (run with -s); they are also asserted above."""
    for k, v in sorted(MAX_ERR.items()):
        print(f"{k}: max abs diff {v:.2e}")


# ------------------------------------------------------------------ stored expected outputs (small)
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "encoders" / "cnn"


def _summary(cls: dict[int, torch.Tensor], patch: dict[int, torch.Tensor]) -> dict[str, list[float]]:
    """A few numbers per tap: the first 8 pooled values and the patch map's mean and mean |x| (image 0)."""
    out: dict[str, list[float]] = {}
    for s in sorted(cls):
        out[f"cls{s}"] = [float(v) for v in cls[s][0, :8]]
        out[f"patch{s}"] = [float(patch[s][0].mean()), float(patch[s][0].abs().mean())]
    return out


def test_convnext_matches_stored_reference_outputs(convnext: tuple[dict[str, torch.Tensor], Path]) -> None:
    """Meta's forward on the seeded checkpoint, stored when this test was written (regenerate with
    MEDPROBE_WRITE_FIXTURES=1): catches a change of the generator or of the reference forward itself."""
    import json
    import os

    sd, path = convnext
    x = _images(8, SIZES[0])
    ref = _summary(*meta_convnext_forward(sd, x))
    f = FIXTURES / "convnext_tiny_d1131_seed7_224.json"
    if os.environ.get("MEDPROBE_WRITE_FIXTURES"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")
    stored = json.loads(f.read_text(encoding="utf-8"))
    with torch.inference_mode():
        out = create_encoder(CONVNEXT_TEST, weights=path).forward_features(x, (0, 1, 2, 3))
    ours = _summary(out.cls, out.patch)
    assert sorted(stored) == sorted(ref) == sorted(ours)
    for k in stored:
        np.testing.assert_allclose(ref[k], stored[k], rtol=0, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(ours[k], stored[k], rtol=0, atol=TOL, err_msg=k)
