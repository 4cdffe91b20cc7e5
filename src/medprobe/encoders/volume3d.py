"""3D volume encoders: a whole volume in, one feature vector (and grid) per volume out -- not slice by slice.

Registers the encoder family ``swin_unetr``: the encoder (``swinViT``) of MONAI's Swin UNETR, built from MONAI's
own :class:`monai.networks.nets.swin_unetr.SwinTransformer` (the ``metrics`` extra) and loaded from the
self-supervised checkpoint MONAI's research-contributions publish (``model_swinvit.pt``: a dict whose
``state_dict`` holds ``module.patch_embed.*``, ``module.layers{1-4}.0.blocks.N.*`` with ``mlp.fc1/fc2`` and
``module.layers{1-4}.0.downsample.*``), mapped key for key as ``SwinUNETR.load_from`` copies them.

Contract of every volumetric encoder (:class:`VolumeEncoder`): input ``(B, 1, D, H, W)`` -- D the slice
(axial) axis, H and W the other two in the array's order -- intensities already mapped and normalised as the
spec says (``hf_config["intensity"]``, ``mean``/``std``), resampled to the size the features path chose;
taps are stages (Swin: 0 = patch embedding, 1-4 = after each stage, patch merging included); ``patch[l]`` is the
``(B, C_l, d, h, w)`` grid after MONAI's parameter-free channel LayerNorm (``normalize=True``, what Swin UNETR's
decoder receives) and ``cls[l]`` its global average. MONAI's networks take ``(B, 1, X, Y, Z)``: the encoder
permutes the contract's ``(D, H, W) = (Z, X, Y)`` to that order and back, so pretrained weights see the
orientation they were trained on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from medprobe.encoders.base import Encoder, EncoderInfo, EncoderOutput
from medprobe.encoders.families import EncoderFamily, register_family
from medprobe.encoders.registry import EncoderSpec, _add
from medprobe.errors import ConfigError, WeightsError

if TYPE_CHECKING:
    from medprobe.encoders.weights import WeightsRef

Size3 = tuple[int, int, int]


def native_size(spec: EncoderSpec) -> Size3:
    """The encoder's pre-training input size ``(D, H, W)`` in voxels."""
    d, h, w = spec.hf_config["size"]
    return int(d), int(h), int(w)


def volume_size(spec: EncoderSpec, resolution: tuple[int, int] | None = None) -> Size3:
    """The ``(D, H, W)`` input of a volumetric encoder for an in-plane ``resolution`` ``(H, W)`` (the
    preprocess ``resolution`` option): depth keeps the native depth-to-height ratio (Swin UNETR 96^3: D = H)."""
    nd, nh, nw = native_size(spec)
    if resolution is None:
        return nd, nh, nw
    h, w = int(resolution[0]), int(resolution[1])
    return max(1, round(nd * h / nh)), h, w


class VolumeEncoder(Encoder):
    """A frozen 3D encoder: ``(B, 1, D, H, W)`` -> :class:`EncoderOutput` with ``(B, C, d, h, w)`` grids.

    Every side must be a positive multiple of ``spec.hf_config["multiple"]`` (Swin: 32, five halvings)."""

    volumetric = True

    @property
    def multiple(self) -> int:
        return int(self.spec.hf_config.get("multiple", 1))

    def check_volume_size(self, size: Sequence[int]) -> None:
        m = self.multiple
        if len(size) != 3 or any(int(s) < m or int(s) % m for s in size):
            raise ConfigError(f"volume input {'x'.join(str(int(s)) for s in size)} (DxHxW) is not a positive multiple "
                              f"of {m} per side, which {self.spec.name} needs")

    def check_input_size(self, h: int, w: int) -> None:
        """2D form (an in-plane resolution): checks the volume size it implies (:func:`volume_size`)."""
        self.check_volume_size(volume_size(self.spec, (h, w)))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "input": "volume (B, 1, D, H, W)"}


# ---------------------------------------------------------------- Swin UNETR encoder (MONAI swinViT)
SWIN_STAGES = 5  # taps: 0 = patch embedding, 1..4 = after stage 1..4 (each ends with its patch merging)


