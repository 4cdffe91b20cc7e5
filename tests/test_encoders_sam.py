"""SAM / MedSAM image encoders equal ``segment_anything``'s ``ImageEncoderViT`` on checkpoints in its exact layout.

The checkpoint is a whole ``segment_anything`` ``Sam`` model's ``state_dict()`` (``image_encoder.*``,
``prompt_encoder.*``, ``mask_decoder.*``: the layout of ``sam_vit_b_01ec64.pth`` and MedSAM's ``medsam_vit_b.pth``),
built by the reference package itself at a small width and depth 2 (one windowed block, one global block: the
structure and key names of ViT-B), with seeded random weights -- including the position embedding and the
relative-position tables, which ``segment_anything`` initialises to zero.

Resolutions: at the native 1024 x 1024 every tap (block outputs, neck) is compared with the reference modules'
outputs, and the neck with ``ImageEncoderViT.forward``. ``segment_anything`` itself only runs at 1024 (it adds its
64 x 64 position embedding unchanged); for another size (512 x 768) the reference runs with its position embedding
replaced by the bicubic resampling medprobe documents, so that everything else -- windows padded to whole windows,
relative-position tables interpolated for the global block -- is segment_anything's own code.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_libs import import_reference  # noqa: E402

from medprobe.encoders import EncoderSpec, create_encoder, encoder_info, get_family, get_spec, weights  # noqa: E402
from medprobe.encoders.flops import spec_gflops  # noqa: E402
from medprobe.encoders.registry import IMAGENET_MEAN, IMAGENET_STD, register, unregister  # noqa: E402
from medprobe.encoders.sam import build_sam_model, contiguous_rel_pos  # noqa: E402
from medprobe.errors import WeightsError  # noqa: E402

TOL = 1e-4
TINY = "sam-test-tiny"
DIM, HEADS, OUT = 64, 4, 32  # ViT-B: 768, 12, 256
GLOBAL = [1]
MAX_ERR: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        memo = tmp_path_factory.mktemp("memo") / "sha256.json"
        mp.setattr(weights, "_sha_memo", lambda: memo)
        yield


def _reference_sam(seed: int, global_idx: list[int] = GLOBAL) -> torch.nn.Module:
    """segment_anything's ``Sam`` as ``build_sam`` assembles it (LayerNorm eps 1e-6, rel-pos, window 14, patch 16,
    1024 input), at width 64 / depth 2 and a 32-d prompt / mask side, with every tensor random."""
    sa = import_reference("segment_anything")
    m = sa.modeling
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = m.Sam(
            image_encoder=m.ImageEncoderViT(
                depth=2, embed_dim=DIM, img_size=1024, mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                num_heads=HEADS, patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_idx,
                window_size=14, out_chans=OUT),
            prompt_encoder=m.PromptEncoder(embed_dim=OUT, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                                           mask_in_chans=4),
            mask_decoder=m.MaskDecoder(num_multimask_outputs=3, transformer=m.TwoWayTransformer(
                depth=1, embedding_dim=OUT, mlp_dim=64, num_heads=2), transformer_dim=OUT, iou_head_depth=2,
                iou_head_hidden_dim=16),
            pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in sam.image_encoder.named_parameters():
                if name.endswith("pos_embed") or "rel_pos" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)
                elif ("norm" in name or name.startswith("neck.1") or name.startswith("neck.3")) and p.dim() == 1:
                    p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
                elif p.dim() == 1:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
                else:
                    fan_in = math.prod(p.shape[1:])
                    p.copy_(torch.randn(p.shape, generator=g) * 1.2 / math.sqrt(fan_in))
    return sam.eval()


def _reference_taps(encoder: Any, x: torch.Tensor, pos_embed: torch.Tensor | None = None
                    ) -> list[torch.Tensor]:
    """Block outputs and the neck, by segment_anything's own modules (``ImageEncoderViT.forward`` unrolled)."""
    h = encoder.patch_embed(x)
    h = h + (encoder.pos_embed if pos_embed is None else pos_embed)
    taps = []
    for blk in encoder.blocks:
        h = blk(h)
        taps.append(h.permute(0, 3, 1, 2))
    taps.append(encoder.neck(h.permute(0, 3, 1, 2)))
    return taps


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[torch.nn.Module, Path]]:
    register(EncoderSpec(name=TINY, family="sam", patch_size=16, width=DIM, depth=3, params_m=0.0,
                         default_layers=(0, 1, 1, 2), native_resolution=1024,
                         hf_config=dict(hidden_size=DIM, num_hidden_layers=2, num_attention_heads=HEADS,
                                        mlp_dim=4 * DIM, patch_size=16, image_size=1024, window_size=14,
                                        global_attn_indexes=GLOBAL, output_channels=OUT, layer_norm_eps=1e-6)))
    sam = _reference_sam(seed=0)
    path = tmp_path_factory.mktemp("sam") / "sam_vit_tiny.pth"
    torch.save(sam.state_dict(), path)
    try:
        yield sam, path
    finally:
        unregister(TINY)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.double() - b.double()).abs().max())


