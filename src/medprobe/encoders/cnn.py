"""CNN encoders on transformers: ResNet-50 (``ResNetModel``) and DINOv3 ConvNeXt T/S/B/L (``DINOv3ConvNextModel``).

Weights come in the layouts their authors publish, mapped key by key onto the transformers model (strictly: a
missing, unexpected or mis-shaped tensor is one line naming the file and the first offending key, in the file's
own naming):

* ResNet-50 -- torchvision's ImageNet checkpoints (``resnet50-<sha256[:8]>.pth``, hash prefix verified) and timm's
  (``timm/resnet50.a1_in1k`` ``model.safetensors``) share one key layout; a transformers ``ResNetModel`` /
  ``ResNetForImageClassification`` folder (``microsoft/resnet-50``) loads too. transformers' bottleneck puts the
  stride in the 3x3 convolution (ResNet v1.5), as torchvision and timm do.

  ===================================  ==========================================================
  ``conv1.weight``, ``bn1.*``          ``embedder.embedder.{convolution,normalization}.*``
  ``layerS.J.convK.weight``            ``encoder.stages.{S-1}.layers.J.layer.{K-1}.convolution.weight``
  ``layerS.J.bnK.*``                   ``encoder.stages.{S-1}.layers.J.layer.{K-1}.normalization.*``
  ``layerS.J.downsample.{0,1}.*``      ``encoder.stages.{S-1}.layers.J.shortcut.{convolution,normalization}.*``
  ``fc.*``                             dropped (the ImageNet classifier)
  ===================================  ==========================================================

  ``*.num_batches_tracked`` (a training counter, absent from some timm files) is optional.
* DINOv3 ConvNeXt -- Meta's ``dinov3_convnext_<size>_pretrain_lvd1689m-<sha256[:8]>.pth`` (hash prefix verified)
  or the transformers folder ``facebook/dinov3-convnext-<size>-pretrain-lvd1689m``.

  ===================================  ==========================================================
  ``downsample_layers.I.J.*``          ``model.stages.I.downsample_layers.J.*``
  ``stages.I.J.dwconv.*``              ``model.stages.I.layers.J.depthwise_conv.*``
  ``stages.I.J.norm.*``                ``model.stages.I.layers.J.layer_norm.*``
  ``stages.I.J.pwconv{1,2}.*``         ``model.stages.I.layers.J.pointwise_conv{1,2}.*``
  ``stages.I.J.gamma``                 ``model.stages.I.layers.J.gamma``
  ``norm.*``                           ``layer_norm.*``
  ``norms.3.*``                        dropped after checking it equals ``norm.*`` (Meta registers the final
                                       norm twice: ``norms = [Identity] * 3 + [norm]``)
  ===================================  ==========================================================

Feature contract: the taps are the 4 stages (0-based); ``patch[s]`` is stage ``s``'s feature map (stride
4 / 8 / 16 / 32), ``cls[s]`` its global average pool. ConvNeXt's last stage is normalised as Meta and
transformers define their outputs: ``cls[3] = LayerNorm(GAP(x))`` (the pooled output) and ``patch[3]`` is each
position after that LayerNorm; earlier stages are raw (Meta's ``norms[0:3]`` are identities). Inputs: any size
that is a multiple of 32.

Registers the families ``resnet`` and ``dinov3_convnext``. The checkpoint helpers (:func:`weights_identity`,
:func:`read_state_dict`, :class:`KeyMap`, :func:`load_mapped`) are shared with :mod:`medprobe.encoders.sam`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medprobe.encoders.base import Encoder, EncoderInfo, EncoderOutput
from medprobe.encoders.families import EncoderFamily, register_family
from medprobe.encoders.memory import cnn_memory
from medprobe.encoders.registry import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, register
from medprobe.errors import WeightsError
from medprobe.utils import torch_seeded

if TYPE_CHECKING:
    from medprobe.encoders.weights import WeightsRef


def transformers_module() -> Any:
    """``transformers``, importable where torchvision's compiled ops do not match the local torch (transformers
    imports torchvision's Python layers when torchvision is installed; see :mod:`medprobe.encoders.extras`)."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        from medprobe.encoders.extras import import_torchvision

        import_torchvision()
    import transformers

    return transformers