def build_swin(spec: EncoderSpec) -> torch.nn.Module:
    """MONAI's ``SwinTransformer`` as ``SwinUNETR`` builds it (``in_channels=1``, random weights)."""
    from medprobe.encoders.extras import import_extra

    import_extra("monai", f"the {spec.name} encoder")
    from monai.networks.nets.swin_unetr import SwinTransformer

    c = spec.hf_config
    return SwinTransformer(in_chans=1, embed_dim=int(c["feature_size"]), window_size=(7, 7, 7),
                           patch_size=(2, 2, 2), depths=tuple(c["depths"]), num_heads=tuple(c["num_heads"]),
                           mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
                           norm_layer=torch.nn.LayerNorm, patch_norm=False, use_checkpoint=False, spatial_dims=3,
                           downsample="merging", use_v2=False)


class SwinViTEncoder(VolumeEncoder):
    """Swin UNETR's ``swinViT``, run stage by stage so that extraction stops at the deepest tap."""

    def __init__(self, spec: EncoderSpec, model: torch.nn.Module) -> None:
        super().__init__()
        self.spec = spec
        m: Any = model.eval().requires_grad_(False)
        self.model = m
        # the four Swin stages (plain references: the modules are registered once, under self.model)
        self.stages: list[Any] = [m.layers1[0], m.layers2[0], m.layers3[0], m.layers4[0]]

    @property
    def depth(self) -> int:
        return SWIN_STAGES

    @property
    def width(self) -> int:
        return int(self.model.embed_dim) * 16

    def forward_features(self, x: torch.Tensor, layers: Sequence[int]) -> EncoderOutput:
        if x.ndim != 5 or x.shape[1] != 1:
            raise ConfigError(f"{self.spec.name} takes (B, 1, D, H, W) volumes, got shape {tuple(x.shape)}")
        self.check_volume_size(x.shape[2:])
        want = set(layers)
        m: Any = self.model
        t = x.to(m.patch_embed.proj.weight.dtype).permute(0, 1, 3, 4, 2).contiguous()  # (B,1,D,H,W) -> (B,1,X,Y,Z)
        t = m.pos_drop(m.patch_embed(t))
        cls: dict[int, torch.Tensor] = {}
        patch: dict[int, torch.Tensor] = {}
        for i in range(max(want) + 1):
            if i:
                t = self.stages[i - 1](t.contiguous())
            if i in want:
                # MONAI's proj_out(normalize=True): LayerNorm over channels without parameters (written out here,
                # as einops is not needed for it); then (B, X, Y, Z, C) -> (B, C, Z, X, Y) = (B, C, d, h, w)
                g = F.layer_norm(t.permute(0, 2, 3, 4, 1), [int(t.shape[1])]).permute(0, 4, 3, 1, 2)
                patch[i] = g
                cls[i] = g.mean((2, 3, 4))
        return EncoderOutput(cls=cls, patch=patch)


def swin_state_dict(sd: Mapping[str, torch.Tensor], source: str | Path) -> dict[str, torch.Tensor]:
    """Map the published self-supervised layout onto MONAI ``SwinTransformer`` keys, as ``load_from`` does:
    ``mlp.fc1``/``mlp.fc2`` -> ``mlp.linear1``/``mlp.linear2`` (``module.`` was stripped on reading). A file
    whose every key sits under ``swinViT.`` / ``swin_vit.`` (a SwinUNETR or SSL-training state) is accepted
    with that prefix removed; anything else stays as it is and the strict load names it."""
    keys = list(sd)
    for prefix in ("swinViT.", "swin_vit."):
        if keys and all(k.startswith(prefix) for k in keys):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
            break
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if ".mlp.fc1." in k:
            k = k.replace(".mlp.fc1.", ".mlp.linear1.")
        elif ".mlp.fc2." in k:
            k = k.replace(".mlp.fc2.", ".mlp.linear2.")
        out[k] = v
    return out