def test_native_1024_equals_segment_anything(tiny: tuple[torch.nn.Module, Path]) -> None:
    sam, path = tiny
    assert any(k.startswith("prompt_encoder.") for k in sam.state_dict())  # the whole-SAM file layout
    enc = create_encoder(TINY, weights=path)
    assert enc.depth == 3 and enc.resolve_layers("last") == (2,) and enc.pretrained
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = enc.forward_features(x, (0, 1, 2))
        ref = _reference_taps(sam.image_encoder, x)
        full = sam.image_encoder(x)
    assert torch.allclose(ref[2], full, atol=1e-6)
    err = 0.0
    for i, r in enumerate(ref):
        assert out.patch[i].shape == r.shape == (1, DIM if i < 2 else OUT, 64, 64)
        err = max(err, _err(out.patch[i], r), _err(out.cls[i], r.mean((2, 3))))
    assert float(ref[1].abs().max()) > 1.0
    MAX_ERR["sam 1024x1024"] = err
    assert err <= TOL, err


def test_other_size_with_resampled_pos_embed(tiny: tuple[torch.nn.Module, Path]) -> None:
    sam, path = tiny
    enc = create_encoder(TINY, weights=path)
    x = torch.randn(1, 3, 512, 768, generator=torch.Generator().manual_seed(2))
    pe = sam.image_encoder.pos_embed.detach()
    resampled = F.interpolate(pe.permute(0, 3, 1, 2), size=(32, 48), mode="bicubic",
                              align_corners=False).permute(0, 2, 3, 1)
    with torch.inference_mode():
        out = enc.forward_features(x, (0, 1, 2))
        ref = _reference_taps(sam.image_encoder, x, pos_embed=resampled)
    err = max(_err(out.patch[i], ref[i]) for i in range(3))
    MAX_ERR["sam 512x768 (pos-embed resampled)"] = err
    assert out.patch[2].shape == (1, OUT, 32, 48) and err <= TOL, err
    # segment_anything itself refuses this size: its position embedding is fixed to the 64 x 64 grid
    with torch.inference_mode(), pytest.raises(RuntimeError):
        sam.image_encoder(x)


