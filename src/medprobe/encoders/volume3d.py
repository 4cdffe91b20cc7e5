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
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from medprobe.encoders.base import Encoder, EncoderInfo, EncoderOutput
from medprobe.encoders.families import EncoderFamily, register_family
from medprobe.encoders.memory import ctvit_memory, volume_memory
from medprobe.encoders.registry import EncoderSpec, _add
from medprobe.errors import ConfigError, WeightsError
from medprobe.utils import torch_seeded

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


def local_weight_files(spec: EncoderSpec) -> list[Path]:
    """The spec's published weights file (``hf_config["weights_file"]``, e.g. ``model_swinvit.pt``) where medprobe
    looks for local weights: the folders in ``MEDPROBE_WEIGHTS`` and torch's hub checkpoint folder."""
    import os

    name = spec.hf_config.get("weights_file")
    if not name:
        return []
    dirs = [Path(d) for d in os.environ.get("MEDPROBE_WEIGHTS", "").split(os.pathsep) if d]
    dirs.append(Path.home() / ".cache" / "torch" / "hub" / "checkpoints")
    return [d / str(name) for d in dirs if (d / str(name)).is_file()]


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
    with torch_seeded(ref.seed):
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
    memory=volume_memory,
    local_weights=local_weight_files,
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

# ---------------------------------------------------------------- CT-CLIP's CTViT image encoder
# Written from CT-CLIP's published code (transformer_maskgit/ctvit.py and attention.py, which pins
# vector-quantize-pytorch 1.1.2): CTViT.forward(video, return_encoded_tokens=True) -- patch embedding, a spatial
# transformer over each group of slices, a temporal transformer over each patch position, cosine-similarity vector
# quantisation -- and CTCLIP's image pooling: tokens averaged over the slice axis, flattened (h, w, dim) and
# projected by to_visual_latent. Module names follow the published ones, so a CT-CLIP state dict maps key for key.