def load_exact(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Strict load; the first offending key (missing, unexpected, wrong shape) in one line naming the file."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if unexpected:
        raise WeightsError(f"unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected in all): not the "
                           "published Swin UNETR self-supervised layout", source)
    if missing:
        raise WeightsError(f"missing tensor {missing[0]!r} ({len(missing)} missing in all)", source)
    for k in own:
        if tuple(own[k].shape) != tuple(sd[k].shape):
            raise WeightsError(f"tensor {k!r} has shape {tuple(sd[k].shape)}, the architecture needs "
                               f"{tuple(own[k].shape)} (another feature_size?)", source)
    model.load_state_dict(dict(sd), strict=True)


def _weights_id(ref: WeightsRef) -> str:
    from medprobe.encoders.weights import file_sha256

    return f"random:seed={ref.seed}" if ref.kind == "random" else f"sha256:{file_sha256(str(ref.location))}"


def _build_swin(spec: EncoderSpec, ref: WeightsRef, options: Mapping[str, Any]) -> Encoder:
    from medprobe.encoders.weights import load_state_dict

    if ref.kind not in ("random", "file"):
        raise WeightsError(f"{spec.name} loads a local .pt / .safetensors file (e.g. model_swinvit.pt), not "
                           f"{ref.kind} weights", ref.location)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ref.seed)
        model = build_swin(spec)
    if ref.kind == "file":
        path = Path(str(ref.location))
        load_exact(model, swin_state_dict(load_state_dict(path), path), path)
    enc = SwinViTEncoder(spec, model)
    enc.weights_id, enc.pretrained = _weights_id(ref), ref.kind == "file"
    return enc


def _identity(spec: EncoderSpec, ref: WeightsRef) -> EncoderInfo | None:
    if ref.kind not in ("random", "file"):
        return None
    return VolumeInfo(spec, _weights_id(ref), ref.kind == "file")


class VolumeInfo(EncoderInfo):
    """Identity of a volumetric encoder (cache look-ups without building it)."""

    volumetric = True
    multiple = VolumeEncoder.multiple
    check_volume_size = VolumeEncoder.check_volume_size
    check_input_size = VolumeEncoder.check_input_size  # type: ignore[assignment]

    @property
    def depth(self) -> int:
        return self.spec.depth


def _swin_gflops(spec: EncoderSpec, resolution: tuple[int, int], layers: tuple[int, ...] | None) -> float | None:
    """GFLOPs of one volume at the size ``resolution`` implies, counted on a ``meta``-device network."""
    from medprobe.encoders.flops import _Tapped as Tapped
    from medprobe.encoders.flops import count_flops

    d, h, w = volume_size(spec, resolution)
    with torch.random.fork_rng(devices=[]):  # MONAI's constructor needs real tensors; built once, then moved
        model = build_swin(spec).to("meta")
    enc = SwinViTEncoder(spec, model)
    example = torch.zeros(1, 1, d, h, w, device="meta")
    taps = layers if layers is not None else (SWIN_STAGES - 1,)
    return count_flops(Tapped(enc, taps), example) / 1e9


register_family(EncoderFamily(
    name="swin_unetr", build=_build_swin, identity=_identity, gflops=_swin_gflops, volumetric=True,
    description="MONAI Swin UNETR encoder (swinViT), 3D volumes in",
    cls_feature="global average pool of the stage's (B, C, d, h, w) grid",
    patch_feature="stage output after MONAI's parameter-free channel LayerNorm, (B, C, d, h, w); "
                  "stride 2, 4, 8, 16, 32 for stages 0-4",
    taps="stages 0-4 (0 = patch embedding, 1-4 = Swin stages incl. patch merging)", extra="metrics",
))

# Swin UNETR's self-supervised pre-training (research-contributions SwinUNETR/Pretrain): CT, HU [-1000, 1000]
# scaled to [0, 1], spacing 1.5 x 1.5 x 2.0 mm (x, y, z), 96^3 crops; feature_size 48.
_add(EncoderSpec(
    name="swin-unetr", family="swin_unetr", patch_size=2, width=768, depth=SWIN_STAGES, params_m=8.06,
    default_layers=(1, 2, 3, 4), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), native_resolution=96,
    license="Apache-2.0 (MONAI research-contributions)",
    pretraining_data="5,050 CT volumes (LUNA16, TCIA Covid19, HNSCC, TCIA Colon, LiDC), self-supervised "
                     "(inpainting, rotation, contrastive); weights file model_swinvit.pt",
    hf_config=dict(feature_size=48, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), size=(96, 96, 96),
                   spacing=(2.0, 1.5, 1.5), intensity="ct:0,2000", multiple=32,
                   weights_file="model_swinvit.pt"),
))

__all__ = ["SwinViTEncoder", "VolumeEncoder", "VolumeInfo", "build_swin", "load_exact", "native_size",
           "swin_state_dict", "volume_size"]