def test_layouts_and_identity(tiny: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    """A bare ImageEncoderViT state dict and a transformers SamModel folder load to the same network; the cache
    identity needs no model."""
    from safetensors.torch import save_file

    sam, path = tiny
    enc = create_encoder(TINY, weights=path)
    info = encoder_info(TINY, path)
    assert info is not None and info.weights_id == enc.weights_id and info.weights_id.startswith("sha256:")
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        want = enc.forward_features(x, (2,)).patch[2]
    torch.save(sam.image_encoder.state_dict(), tmp_path / "bare.pth")
    folder = tmp_path / "hf"
    folder.mkdir()
    sd = {k: v.contiguous() for k, v in enc.model.state_dict().items()}
    sd |= {"shared_image_embedding.positional_embedding": torch.zeros(2, 16),
           "mask_decoder.iou_token.weight": torch.zeros(1, OUT)}
    save_file(sd, str(folder / "model.safetensors"))
    for src in (tmp_path / "bare.pth", folder):
        with torch.inference_mode():
            assert torch.equal(create_encoder(TINY, weights=src).forward_features(x, (2,)).patch[2], want)


def _one_line(path: Path, name: str = TINY) -> str:
    with pytest.raises(WeightsError) as ei:
        create_encoder(name, weights=path)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    return msg


def test_bad_files(tiny: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    sam, _ = tiny
    sd = sam.state_dict()
    torch.save({k: v for k, v in sd.items() if k != "image_encoder.blocks.1.attn.rel_pos_h"}, tmp_path / "m.pth")
    assert "missing tensor 'image_encoder.blocks.1.attn.rel_pos_h'" in _one_line(tmp_path / "m.pth")
    torch.save(dict(sd) | {"image_encoder.blocks.2.norm1.weight": torch.ones(DIM)}, tmp_path / "u.pth")
    assert "unexpected tensor 'image_encoder.blocks.2.norm1.weight'" in _one_line(tmp_path / "u.pth")
    # global attention in the other block: the relative-position tables have the other block's sizes
    torch.save(_reference_sam(seed=0, global_idx=[0]).state_dict(), tmp_path / "g.pth")
    msg = _one_line(tmp_path / "g.pth")
    assert "tensor 'image_encoder.blocks.0.attn.rel_pos_h' has shape (127, 16)" in msg and "(27, 16)" in msg
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "resnet.pth")
    assert "not a segment_anything SAM checkpoint: its first key 'conv1.weight'" in _one_line(tmp_path / "resnet.pth")


def test_full_vit_b_checkpoint_loads_into_sam_vit_b(tmp_path: Path) -> None:
    """segment_anything's own ``build_sam_vit_b()`` (the exact network of ``sam_vit_b_01ec64.pth`` / MedSAM's
    ``medsam_vit_b.pth``) loads strictly into the registered ``sam-vit-b`` and ``medsam-vit-b`` and gives the same
    taps. At 256 x 256 (position embedding resampled as documented) to stay cheap on a CPU; the native 1024 is
    covered by the small model above."""
    from safetensors.torch import save_file

    sa = import_reference("segment_anything")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        sam = sa.build_sam_vit_b().eval()
        with torch.no_grad():  # zero-initialised by segment_anything: make them matter
            for name, p in sam.image_encoder.named_parameters():
                if name.endswith("pos_embed") or "rel_pos" in name:
                    p.normal_(0.0, 0.5)
    assert sam.image_encoder.blocks[0].norm1.eps == 1e-6
    f = tmp_path / "sam_vit_b.safetensors"
    save_file({k: v.contiguous() for k, v in sam.state_dict().items()}, str(f))
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(6))
    pe = F.interpolate(sam.image_encoder.pos_embed.detach().permute(0, 3, 1, 2), size=(16, 16), mode="bicubic",
                       align_corners=False).permute(0, 2, 3, 1)
    with torch.inference_mode():
        ref = _reference_taps(sam.image_encoder, x, pos_embed=pe)
        for name in ("sam-vit-b", "medsam-vit-b"):
            out = create_encoder(name, weights=f).forward_features(x, (2, 11, 12))
            err = max(_err(out.patch[i], ref[i]) for i in (2, 11, 12))
            assert out.patch[12].shape == (1, 256, 16, 16) and err <= TOL, (name, err)
    MAX_ERR["sam ViT-B full 256x256 (pos-embed resampled)"] = err


