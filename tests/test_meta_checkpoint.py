"""Meta's original DINOv3 ``.pth`` checkpoints load exactly (against an independent reference forward).

Random checkpoints are built in Meta's exact key layout (names, shapes, buffers), saved under Meta's file
name with a true SHA-256 prefix, loaded through :func:`medprobe.encoders.create_encoder`, and compared to
:func:`meta_reference.reference_forward` (float64, plain torch) on CLS and patch grids of blocks 2, 5, 8, 11.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from meta_reference import reference_forward  # noqa: E402

from medprobe.encoders import create_encoder, weights  # noqa: E402
from medprobe.encoders.meta_convert import convert_meta_state_dict, is_meta_state_dict  # noqa: E402
from medprobe.encoders.registry import get_spec  # noqa: E402
from medprobe.errors import WeightsError  # noqa: E402

TOL = 1e-4
LAYERS = (2, 5, 8, 11)
# Meta's hub definitions: embed dim, heads, depth, FFN kind, ffn_ratio (SwiGLU hidden aligned to 8)
ARCHS = {
    "vits16": dict(dim=384, heads=6, depth=12, ffn="mlp", ratio=4.0),
    "vits16plus": dict(dim=384, heads=6, depth=12, ffn="swiglu", ratio=6.0),
    "vitb16": dict(dim=768, heads=12, depth=12, ffn="mlp", ratio=4.0),
}
MAX_ERR: dict[str, float] = {}


def _ffn_hidden(dim: int, ffn: str, ratio: float, align: int = 8) -> int:
    hidden = int(dim * ratio)
    if ffn == "mlp":
        return hidden
    d = int(hidden * 2 / 3)  # Meta's SwiGLUFFN: 2/3 of the MLP width, rounded up to `align`
    return d + (-d % align)


def make_meta_state_dict(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random DINOv3 checkpoint in Meta's exact layout, with scales that make every part matter."""
    a = ARCHS[arch]
    d, heads, depth = a["dim"], a["heads"], a["depth"]
    hid = _ffn_hidden(d, a["ffn"], a["ratio"])
    g = torch.Generator().manual_seed(seed)

    def tn(*shape: int, std: float = 0.02) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * std).clamp(-2 * std, 2 * std)

    def rn(*shape: int, std: float = 0.02, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std + mean

    dh = d // heads
    sd: dict[str, torch.Tensor] = {
        "cls_token": rn(1, 1, d, std=0.5),
        "storage_tokens": rn(1, 4, d, std=0.5),
        "mask_token": rn(1, d),
        "patch_embed.proj.weight": tn(d, 3, 16, 16, std=0.04),
        "patch_embed.proj.bias": rn(d),
        "rope_embed.periods": 100.0 ** (2 * torch.arange(dh // 4, dtype=torch.float32) / (dh // 2)),
    }
    mask = torch.ones(3 * d)
    mask[d:2 * d] = 0
    for i in range(depth):
        p = f"blocks.{i}."
        sd |= {
            p + "norm1.weight": rn(d, std=0.1, mean=1.0), p + "norm1.bias": rn(d, std=0.05),
            # sharper than 0.02 so that attention is far from uniform and RoPE / q-k mix-ups show
            p + "attn.qkv.weight": tn(3 * d, d, std=1.5 / math.sqrt(d)), p + "attn.qkv.bias": rn(3 * d, std=0.1),
            p + "attn.qkv.bias_mask": mask.clone(),
            p + "attn.proj.weight": tn(d, d, std=0.05), p + "attn.proj.bias": rn(d),
            p + "ls1.gamma": rn(d, std=0.03, mean=0.1),
            p + "norm2.weight": rn(d, std=0.1, mean=1.0), p + "norm2.bias": rn(d, std=0.05),
        }
        if a["ffn"] == "mlp":
            sd |= {p + "mlp.fc1.weight": tn(hid, d, std=0.05), p + "mlp.fc1.bias": rn(hid),
                   p + "mlp.fc2.weight": tn(d, hid, std=0.05), p + "mlp.fc2.bias": rn(d)}
        else:
            sd |= {p + "mlp.w1.weight": tn(hid, d, std=0.05), p + "mlp.w1.bias": rn(hid),
                   p + "mlp.w2.weight": tn(hid, d, std=0.05), p + "mlp.w2.bias": rn(hid),
                   p + "mlp.w3.weight": tn(d, hid, std=0.05), p + "mlp.w3.bias": rn(d)}
        sd[p + "ls2.gamma"] = rn(d, std=0.03, mean=0.1)
    sd |= {"norm.weight": rn(d, std=0.1, mean=1.0), "norm.bias": rn(d, std=0.05)}
    return sd


def save_meta(sd: dict[str, torch.Tensor], folder: Path, arch: str = "vits16") -> tuple[Path, str]:
    """Save under Meta's name ``dinov3_<arch>_pretrain_lvd1689m-<sha256[:8]>.pth``; return path and digest."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "checkpoint.pth.tmp"
    torch.save(sd, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"dinov3_{arch}_pretrain_lvd1689m-{digest[:8]}.pth"
    tmp.rename(path)
    return path, digest


@pytest.fixture(scope="module", autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A private SHA-256 memo, and one torch thread (on a shared 2-core box, 2 threads are ~10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        memo = tmp_path_factory.mktemp("memo") / "sha256.json"
        mp.setattr(weights, "_sha_memo", lambda: memo)
        yield
    torch.set_num_threads(threads)


_CACHE: dict[str, tuple[Path, dict[str, torch.Tensor], torch.nn.Module, str]] = {}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``loaded(arch) -> (path, meta_sd, encoder, sha256)``, built once per module."""
    root = tmp_path_factory.mktemp("meta")

    def get(arch: str) -> tuple[Path, dict[str, torch.Tensor], torch.nn.Module, str]:
        if arch not in _CACHE:
            sd = make_meta_state_dict(arch, seed=len(arch))
            path, digest = save_meta(sd, root / arch, arch)
            enc = create_encoder(f"dinov3-{arch}", weights=path)
            _CACHE[arch] = (path, sd, enc, digest)
        return _CACHE[arch]

    yield get
    _CACHE.clear()


def _max_err(enc: torch.nn.Module, sd: dict[str, torch.Tensor], heads: int, x: torch.Tensor) -> float:
    with torch.no_grad():
        out = enc.forward_features(x, LAYERS)
    ref_cls, ref_patch = reference_forward(sd, x, heads, LAYERS)
    assert sorted(out.cls) == sorted(out.patch) == list(LAYERS)
    err = 0.0
    for i in LAYERS:
        assert out.cls[i].shape == ref_cls[i].shape
        assert out.patch[i].shape == ref_patch[i].shape
        err = max(err, (out.cls[i].double() - ref_cls[i]).abs().max().item(),
                  (out.patch[i].double() - ref_patch[i]).abs().max().item())
    return err


@pytest.mark.parametrize("size", [(224, 224), (224, 320)], ids=["224x224", "224x320"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_meta_checkpoint_matches_reference(loaded, arch: str, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    path, sd, enc, digest = loaded(arch)
    assert enc.weights_id == f"sha256:{digest}" and enc.pretrained
    batch = 2 if ARCHS[arch]["dim"] < 768 else 1  # B/16 in float64 is the slow part: one image
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))
    err = _max_err(enc, sd, ARCHS[arch]["heads"], x)
    MAX_ERR[f"{arch}@{size[0]}x{size[1]}"] = err
    print(f"max abs error {arch} {size}: {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("arch,mutation", [("vits16plus", "swap gate/up"), ("vits16", "swap q/k"),
                                           ("vitb16", "no layerscale")])
def test_wrong_mapping_would_fail(loaded, arch: str, mutation: str) -> None:  # type: ignore[no-untyped-def]
    """The comparison has teeth: a plausible wrong mapping is far outside the tolerance."""
    _, sd, enc, _ = loaded(arch)
    saved = {k: v.clone() for k, v in enc.model.state_dict().items()}
    try:
        with torch.no_grad():
            for blk in enc.blocks:
                if mutation == "swap gate/up":
                    g, u = blk.mlp.gate_proj.weight.clone(), blk.mlp.up_proj.weight.clone()
                    blk.mlp.gate_proj.weight.copy_(u)
                    blk.mlp.up_proj.weight.copy_(g)
                elif mutation == "swap q/k":
                    q, k = blk.attention.q_proj.weight.clone(), blk.attention.k_proj.weight.clone()
                    blk.attention.q_proj.weight.copy_(k)
                    blk.attention.k_proj.weight.copy_(q)
                else:
                    blk.layer_scale1.lambda1.fill_(1.0)
        x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
        assert _max_err(enc, sd, ARCHS[arch]["heads"], x) > 100 * TOL
    finally:
        enc.model.load_state_dict(saved)


def test_conversion_mapping() -> None:
    sd = make_meta_state_dict("vits16plus", seed=3)
    assert is_meta_state_dict(sd)
    spec = get_spec("dinov3-vits16plus")
    out = convert_meta_state_dict(sd, spec)
    d = 384
    assert not is_meta_state_dict(out)
    assert out["embeddings.mask_token"].shape == (1, 1, d)
    assert torch.equal(out["embeddings.register_tokens"], sd["storage_tokens"])
    assert torch.equal(out["layer.3.mlp.gate_proj.weight"], sd["blocks.3.mlp.w1.weight"])
    assert torch.equal(out["layer.3.mlp.up_proj.weight"], sd["blocks.3.mlp.w2.weight"])
    assert torch.equal(out["layer.3.mlp.down_proj.bias"], sd["blocks.3.mlp.w3.bias"])
    qkv = sd["blocks.7.attn.qkv.weight"]
    assert torch.equal(out["layer.7.attention.k_proj.weight"], qkv[d:2 * d])
    assert torch.equal(out["layer.7.attention.v_proj.bias"], sd["blocks.7.attn.qkv.bias"][2 * d:])
    assert "layer.7.attention.k_proj.bias" not in out
    assert not any("bias_mask" in k or "rope_embed" in k or k.startswith("blocks.") for k in out)
    # a 7B-style block without qkv bias converts to bias-free q/k/v
    nob = convert_meta_state_dict({"blocks.0.attn.qkv.weight": torch.zeros(12, 4)}, spec)
    assert sorted(nob) == ["layer.0.attention.k_proj.weight", "layer.0.attention.q_proj.weight",
                           "layer.0.attention.v_proj.weight"]
    # train-only local-crop CLS norm (ViT-L SAT, 7B) is dropped; an untied eval CLS norm is not
    kept = convert_meta_state_dict({"local_cls_norm.weight": torch.ones(4), "cls_norm.weight": torch.ones(4)}, spec)
    assert list(kept) == ["cls_norm.weight"]


def test_conversion_refuses_what_transformers_cannot_compute() -> None:
    spec = get_spec("dinov3-vits16")
    with pytest.raises(WeightsError, match="rope_embed.periods"):
        convert_meta_state_dict({"rope_embed.periods": 10000.0 ** (torch.arange(16) / 16.0)}, spec)
    bias = torch.randn(12)
    with pytest.raises(WeightsError, match=r"blocks\.2\.attn\.qkv\.bias has a non-zero key bias"):
        convert_meta_state_dict({"blocks.2.attn.qkv.bias": bias}, spec)
    with pytest.raises(WeightsError, match=r"blocks\.2\.attn\.qkv\.bias_mask is not"):
        convert_meta_state_dict({"blocks.2.attn.qkv.bias": bias, "blocks.2.attn.qkv.bias_mask": torch.ones(12)},
                                spec)
    zero_k = bias.clone()
    zero_k[4:8] = 0
    assert sorted(convert_meta_state_dict({"blocks.2.attn.qkv.bias": zero_k}, spec)) == [
        "layer.2.attention.q_proj.bias", "layer.2.attention.v_proj.bias"]


def test_conversion_error_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "other_rope.pth"
    torch.save({"storage_tokens": torch.zeros(1, 4, 384), "rope_embed.periods": torch.ones(16)}, f)
    msg = _one_line_error(f)
    assert msg.startswith(f"{f}: rope_embed.periods")


def _one_line_error(path: Path, **kw: object) -> str:
    with pytest.raises(WeightsError) as ei:
        create_encoder("dinov3-vits16", weights=path, **kw)  # type: ignore[arg-type]
    msg = str(ei.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_missing_and_extra_keys_are_listed(loaded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, sd, _, _ = loaded("vits16")
    missing = {k: v for k, v in sd.items() if k != "blocks.4.ls2.gamma"}
    torch.save(missing, tmp_path / "missing.pth")
    msg = _one_line_error(tmp_path / "missing.pth")
    assert "missing keys" in msg and "layer.4.layer_scale2.lambda1" in msg and "unexpected keys" not in msg
    extra = dict(sd) | {"blocks.3.attn.extra_scale": torch.ones(3)}
    torch.save(extra, tmp_path / "extra.pth")
    msg = _one_line_error(tmp_path / "extra.pth")
    assert "unexpected keys ['blocks.3.attn.extra_scale']" in msg and "missing keys" not in msg


def test_wrong_arch_is_reported(loaded) -> None:  # type: ignore[no-untyped-def]
    path, _, _, _ = loaded("vits16plus")
    msg = _one_line_error(path)  # an S+ checkpoint is not an S/16: its Meta file name says so
    assert "dinov3_vits16plus" in msg and "dinov3-vits16" in msg
    plain = path.with_name("checkpoint.pth")  # without Meta's name, strict key checking reports it
    shutil.copy(path, plain)
    msg = _one_line_error(plain)
    assert "gate_proj" in msg


def test_hash_mismatch_is_refused_and_no_verify_loads(loaded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, sd, _, _ = loaded("vits16")
    good = path.name.rsplit("-", 1)[1][:8]
    other = dict(sd) | {"norm.bias": sd["norm.bias"] + 0.5}
    renamed = tmp_path / path.name
    torch.save(other, renamed)
    actual = hashlib.sha256(renamed.read_bytes()).hexdigest()
    msg = _one_line_error(renamed)
    assert f"name says {good}" in msg and f"content is {actual[:8]}" in msg
    enc2 = create_encoder("dinov3-vits16", weights=renamed, verify=False)
    assert enc2.weights_id == f"sha256:{actual}"
    assert torch.allclose(enc2.model.norm.bias, other["norm.bias"])
    # a truncated file is a one-line read error
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[:4096])
    assert "cannot read weights" in _one_line_error(tmp_path / "cut.pth")


@pytest.mark.parametrize("layout", ["current", "layer.N"])
def test_safetensors_in_hf_layout(loaded, tmp_path: Path, layout: str) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import save_file

    _, _, enc, _ = loaded("vits16")
    sd = {k: v.detach().clone().contiguous() for k, v in enc.model.state_dict().items()}
    if layout == "layer.N":
        sd = {k.removeprefix("model."): v for k, v in sd.items()}
    f = tmp_path / "model.safetensors"
    save_file(sd, str(f))
    enc2 = create_encoder("dinov3-vits16", weights=f)
    x = torch.randn(1, 3, 224, 240, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a, b = enc.forward_features(x, (5, 11)), enc2.forward_features(x, (5, 11))
    for i in (5, 11):
        assert torch.equal(a.cls[i], b.cls[i]) and torch.equal(a.patch[i], b.patch[i])


_EXECUTED: list[str] = []


def _payload_ran(tag: str) -> str:
    _EXECUTED.append(tag)
    return tag


class _Payload:
    """An arbitrary object whose unpickling would run code."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_payload_ran, ("unpickled",))


def test_arbitrary_pickle_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "evil.pth"
    torch.save({"norm.weight": torch.ones(384), "payload": _Payload()}, f)
    msg = _one_line_error(f)
    assert "cannot read weights" in msg
    assert _EXECUTED == []