# ------------------------------------------------------------------ checkpoint helpers (shared with sam.py)
_TV_NAME = re.compile(r"^[a-z0-9_]+-(?P<hash>[0-9a-f]{8,})\.pth$")  # torchvision hub names: <arch>-<sha256[:8]>.pth


def verified_sha256(path: Path, spec: EncoderSpec, verify: bool) -> str:
    """SHA-256 of a weights file; Meta (``dinov3_<arch>_pretrain_<data>-<hash8>.pth``) and torchvision
    (``<arch>-<hash8>.pth``) names carry a hash prefix that is checked (``verify=False``: not checked)."""
    from medprobe.encoders.weights import META_NAME, check_meta_name, file_sha256, verify_meta_hash

    check_meta_name(path, spec)
    if not verify:
        return file_sha256(path)
    if META_NAME.match(path.name):
        return verify_meta_hash(path)
    digest = file_sha256(path)
    m = _TV_NAME.match(path.name)
    if m and not digest.startswith(m.group("hash")):
        raise WeightsError(f"SHA-256 mismatch: name says {m.group('hash')}, content is {digest[:len(m.group('hash'))]} "
                           "(corrupt or renamed file; --no-verify to override)", path)
    return digest


def _hub_folder(repo: str) -> Path:
    """The local Hugging Face cache snapshot of ``repo`` (never downloads)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, local_files_only=True))
    except Exception as e:  # noqa: BLE001 - LocalEntryNotFoundError and friends
        raise WeightsError(f"not in the local Hugging Face cache (medprobe never downloads at run time: "
                           f"{type(e).__name__})", repo) from None


def _safetensors_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pick = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pth"))
        what = f"only pickle weights ({', '.join(pick)}): give the file itself" if pick else "no *.safetensors weights"
        raise WeightsError(f"holds {what}", folder)
    return files


def weights_source(ref: WeightsRef) -> Path:
    """The file or folder a non-random weights reference points to (hub ids: the local cache snapshot)."""
    if ref.kind == "hub":
        return _hub_folder(str(ref.location))
    return Path(str(ref.location))


def weights_identity(spec: EncoderSpec, ref: WeightsRef) -> str:
    """The ``weights_id`` results record: ``random:seed=N``, ``sha256:<file digest>``, or for a folder of
    safetensors files a digest over theirs (as :mod:`medprobe.encoders.hf_vit` does)."""
    from medprobe.encoders.weights import file_sha256
    from medprobe.utils import hash_obj

    if ref.kind == "random":
        return f"random:seed={ref.seed}"
    if ref.kind == "file":
        return "sha256:" + verified_sha256(Path(str(ref.location)), spec, ref.verify)
    if ref.kind in ("hf_dir", "hub"):
        folder = weights_source(ref)
        return "sha256:" + hash_obj([file_sha256(f) for f in _safetensors_files(folder)], n=64)
    raise WeightsError(f"{spec.name} cannot load {ref.kind} weights", ref.location)


def read_state_dict(ref: WeightsRef) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of a weights file (safetensors or ``torch.load(weights_only=True)``) or of a folder's
    safetensors files, and the path to name in messages."""
    from medprobe.encoders.weights import load_state_dict

    src = weights_source(ref)
    if src.is_file():
        return load_state_dict(src), src
    sd: dict[str, torch.Tensor] = {}
    for f in _safetensors_files(src):
        sd.update(load_state_dict(f))
    return sd, src


@dataclass(frozen=True)
class KeyMap:
    """One published key layout: ``rules`` map an author key to the model's (regex, template), ``inverse`` the
    model's back (to name missing tensors in the file's naming); ``drop``: author keys dropped on purpose;
    ``optional``: model keys a file may lack (zero-filled, e.g. BatchNorm's ``num_batches_tracked``)."""

    name: str
    rules: tuple[tuple[str, str], ...]
    inverse: tuple[tuple[str, str], ...]
    drop: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()

    @staticmethod
    def _apply(rules: Sequence[tuple[str, str]], key: str) -> str | None:
        for pat, tpl in rules:
            m = re.fullmatch(pat, key)
            if m:
                return m.expand(tpl)
        return None

    def to_model(self, key: str) -> str | None:
        return self._apply(self.rules, key)

    def to_file(self, key: str) -> str:
        return self._apply(self.inverse, key) or key

    def dropped(self, key: str) -> bool:
        return any(re.fullmatch(p, key) for p in self.drop)

    def is_optional(self, model_key: str) -> bool:
        return any(re.fullmatch(p, model_key) for p in self.optional)