# ------------------------------------------------------------------ registered ViT-B encoders: size, cost, contract
def _sam_gflops(gh: int, gw: int, d: int = 768, heads: int = 12, depth: int = 12, win: int = 14,
                global_idx: tuple[int, ...] = (2, 5, 8, 11), out: int = 256, blocks: int | None = None) -> float:
    """Analytic SAM image-encoder FLOPs (2 x MACs): patch embedding; per block qkv / proj (on the window-padded
    grid for windowed blocks), q k^T and attn v, the two decomposed relative-position einsums, the MLP (on the
    unpadded grid); the neck's 1x1 and 3x3 convolutions. Norms, softmax and additions are not counted."""
    n = gh * gw
    hd = d // heads
    flops = 2 * 3 * 256 * d * n
    depth_run = depth if blocks is None else blocks
    for i in range(depth_run):
        if i in global_idx:
            wins, side_h, side_w = 1, gh, gw
        else:
            ph, pw = math.ceil(gh / win) * win, math.ceil(gw / win) * win
            wins, side_h, side_w = (ph // win) * (pw // win), win, win
        t = side_h * side_w  # tokens per window
        flops += wins * (2 * t * d * 3 * d + 2 * t * d * d)  # qkv, proj
        flops += wins * heads * (2 * t * t * hd * 2)  # q k^T, attn v
        flops += wins * heads * 2 * t * hd * (side_h + side_w)  # rel-pos: q . R_h and q . R_w
        flops += 2 * n * d * 4 * d * 2  # MLP
    if blocks is None:
        flops += 2 * n * d * out + 2 * n * out * 9 * out
    return flops / 1e9


def test_gflops_match_analytic_count() -> None:
    assert spec_gflops("sam-vit-b", 1024) == pytest.approx(_sam_gflops(64, 64), rel=1e-9)
    assert spec_gflops("sam-vit-b", 1024) == pytest.approx(972.1, abs=0.1)  # ~486 GMACs
    assert spec_gflops("sam-vit-b", (512, 768), (5,)) == pytest.approx(_sam_gflops(32, 48, blocks=6), rel=1e-9)
    assert spec_gflops("medsam-vit-b", 512) == spec_gflops("sam-vit-b", 512)


@pytest.mark.parametrize("name", ["sam-vit-b", "medsam-vit-b"])
def test_registered_specs(name: str) -> None:
    spec = get_spec(name)
    with torch.device("meta"):
        model = build_sam_model(spec)
    assert spec.params_m == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6, abs=0.01)
    assert (spec.patch_size, spec.width, spec.depth, spec.native_resolution) == (16, 768, 13, 1024)
    assert spec.default_layers == (2, 5, 8, 11) and spec.hf_config["global_attn_indexes"] == [2, 5, 8, 11]
    if name == "sam-vit-b":  # SAM's 0-255 pixel mean/std are ImageNet's on medprobe's 0-1 scale
        assert spec.mean == pytest.approx([v / 255 for v in (123.675, 116.28, 103.53)])
        assert spec.std == pytest.approx([v / 255 for v in (58.395, 57.12, 57.375)])
        assert (spec.mean, spec.std) == (IMAGENET_MEAN, IMAGENET_STD)
    else:  # MedSAM feeds its image encoder the [0, 1] image itself
        assert spec.mean == (0.0, 0.0, 0.0) and spec.std == (1.0, 1.0, 1.0)
    fam = get_family("sam")
    assert "neck" in fam.taps and "mean of" in fam.cls_feature and fam.extra == ""


def test_random_init_taps() -> None:
    """Random ViT-B at a small size: 12 block taps of 768 channels, the neck's 256; cls is the mean token."""
    enc = create_encoder("medsam-vit-b", seed=1)
    assert enc.weights_id == "random:seed=1" and enc.resolve_layers("four") == (2, 5, 8, 11)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        out = enc.forward_features(x, (0, 11, 12))
    assert out.patch[11].shape == (1, 768, 4, 4) and out.patch[12].shape == (1, 256, 4, 4)
    assert torch.allclose(out.cls[12], out.patch[12].mean((2, 3)))