class _BiaslessLayerNorm(torch.nn.Module):
    """CT-CLIP's LayerNorm: learned gain ``gamma``, a zero ``beta`` kept as a buffer."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = torch.nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta: torch.Tensor = self.beta  # type: ignore[assignment]
        return F.layer_norm(x, x.shape[-1:], self.gamma, beta)


class _CTAttention(torch.nn.Module):
    """Cosine-similarity attention (l2-normalised q and k, learned per-dimension scales, fixed scale 8)."""

    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm = _BiaslessLayerNorm(dim)
        self.context_norm = _BiaslessLayerNorm(dim)  # unused for self-attention; part of the published module
        self.null_kv = torch.nn.Parameter(torch.zeros(heads, 0, dim_head))  # no null key/values in self-attention
        self.to_q = torch.nn.Linear(dim, inner, bias=False)
        self.to_kv = torch.nn.Linear(dim, inner * 2, bias=False)
        self.q_scale = torch.nn.Parameter(torch.ones(dim_head))
        self.k_scale = torch.nn.Parameter(torch.ones(dim_head))
        self.to_out = torch.nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        n, length, _ = x.shape
        x = self.norm(x)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        q, k, v = (t.reshape(n, length, self.heads, -1).transpose(1, 2) for t in (self.to_q(x), k, v))
        q = F.normalize(q, dim=-1) * self.q_scale
        k = F.normalize(k, dim=-1) * self.k_scale
        sim = torch.matmul(q, k.transpose(-1, -2)) * 8.0
        if bias is not None:
            sim = sim + bias
        out = torch.matmul(sim.softmax(dim=-1), v)
        return self.to_out(out.transpose(1, 2).reshape(n, length, -1))


class _PEG(torch.nn.Module):
    """Position-generating depthwise 3x3x3 convolution, causal along the slice-group axis. The tokens are
    reshaped to ``(b, t, h, w, d)`` as laid out in memory, as the published module does (also in the temporal
    transformer, where they are ordered ``(b h w) t``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dsconv = torch.nn.Conv3d(dim, dim, 3, groups=dim)

    def forward(self, x: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
        y = x.reshape(*shape, -1).permute(0, 4, 1, 2, 3)
        y = self.dsconv(F.pad(y, (1, 1, 1, 1, 2, 0)))
        return y.permute(0, 2, 3, 4, 1).reshape(x.shape)


class _GEGLU(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * a


def _feed_forward(dim: int, mult: int = 4) -> torch.nn.Sequential:
    inner = int(mult * (2 / 3) * dim)
    return torch.nn.Sequential(torch.nn.LayerNorm(dim), torch.nn.Linear(dim, inner * 2, bias=False), _GEGLU(),
                               torch.nn.Dropout(0.0), torch.nn.Linear(inner, dim, bias=False))


class _CTTransformer(torch.nn.Module):
    """Blocks of [PEG, self-attention, (no cross-attention), feed-forward] and a final bias-less LayerNorm."""

    def __init__(self, dim: int, depth: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([
            torch.nn.ModuleList([_PEG(dim), _CTAttention(dim, dim_head, heads), None,  # type: ignore[list-item]
                                 _feed_forward(dim)])
            for _ in range(depth)])
        self.norm_out = _BiaslessLayerNorm(dim)

    def block(self, i: int, x: torch.Tensor, shape: tuple[int, int, int, int], bias: torch.Tensor | None
              ) -> torch.Tensor:
        layer: Any = self.layers[i]
        x = layer[0](x, shape) + x
        x = layer[1](x, bias) + x
        return layer[3](x) + x  # type: ignore[no-any-return]


class _ContinuousPositionBias(torch.nn.Module):
    """Attention bias per head from an MLP of the log-scaled 2D offset between two patches."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.net = torch.nn.ModuleList([
            torch.nn.Sequential(torch.nn.Linear(2, dim), torch.nn.LeakyReLU(0.1)),
            torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.LeakyReLU(0.1)),
            torch.nn.Linear(dim, heads)])

    def forward(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        grid = torch.stack(torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device),
                                          indexing="ij")).reshape(2, -1).t()
        rel = grid[:, None, :] - grid[None, :, :]
        r = (torch.sign(rel) * torch.log(rel.abs() + 1)).float()
        for layer in self.net:
            r = layer(r)
        return r.permute(2, 0, 1)


class _CosineCodebook(torch.nn.Module):
    """vector-quantize-pytorch 1.1.2 ``CosineSimCodebook`` buffers (one codebook)."""

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self.register_buffer("initted", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(1, size))
        self.register_buffer("embed", F.normalize(torch.randn(1, size, dim), dim=-1))


class _VectorQuantize(torch.nn.Module):
    """Evaluation-mode cosine-similarity quantisation: each token becomes the stored codebook vector whose
    direction is closest (float32, outside autocast, as the published codebook runs)."""

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self._codebook = _CosineCodebook(dim, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embed: torch.Tensor = self._codebook.embed[0]  # type: ignore[index]
        off = torch.autocast(x.device.type, enabled=False) if x.device.type in ("cpu", "cuda") else nullcontext()
        with off:
            sim = torch.matmul(F.normalize(x.float(), dim=-1), F.normalize(embed.float(), dim=-1).t())
            return embed[sim.argmax(dim=-1)]


class CTViTModel(torch.nn.Module):
    """The encoder half of CT-CLIP's CTViT (the decoder, discriminator and VGG are not built)."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        dim, p, pt = int(cfg["dim"]), int(cfg["patch_size"]), int(cfg["temporal_patch_size"])
        heads, dim_head = int(cfg["heads"]), int(cfg["dim_head"])
        self.dim, self.patch, self.temporal_patch, self.image_size = dim, p, pt, int(cfg["image_size"])
        self.spatial_rel_pos_bias = _ContinuousPositionBias(dim, heads)
        patch_dim = p * p * pt  # one channel
        self.to_patch_emb = torch.nn.Sequential(torch.nn.Identity(), torch.nn.LayerNorm(patch_dim),
                                                torch.nn.Linear(patch_dim, dim), torch.nn.LayerNorm(dim))
        self.enc_spatial_transformer = _CTTransformer(dim, int(cfg["spatial_depth"]), dim_head, heads)
        self.enc_temporal_transformer = _CTTransformer(dim, int(cfg["temporal_depth"]), dim_head, heads)
        self.vq = _VectorQuantize(dim, int(cfg["codebook_size"]))


class CTViTEncoder(VolumeEncoder):
    """CT-CLIP's image encoder. Taps: blocks ``0..S-1`` of the spatial transformer, ``S..S+T-1`` of the temporal
    one, each after its transformer's final norm; the last tap is CT-CLIP's encoded tokens (after the vector
    quantiser). ``patch[l]``: ``(B, dim, t, h, w)``; ``cls`` at the last tap is CT-CLIP's image embedding
    (``to_visual_latent`` of the slice-averaged tokens), elsewhere the grid's global average."""

    def __init__(self, spec: EncoderSpec, model: CTViTModel, latent: torch.nn.Linear) -> None:
        super().__init__()
        self.spec = spec
        self.visual_transformer = model.eval().requires_grad_(False)
        self.to_visual_latent = latent.eval().requires_grad_(False)
        self.n_spatial = len(model.enc_spatial_transformer.layers)
        self.n_temporal = len(model.enc_temporal_transformer.layers)

    @property
    def depth(self) -> int:
        return self.n_spatial + self.n_temporal

    @property
    def width(self) -> int:
        return self.visual_transformer.dim

    def check_volume_size(self, size: Sequence[int]) -> None:
        check_ctvit_size(self.spec, size)

    def forward_features(self, x: torch.Tensor, layers: Sequence[int]) -> EncoderOutput:
        if x.ndim != 5 or x.shape[1] != 1:
            raise ConfigError(f"{self.spec.name} takes (B, 1, D, H, W) volumes, got shape {tuple(x.shape)}")
        self.check_volume_size(x.shape[2:])
        m: Any = self.visual_transformer
        want, last = set(layers), max(layers)
        b = x.shape[0]
        p, pt = m.patch, m.temporal_patch
        t, h, w = x.shape[2] // pt, x.shape[3] // p, x.shape[4] // p
        # 'b c (t pt) (h p1) (w p2) -> b t h w (c pt p1 p2)'
        y = x.to(m.to_patch_emb[2].weight.dtype).reshape(b, 1, t, pt, h, p, w, p)
        y = m.to_patch_emb(y.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, t, h, w, pt * p * p))
        shape = (b, t, h, w)
        cls: dict[int, torch.Tensor] = {}
        patch: dict[int, torch.Tensor] = {}

        def take(i: int, g: torch.Tensor) -> None:  # g: (b, t, h, w, d)
            if i == self.depth - 1:
                g = m.vq(g.reshape(b, -1, g.shape[-1])).reshape(g.shape)
                cls[i] = self.to_visual_latent(g.mean(dim=1).reshape(b, -1).to(self.to_visual_latent.weight.dtype))
            else:
                cls[i] = g.mean(dim=(1, 2, 3))
            patch[i] = g.permute(0, 4, 1, 2, 3)

        sp, tm = m.enc_spatial_transformer, m.enc_temporal_transformer
        tokens = y.reshape(b * t, h * w, -1)
        bias = m.spatial_rel_pos_bias(h, w, tokens.device)
        for i in range(min(last + 1, self.n_spatial)):
            tokens = sp.block(i, tokens, shape, bias)
            if i in want:
                take(i, sp.norm_out(tokens).reshape(b, t, h, w, -1))
        if last < self.n_spatial:
            return EncoderOutput(cls=cls, patch=patch)
        tokens = sp.norm_out(tokens).reshape(b, t, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b * h * w, t, -1)
        for j in range(last + 1 - self.n_spatial):
            tokens = tm.block(j, tokens, shape, None)
            if self.n_spatial + j in want:
                g = tm.norm_out(tokens).reshape(b, h, w, t, -1).permute(0, 3, 1, 2, 4)
                take(self.n_spatial + j, g)
        return EncoderOutput(cls=cls, patch=patch)


def check_ctvit_size(spec: EncoderSpec, size: Sequence[int]) -> None:
    """CTViT takes in-plane sizes equal to its ``image_size`` (its position bias grid and CT-CLIP's latent
    projection are fixed) and any number of slices that is a multiple of its temporal patch."""
    c = spec.hf_config
    n, pt = int(c["image_size"]), int(c["temporal_patch_size"])
    d, h, w = (int(v) for v in size)
    if (h, w) != (n, n) or d < pt or d % pt:
        raise ConfigError(f"volume input {d}x{h}x{w} (DxHxW): {spec.name} takes {n}x{n} in-plane and a multiple of "
                          f"{pt} slices")


# keys of a CT-CLIP checkpoint that are not the image encoder (text tower, decoder, GAN / perceptual-loss nets,
# CLIP temperature): recognised and left out; any other key that does not belong to the encoder is an error
CTCLIP_OTHER = ("text_transformer.", "to_text_latent.", "to_text_latent_extra.", "to_visual_latent_extra.",
                "temperature", "mlm.", "visual_ssl.", "visual_transformer.to_patch_emb_first_frame.",
                "visual_transformer.dec_spatial_transformer.", "visual_transformer.dec_temporal_transformer.",
                "visual_transformer.to_pixels_first_frame.", "visual_transformer.to_pixels.",
                "visual_transformer.vgg.", "visual_transformer.discr.")


def ctclip_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image-encoder tensors of a CT-CLIP state dict (names unchanged); the recognised other parts dropped."""
    return {k: v for k, v in sd.items() if not (k == "temperature" or k.startswith(CTCLIP_OTHER))}


def build_ctvit(spec: EncoderSpec) -> CTViTEncoder:
    c = spec.hf_config
    model = CTViTModel(c)
    grid = int(c["image_size"]) // int(c["patch_size"])
    latent = torch.nn.Linear(grid * grid * int(c["dim"]), int(c["latent_dim"]), bias=False)
    return CTViTEncoder(spec, model, latent)


def _build_ctvit(spec: EncoderSpec, ref: WeightsRef, options: Mapping[str, Any]) -> Encoder:
    from medprobe.encoders.weights import load_state_dict

    if ref.kind not in ("random", "file"):
        raise WeightsError(f"{spec.name} loads a local CT-CLIP .pt / .safetensors file, not {ref.kind} weights",
                           ref.location)
    with torch_seeded(ref.seed):
        enc = build_ctvit(spec)
    if ref.kind == "file":
        path = Path(str(ref.location))
        load_exact(enc, ctclip_state_dict(load_state_dict(path)), path)
    enc.weights_id, enc.pretrained = _weights_id(ref), ref.kind == "file"
    return enc


def _ctvit_gflops(spec: EncoderSpec, resolution: tuple[int, int], layers: tuple[int, ...] | None) -> float | None:
    from medprobe.encoders.flops import _Tapped as Tapped
    from medprobe.encoders.flops import count_flops

    d, h, w = volume_size(spec, resolution)
    with torch.device("meta"):
        enc = build_ctvit(spec)
    taps = layers if layers is not None else (enc.depth - 1,)
    return count_flops(Tapped(enc, taps), torch.zeros(1, 1, d, h, w, device="meta")) / 1e9


class CTViTInfo(VolumeInfo):
    """Identity of a CTViT encoder (its size rule differs from Swin's)."""

    def check_volume_size(self, size: Sequence[int]) -> None:
        check_ctvit_size(self.spec, size)


def _ctvit_identity(spec: EncoderSpec, ref: WeightsRef) -> EncoderInfo | None:
    if ref.kind not in ("random", "file"):
        return None
    return CTViTInfo(spec, _weights_id(ref), ref.kind == "file")


register_family(EncoderFamily(
    name="ctvit", build=_build_ctvit, identity=_ctvit_identity, gflops=_ctvit_gflops, volumetric=True,
    memory=ctvit_memory,
    local_weights=local_weight_files,
    description="CT-CLIP's CTViT image encoder (3D ViT, factorised spatial / temporal attention), volumes in",
    cls_feature="last tap: CT-CLIP's image embedding (to_visual_latent of the slice-averaged, flattened tokens); "
                "other taps: global average of the grid",
    patch_feature="(B, dim, t, h, w) tokens after the tapped transformer's final norm (last tap: after the vector "
                  "quantiser); stride 10 slices x 20 x 20 px",
    taps="blocks 0-3 spatial, 4-7 temporal (the last = CT-CLIP's encoded tokens)",
))

# CT-CLIP (Hamamci et al.): CTViT dim 512, 480x480 px in-plane, 20 px patches, 10-slice temporal patches, 4 + 4
# blocks, 8 heads of 32; CT-RATE preprocessing: 0.75 x 0.75 x 1.5 mm, HU clipped to [-1000, 1000] / 1000
# (= window ct:0,2000 then mean 0.5, std 0.5), centre crop / pad to 480 x 480 x 240.
_add(EncoderSpec(
    name="ct-clip", family="ctvit", patch_size=20, width=512, depth=8, params_m=174.42,
    default_layers=(3, 5, 6, 7), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), native_resolution=480,
    license="CC-BY-NC-SA 4.0 (CT-CLIP weights)",
    pretraining_data="CT-RATE: 50,188 chest CT volumes with radiology reports (contrastive image-text)",
    hf_config=dict(dim=512, codebook_size=8192, image_size=480, patch_size=20, temporal_patch_size=10,
                   spatial_depth=4, temporal_depth=4, dim_head=32, heads=8, latent_dim=512, size=(240, 480, 480),
                   spacing=(1.5, 0.75, 0.75), intensity="ct:0,2000", weights_file="CT-CLIP_v2.pt"),
))

__all__ = ["CTViTEncoder", "CTViTModel", "SwinViTEncoder", "VolumeEncoder", "VolumeInfo", "build_ctvit", "build_swin",
           "check_ctvit_size", "ctclip_state_dict", "load_exact", "native_size", "swin_state_dict", "volume_size"]