def _more(n: int) -> str:
    return f" (and {n - 1} more)" if n > 1 else ""


def load_mapped(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], keymap: KeyMap, source: Path,
                model_name: str) -> None:
    """Load ``sd`` (in ``keymap``'s layout) into ``model`` strictly; the first problem is one WeightsError line
    naming ``source`` and the offending key as the file names it."""
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for k, v in sd.items():
        if keymap.dropped(k):
            continue
        mk = keymap.to_model(k)
        if mk is None or mk not in own:
            unexpected.append(k)
        else:
            out[mk] = v
    if unexpected:
        if not out:
            raise WeightsError(f"not a {keymap.name} checkpoint: its first key {unexpected[0]!r} is not one of "
                               f"{model_name}'s tensors", source)
        raise WeightsError(f"unexpected tensor {unexpected[0]!r}{_more(len(unexpected))} for {model_name} "
                           f"({keymap.name} layout)", source)
    missing = [k for k in own if k not in out and not keymap.is_optional(k)]
    if missing:
        raise WeightsError(f"missing tensor {keymap.to_file(missing[0])!r}{_more(len(missing))} for {model_name} "
                           f"({keymap.name} layout)", source)
    for mk, v in out.items():
        if tuple(v.shape) != tuple(own[mk].shape):
            raise WeightsError(f"tensor {keymap.to_file(mk)!r} has shape {tuple(v.shape)} in the file but "
                               f"{model_name} expects {tuple(own[mk].shape)}", source)
    for mk in own:
        if mk not in out:  # an optional tensor the file lacks (a training counter): zeros
            out[mk] = torch.zeros_like(own[mk], device="cpu")
    model.load_state_dict(out, strict=True)


def search_dirs() -> list[Path]:
    """Folders searched for weight files by name: ``$MEDPROBE_WEIGHTS`` (os.pathsep-separated) and torch hub's."""
    dirs = [Path(p) for p in os.environ.get("MEDPROBE_WEIGHTS", "").split(os.pathsep) if p]
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    return [*dirs, hub]


def files_named(patterns: Sequence[str]) -> list[Path]:
    """Weight files matching any of ``patterns`` (globs) in :func:`search_dirs`."""
    found: list[Path] = []
    for d in search_dirs():
        if d.is_dir():
            for pat in patterns:
                found += sorted(p for p in d.glob(pat) if p.is_file())
    return found