def test_contiguous_rel_pos_is_bit_identical_to_transformers(tiny: tuple[torch.nn.Module, Path]) -> None:
    """The encoder's rel-pos bias (contiguous_rel_pos: no copy of the attention-sized map) gives exactly the
    taps of transformers' own get_decomposed_rel_pos, windowed and global blocks, at 1024 and another size."""
    _, path = tiny
    enc = create_encoder(TINY, weights=path)
    patched = [layer.attn.__dict__.get("get_decomposed_rel_pos") for layer in enc.vit.layers]
    assert all(f is not None and f.__func__ is contiguous_rel_pos for f in patched)
    g = torch.Generator().manual_seed(5)
    for shape in ((2, 3, 1024, 1024), (1, 3, 288, 352)):
        x = torch.randn(*shape, generator=g)
        with torch.inference_mode():
            ours = enc.forward_features(x, (0, 1, 2))
            for layer in enc.vit.layers:
                del layer.attn.get_decomposed_rel_pos  # transformers' method again
            theirs = enc.forward_features(x, (0, 1, 2))
            for layer, f in zip(enc.vit.layers, patched, strict=True):
                layer.attn.get_decomposed_rel_pos = f
        for i in range(3):
            assert torch.equal(ours.patch[i], theirs.patch[i]), (shape, i)
    # the map it returns is contiguous: the attention's reshape to (B, heads, N, N) is a view, not a copy
    attn = enc.vit.layers[1].attn
    q = torch.randn(HEADS, 64 * 64, DIM // HEADS, generator=g)
    bias = contiguous_rel_pos(attn, q, attn.rel_pos_h, attn.rel_pos_w, (64, 64), (64, 64))
    assert bias.is_contiguous() and bias.shape == (HEADS, 64, 64, 64, 64)


def test_report_max_errors() -> None:
    for k, v in sorted(MAX_ERR.items()):
        print(f"{k}: max abs diff {v:.2e}")


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "encoders" / "sam"


def test_matches_stored_reference_outputs(tiny: tuple[torch.nn.Module, Path]) -> None:
    """segment_anything's taps on the seeded checkpoint at a 256 x 256 input, stored when this test was written
    (regenerate with MEDPROBE_WRITE_FIXTURES=1): catches a change of the generator or of the reference package."""
    import json
    import os

    import numpy as np

    sam, path = tiny
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(5))
    pe = F.interpolate(sam.image_encoder.pos_embed.detach().permute(0, 3, 1, 2), size=(16, 16), mode="bicubic",
                       align_corners=False).permute(0, 2, 3, 1)
    with torch.inference_mode():
        ref_taps = _reference_taps(sam.image_encoder, x, pos_embed=pe)
        out = create_encoder(TINY, weights=path).forward_features(x, (0, 1, 2))

    def summary(taps: list[torch.Tensor]) -> dict[str, list[float]]:
        return {f"tap{i}": [float(v) for v in t[0].mean((1, 2))[:8]] + [float(t.abs().mean())]
                for i, t in enumerate(taps)}

    ref = summary(ref_taps)
    f = FIXTURES / "sam_tiny_seed0_256.json"
    if os.environ.get("MEDPROBE_WRITE_FIXTURES"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")
    stored = json.loads(f.read_text(encoding="utf-8"))
    ours = summary([out.patch[i] for i in range(3)])
    for k in stored:
        np.testing.assert_allclose(ref[k], stored[k], rtol=0, atol=1e-5, err_msg=k)
        np.testing.assert_allclose(ours[k], stored[k], rtol=0, atol=TOL, err_msg=k)


def test_local_weight_files_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``medprobe models`` finds SAM / MedSAM / torchvision files by their published names in $MEDPROBE_WEIGHTS."""
    from medprobe.encoders import weights_available

    for name in ("medsam_vit_b.pth", "sam_vit_b_01ec64.pth", "resnet50-11ad3fa6.pth", "other.pth"):
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.setenv("MEDPROBE_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-home"))
    assert weights_available(get_spec("medsam-vit-b")) == [tmp_path / "medsam_vit_b.pth"]
    assert weights_available(get_spec("sam-vit-b")) == [tmp_path / "sam_vit_b_01ec64.pth"]
    assert weights_available(get_spec("resnet50")) == [tmp_path / "resnet50-11ad3fa6.pth"]