def empty_model(make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``make()`` with uninitialised CPU storage, for a model whose every tensor a checkpoint is about to
    overwrite (skips the random initialisation); a model with non-persistent buffers is built normally."""
    with torch.device("meta"):
        model = make()
    persistent = set(model.state_dict())
    if any(name not in persistent for name, _ in model.named_buffers()):
        return make()
    return model.to_empty(device="cpu")


def seeded(seed: int, make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``make()`` under ``torch.manual_seed(seed)``, leaving the global RNG as it was."""
    with torch_seeded(seed):
        return make()


# ------------------------------------------------------------------ CNN encoders
_ROLE = {"resnet": "ResNetModel", "dinov3_convnext": "DINOv3ConvNextModel"}
_CONFIG = {"resnet": "ResNetConfig", "dinov3_convnext": "DINOv3ConvNextConfig"}


def build_cnn_model(spec: EncoderSpec) -> torch.nn.Module:
    """The transformers model of a ``resnet`` / ``dinov3_convnext`` spec with random weights."""
    tf = transformers_module()
    cfg = getattr(tf, _CONFIG[spec.family])(**dict(spec.hf_config))
    model: torch.nn.Module = getattr(tf, _ROLE[spec.family])(cfg)
    return model.eval()


class CNNEncoder(Encoder):
    """A frozen 4-stage CNN: taps are stages; ``patch[s]`` the stage's map, ``cls[s]`` its global average pool
    (ConvNeXt's last stage: after the final LayerNorm, as Meta's pooled output)."""

    def __init__(self, spec: EncoderSpec, model: torch.nn.Module) -> None:
        super().__init__()
        self.spec = spec
        m: Any = model.eval().requires_grad_(False)
        self.model = m
        self.convnext = spec.family == "dinov3_convnext"
        self.stages = m.model.stages if self.convnext else m.encoder.stages
        self._depth = len(m.model.stages if self.convnext else m.encoder.stages)

    @property
    def depth(self) -> int:
        return self._depth

    def _input_dtype(self) -> torch.dtype:
        p = next(self.model.parameters())
        return p.dtype

    def forward_features(self, x: torch.Tensor, layers: Sequence[int]) -> EncoderOutput:
        self.check_input_size(x.shape[2], x.shape[3])
        want = set(layers)
        h = x.to(self._input_dtype())
        if not self.convnext:
            h = self.model.embedder(h)
        cls: dict[int, torch.Tensor] = {}
        patch: dict[int, torch.Tensor] = {}
        for i in range(max(want) + 1):
            h = self.stages[i](h)
            if i not in want:
                continue
            if self.convnext and i == self._depth - 1:
                norm = self.model.layer_norm
                cls[i] = norm(h.mean((2, 3)))
                patch[i] = norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            else:
                cls[i] = h.mean((2, 3))
                patch[i] = h
        return EncoderOutput(cls=cls, patch=patch)


class _ShiftedKeyMap(KeyMap):
    """ResNet's 1-based ``layerS`` / ``convK`` / ``bnK`` against transformers' 0-based indices: the templates
    mark indices to shift with ``<n>`` (-1 towards the model, +1 back)."""

    def to_model(self, key: str) -> str | None:
        k = super().to_model(key)
        return None if k is None else re.sub(r"<(\d+)>", lambda m: str(int(m.group(1)) - 1), k)

    def to_file(self, key: str) -> str:
        k = self._apply(self.inverse, key)
        return key if k is None else re.sub(r"<(\d+)>", lambda m: str(int(m.group(1)) + 1), k)


# ResNet: torchvision / timm layout
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
RESNET_KEYS = _ShiftedKeyMap(
    name="torchvision/timm ResNet",
    rules=(
        (r"conv1\.weight", r"embedder.embedder.convolution.weight"),
        (rf"bn1\.{_BN}", r"embedder.embedder.normalization.\1"),
        (r"layer([1-4])\.(\d+)\.conv([1-3])\.weight", r"encoder.stages.<\1>.layers.\2.layer.<\3>.convolution.weight"),
        (rf"layer([1-4])\.(\d+)\.bn([1-3])\.{_BN}", r"encoder.stages.<\1>.layers.\2.layer.<\3>.normalization.\4"),
        (r"layer([1-4])\.(\d+)\.downsample\.0\.weight", r"encoder.stages.<\1>.layers.\2.shortcut.convolution.weight"),
        (rf"layer([1-4])\.(\d+)\.downsample\.1\.{_BN}", r"encoder.stages.<\1>.layers.\2.shortcut.normalization.\3"),
    ),
    inverse=(
        (r"embedder\.embedder\.convolution\.weight", r"conv1.weight"),
        (r"embedder\.embedder\.normalization\.(\w+)", r"bn1.\1"),
        (r"encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.convolution\.weight", r"layer<\1>.\2.conv<\3>.weight"),
        (r"encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.normalization\.(\w+)", r"layer<\1>.\2.bn<\3>.\4"),
        (r"encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.convolution\.weight", r"layer<\1>.\2.downsample.0.weight"),
        (r"encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.normalization\.(\w+)", r"layer<\1>.\2.downsample.1.\3"),
    ),
    drop=(r"fc\.(weight|bias)",),
    optional=(r".*\.num_batches_tracked",),
)



# ResNet: transformers layout (ResNetModel, or ResNetForImageClassification with its `resnet.` prefix)
RESNET_HF_KEYS = KeyMap(
    name="transformers ResNet",
    rules=((r"(?:resnet\.)?((?:embedder|encoder)\..+)", r"\1"),),
    inverse=(),
    drop=(r"classifier\..*",),
    optional=(r".*\.num_batches_tracked",),
)

# DINOv3 ConvNeXt: Meta layout
CONVNEXT_KEYS = KeyMap(
    name="Meta DINOv3 ConvNeXt",
    rules=(
        (r"downsample_layers\.(\d)\.([01])\.(weight|bias)", r"model.stages.\1.downsample_layers.\2.\3"),
        (r"stages\.(\d)\.(\d+)\.dwconv\.(weight|bias)", r"model.stages.\1.layers.\2.depthwise_conv.\3"),
        (r"stages\.(\d)\.(\d+)\.norm\.(weight|bias)", r"model.stages.\1.layers.\2.layer_norm.\3"),
        (r"stages\.(\d)\.(\d+)\.pwconv([12])\.(weight|bias)", r"model.stages.\1.layers.\2.pointwise_conv\3.\4"),
        (r"stages\.(\d)\.(\d+)\.gamma", r"model.stages.\1.layers.\2.gamma"),
        (r"norm\.(weight|bias)", r"layer_norm.\1"),
    ),
    inverse=(
        (r"model\.stages\.(\d)\.downsample_layers\.(\d)\.(\w+)", r"downsample_layers.\1.\2.\3"),
        (r"model\.stages\.(\d)\.layers\.(\d+)\.depthwise_conv\.(\w+)", r"stages.\1.\2.dwconv.\3"),
        (r"model\.stages\.(\d)\.layers\.(\d+)\.layer_norm\.(\w+)", r"stages.\1.\2.norm.\3"),
        (r"model\.stages\.(\d)\.layers\.(\d+)\.pointwise_conv(\d)\.(\w+)", r"stages.\1.\2.pwconv\3.\4"),
        (r"model\.stages\.(\d)\.layers\.(\d+)\.gamma", r"stages.\1.\2.gamma"),
        (r"layer_norm\.(\w+)", r"norm.\1"),
    ),
    drop=(r"norms\.3\.(weight|bias)",),
)

# DINOv3 ConvNeXt: transformers layout (stages at the top level in transformers 4.x, under `model.` in 5.x)
CONVNEXT_HF_KEYS = KeyMap(
    name="transformers DINOv3ConvNext",
    rules=((r"(?:model\.)?(stages\..+)", r"model.\1"), (r"(layer_norm\.(?:weight|bias))", r"\1")),
    inverse=(),
)


def _convnext_tied_norm(sd: Mapping[str, torch.Tensor], source: Path) -> None:
    """Meta's ``norms.3`` is the final ``norm`` registered a second time: refuse a file where they differ."""
    for p in ("weight", "bias"):
        a, b = sd.get(f"norms.3.{p}"), sd.get(f"norm.{p}")
        if a is not None and b is not None and (a.shape != b.shape or not torch.equal(a, b)):
            raise WeightsError(f"norms.3.{p} differs from norm.{p}; Meta's ConvNeXt ties them (its last stage "
                               "output is normalised by one LayerNorm)", source)


def _layout(spec: EncoderSpec, sd: Mapping[str, torch.Tensor], source: Path) -> KeyMap:
    keys = list(sd)
    if spec.family == "resnet":
        hf = any(k.startswith(("embedder.", "encoder.stages.", "resnet.embedder.")) for k in keys)
        return RESNET_HF_KEYS if hf else RESNET_KEYS
    _convnext_tied_norm(sd, source)
    hf = any(".layers." in k or k.startswith("layer_norm.") for k in keys)
    return CONVNEXT_HF_KEYS if hf else CONVNEXT_KEYS


def _build(spec: EncoderSpec, ref: WeightsRef, options: Mapping[str, Any]) -> Encoder:
    wid = weights_identity(spec, ref)  # hash (and name check) first: a renamed or corrupt file stops here
    if ref.kind == "random":
        model = seeded(ref.seed, lambda: build_cnn_model(spec))
    else:
        sd, src = read_state_dict(ref)
        model = empty_model(lambda: build_cnn_model(spec))
        load_mapped(model, sd, _layout(spec, sd, src), src, spec.name)
    enc = CNNEncoder(spec, model)
    enc.weights_id, enc.pretrained = wid, ref.kind != "random"
    return enc


def _identity(spec: EncoderSpec, ref: WeightsRef) -> EncoderInfo | None:
    return EncoderInfo(spec, weights_identity(spec, ref), ref.kind != "random")


def _gflops(spec: EncoderSpec, resolution: tuple[int, int], layers: tuple[int, ...] | None) -> float | None:
    """Counted with torch's FLOP counter on a ``meta``-device model (no weights, no compute)."""
    from medprobe.encoders.flops import gflops_per_image

    with torch.device("meta"):
        enc = CNNEncoder(spec, build_cnn_model(spec))
    return gflops_per_image(enc, resolution, layers=layers)


def _resnet_local(spec: EncoderSpec) -> list[Path]:
    """torchvision's ImageNet files (``resnet50-<hash8>.pth``) for the torchvision-named encoder."""
    return files_named(["resnet50-*.pth"]) if spec.name == "resnet50" else []


register_family(EncoderFamily(
    name="resnet", build=_build, identity=_identity, gflops=_gflops, local_weights=_resnet_local, memory=cnn_memory,
    description="transformers ResNetModel; torchvision / timm ImageNet checkpoints (same key layout)",
    cls_feature="global average pool of the stage's feature map (no norm)",
    patch_feature="the stage's feature map (its last bottleneck's output, after ReLU); stride 4 / 8 / 16 / 32",
    taps="the 4 residual stages (0-based: layer1..layer4)",
))
register_family(EncoderFamily(
    name="dinov3_convnext", build=_build, identity=_identity, gflops=_gflops, memory=cnn_memory,
    description="transformers DINOv3ConvNextModel; Meta's dinov3_convnext_*.pth checkpoints",
    cls_feature="global average pool of the stage; last stage: LayerNorm(GAP) = Meta's pooled output",
    patch_feature="the stage's feature map (stride 4 / 8 / 16 / 32); last stage after the final LayerNorm",
    taps="the 4 stages (0-based)",
))

_RESNET50 = dict(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], embedding_size=64,
                 layer_type="bottleneck", hidden_act="relu", downsample_in_first_stage=False,
                 downsample_in_bottleneck=False)
register(EncoderSpec(
    name="resnet50", family="resnet", patch_size=32, width=2048, depth=4, params_m=23.51,
    default_layers=(0, 1, 2, 3), native_resolution=224, license="BSD-3-Clause (torchvision weights)",
    pretraining_data="ImageNet-1k, supervised (torchvision resnet50-0676ba61.pth V1 or resnet50-11ad3fa6.pth V2)",
    hf_config=dict(_RESNET50),
))
register(EncoderSpec(
    name="resnet50-timm", family="resnet", patch_size=32, width=2048, depth=4, params_m=23.51,
    default_layers=(0, 1, 2, 3), native_resolution=224, license="Apache-2.0 (timm weights)",
    pretraining_data="ImageNet-1k, supervised (timm resnet50.a1_in1k, 'ResNet strikes back' A1 recipe)",
    hf_repo="timm/resnet50.a1_in1k", timm_name="resnet50.a1_in1k", hf_config=dict(_RESNET50),
))
# Meta's convnext_sizes: depths and widths; params of the backbone (no head), counted from the model
_CONVNEXT = [
    ("tiny", [3, 3, 9, 3], [96, 192, 384, 768], 27.82),
    ("small", [3, 3, 27, 3], [96, 192, 384, 768], 49.45),
    ("base", [3, 3, 27, 3], [128, 256, 512, 1024], 87.57),
    ("large", [3, 3, 27, 3], [192, 384, 768, 1536], 196.23),
]
for _size, _depths, _dims, _params in _CONVNEXT:
    register(EncoderSpec(
        name=f"dinov3-convnext-{_size}", family="dinov3_convnext", patch_size=32, width=_dims[-1], depth=4,
        params_m=_params, default_layers=(0, 1, 2, 3), mean=IMAGENET_MEAN, std=IMAGENET_STD,
        native_resolution=224, license="DINOv3 License (Meta; gated download)",
        pretraining_data="LVD-1689M, distilled from DINOv3 ViT-7B",
        hf_repo=f"facebook/dinov3-convnext-{_size}-pretrain-lvd1689m", meta_arch=f"convnext_{_size}",
        meta_dataset="lvd1689m", hf_config=dict(depths=list(_depths), hidden_sizes=list(_dims), layer_norm_eps=1e-6,
                                                hidden_act="gelu"),
    ))

__all__ = ["CNNEncoder", "CONVNEXT_KEYS", "KeyMap", "RESNET_KEYS", "build_cnn_model", "empty_model", "files_named",
           "load_mapped", "read_state_dict", "transformers_module", "weights_identity"]
